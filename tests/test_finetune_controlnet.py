"""`t2i finetune --controlnet`: control images from every layout, cropped and flipped with their images,
exact resume, outputs that diffusers, t2i and A1111's loader read back as the trained weights, and
settings that do not apply refused."""

import json

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from test_finetune import config, shapes  # noqa: F401 (the fixture)

from t2i.data.buckets import Bucketing, place_all
from t2i.data.sources import read_collection
from t2i.data.training_set import CENTRE, Augment, control_pixels, pixels
from t2i.errors import InvalidInput
from t2i.models.config import ModelConfig
from t2i.models.controlnet import load_controlnet
from t2i.models.loading import load_model
from t2i.train.trainer import finetune


def test_control_images_from_an_imagefolder_column_and_kohya_twins(shapes, tmp_path):  # noqa: F811
    layout, samples = read_collection(shapes)
    assert layout == "kohya" and len(samples) == 13  # the broken image is read later, and skipped there
    assert all(s.conditioning == shapes / "conditioning" / s.path.name for s in samples if s.key != "broken.png")
    folder = tmp_path / "imagefolder"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (8, 8)).save(folder / "a-edges.png")
    rows = [{"file_name": "a.png", "text": "x", "edges": "a-edges.png"}, {"file_name": "a-edges.png", "text": "y"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    _, found = read_collection(folder, control_column="edges")
    assert [(s.key, s.conditioning) for s in found] == [("a.png", folder / "a-edges.png"), ("a-edges.png", None)]


@pytest.mark.parametrize("flip, bucketed", [(False, False), (True, False), (True, True)])
def test_a_control_image_is_cropped_and_flipped_exactly_as_its_image(tmp_path, flip, bucketed):
    picture = Image.new("RGB", (60, 36), "white")
    ImageDraw.Draw(picture).rectangle((40, 5, 55, 20), fill=(200, 10, 10))
    picture.save(tmp_path / "image.png")
    picture.resize((120, 72)).save(tmp_path / "control.png")  # another size: stretched to the image's first
    from t2i.data.sources import Sample

    sample = Sample("image.png", tmp_path / "image.png", ("x",), conditioning=tmp_path / "control.png")
    augment = Augment(32, flip=flip)
    placement = place_all(Bucketing((32, 32), 16, 64, 8), {"image.png": (60, 36)})["image.png"] if bucketed else None
    image, control = pixels(sample, augment, CENTRE, flip, placement), control_pixels(sample, augment, CENTRE, flip,
                                                                                      placement)
    assert control.shape == image.shape and control.min() >= 0
    assert (control * 2 - 1 - image).abs().mean() < 0.02  # the same picture, placed the same way


def test_controlnet_training_resumes_exactly_and_its_files_are_the_trained_weights(shapes, tmp_path):  # noqa: F811
    settings = dict(controlnet=True, max_steps=4, checkpoint_every=2, learning_rate=1e-3)
    straight = finetune(config(shapes, tmp_path / "a", **settings), progress=False)
    finetune(config(shapes, tmp_path / "b", **{**settings, "max_steps": 2}), progress=False)
    resumed = finetune(config(shapes, tmp_path / "b", **settings, resume="latest"), progress=False)
    trained = ControlNetModel.from_pretrained(straight)
    again = ControlNetModel.from_pretrained(resumed)
    for key, value in trained.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    untrained = ControlNetModel.from_unet(load_model(ModelConfig(model="tiny")).pipe.unet,
                                          conditioning_embedding_out_channels=(16, 256))
    assert trained.controlnet_mid_block.weight.abs().max() > 0 == untrained.controlnet_mid_block.weight.abs().max()
    single = load_file(straight / "run.safetensors")  # the file A1111's extension and ComfyUI read: diffusers keys
    assert "controlnet_cond_embedding.conv_in.weight" in single
    assert all(torch.equal(single[k], v) for k, v in trained.state_dict().items())
    tiny = load_model(ModelConfig(model="tiny"))
    loaded = load_controlnet(str(straight / "run.safetensors"), tiny.pipe.unet, tiny.config)
    assert all(torch.equal(loaded.net.state_dict()[k], v) for k, v in trained.state_dict().items())
    record = json.loads((straight / "train_config.json").read_text())
    assert record["controlnet"] is True and record["skipped_images"] == 1


def test_validation_grids_and_the_held_out_loss(shapes, tmp_path):  # noqa: F811
    out = finetune(config(shapes, tmp_path, controlnet=True, max_steps=2, val_fraction=0.25, validation_loss_every=1,
                          validation_prompts=("a red circle", "a blue square"),
                          validation_controls=(str(shapes / "conditioning" / "01.png"),)), progress=False)
    grid = Image.open(out / "validation" / "step-000002.png")
    assert grid.size == (64, 64)  # two rows of (control image | output), each 32 px
    control = np.asarray(grid.crop((0, 0, 32, 32)).convert("L"))
    assert control.min() < 20 and control.max() > 235  # the mask, shown beside its output
    losses = [float(r["val_loss"]) for r in __import__("csv").DictReader(open(out / "loss.csv")) if r["val_loss"]]
    assert len(losses) == 3 and losses[0] != losses[-1]


@pytest.mark.parametrize("overrides, words", [
    ({"train_text_encoder": True}, "does not apply to ControlNet training"),
    ({"ema": True, "lora": False}, "does not apply to ControlNet training"),
    ({"validation_prompts": ("a", "b", "c"), "validation_controls": ("x.png", "y.png")}, "one for all, or one each"),
    ({"validation_prompts": ("a",)}, "one for all, or one each"),
])
def test_settings_that_do_not_apply_are_refused(shapes, tmp_path, overrides, words):  # noqa: F811
    with pytest.raises(InvalidInput, match=words):
        config(shapes, tmp_path, controlnet=True, **overrides)
    with pytest.raises(InvalidInput, match="are for ControlNet training"):
        config(shapes, tmp_path, validation_controls=("x.png",))


def test_data_without_control_images_is_refused_by_name(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    (folder / "a.txt").write_text("a thing")
    with pytest.raises(InvalidInput, match="none of its training images has a control image"):
        finetune(config(folder, tmp_path, controlnet=True), progress=False)
