"""From raw layer-resolution maps to normalized heatmaps, overlays and boxes.

Normalization and resizing follow pytorch-grad-cam 1.5 exactly (per-layer
min-max, cv2.resize INTER_LINEAR, then relu/mean/min-max over layers), so our
maps can be compared with its maps number for number.
"""

from __future__ import annotations

import cv2
import numpy as np


def normalize(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] (the 1e-7 keeps flat maps finite, as pytorch-grad-cam does)."""
    maps = maps - maps.min(axis=(1, 2), keepdims=True)
    return (maps / (1e-7 + maps.max(axis=(1, 2), keepdims=True))).astype(np.float32)


def scale_to(maps: np.ndarray, size: tuple) -> np.ndarray:
    """Normalize each [h, w] map and resize it to (height, width)."""
    h, w = size
    return np.stack([cv2.resize(m, (w, h)) for m in normalize(np.float32(maps))])


def combine(per_layer: list) -> np.ndarray:
    """Aggregate already-scaled maps of several layers (also run for one layer, as the reference does)."""
    stacked = np.maximum(np.stack(per_layer, axis=1), 0)
    return normalize(stacked.mean(axis=1))


def overlay(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET-coloured [0, 1] heatmap over an RGB uint8 image of any size."""
    h, w = rgb.shape[:2]
    heat = cv2.resize(heatmap, (w, h))
    colored = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8(np.clip(alpha * colored + (1 - alpha) * rgb, 0, 255))
