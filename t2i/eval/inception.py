"""Inception-v3 as the FID literature uses it: the 2015 TensorFlow graph, in plain torch.

FID, KID and precision/recall are computed on its 2,048 pool features and the Inception Score on its
1,008 logits. The reference packages that hold this network (torch-fidelity, pytorch-fid, clean-fid)
all import torchvision, which cannot be installed beside this project's torch, so t2i carries the
network itself. Its parameter names are the reference's (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.
branch1x1.bn.running_mean`, ..., `fc.bias`), so the published weight file loads unchanged; the tests
check every tapped layer against torch-fidelity's `FeatureExtractorInceptionV3`.

The network is the TensorFlow graph, not torchvision's Inception-v3: the 3x3 average pools of the
A, C and first E blocks leave padding out of the average, and the last E block max-pools its pool
branch. Two preprocessings are in use in published numbers, and FIDs differ slightly between them:
`tf1` (torch-fidelity's default: uint8 resized to 299 by TensorFlow 1's bilinear rule, then
(x - 128) / 128) and `pytorch-fid` (torch's bilinear resize of x / 255, then 2x - 1).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from t2i.errors import InvalidInput, LoadError, NotFound
from t2i.eval.config import PREPROCESSINGS

INPUT_SIZE = 299
LAYERS = ("64", "192", "768", "2048", "logits_unbiased", "logits")

# The published file: torch-fidelity's release asset, the same bytes as pytorch-fid's pt_inception
# (both name the SHA-256 prefix 6726825d); the numbers FID papers report come from these weights.
WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_BYTES = 95_628_359
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_NAME}"


def default_weights_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "t2i" / "inception" / WEIGHTS_NAME


class _Conv(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's epsilon 1e-3), ReLU."""

    def __init__(self, channels_in: int, channels_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(channels_out, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_average_pool(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3 same-padded average: the border's padding does not count."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # 35x35
    def __init__(self, channels: int, pool_channels: int):
        super().__init__()
        self.branch1x1 = _Conv(channels, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(channels, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(channels, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(channels, pool_channels, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_tf_average_pool(x))], 1)


class _ReductionB(nn.Module):  # 35x35 -> 17x17
    def __init__(self, channels: int):
        super().__init__()
        self.branch3x3 = _Conv(channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(channels, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):  # 17x17, factorised 7x7 convolutions
    def __init__(self, channels: int, mid: int):
        super().__init__()
        row, column = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _Conv(channels, 192, 1)
        self.branch7x7_1 = _Conv(channels, mid, 1)
        self.branch7x7_2, self.branch7x7_3 = _Conv(mid, mid, **row), _Conv(mid, 192, **column)
        self.branch7x7dbl_1 = _Conv(channels, mid, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = _Conv(mid, mid, **column), _Conv(mid, mid, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = _Conv(mid, mid, **column), _Conv(mid, 192, **row)
        self.branch_pool = _Conv(channels, 192, 1)

    def forward(self, x):
        double = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = conv(double)
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), double,
                          self.branch_pool(_tf_average_pool(x))], 1)


class _ReductionD(nn.Module):  # 17x17 -> 8x8
    def __init__(self, channels: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(channels, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(channels, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):  # 8x8, split 3x3 convolutions
    def __init__(self, channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the graph's last block max-pools here (a quirk of the 2015 graph, kept)
        self.branch1x1 = _Conv(channels, 320, 1)
        self.branch3x3_1 = _Conv(channels, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(channels, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(channels, 192, 1)

    def forward(self, x):
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_average_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(single), self.branch3x3_2b(single),
                          self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double), self.branch_pool(pooled)], 1)


def resize_like_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1's `resize_bilinear` (align_corners=False, no half-pixel centres): output pixel i
    reads input position i * (in / out), interpolated between its two neighbours, the last one
    repeated at the edge. The ratio is a float32, as in the graph; positions are in the images' dtype."""
    def axis(length: int):
        position = torch.arange(size, dtype=images.dtype) * torch.tensor(length / size, dtype=torch.float32)
        low = position.long()
        return low, (low + 1).clamp_max(length - 1), position - low.to(images.dtype)

    y_low, y_high, y_weight = axis(images.shape[2])
    x_low, x_high, x_weight = axis(images.shape[3])
    top, bottom = images.index_select(2, y_low), images.index_select(2, y_high)

    def across(rows):
        left, right = rows.index_select(3, x_low), rows.index_select(3, x_high)
        return left + (right - left) * x_weight.view(1, 1, 1, -1)

    upper, lower = across(top), across(bottom)
    return upper + (lower - upper) * y_weight.view(1, 1, -1, 1)


class InceptionV3(nn.Module):
    """uint8 images (B, 3, H, W) of any size -> the requested layers' features, in float32."""

    def __init__(self, preprocessing: str = "tf1"):
        super().__init__()
        if preprocessing not in PREPROCESSINGS:
            raise InvalidInput("unknown preprocessing", field="inception_preprocessing", value=preprocessing,
                               choices=PREPROCESSINGS)
        self.preprocessing = preprocessing
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        self.Mixed_6a = _ReductionB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7a = _ReductionD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.requires_grad_(False)
        self.eval()

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.fc.weight.dtype
        if self.preprocessing == "tf1":
            return (resize_like_tf1(images.to(dtype), INPUT_SIZE) - 128) / 128
        resized = F.interpolate(images.to(dtype) / 255, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                                align_corners=False)
        return 2 * resized - 1

    @torch.no_grad()
    def forward(self, images: torch.Tensor, layers: tuple[str, ...] = ("2048",)) -> dict[str, torch.Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise InvalidInput(f"expected uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}",
                               field="images", value=None)
        wanted, found = set(layers), {}
        deepest = max(LAYERS.index(name) for name in layers)

        def tap(name: str, value: torch.Tensor) -> bool:  # True when nothing deeper is wanted
            if name in wanted:
                found[name] = value.float()
            return LAYERS.index(name) >= deepest

        x = self._prepare(images)
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, stride=2)
        if tap("64", x.mean((2, 3))):
            return found
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        if tap("192", x.mean((2, 3))):
            return found
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        if tap("768", x.mean((2, 3))):
            return found
        pooled = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x))).mean((2, 3))
        if tap("2048", pooled):
            return found
        unbiased = pooled @ self.fc.weight.T  # IS uses the logits without the bias, as the reference does
        if tap("logits_unbiased", unbiased):
            return found
        tap("logits", unbiased + self.fc.bias)
        return found


@dataclass(frozen=True)
class InceptionWeights:
    path: Path
    sha256: str
    checked: bool  # False: the user accepted a file that is not the published one


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_weights(given: str | None, unchecked: bool = False) -> InceptionWeights:
    """The weight file to use: `given`, else the cache location, with its size and SHA-256 checked
    against the published file unless `unchecked`. Never downloads: the README says how to get it."""
    path = Path(given).expanduser() if given else default_weights_path()
    if not path.is_file():
        raise NotFound(f"no Inception weights at {path}", field="inception_weights", value=given or None,
                       hint=f"download {WEIGHTS_URL} to {default_weights_path()}, or pass {{inception_weights}} FILE")
    redo = "download the file again, or pass {inception_unchecked} to use this one anyway"
    size = path.stat().st_size
    if size != WEIGHTS_BYTES and not unchecked:
        raise InvalidInput(f"is {size:,} bytes; the published Inception weights are {WEIGHTS_BYTES:,}",
                           field="inception_weights", value=path, hint=redo)
    sha = file_sha256(path)
    if sha != WEIGHTS_SHA256 and not unchecked:
        raise InvalidInput(f"has SHA-256 {sha[:16]}...; the published Inception weights have "
                           f"{WEIGHTS_SHA256[:16]}...", field="inception_weights", value=path, hint=redo)
    return InceptionWeights(path, sha, checked=sha == WEIGHTS_SHA256)


def load_inception(weights: InceptionWeights, preprocessing: str = "tf1") -> InceptionV3:
    """The network with `weights`: a .pth state dict read by torch's weights-only loader (which runs
    no pickled code) or a .safetensors file with the same names."""
    network = InceptionV3(preprocessing)
    try:
        if weights.path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights.path))
        else:
            state = torch.load(weights.path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except Exception as error:  # truncated, not a state dict, other names or shapes
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise LoadError(f"is not an Inception-v3 FID weight file ({first[:160]})", field="inception_weights",
                        value=weights.path) from error
    return network.eval()


@torch.no_grad()
def inception_features(network: InceptionV3, images, layers: tuple[str, ...] = ("2048", "logits_unbiased"),
                       batch_size: int = 32) -> dict[str, np.ndarray]:
    """PIL images -> {layer: (N, dims) float64}; images of one size go through in batches, others
    one at a time (each image's features do not depend on its batch)."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    arrays = [np.asarray(image.convert("RGB")) for image in images]
    start = 0
    while start < len(arrays):
        end = start + 1
        while end < len(arrays) and end - start < batch_size and arrays[end].shape == arrays[start].shape:
            end += 1
        pixels = torch.from_numpy(np.stack(arrays[start:end])).permute(0, 3, 1, 2).contiguous()
        for name, value in network(pixels, layers).items():
            parts[name].append(value.double().numpy())
        start = end
    width = {"64": 64, "192": 192, "768": 768, "2048": 2048, "logits_unbiased": 1008, "logits": 1008}
    return {name: np.concatenate(parts[name]) if parts[name] else np.zeros((0, width[name])) for name in layers}
