"""The shipped shapes IP-Adapter in the shapes world: with an empty prompt the image takes the reference
picture's colour and shape where the base model draws anything, and against a conflicting prompt the image
moves from the prompt to the picture as the scale grows. Held-out references (another seed than training's),
one image each, intervals by bootstrap; 12 Euler steps and fewer images than the README's table (20, N=200)."""

import pytest

from t2i.models import SHAPE_IP_ADAPTER
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.shapes.ip_adapter import conflict_curve, conflicts, held_out_shapes, reference_agreement

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo():
    return load_model(ModelConfig(model="demo", device="cpu"))


def test_an_empty_prompt_draws_the_reference(demo):
    references = held_out_shapes(64)
    base = reference_agreement(demo, references, None, steps=12)
    adapted = reference_agreement(demo, references, str(SHAPE_IP_ADAPTER), steps=12)
    assert base["both"].high < 0.15, base  # chance is 1 in 32
    assert adapted["both"].low > 0.7 and adapted["both"].value >= 0.8, adapted
    assert adapted["colour"].low > base["colour"].high and adapted["shape"].low > base["shape"].high


def test_against_a_conflicting_prompt_the_image_moves_to_the_picture_as_the_scale_grows(demo):
    curve = conflict_curve(demo, conflicts(40), str(SHAPE_IP_ADAPTER), scales=(0.2, 1.0, 2.0), steps=12)
    reference = [point["reference_colour"]["value"] for point in curve]
    prompt = [point["prompt_colour"]["value"] for point in curve]
    assert reference[0] <= 0.05 and prompt[0] >= 0.9, curve[0]  # a light touch: the prompt rules
    assert reference[0] < reference[1] < reference[2] and prompt[0] > prompt[1] > prompt[2], curve
    # at 2 the picture rules: its shape far more often than the prompt's (README: 0.63 vs 0.12 at N=100)
    assert curve[2]["reference_shape"]["ci"][0] > curve[2]["prompt_shape"]["ci"][1], curve[2]
    assert reference[2] > prompt[2], curve[2]
