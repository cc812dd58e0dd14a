"""t2i: text-to-image with Stable Diffusion 1.x, a thin layer over diffusers.

The Python API mirrors the CLI:

    from t2i import ModelConfig, GenerationConfig, load_model, generate
    model = load_model(ModelConfig(model="tiny"))
    paths = generate(model, GenerationConfig(prompts=("a red bicycle",), seed=1))

Names load lazily so that `import t2i` (and `t2i --help`) does not import torch.
"""

__version__ = "0.1.0"

_API = {
    "ModelConfig": "t2i.pipelines", "load_model": "t2i.pipelines",
    "GenerationConfig": "t2i.generate", "generate": "t2i.generate",
    "T2IError": "t2i.errors", "UsageError": "t2i.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 't2i' has no attribute {name!r}")
