"""Perturbed-Attention Guidance: off is off, the same pixels as diffusers' PAG pipeline, one step equal to the
formula from three UNet calls written out here, the shared UNet never changed, and its record."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from conftest import pixels
from diffusers import EulerDiscreteScheduler, StableDiffusionPAGPipeline
from diffusers.models.attention_processor import Attention

from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


BASE = GenerationConfig(prompts=("a cat",), steps=4, seed=3, width=32, height=32, sampler="euler", guidance_scale=5)


def _image(model, **changes):
    return pixels(generate(model, dataclasses.replace(BASE, **changes), progress=False)[0])


def _plain(tiny, cls, **call):
    pipe = cls(**{k: v for k, v in tiny.pipe.components.items() if k != "scheduler"},
               scheduler=EulerDiscreteScheduler.from_config(tiny.scheduler_config), requires_safety_checker=False)
    return pixels(pipe("a cat", num_inference_steps=4, guidance_scale=5, height=32, width=32,
                       generator=torch.Generator().manual_seed(3), **call).images[0])


def test_same_pixels_as_diffusers_pag_pipeline_and_scale_0_is_off(tiny):
    assert np.array_equal(_image(tiny, pag_scale=3.0), _plain(tiny, StableDiffusionPAGPipeline, pag_scale=3.0))
    adaptive = _plain(tiny, StableDiffusionPAGPipeline, pag_scale=3.0, pag_adaptive_scale=0.002)
    assert np.array_equal(_image(tiny, pag_scale=3.0, pag_adaptive=0.002), adaptive)
    plain = _image(tiny)
    assert np.array_equal(plain, _plain(tiny, StableDiffusionPAGPipeline, pag_scale=0.0))  # diffusers' 0 is off too
    assert np.abs(_image(tiny, pag_scale=3.0) - plain).max() > 5
    assert not np.array_equal(_image(tiny, pag_scale=3.0, pag_layers=("down_blocks.0",)), _image(tiny, pag_scale=3.0))


class IdentitySelfAttention:
    """Self-attention whose map is the identity: each token attends only to itself, so the output is its value."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        return attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states))) / attn.rescale_output_factor


def test_one_step_is_the_formula_from_three_unet_calls(tiny):
    """x_1 = step(eps_u + cfg (eps_c - eps_u) + pag (eps_c - eps_p)), eps_p with the mid block's self-attention
    replaced by the identity: written here, against the latents of the pipeline t2i builds for the call."""
    from t2i.sampling.view import call_view

    cfg, pag = 5.0, 2.0
    pipe = tiny.pipe
    cond, uncond = pipe.encode_prompt("a cat", "cpu", 1, True, "")
    view, _ = call_view(tiny, "txt2img", "euler", "normal", pag_layers=("mid",))
    got = view(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=1, guidance_scale=cfg,
               pag_scale=pag, height=32, width=32, output_type="latent",
               generator=torch.Generator().manual_seed(3)).images
    scheduler = EulerDiscreteScheduler.from_config(tiny.scheduler_config)
    scheduler.set_timesteps(1)
    timestep = scheduler.timesteps[0]
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(3)) * scheduler.init_noise_sigma
    model_input = scheduler.scale_model_input(latents, timestep)
    perturbed = copy.deepcopy(pipe.unet)
    for name, module in perturbed.named_modules():
        if isinstance(module, Attention) and not module.is_cross_attention and name.startswith("mid_block"):
            module.set_processor(IdentitySelfAttention())
    with torch.no_grad():
        eps_u = pipe.unet(model_input, timestep, uncond).sample
        eps_c = pipe.unet(model_input, timestep, cond).sample
        eps_p = perturbed(model_input, timestep, cond).sample
        with_pag = scheduler.step(eps_u + cfg * (eps_c - eps_u) + pag * (eps_c - eps_p), timestep, latents)
        scheduler.set_timesteps(1)
        without = scheduler.step(eps_u + cfg * (eps_c - eps_u), timestep, latents)
    torch.testing.assert_close(got, with_pag.prev_sample, rtol=1e-5, atol=1e-5)
    assert (with_pag.prev_sample - without.prev_sample).abs().max() > 1e-2  # the perturbed term counts


