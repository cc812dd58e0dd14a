"""Shared fixtures: tiny SD 1.x components built in code, saved folders, a CLI runner."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

# The tests set up the environment they assume. The caller's Hugging Face, transformers, accelerate and
# t2i variables (HF_HUB_OFFLINE=1, exported by people without network, changed what a test saw) are
# cleared before any library reads them (huggingface_hub reads its own when imported), and the cache is
# an empty folder of the run's own; the tests about a variable set it themselves.
CALLER_VARIABLES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFUSERS_", "ACCELERATE_", "T2I_", "TORCHINDUCTOR_")
for _name in [n for n in os.environ if n.startswith(CALLER_VARIABLES)]:
    del os.environ[_name]
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="t2i-tests-hf-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
# t2i's own caches (training latents, Inception weights, real images' statistics) in a folder of the run's own
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="t2i-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

from reference_fidelity import register_namespace  # noqa: E402

register_namespace()  # before torchmetrics, whose FID imports torch-fidelity's Inception module

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.models.presets import tiny_components


@pytest.fixture(autouse=True)
def _no_caller_environment(monkeypatch):
    """Each test starts without such variables, and what a test's code sets (`t2i --offline` sets
    HF_HUB_OFFLINE for its process) goes with it."""
    def ours(name: str) -> bool:
        return name.startswith(CALLER_VARIABLES) and name != "HF_HOME"

    for name in [n for n in os.environ if ours(n)]:
        monkeypatch.delenv(name)
    if "huggingface_hub.constants" in sys.modules:
        monkeypatch.setattr(sys.modules["huggingface_hub.constants"], "HF_HUB_OFFLINE", False)
    yield
    for name in [n for n in os.environ if ours(n)]:
        del os.environ[name]


def plain_pipeline(unet_in_channels: int = 4, cls=None):
    """A plain diffusers pipeline over the same tiny components the `tiny` preset builds."""
    from diffusers import StableDiffusionPipeline

    cls = cls or StableDiffusionPipeline
    return cls(**tiny_components(unet_in_channels=unet_in_channels), safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)


def make_lora(folder, seed, targets, unet=None):
    """A LoRA with a visible effect (peft starts B at zero), saved in diffusers' format in `folder`;
    on the tiny UNet unless another is given."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    unet = unet or tiny_components()["unet"]
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    StableDiffusionPipeline.save_lora_weights(folder, convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    return str(folder)


def pixels(source) -> np.ndarray:
    """An image's pixels, from a file, a PIL image or a generation result."""
    image = getattr(source, "image", source)
    if not isinstance(image, Image.Image):
        image = Image.open(image)
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The tiny model saved as a diffusers folder: the code path of a real local model."""
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    plain_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_inpaint_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd-inpainting"
    plain_pipeline(unet_in_channels=9).save_pretrained(folder)
    return folder


@pytest.fixture
def init_image(tmp_path):
    """A 32x32 picture with structure (a gradient and a square), as a PNG file."""
    rows, cols = np.mgrid[0:32, 0:32]
    array = np.stack([rows * 8, cols * 8, np.full_like(rows, 90)], axis=-1).astype(np.uint8)
    array[8:24, 8:24] = (250, 30, 30)
    path = tmp_path / "init.png"
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def mask_image(tmp_path):
    array = np.zeros((32, 32), dtype=np.uint8)
    array[4:20, 4:20] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run `t2i ARGS...` in this process; returns (exit code, stdout, stderr)."""
    from t2i.cli import main

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["t2i", *map(str, args)])
        monkeypatch.delenv("T2I_DEBUG", raising=False)
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run



@pytest.fixture(scope="session")
def server_files(tmp_path_factory):
    """A server's folders: a second checkpoint (tiny, as a diffusers folder) and a LoRA for `demo`."""
    from diffusers import UNet2DConditionModel

    from t2i.models import DEMO_MODEL_DIR

    root = tmp_path_factory.mktemp("server")
    plain_pipeline().save_pretrained(root / "models" / "tiny-sd")
    demo_unet = UNet2DConditionModel.from_pretrained(DEMO_MODEL_DIR, subfolder="unet")
    make_lora(root / "loras" / "cross", 1, ["attn2.to_k", "attn2.to_v"], unet=demo_unet)
    (root / "loras" / "cross" / "pytorch_lora_weights.safetensors").rename(root / "loras" / "cross.safetensors")
    (root / "loras" / "cross").rmdir()
    (root / "embeddings").mkdir()
    import torch
    from safetensors.torch import save_file

    save_file({"emb_params": torch.randn(2, 64, generator=torch.Generator().manual_seed(0))},
              root / "embeddings" / "shapestyle.safetensors")
    torch.save({"string_to_param": {"*": torch.zeros(1, 64)}}, root / "embeddings" / "pickled.pt")
    from t2i.models import SHAPE_CONTROLNET, SHAPE_IP_ADAPTER

    (root / "controlnet").mkdir()
    shutil.copy(SHAPE_CONTROLNET, root / "controlnet" / "shapes-mask.safetensors")
    shutil.copy(SHAPE_IP_ADAPTER, root / "controlnet" / "ip-adapter_shapes.safetensors")
    return root


@pytest.fixture(scope="session")
def demo_server(server_files):
    """`t2i serve --model demo` with a models folder and a LoRA folder, for the whole session."""
    from serving import start_server

    server = start_server(server_files, "--model", "demo", "--models-dir", "models", "--lora-dir", "loras",
                          "--embeddings-dir", "embeddings", "--output-dir", "outputs", "--max-queue", "4",
                          "--controlnet-dir", "controlnet")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A CLIP model with random weights and SD's tokenizer, saved as a local folder (no download)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from t2i.models import SD1_CONFIG_DIR

    tokenizer = CLIPTokenizer.from_pretrained(SD1_CONFIG_DIR, subfolder="tokenizer")
    config = CLIPConfig(
        text_config={"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


class CountingBackend:
    """A torch.compile backend that runs each captured graph as it is (autograd runs through it) and
    counts the graphs: how tests see what was compiled, and when again."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph, example_inputs):
        self.graphs += 1
        return graph.forward
