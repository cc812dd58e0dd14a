"""Self-Attention Guidance on any sampler: off is off, the same pixels as diffusers' (deprecated) SAG pipeline
where that runs, Euler where it refuses, a mask equal to the one computed here by hand from the mid block's
self-attention, the record, combinations, and bad values."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import pixels
from diffusers import DDIMScheduler

from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.sampling.sag import attention_mask, blur


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


BASE = GenerationConfig(prompts=("a cat",), steps=4, seed=3, width=32, height=32, sampler="euler", guidance_scale=5)


def _image(model, **changes):
    return pixels(generate(model, dataclasses.replace(BASE, **changes), progress=False)[0])


def test_scale_0_is_off_and_a_vanishing_scale_changes_nothing_but_rounding(tiny):
    plain = _image(tiny)
    assert np.array_equal(_image(tiny, sag_scale=0.0), plain)
    assert np.abs(_image(tiny, sag_scale=1e-9) - plain).max() <= 1  # the guided path itself adds nothing
    assert np.abs(_image(tiny, sag_scale=1.0) - plain).max() > 5
    assert np.array_equal(_image(tiny), plain)  # the shared UNet is unchanged
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in tiny.pipe.unet.attn_processors.values())


def test_same_pixels_as_diffusers_sag_pipeline_on_ddim(tiny):
    from diffusers import StableDiffusionSAGPipeline

    components = {k: v for k, v in tiny.pipe.components.items() if k not in ("scheduler",)}
    pipe = StableDiffusionSAGPipeline(**components, scheduler=DDIMScheduler.from_config(tiny.scheduler_config),
                                      requires_safety_checker=False)
    expected = pipe("a cat", num_inference_steps=4, guidance_scale=5, sag_scale=0.75, height=32, width=32,
                    generator=torch.Generator().manual_seed(3)).images[0]
    got = _image(tiny, sampler="ddim", schedule="normal", sag_scale=0.75)
    assert np.abs(got - pixels(expected)).max() <= 1
    assert np.abs(got - _image(tiny, sampler="ddim", schedule="normal")).max() > 5


@pytest.mark.parametrize("sampler", ["euler", "euler-a", "heun", "dpmpp-2m", "lms"])
def test_samplers_diffusers_sag_refuses_or_runs(tiny, sampler):
    plain, guided = _image(tiny, sampler=sampler), _image(tiny, sampler=sampler, sag_scale=0.75)
    assert np.abs(guided - plain).max() > 3 and np.isfinite(guided).all()


def test_the_mask_is_the_mid_block_self_attention_computed_by_hand(tiny):
    """The mid block's first self-attention is recomputed here from its input (softmax(q k^T / sqrt(d)) per head),
    and its mask (mean over heads, sum over queries, > threshold, widened to the latent) compared with SAG's."""
    from t2i.sampling.view import call_view

    view, _ = call_view(tiny, "txt2img", "euler", "normal", sag=(0.75, 1.0, 1.0))
    attention = view.unet.mid_block.attentions[0].transformer_blocks[0].attn1
    seen = []
    attention.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (args[0] if args else kwargs["hidden_states"]).detach()), with_kwargs=True)
    cond, uncond = tiny.pipe.encode_prompt("a cat", "cpu", 1, True, "")
    view(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=1, guidance_scale=5, height=32,
         width=32, generator=torch.Generator().manual_seed(3), output_type="latent")
    assert len(seen) == 2  # the guided pass, then the degraded one
    hidden = seen[0][:1]  # the reference (unconditional) half of the guided pass
    heads = attention.heads
    with torch.no_grad():
        q, k = attention.to_q(hidden), attention.to_k(hidden)
        d = q.shape[-1] // heads
        q, k = (t.reshape(1, -1, heads, d).transpose(1, 2) for t in (q, k))
        probs = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)  # (1, heads, queries, keys)
    by_hand = (probs.mean(1).sum(1) > 1.0).reshape(1, 1, 8, 8).float()
    by_hand = by_hand.repeat_interleave(2, -1).repeat_interleave(2, -2)  # 8x8 mid block -> 16x16 latent
    assert torch.equal(view.unet.sag_state.last_mask, by_hand)
    assert 0 < by_hand.mean() < 1  # a mask that picks some keys and leaves others
    assert torch.equal(attention_mask(probs.reshape(heads, 64, 64), heads, (8, 8), (16, 16), 1.0), by_hand)


def test_blur_is_a_normalised_gaussian_with_reflected_edges():
    flat = torch.full((1, 4, 8, 8), 0.3)
    assert torch.allclose(blur(flat, 1.0), flat, atol=1e-6)
    spike = torch.zeros(1, 1, 25, 25)  # far from the edges, whose reflection would add back the tails
    spike[0, 0, 12, 12] = 1
    blurred = blur(spike, 1.0)
    assert abs(float(blurred.sum()) - 1) < 1e-5 and 0.1 < float(blurred[0, 0, 12, 12]) < 0.2
    assert torch.allclose(blurred, blurred.flip(-1)) and torch.allclose(blurred, blurred.transpose(-1, -2))


def test_record_and_infotext(tiny):
    result = generate(tiny, dataclasses.replace(BASE, sag_scale=0.5, sag_threshold=0.9), progress=False)[0]
    assert (result.settings.sag_scale, result.settings.sag_threshold, result.settings.sag_blur_sigma) == (0.5, 0.9, 1)
    text = result.settings.infotext()
    assert "SAG Guidance Scale: 0.5, SAG Mask Threshold: 0.9" in text and "SAG Blur Sigma" not in text
    assert np.array_equal(pixels(generate(tiny, result.settings.configs()[1], progress=False)[0]), pixels(result))


def test_with_img2img_a_lora_and_no_cfg(tiny, init_image, tmp_path):
    from conftest import make_lora

    lora = make_lora(tmp_path / "lora", 1, ["attn2.to_k", "attn2.to_v"])
    for changes in ({"init_image": str(init_image), "strength": 0.6}, {"loras": (lora,)}, {"guidance_scale": 1.0}):
        assert np.abs(_image(tiny, sag_scale=0.75, **changes) - _image(tiny, **changes)).max() > 3, changes


@pytest.mark.parametrize("changes, field", [
    ({"sag_scale": float("nan")}, "sag_scale"), ({"sag_scale": -1.0}, "sag_scale"),
    ({"sag_threshold": float("inf")}, "sag_threshold"), ({"sag_blur_sigma": 0.0}, "sag_blur_sigma"),
    ({"sag_scale": 0.75, "pag_scale": 3.0}, "sag_scale"), ({"sag_scale": 0.75, "cache_interval": 2}, "cache_interval"),
])
def test_bad_values_are_refused_on_creation(changes, field):
    with pytest.raises(InvalidInput) as error:
        dataclasses.replace(BASE, **changes)
    assert error.value.field == field