def test_the_shared_unet_keeps_its_processors(tiny):
    before = {name: type(p).__name__ for name, p in tiny.pipe.unet.attn_processors.items()}
    _image(tiny, pag_scale=3.0)
    assert {name: type(p).__name__ for name, p in tiny.pipe.unet.attn_processors.items()} == before
    assert np.array_equal(_image(tiny), _image(tiny))


def test_with_img2img_inpainting_loras_and_controlnet(tiny, init_image, mask_image, tmp_path):
    from conftest import make_lora
    from diffusers import ControlNetModel
    from PIL import Image

    from t2i.sampling.control import ControlUnit

    lora = make_lora(tmp_path / "lora", 3, ["attn2.to_k", "attn2.to_v"])
    torch.manual_seed(0)
    ControlNetModel.from_unet(tiny.pipe.unet, conditioning_embedding_out_channels=(16, 32)).save_pretrained(
        tmp_path / "cn")
    Image.new("RGB", (32, 32), "white").save(tmp_path / "c.png")
    unit = ControlUnit(str(tmp_path / "cn"), str(tmp_path / "c.png"))
    for changes in ({"init_image": str(init_image)}, {"init_image": str(init_image), "mask": str(mask_image)},
                    {"loras": (lora,)}, {"controls": (unit,)},
                    {"controls": (unit,), "init_image": str(init_image), "mask": str(mask_image)}):
        assert np.abs(_image(tiny, pag_scale=3.0, **changes) - _image(tiny, **changes)).max() > 3, changes
    # a zero-output ControlNet with PAG equals PAG alone
    assert np.array_equal(_image(tiny, pag_scale=3.0, controls=(unit,)), _image(tiny, pag_scale=3.0))
    with pytest.raises(InvalidInput, match="no ControlNet img2img pipeline with PAG"):
        dataclasses.replace(BASE, pag_scale=3.0, controls=(unit,), init_image=str(init_image))


def test_record_infotext_and_remake(tiny, tmp_path):
    from t2i.formats.infotext import parse_infotext
    from t2i.formats.png import save_png
    from t2i.sampling.settings import configs_from_png

    result = generate(tiny, dataclasses.replace(BASE, pag_scale=2.5, pag_adaptive=0.001,
                                                pag_layers=("mid", "up_blocks.1.attentions.1")), progress=False)[0]
    fields = parse_infotext(result.settings.infotext())
    assert (fields["PAG scale"], fields["PAG adaptive"], fields["PAG layers"]) == ("2.5", "0.001",
                                                                                   "mid, up_blocks.1.attentions.1")
    assert "PAG scale" not in parse_infotext(generate(tiny, BASE, progress=False)[0].settings.infotext())
    _, config = configs_from_png(save_png(result.image, result.settings, tmp_path))
    assert (config.pag_scale, config.pag_adaptive, config.pag_layers) == (2.5, 0.001,
                                                                         ("mid", "up_blocks.1.attentions.1"))
    assert np.array_equal(pixels(generate(tiny, config, progress=False)[0]), pixels(result))


@pytest.mark.parametrize("changes, field, words", [
    ({"pag_scale": float("nan")}, "pag_scale", "finite"),
    ({"pag_scale": -1.0}, "pag_scale", "from 0 to 100"),
    ({"pag_adaptive": float("inf")}, "pag_adaptive", "finite"),
    ({"pag_layers": ()}, "pag_layers", "at least one layer"),
    ({"pag_scale": 3.0, "cache_interval": 2}, "cache_interval", "does not combine with {pag_scale}"),
])
def test_bad_settings(changes, field, words):
    with pytest.raises(InvalidInput) as caught:
        dataclasses.replace(BASE, **changes)
    assert caught.value.field == field and words in caught.value.problem + (caught.value.hint or "")


def test_a_layer_that_matches_nothing_lists_the_valid_ones(run_cli, tmp_path):
    code, _, err = run_cli("generate", "x", "--model", "tiny", "--steps", "2", "--pag-scale", "3",
                           "--pag-layers", "down.block_1", "--out", tmp_path / "o")
    assert code == 2 and "--pag-layers down.block_1: matches no self-attention layer of this model" in err
    assert "choose one of mid, down_blocks.0.attentions.0, mid_block.attentions.0" in err
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli("generate", "x", "--model", "tiny", "--steps", "2", "--pag-scale", "3",
                           "--pag-layers", "mid[", "--out", tmp_path / "o")
    assert code == 2 and "--pag-layers mid[: is not a valid pattern" in err
