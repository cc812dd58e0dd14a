"""The shipped shapes ControlNet in the shapes world: objects land on their control masks where the base
model puts them anywhere, the prompt's colour and shape survive, and weight and guidance window act as
they should. Held-out masks (another seed than training's), one image a mask, intervals by bootstrap;
12 Euler steps (the README's table is at 20 and N=200)."""

import pytest

from t2i.models import SHAPE_CONTROLNET
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.shapes.controlnet import control_agreement, controls_for, held_out_shapes

pytestmark = pytest.mark.slow
COUNT = 60
NET = str(SHAPE_CONTROLNET)
SETTINGS = {"base": {"controlnet": None}, "weight 0": {"controlnet": NET, "weight": 0.0},
            "weight 0.5": {"controlnet": NET, "weight": 0.5}, "weight 1": {"controlnet": NET},
            "early": {"controlnet": NET, "end": 0.3}, "late": {"controlnet": NET, "start": 0.7}}


@pytest.fixture(scope="module")
def measured():
    """Each setting measured once, on demand."""
    shapes = held_out_shapes(COUNT)
    model, masks, found = load_model(ModelConfig(model="demo", device="cpu")), controls_for(shapes), {}

    def measure(name):
        if name not in found:
            found[name] = control_agreement(model, masks, shapes, steps=12, **SETTINGS[name])
        return found[name]

    return measure


def test_placement_follows_the_mask_and_the_prompt_survives(measured):
    base, controlled = measured("base"), measured("weight 1")
    assert base["iou"].high < 0.5, base  # objects anywhere: overlap at chance
    assert controlled["iou"].low > 0.7, controlled
    assert controlled["centroid_px"].high < 2 < base["centroid_px"].low
    assert controlled["accuracy"].value >= base["accuracy"].low  # colour and shape as often right as without


def test_weight_and_guidance_window(measured):
    by_weight = [measured(name)["iou"].value for name in ("weight 0", "weight 0.5", "weight 1")]
    assert by_weight[0] < by_weight[1] < by_weight[2], by_weight
    assert by_weight[0] == measured("base")["iou"].value  # weight 0 is the base model exactly
    # placement is decided in the first steps: a unit acting only there still puts the object near the mask's
    # centre with the prompt's shape intact; acting only in the last steps it can only repaint the object
    # where it already is towards the mask, which breaks its shape (README: centre 2.5 vs 3.5 px, prompt
    # accuracy 0.97 vs 0.72 at N=200)
    base, early, late = measured("base"), measured("early"), measured("late")
    assert early["centroid_px"].value < 0.5 * base["centroid_px"].value, early
    assert early["accuracy"].value >= base["accuracy"].low, early
    assert late["accuracy"].value < early["accuracy"].value - 0.1, (early, late)
    assert early["centroid_px"].value < late["centroid_px"].value, (early, late)
