"""Segmentation models: which class a map explains, over which region, and the score that stands for both.

A segmentation output z is [N, C, H, W], C scores per pixel. As pytorch-grad-cam's SemanticSegmentationTarget,
the explained score of class c over a region R is the sum over R of z[c]; R is by default the pixels the model
predicts as c (argmax over the channels), or when no pixel is, the whole output. A one-channel output (the logit
of a sigmoid map: a text or foreground detector) stands for two classes, as a binary classifier's logit does:
class 1 is z (predicted where z > 0), class 0 is -z.

Default class: the one predicted on the most pixels; a background class 0 (that of a one-channel map, or one
the labels name background) counts only when no other class is predicted anywhere.

The graph computes the same in ONNX (surgery.graph's segmentation seed), so gradient maps, in-graph maps and
exported models agree with the NumPy scores here, which the gradient-free methods (Score-CAM, Ablation-CAM) use.
"""

from __future__ import annotations

import cv2
import numpy as np

from onnxcam.errors import ImageError, OnnxcamError
from onnxcam.preprocess import load_image

BACKGROUND_NAMES = ("background", "__background__", "_background_", "bg", "__bg__")


def class_logits(z: np.ndarray, head: str) -> np.ndarray:
    """[N, classes, H, W]: each class's score per pixel (a one-channel map's two classes are -z and z)."""
    z = np.asarray(z, np.float32)
    return np.concatenate([-z, z], axis=1) if head == "binary" else z


def predicted(z: np.ndarray, head: str) -> np.ndarray:
    """[N, H, W] int64: the class each pixel is predicted as (the first of equal scores)."""
    return class_logits(z, head).argmax(axis=1)


def pixel_fractions(z: np.ndarray, head: str) -> np.ndarray:
    """[N, classes]: the fraction of the output's pixels predicted as each class."""
    scores = class_logits(z, head)
    hits = predicted(z, head)[:, None] == np.arange(scores.shape[1])[None, :, None, None]
    return hits.mean(axis=(2, 3)).astype(np.float32)


def has_background(labels: list | None, head: str) -> bool:
    """Whether class 0 is a background that the default class passes over."""
    return head == "binary" or bool(labels) and str(labels[0]).strip().lower() in BACKGROUND_NAMES


def default_class(z: np.ndarray, head: str, background: bool) -> np.ndarray:
    """[N] the class predicted on the most pixels (a background class 0 only when nothing else is predicted)."""
    counts = pixel_fractions(z, head)
    if background:
        counts[:, 0] = np.where((counts[:, 1:] > 0).any(axis=1), -1, counts[:, 0])
    return counts.argmax(axis=1)


def regions(z: np.ndarray, head: str, classes: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """bool [N, H, W]: the pixels each row's class is explained over. region: float [N or 1, H, W], 1 inside,
    0 outside, negative = the predicted region (None: predicted everywhere)."""
    hits = predicted(z, head) == np.asarray(classes).reshape(-1, 1, 1)
    hits |= ~hits.any(axis=(1, 2), keepdims=True)  # no pixel is predicted as c: the whole output
    if region is None:
        return hits
    region = np.broadcast_to(np.asarray(region, np.float32), hits.shape)
    return np.where(region < 0, hits, region > 0)


def region_score(z: np.ndarray, head: str, classes: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """[N] the sum over each row's region (bool [N, H, W]) of its class's scores."""
    scores = class_logits(z, head)
    rows = np.arange(len(scores))
    return (scores[rows, np.asarray(classes)] * inside).sum(axis=(1, 2)).astype(np.float32)


def read_region(source, size: tuple) -> np.ndarray:
    """float32 [N or 1, H, W] of 0 and 1 at the output's (height, width): a mask picture's path (any size, any
    channels; nonzero = inside) or an array [h, w] / [N, h, w], resized to (H, W) by nearest neighbour."""
    if isinstance(source, str):
        try:
            source = load_image(source).max(axis=2)  # any channel nonzero = inside
        except ImageError as error:
            raise ImageError(f"region mask: {error}") from None
    mask = np.asarray(source)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or 0 in mask.shape or mask.dtype.kind not in "biuf":
        raise OnnxcamError(f"a region is a mask of shape [H, W] or [N, H, W]; got {list(mask.shape)} {mask.dtype}")
    h, w = size
    inside = [cv2.resize(np.uint8(m != 0), (w, h), interpolation=cv2.INTER_NEAREST) for m in mask]
    return np.float32(inside)
