"""Hires fix and outpainting proven on `demo` in the shapes world, by the analyser with bootstrap
intervals (t2i.shapes.canvas_proofs says what each number is). The margins are the measured
numbers' intervals; the README and the closing note give the numbers themselves."""

import pytest

from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.shapes.canvas_proofs import hires_proof, outpaint_proof


@pytest.fixture(scope="module")
def demo():
    return load_model(ModelConfig(model="demo", device="cpu"))


@pytest.mark.slow
def test_hires_fix_keeps_prompt_following_and_is_sharper_than_a_lanczos_upscale(demo):
    result = hires_proof(demo, seeds_per_prompt=4)
    print({name: str(value) for name, value in result.items()})
    assert result["hires_accuracy"].value >= result["base_accuracy"].low, "within the base's interval or above"
    assert result["sharpness_gain"].low > 0, "sharper than the base upscaled by Lanczos, beyond the interval"


@pytest.mark.slow
def test_outpainting_completes_a_cut_object_far_beyond_the_filled_canvas(demo):
    result = outpaint_proof(demo, count=64)
    print({name: str(value) for name, value in result.items()})
    assert result["outpaint_read_whole"].value >= 0.7
    assert result["outpaint_read_whole"].low > result["fill_read_whole"].high
    assert result["outpaint_iou"].low > result["fill_iou"].high
