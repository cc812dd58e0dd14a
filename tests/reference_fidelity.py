"""torch-fidelity's Inception-v3, imported without torchvision (which cannot be installed beside
this project's torch).

`import torch_fidelity` runs its `__init__`, which imports the CLIP/VGG/DINOv2 extractors and so
torchvision. The Inception module itself needs only torch and a few of the package's helpers, so
the package is registered as a bare namespace first; then `torch_fidelity.feature_extractor_
inceptionv3` (and torchmetrics' FID, which imports it the same way) loads. CI installs the package
with `pip install --no-deps torch-fidelity==0.4.0` (its declared torchvision dependency is the one
thing it must not pull in).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def register_namespace() -> bool:
    """Make `torch_fidelity.<module>` importable without its `__init__`; False if not installed."""
    if "torch_fidelity" in sys.modules:
        return True
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or spec.origin is None:
        return False
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [str(Path(spec.origin).parent)]
    sys.modules["torch_fidelity"] = package
    return True


# What torch-fidelity's metric modules import from `torch_fidelity.utils` (which imports torchvision):
# only its input pipeline, never used by the `*_features_to_metric` functions the tests call
_PIPELINE_NAMES = ("create_feature_extractor", "extract_featuresdict_from_input_id_cached", "resolve_feature_extractor",
                   "resolve_feature_layer_for_metric", "get_cacheable_input_name", "cache_lookup_one_recompute_on_miss")


def metric_module(name: str):
    """torch-fidelity's `metric_<name>` module, its input pipeline replaced by names that fail if called."""
    import importlib

    register_namespace()
    if "torch_fidelity.utils" not in sys.modules:
        utils = types.ModuleType("torch_fidelity.utils")

        def unavailable(*_, **__):
            raise RuntimeError("torch-fidelity's input pipeline needs torchvision")

        for attribute in _PIPELINE_NAMES:
            setattr(utils, attribute, unavailable)
        sys.modules["torch_fidelity.utils"] = utils
    return importlib.import_module(f"torch_fidelity.metric_{name}")
