"""LEDITS++ edits (`t2i edit`): the same pixels as diffusers' own pipeline over the same components, scale 0 gives
the pipeline's reconstruction, the attention masks on an SD-shaped UNet, the sampler rule, a record that re-makes
the edit, the shared model left as it was, and one-line refusals."""

import logging

import numpy as np
import pytest
import torch
from conftest import make_lora, pixels, plain_pipeline
from diffusers import LEditsPPPipelineStableDiffusion, UNet2DConditionModel
from PIL import Image

from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig
from t2i.models.loading import load_model
from t2i.models.presets import TEXT_DIM
from t2i.sampling.config import GenerationConfig
from t2i.sampling.generate import generate
from t2i.sampling.ledits import EditConcept, parse_edit
from t2i.sampling.ledits_run import WholeTimestepsDDIM
from t2i.sampling.samplers import build_scheduler
from t2i.sampling.settings import settings_from_png

EDITS = (EditConcept("a blue cat", scale=7), EditConcept("stripes", remove=True, threshold=0.8, warmup=2))


@pytest.fixture(scope="module")
def sd_shaped(tmp_path_factory):
    """The tiny model with a UNet shaped like SD 1.x's: cross-attention at 1, 1/2 and 1/4 of the latent size."""
    folder = tmp_path_factory.mktemp("models") / "tiny-sd-shaped"
    pipe = plain_pipeline()
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=16, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=TEXT_DIM,
        norm_num_groups=8, attention_head_dim=8).eval()
    pipe.register_modules(unet=pipe.unet)
    pipe.save_pretrained(folder)
    return load_model(ModelConfig(model=str(folder), device="cpu"))


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(model="tiny", device="cpu"))


