"""From raw layer-resolution maps to normalized heatmaps and localization boxes.

Normalization and resizing follow pytorch-grad-cam 1.5 exactly (per-layer
min-max, cv2.resize INTER_LINEAR, then relu/mean/min-max over layers), so our
maps can be compared with its maps number for number.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def normalize(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] (the 1e-7 keeps flat maps finite, as pytorch-grad-cam does)."""
    maps = maps - maps.min(axis=(1, 2), keepdims=True)
    return (maps / (1e-7 + maps.max(axis=(1, 2), keepdims=True))).astype(np.float32)


def normalize_and_resize(maps: np.ndarray, size: tuple) -> np.ndarray:
    """Normalize each [h, w] map and resize it to (height, width)."""
    h, w = size
    return np.stack([cv2.resize(m, (w, h)) for m in normalize(np.float32(maps))])


def saliency_map(saliency: np.ndarray) -> np.ndarray:
    """[N, C, H, W] input-level saliency -> [N, H, W] map: max |.| over channels, min-max normalized."""
    return normalize(np.abs(saliency).max(axis=1))


def upsample_align_corners(maps: np.ndarray, size: tuple) -> np.ndarray:
    """[N, K, h, w] -> [N, K, H, W], bilinear with align_corners=True (torch's UpsamplingBilinear2d)."""
    rows, cols = (interpolation(n, m, align_corners=True) for n, m in zip(maps.shape[2:], size))
    return np.einsum("Hh,nkhw,Ww->nkHW", rows, np.float32(maps), cols, optimize=True).astype(np.float32)


def interpolation(n: int, m: int, align_corners: bool = False) -> np.ndarray:
    """[m, n]: linear interpolation from n samples to m, as a matrix. align_corners: the corner samples aligned
    (torch's UpsamplingBilinear2d: Score-CAM's masks); else half-pixel centres with the edges clamped
    (cv2.resize's INTER_LINEAR: the in-graph maps resize with it)."""
    if align_corners:
        src = np.arange(m) * ((n - 1) / (m - 1)) if m > 1 else np.zeros(1)
    else:
        src = np.clip((np.arange(m) + 0.5) * (n / m) - 0.5, 0, n - 1)
    lo = np.minimum(np.floor(src).astype(int), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = src - lo
    weights = np.zeros((m, n))
    weights[np.arange(m), lo] += 1 - frac
    weights[np.arange(m), hi] += frac
    return weights.astype(np.float32)


def combine(per_layer: list) -> np.ndarray:
    """Aggregate already-scaled maps of several layers (also run for one layer, as the reference does)."""
    stacked = np.maximum(np.stack(per_layer, axis=1), 0)
    return normalize(stacked.mean(axis=1))


# --boxes all drops regions under this share of the map's pixels: slivers where an interpolated map grazes the
# threshold, and the speckle of input-level saliency maps. A cell of a 7x7 (even a 14x14) layer map covers 2%
# (0.5%) of the image, so no region the layer can resolve is dropped; it also bounds the boxes to 1000 a map.
MIN_REGION = 0.001


@dataclass(frozen=True)
class Region:
    """A connected region of the thresholded map: its box (x0, y0, x1, y1, inclusive pixel indices), its pixel
    count, and the map's highest and mean value inside it."""

    box: tuple
    area: int
    peak: float
    mean: float

    def record(self) -> dict:
        return {"box": list(self.box), "area": self.area, "peak": self.peak, "mean": self.mean}


def mask(heatmap: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """The pixels where the map is >= threshold * its max (CAM's localization rule, and the pseudo-segmentation
    mask weakly supervised pipelines train on); all False for a map without a positive (finite) max."""
    peak = float(heatmap.max()) if heatmap.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        return np.zeros(heatmap.shape, bool)
    return heatmap >= threshold * peak


def boxes(heatmap: np.ndarray, threshold: float = 0.2, every: bool = True) -> list:
    """The 8-connected regions of `mask(heatmap, threshold)` as [Region], largest first (equal areas: the one
    whose box's top edge is higher, then whose left edge is further left). every=False: only the largest (CAM, Zhou 2016); every=True:
    also each other region of at least MIN_REGION of the map's pixels (the multiple occurrences of Grad-CAM++)."""
    on = mask(heatmap, threshold)
    if not on.any():
        return []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(np.uint8(on), connectivity=8)
    left, top, areas = (stats[1:, i] for i in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_AREA))
    order = 1 + np.lexsort((left, top, -areas))  # largest first; equal areas: the higher, then the more left
    keep = [order[0], *(k for k in order[1:] if every and stats[k, cv2.CC_STAT_AREA] >= MIN_REGION * on.size)]
    regions = []
    for k in keep:
        x, y, w, h, area = (int(v) for v in stats[k])
        inside = heatmap[y : y + h, x : x + w][labels[y : y + h, x : x + w] == k]  # within its box: cheap
        regions.append(Region((x, y, x + w - 1, y + h - 1), area, float(inside.max()), float(inside.mean())))
    return regions


def box(heatmap: np.ndarray, threshold: float = 0.2):
    """CAM localization (Zhou 2016): the bounding box (x0, y0, x1, y1), inclusive, of the largest
    connected region where the map is >= threshold * its max; None for an all-zero map."""
    found = boxes(heatmap, threshold, every=False)
    return found[0].box if found else None
