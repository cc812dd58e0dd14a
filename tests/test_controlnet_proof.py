"""The shipped shapes ControlNet in the shapes world: objects land on their control masks where the base
model puts them anywhere, the prompt's colour and shape survive, and weight and guidance window act as
they should. Held-out masks (another seed than training's), one image a mask, intervals by bootstrap."""

import pytest

from t2i.models import SHAPE_CONTROLNET
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.shapes.controlnet import control_agreement, controls_for, held_out_shapes

pytestmark = pytest.mark.slow
COUNT = 60


@pytest.fixture(scope="module")
def world():
    shapes = held_out_shapes(COUNT)
    return load_model(ModelConfig(model="demo", device="cpu")), shapes, controls_for(shapes)


def measure(world, **options):
    model, shapes, masks = world
    return control_agreement(model, masks, shapes, **options)


def test_placement_follows_the_mask_and_the_prompt_survives(world):
    base = measure(world, controlnet=None)
    controlled = measure(world, controlnet=str(SHAPE_CONTROLNET))
    assert base["iou"].high < 0.5, base  # objects anywhere: overlap at chance
    assert controlled["iou"].low > 0.7, controlled
    assert controlled["centroid_px"].high < 2 < base["centroid_px"].low
    assert controlled["accuracy"].value >= base["accuracy"].low  # colour and shape as often right as without


def test_weight_and_guidance_window(world):
    net = str(SHAPE_CONTROLNET)
    by_weight = [measure(world, controlnet=net, weight=w)["iou"].value for w in (0.0, 0.5, 1.0)]
    assert by_weight[0] < by_weight[1] < by_weight[2], by_weight
    assert by_weight[0] == measure(world, controlnet=None)["iou"].value  # weight 0 is the base model exactly
    full = by_weight[2]
    early = measure(world, controlnet=net, end=0.3)["iou"].value  # placement is decided in the first steps
    late = measure(world, controlnet=net, start=0.7)["iou"].value
    assert early > 0.8 * full and late < 0.5 * (full + by_weight[0]), (early, late)