def plain_ledits(model, sampler, image, prompt, steps, seed, edits, mask, skip=0.15, guidance=3.5):
    """diffusers' LEDITS++ alone over the model's components: what `t2i edit` must give."""
    scheduler = build_scheduler(sampler, "normal", model.scheduler_config)
    if sampler == "ddim":
        scheduler = WholeTimestepsDDIM.from_config(scheduler.config)
    pipe = LEditsPPPipelineStableDiffusion(
        vae=model.pipe.vae, text_encoder=model.pipe.text_encoder, tokenizer=model.pipe.tokenizer,
        unet=UNet2DConditionModel.from_config(model.pipe.unet.config), scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.unet.load_state_dict(model.pipe.unet.state_dict())
    pipe.set_progress_bar_config(disable=True)
    pipe.invert(image=image, source_prompt=prompt, source_guidance_scale=guidance, num_inversion_steps=steps,
                skip=skip, generator=torch.Generator("cpu").manual_seed(seed))
    if not edits:
        return pipe(editing_prompt=None).images[0]
    return pipe(editing_prompt=[e.text for e in edits], reverse_editing_direction=[e.remove for e in edits],
                edit_guidance_scale=[e.scale for e in edits], edit_threshold=[e.threshold for e in edits],
                edit_warmup_steps=[e.warmup for e in edits], edit_cooldown_steps=[steps for _ in edits],
                use_intersect_mask=mask == "intersect", use_cross_attn_mask=mask == "attention").images[0]


def edit(model, image, edits, **settings):
    settings = {"prompts": ("a cat",), "steps": 6, "seed": 5, "sampler": "dpmpp-2m-sde", "guidance_scale": 3.5,
                **settings}
    return generate(model, GenerationConfig(init_image=image, edits=tuple(edits), **settings), progress=False)[0]


@pytest.mark.parametrize("sampler,mask", [("dpmpp-2m-sde", "intersect"), ("ddim", "attention"),
                                          ("dpmpp-2m-sde", "noise")])
def test_an_edit_has_the_pixels_of_diffusers_ledits(sd_shaped, init_image, sampler, mask):
    ours = edit(sd_shaped, init_image, EDITS, sampler=sampler, edit_mask=mask)
    theirs = plain_ledits(sd_shaped, sampler, Image.open(init_image), "a cat", 6, 5, EDITS, mask)
    assert np.abs(pixels(ours).astype(int) - pixels(theirs).astype(int)).max() <= 1
    assert ours.settings.edit_mask == mask and ours.settings.sampler == sampler


def test_auto_masks_by_attention_where_the_unet_allows_it(sd_shaped, tiny, init_image):
    assert edit(sd_shaped, init_image, EDITS).settings.edit_mask == "intersect"
    assert edit(tiny, init_image, EDITS).settings.edit_mask == "noise"


def test_the_masks_change_the_edit(sd_shaped, init_image):
    images = {mask: pixels(edit(sd_shaped, init_image, EDITS, edit_mask=mask)).astype(int)
              for mask in ("intersect", "attention", "noise")}
    assert np.abs(images["intersect"] - images["noise"]).mean() > 0.5
    assert np.abs(images["attention"] - images["noise"]).mean() > 0.5


def test_scale_zero_gives_the_reconstruction_and_a_scale_changes_it(sd_shaped, init_image):
    reconstruction = plain_ledits(sd_shaped, "dpmpp-2m-sde", Image.open(init_image), "a cat", 6, 5, (), "intersect")
    still = edit(sd_shaped, init_image, [EditConcept("a dog", scale=0)])
    assert np.abs(pixels(still).astype(int) - pixels(reconstruction).astype(int)).max() <= 1
    moved = edit(sd_shaped, init_image, [EditConcept("a dog", scale=10, threshold=0.5)])
    assert np.abs(pixels(moved).astype(int) - pixels(reconstruction).astype(int)).mean() > 1


def test_the_seed_moves_the_inversion_noise(tiny, init_image):
    one, two = (pixels(edit(tiny, init_image, EDITS, seed=seed)) for seed in (1, 2))
    assert not np.array_equal(one, two)
    assert np.array_equal(one, pixels(edit(tiny, init_image, EDITS, seed=1)))


def test_other_samplers_run_as_dpmpp_2m_sde_with_one_line(tiny, init_image, caplog):
    with caplog.at_level(logging.WARNING, logger="t2i"):
        result = edit(tiny, init_image, EDITS, sampler="euler")
    assert result.settings.sampler == "dpmpp-2m-sde" and result.settings.schedule == "normal"
    assert any("DPM++ 2M SDE instead of euler" in r.getMessage() for r in caplog.records)
    assert np.array_equal(pixels(result), pixels(edit(tiny, init_image, EDITS)))


def test_the_shared_unet_keeps_its_attention_processors(tiny, init_image):
    before = {name: type(p) for name, p in tiny.pipe.unet.attn_processors.items()}
    edit(tiny, init_image, EDITS)
    assert {name: type(p) for name, p in tiny.pipe.unet.attn_processors.items()} == before


def test_a_lora_acts_in_the_edit_and_the_shared_model_stays_plain(tiny, init_image, tmp_path):
    lora = make_lora(tmp_path / "lora", 3, ["to_q", "to_k", "to_v", "to_out.0"])
    plain, with_lora = edit(tiny, init_image, EDITS), edit(tiny, init_image, EDITS, loras=(lora,))
    assert np.abs(pixels(plain).astype(int) - pixels(with_lora).astype(int)).mean() > 1
    assert [use.path for use in with_lora.settings.loras] == [lora]
    assert not any("lora" in name for name, _ in tiny.pipe.unet.named_modules())
    assert np.array_equal(pixels(plain), pixels(edit(tiny, init_image, EDITS)))


def test_the_png_records_the_edit_and_re_makes_it(run_cli, init_image, tmp_path):
    code, out, err = run_cli("edit", init_image, "--model", "tiny", "--prompt", "a cat", "--edit", "+a blue cat",
                             "--edit", "-stripes", "--edit-scale", 7, "--edit-scale", 3, "--edit-warmup", 1,
                             "--steps", 6, "--seed", 9, "--out", tmp_path / "edits")
    assert code == 0, err
    path = out.strip()
    settings = settings_from_png(path)
    assert [(e.text, e.remove, e.scale, e.warmup) for e in settings.edits] == [("a blue cat", False, 7, 1),
                                                                                ("stripes", True, 3, 1)]
    assert settings.mode == "edit" and settings.steps == 6 and settings.seed == 9 and settings.edit_mask == "noise"
    text = Image.open(path).info["parameters"]
    assert 'LEDITS++: "+a blue cat:7:0.9:1, -stripes:3:0.9:1"' in text and "LEDITS++ mask: noise" in text
    code, again, err = run_cli("generate", "--from-image", path, "--out", tmp_path / "again")
    assert code == 0, err
    assert np.array_equal(pixels(again.strip()), pixels(path))


def test_edit_words_parse():
    assert parse_edit("+blue") == ("blue", False) and parse_edit("-red car") == ("red car", True)
    assert parse_edit(" green ") == ("green", False)
    with pytest.raises(InvalidInput, match="names no words"):
        parse_edit(" - ")


@pytest.mark.parametrize("concept,field", [
    (dict(text=" "), "edit"), (dict(text="a", scale=float("nan")), "edit_scale"),
    (dict(text="a", scale=-1), "edit_scale"), (dict(text="a", threshold=1.0), "edit_threshold"),
    (dict(text="a", warmup=-1), "edit_warmup"), (dict(text="a", warmup=3, cooldown=3), "edit_cooldown")])
def test_a_bad_edit_is_refused(concept, field):
    with pytest.raises(InvalidInput) as error:
        EditConcept(**concept)
    assert error.value.field == field


@pytest.mark.parametrize("settings,field", [
    (dict(init_image=None), "edits"), (dict(mask="m.png"), "mask"), (dict(strength=0.5), "strength"),
    (dict(width=48), "width"), (dict(edit_skip=1.0), "edit_skip"), (dict(edit_mask="box"), "edit_mask"),
    (dict(negative_prompt="ugly"), "negative_prompt"), (dict(prompts=("a <lora:x:1>",)), "prompts"),
    (dict(edits=(EditConcept("a"),) * 5), "edits"), (dict(attention_maps=True), "attention_maps")])
def test_an_edit_that_cannot_run_is_refused_before_any_work(settings, field):
    settings = {"prompts": ("a cat",), "init_image": "cat.png", "edits": (EditConcept("a dog"),), **settings}
    with pytest.raises(InvalidInput) as error:
        GenerationConfig(**settings)
    assert error.value.field == field


def test_cli_refusals_write_nothing(run_cli, init_image, tmp_path):
    out = tmp_path / "none"
    for args, words in [((), "give at least one edit"), (("--edit", "+"), "names no words"),
                        (("--edit", "+a", "--edit-scale", "nan"), "finite"),
                        (("--edit", "+a", "--edit", "-b", "--edit-scale", 1, "--edit-scale", 2, "--edit-scale", 3),
                         "given 3 times for 2 edits"),
                        (("--edit", "+a", "--edit-mask", "intersect"), "cross-attention at 1/4"),
                        (("--edit", "+a", "--width", 40), "multiple of 32")]:
        code, _, err = run_cli("edit", init_image, "--model", "tiny", "--steps", 3, "--out", out, *args)
        assert code == 2 and words in err and "Traceback" not in err, (args, err)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    code, _, err = run_cli("edit", tmp_path / "junk.png", "--model", "tiny", "--edit", "+a", "--out", out)
    assert code == 2 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_on_demo_an_edit_red_to_blue_changes_only_the_colour():
    """Held-out renders (README: N=24, 30 steps, DPM++ 2M SDE, empty source prompt, scale 2: blue 21/24, shapes
    24/24, centre 0.42 px; scale 0: 24/24 kept, centre 0.035 px)."""
    import random

    from t2i.shapes.inversion_proofs import ledits_agreement
    from t2i.shapes.world import Shape, random_shape

    demo = load_model(ModelConfig(model="demo", device="cpu"))
    rng = random.Random(4242)
    reds = [Shape("red", s.shape, s.size, s.x, s.y) for s in (random_shape(rng) for _ in range(12))]
    kept = ledits_agreement(demo, reds, (EditConcept("blue", scale=0),), None)
    assert kept["colour"].value == 1 and kept["shape"].value >= 0.9, kept
    edited = ledits_agreement(demo, reds, (EditConcept("blue", scale=2), EditConcept("red", remove=True, scale=2)),
                              "blue")
    assert edited["colour"].value >= 0.8 and edited["shape"].value >= 0.8, edited
    assert edited["centroid_px"].high < 2, edited


def test_the_edit_endpoint_is_t2i_edit(demo_server, run_cli, tmp_path):
    import base64
    import io

    import requests

    from t2i.shapes.world import Shape, make_image

    init = tmp_path / "init.png"
    make_image(Shape("red", "circle", 12, 14, 18)).save(init)
    body = {"init_images": [base64.b64encode(init.read_bytes()).decode()], "edits": ["+blue", {"text": "red",
            "remove": True, "scale": 4}], "steps": 8, "seed": 3}
    answer = requests.post(f"{demo_server.url}/t2i/v1/edit", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    info = answer.json()["info"]
    assert '"sampler_name": "DPM++ 2M SDE"' in info and '"cfg_scale": 3.5' in info and "LEDITS++ mask: noise" in info
    code, out, err = run_cli("edit", init, "--model", "demo", "--edit", "+blue", "--edit", "-red", "--edit-scale", 5,
                             "--edit-scale", 4, "--steps", 8, "--seed", 3, "--out", tmp_path / "cli")
    assert code == 0, err
    assert np.abs(pixels(image).astype(int) - pixels(out.strip()).astype(int)).max() <= 1
    for change, words in (({"edits": []}, "give at least one edit"), ({"edits": ["+"]}, "edits.text"),
                          ({"edits": [{"text": "a", "scale": 99}]}, "edits.scale 99"),
                          ({"edits": [{"text": "a", "size": 3}]}, "size"),
                          ({"denoising_strength": 0.5}, "denoising_strength"),
                          ({"edit_mask": "intersect"}, "edit_mask intersect"),
                          ({"init_images": ["bm90IGFuIGltYWdl"]}, "init_images")):
        bad = requests.post(f"{demo_server.url}/t2i/v1/edit", json={**body, **change}, timeout=60)
        assert bad.status_code == 422 and words in bad.text, (change, bad.text)
    assert requests.get(f"{demo_server.api}/progress", timeout=30).status_code == 200  # it keeps serving
