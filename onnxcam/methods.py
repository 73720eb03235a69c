"""CAM methods as pure NumPy functions of one layer's arrays.

Each method maps a `LayerData` (activations A [N, K, h, w], the gradient
G = dScore/dA, and for CAM the linear head's weights of each image's class)
to a map [N, h, w] before ReLU. What a method needs is data in METHODS, so
the explainer builds only the graph and runs that method needs.
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


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    map: Callable
    needs_gradients: bool = False
    needs_linear_head: bool = False


def _weighted(weights: np.ndarray, activations: np.ndarray) -> np.ndarray:
    return np.einsum("nk,nkhw->nhw", weights, activations)


def cam(d: LayerData) -> np.ndarray:
    """CAM (Zhou 2016, arXiv 1512.04150): M^c = sum_k w_k^c A_k, w^c the class's row of the linear head."""
    return _weighted(d.class_weights, d.activations)


def gradcam(d: LayerData) -> np.ndarray:
    """Grad-CAM (Selvaraju 2017, arXiv 1610.02391): w_k = mean_ij dY^c/dA_kij, M = sum_k w_k A_k."""
    return _weighted(d.gradients.mean(axis=(2, 3)), d.activations)


METHODS = {
    m.name: m
    for m in (
        Method("cam", "class activation map from the linear head's weights (GAP -> linear heads only)", cam, needs_linear_head=True),
        Method("gradcam", "Grad-CAM: activations weighted by their spatially averaged gradients", gradcam, needs_gradients=True),
    )
}
