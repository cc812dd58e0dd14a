"""t2i: text-to-image with Stable Diffusion 1.x, a thin layer over diffusers.

    from t2i import ModelConfig, GenerationConfig, load_model, generate, save_png
    model = load_model(ModelConfig(model="demo"))
    for result in generate(model, GenerationConfig(prompts=("a red circle",), seed=1)):
        save_png(result.image, result.settings, Path("outputs"))

Names load lazily so that `import t2i` (and `t2i --help`) does not import torch.
"""

__version__ = "0.1.0"

_API = {
    "ModelConfig": "t2i.models.config", "load_model": "t2i.models.loading",
    "GenerationConfig": "t2i.sampling.config", "generate": "t2i.sampling.generate",
    "generate_iter": "t2i.sampling.generate", "GeneratedImage": "t2i.sampling.generate",
    "save_png": "t2i.formats.png", "configs_from_png": "t2i.sampling.settings",
    "ImageSettings": "t2i.sampling.settings", "ControlUnit": "t2i.sampling.control",
    "IPAdapterUnit": "t2i.sampling.ip_adapter", "EditConcept": "t2i.sampling.ledits",
    "Img2ImgAlt": "t2i.sampling.img2img_alt",
    "FinetuneConfig": "t2i.train.config", "finetune": "t2i.train.trainer",
    "T2IError": "t2i.errors", "InvalidInput": "t2i.errors", "NotFound": "t2i.errors", "LoadError": "t2i.errors",
    "TrainingError": "t2i.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 't2i' has no attribute {name!r}")
