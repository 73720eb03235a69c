"""CAM methods as pure NumPy functions of one layer's arrays.

Each method maps a `LayerData` (activations A [N, K, h, w], the gradient
G = dScore/dA, and for CAM the linear head's weights of each image's class)
to a map [N, h, w] before ReLU. What a method needs is data in METHODS, so
the explainer builds only the graph and runs that method needs.

Channel-weight methods read G only through `grad_dot` (sum_ij G * P per
channel), so finite differences can stand in where a head op has no
backward rule; methods that need G elementwise say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LayerData:
    activations: np.ndarray
    gradients: np.ndarray | None = None
    class_weights: np.ndarray | None = None  # [N, K], CAM only
    directional: Callable | None = None  # pattern -> [N, K] by finite differences, when gradients is None

    def grad_dot(self, pattern: np.ndarray) -> np.ndarray:
        """[N, K]: sum_ij G_kij * pattern_kij, from G or from finite differences."""
        if self.gradients is not None:
            return np.einsum("nkhw,nkhw->nk", self.gradients, pattern)
        return self.directional(pattern)


CHANNEL = "channel"  # needs only grad_dot: finite differences can stand in
ELEMENTWISE = "elementwise"  # needs G itself: a backward rule for every head op


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    map: Callable
    gradients: str | None = None  # None, CHANNEL or ELEMENTWISE
    needs_linear_head: bool = False


def _weighted(weights: np.ndarray, activations: np.ndarray) -> np.ndarray:
    return np.einsum("nk,nkhw->nhw", weights, activations)


def cam(d: LayerData) -> np.ndarray:
    """CAM (Zhou 2016, arXiv 1512.04150): M^c = sum_k w_k^c A_k, w^c the class's row of the linear head."""
    return _weighted(d.class_weights, d.activations)


def gradcam(d: LayerData) -> np.ndarray:
    """Grad-CAM (Selvaraju 2017, arXiv 1610.02391): w_k = mean_ij dY^c/dA_kij, M = sum_k w_k A_k."""
    a = d.activations
    return _weighted(d.grad_dot(np.ones_like(a)) / (a.shape[2] * a.shape[3]), a)


METHODS = {
    m.name: m
    for m in (
        Method("cam", "class activation map from the linear head's weights (GAP -> linear heads only)", cam, needs_linear_head=True),
        Method("gradcam", "Grad-CAM: activations weighted by their spatially averaged gradients", gradcam, gradients=CHANNEL),
    )
}
