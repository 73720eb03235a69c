"""Image loading and the preprocessing presets that exported classifiers expect.

A preset is (mean, std, channel order) on 0..255 pixel values; images are
resized straight to the model's input size (no crop), so every input pixel has
a place in the heatmap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from onnxcam.errors import ImageError, OnnxcamError


@dataclass(frozen=True)
class Preset:
    mean: tuple
    std: tuple
    bgr: bool
    summary: str


PRESETS = {
    "imagenet": Preset((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False, "torchvision: RGB, /255, ImageNet mean/std"),
    "inception": Preset((127.5,) * 3, (127.5,) * 3, False, "TF/Keras: RGB, (x - 127.5) / 127.5"),
    "lite": Preset((127.0,) * 3, (128.0,) * 3, False, "EfficientNet-Lite: RGB, (x - 127) / 128"),
    "caffe": Preset((103.939, 116.779, 123.68), (1.0,) * 3, True, "Caffe/Keras-ResNet: BGR, minus ImageNet mean"),
    "unit": Preset((0.0,) * 3, (255.0,) * 3, False, "RGB, x / 255 (0..1)"),
    "raw": Preset((0.0,) * 3, (1.0,) * 3, False, "RGB, 0..255 as is"),
}
DEFAULT_PRESET = "imagenet"


def load_image(path: str) -> np.ndarray:
    """An HxWx3 uint8 RGB array; EXIF orientation applied, alpha dropped, 16-bit scaled to 8-bit."""
    if not os.path.isfile(path):
        raise ImageError(f"image file not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"empty image file: {path}")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"not a readable image: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_tensor(path: str) -> np.ndarray:
    """A ready input tensor saved with np.save (pickles refused: a .npy may come from anywhere)."""
    if not os.path.isfile(path):
        raise ImageError(f"input tensor file not found: {path}")
    try:
        # mmap: the header cannot make us allocate more than the file holds
        x = np.array(np.load(path, mmap_mode="r", allow_pickle=False))
    except (ValueError, OSError) as exc:
        raise ImageError(f"not a readable .npy tensor: {path} ({exc})") from None
    if x.dtype.kind != "f":
        raise ImageError(f"{path} holds {x.dtype} values; an input tensor must be floating point")
    return x


def to_tensor(images: list, size: tuple, layout: str, channels: int, preset: str, dtype=np.float32) -> np.ndarray:
    """Resize RGB uint8 images to (height, width), normalize with the preset, stack in the model's layout."""
    if preset not in PRESETS:
        raise OnnxcamError(f"unknown preprocessing preset '{preset}'; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    h, w = size
    batch = []
    for rgb in images:
        interpolation = cv2.INTER_AREA if rgb.shape[0] > h or rgb.shape[1] > w else cv2.INTER_LINEAR
        x = cv2.resize(rgb, (w, h), interpolation=interpolation).astype(np.float32)
        mean, std = np.float32(p.mean), np.float32(p.std)
        if p.bgr:
            x = x[..., ::-1]
        if channels == 1:
            x, mean, std = x.mean(axis=2, keepdims=True), mean.mean(keepdims=True), std.mean(keepdims=True)
        batch.append((x - mean) / std)
    x = np.stack(batch)
    return np.ascontiguousarray(x if layout == "NHWC" else x.transpose(0, 3, 1, 2), dtype=dtype)
