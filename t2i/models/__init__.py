"""Where a model comes from: its config, the loaders for every source, the presets and shipped SD 1.x configs."""

from pathlib import Path

#: SD 1.x architecture configs + CLIP tokenizer (no weights), for offline single-file loading
SD1_CONFIG_DIR = Path(__file__).parent / "sd1"
#: the shipped `demo` model, trained from scratch on the shapes world (`t2i shapes train-demo`)
DEMO_MODEL_DIR = Path(__file__).parent / "demo"
#: the shipped shapes feature network (Shapes-FID/KID), trained by `t2i shapes train-features`
SHAPE_FEATURES_DIR = Path(__file__).parent / "shape-features"
#: the shipped ControlNet for `demo` (control: the object's mask), trained by `t2i shapes train-controlnet`
SHAPE_CONTROLNET = Path(__file__).parent / "shape-controlnet" / "model.safetensors"
#: the shipped IP-Adapter for `demo` (image encoder: shape-features), trained by `t2i shapes train-ip-adapter`
SHAPE_IP_ADAPTER = Path(__file__).parent / "shape-ip-adapter" / "model.safetensors"
