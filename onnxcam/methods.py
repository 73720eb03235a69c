"""CAM methods as pure NumPy functions of one layer's arrays.

Each layer method maps a `LayerData` to per-channel terms [N, K, h, w] whose
sum over k is the map before ReLU (Eigen-CAMs give the map itself); formulas
follow pytorch-grad-cam 1.5 line for line, so maps agree with it to float
rounding. What a method needs is data in METHODS, so the explainer builds only
the graphs and runs that the method needs:

- gradients CHANNEL: only sum_ij G * P per channel (`grad_dot`), which finite
  differences can supply when a head op has no backward rule;
- gradients ELEMENTWISE: G itself;
- SAMPLES: G of several noisy copies of the input (`gradient_samples`);
- the gradient-free methods call back into the model (`masked_scores`,
  `ablated_scores`), which the explainer batches.

Input-level methods (guided backprop, SmoothGrad) work on dScore/dx instead
and are listed with `input_gradient` set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxcam.names import method_names

CHANNEL = "channel"  # needs only grad_dot: finite differences can stand in
ELEMENTWISE = "elementwise"  # needs G itself: a backward rule for every head op
SAMPLES = "samples"  # needs G at several noisy copies of the input


@dataclass(frozen=True)
class LayerData:
    activations: np.ndarray  # A [N, K, h, w]
    gradients: np.ndarray | None = None  # G = dScore/dA
    gradient_samples: list | None = None  # G for each noisy copy of the input
    class_weights: np.ndarray | None = None  # [N, K]: the linear head's row of each image's class (CAM)
    directional: Callable | None = None  # pattern -> [N, K] by finite differences, when gradients is None
    masked_scores: Callable | None = None  # masks [N, K, H, W] -> [N, K] scores of model(x * mask_k)
    ablated_scores: Callable | None = None  # () -> [N, K] scores with channel k ablated
    scores: np.ndarray | None = None  # [N] the explained scores
    channels: int | None = None  # Score-CAM: mask with only this many channels, those of largest mass (None: all)

    def grad_dot(self, pattern: np.ndarray) -> np.ndarray:
        """[N, K]: sum_ij G_kij * pattern_kij, from G or from finite differences."""
        if self.gradients is not None:
            return np.einsum("nkhw,nkhw->nk", self.gradients, pattern)
        return self.directional(pattern)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    map: Callable | None  # LayerData -> [N, h, w]; None for input-level methods
    gradients: str | None = None  # None, CHANNEL, ELEMENTWISE or SAMPLES
    needs_linear_head: bool = False
    input_gradient: str | None = None  # None, "plain" or "guided": the method uses dScore/dx
    terms: bool = True  # map gives per-channel terms [N, K, h, w], summed over k (or projected: eigen-smooth)
    attention: bool = False  # map takes an AttentionData (a transformer's attention probabilities), not a layer

    @property
    def needs(self) -> str:
        """What running it takes, in words (for `onnxcam methods`)."""
        parts = [
            {
                CHANNEL: "channel gradient sums (finite differences can stand in)",
                ELEMENTWISE: "gradients",
                SAMPLES: "gradients of noisy copies",
            }.get(self.gradients, "")
        ]
        parts += [
            "the linear head" if self.needs_linear_head else "",
            "a vision transformer's attention" if self.attention else "",
            f"{self.input_gradient} input gradients" if self.input_gradient else "",
        ]
        return ", ".join(p for p in parts if p) or "forward runs only"


@dataclass(frozen=True)
class AttentionData:
    """A vision transformer's attention probabilities, block by block, and where its tokens lie."""

    attention: list  # per block, [N, heads, T, T] (rows: the attending token; they sum to 1)
    gradients: list | None  # per block, dScore/dattention (gradient-weighted rollout)
    prefix: int  # tokens before the patch grid (class, distillation, registers)
    height: int
    width: int

    def grid_row(self, relevance: np.ndarray) -> np.ndarray:
        """[N, T, T] -> [N, h, w]: the class token's row over the grid tokens (without a class token, the mean of
        the grid tokens' rows: what average pooling reads)."""
        row = relevance[:, 0] if self.prefix else relevance[:, self.prefix :].mean(axis=1)
        return row[:, self.prefix :].reshape(len(row), self.height, self.width)


def attention_rollout(d: AttentionData) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020, arXiv 2005.00928): R = prod_l (A_l + I) / 2 from the first block
    to the last, A_l the block's attention averaged over heads (the identity: its residual connection)."""
    n, _, t, _ = d.attention[0].shape
    relevance = np.broadcast_to(np.eye(t), (n, t, t))
    for a in d.attention:
        relevance = ((np.float64(a).mean(axis=1) + np.eye(t)) / 2) @ relevance
    return np.float32(d.grid_row(relevance))


def gradient_rollout(d: AttentionData) -> np.ndarray:
    """Gradient-weighted attention rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
    Explainability", arXiv 2103.15679): R <- R + mean_heads(relu(dA * A)) R over the blocks, from R = I."""
    n, _, t, _ = d.attention[0].shape
    relevance = np.broadcast_to(np.eye(t), (n, t, t))
    for a, g in zip(d.attention, d.gradients):
        relevance = relevance + np.maximum(np.float64(g) * a, 0).mean(axis=1) @ relevance
    return np.float32(d.grid_row(relevance))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along `axis`, in float64 (scores, class probabilities, Score-CAM's channel weights)."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def weighted(weights: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """[N, K] channel weights, [N, K, h, w] activations -> the weighted activations w_k A_k."""
    return weights[:, :, None, None] * activations


def projection(maps: np.ndarray) -> np.ndarray:
    """Eigen-CAM: each image's [K, h, w] projected on its first principal component (pytorch-grad-cam's SVD)."""
    maps = np.nan_to_num(maps, nan=0.0)
    out = []
    for m in maps:
        flat = m.reshape(m.shape[0], -1).T
        flat = flat - flat.mean(axis=0)  # centering: otherwise the first component is the mean
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        out.append((flat @ vt[0]).reshape(m.shape[1:]))
    return np.float32(out)


def _spatial_mean(d: LayerData) -> np.ndarray:
    a = d.activations
    return d.grad_dot(np.ones_like(a)) / (a.shape[2] * a.shape[3])


def cam(d: LayerData) -> np.ndarray:
    """CAM (Zhou 2016, arXiv 1512.04150): M^c = sum_k w_k^c A_k, w^c the class's row of the linear head."""
    return weighted(d.class_weights, d.activations)


def gradcam(d: LayerData) -> np.ndarray:
    """Grad-CAM (Selvaraju 2017, arXiv 1610.02391): w_k = mean_ij dY^c/dA_kij."""
    return weighted(_spatial_mean(d), d.activations)


def xgradcam(d: LayerData) -> np.ndarray:
    """XGrad-CAM (Fu 2020, arXiv 2008.02312): w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7)."""
    a = d.activations
    return weighted(d.grad_dot(a) / (a.sum(axis=(2, 3)) + 1e-7), a)


def _gradcampp_weights(a, g1, g2, g3) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay 2018, arXiv 1710.11063, eq. 19) from the 1st, 2nd, 3rd derivative terms."""
    alpha = g2 / (2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g3 + 1e-6)
    alpha = np.where(g1 != 0, alpha, 0)
    return (np.maximum(g1, 0) * alpha).sum(axis=(2, 3))


def gradcampp(d: LayerData) -> np.ndarray:
    """Grad-CAM++: w_k = sum_ij relu(G_kij) a_kij, a = G^2 / (2 G^2 + sum_ab A_kab G^3)."""
    g = d.gradients
    return weighted(_gradcampp_weights(d.activations, g, g**2, g**3), d.activations)


def smoothgradcampp(d: LayerData) -> np.ndarray:
    """Smooth Grad-CAM++ (Omeiza 2019, arXiv 1908.01224): Grad-CAM++ with each derivative term
    (G, G^2, G^3) averaged over noisy copies of the input; A is the clean image's."""
    gs = np.stack(d.gradient_samples)
    return weighted(_gradcampp_weights(d.activations, gs.mean(0), (gs**2).mean(0), (gs**3).mean(0)), d.activations)


def layercam(d: LayerData) -> np.ndarray:
    """LayerCAM (Jiang 2021, IEEE TIP): sum_k relu(G_k) * A_k, elementwise."""
    return np.maximum(d.gradients, 0) * d.activations


def hirescam(d: LayerData) -> np.ndarray:
    """HiResCAM (Draelos 2020, arXiv 2011.08891): sum_k G_k * A_k, elementwise."""
    return d.gradients * d.activations


def gradcam_elementwise(d: LayerData) -> np.ndarray:
    """Grad-CAM elementwise (pytorch-grad-cam): sum_k relu(G_k * A_k)."""
    return np.maximum(d.gradients * d.activations, 0)


def scorecam(d: LayerData) -> np.ndarray:
    """Score-CAM (Wang 2020, arXiv 1910.01279): w = softmax_k score(x * norm(up(A_k))).

    With `channels` set, only the channels of largest activation mass sum_ij A_kij are scored (one masked
    forward each) and the softmax runs over them; the others get weight 0. An approximation, off by default:
    it trades the many weak channels' small share of the weights for time."""
    a = d.activations
    if d.channels is None or d.channels >= a.shape[1]:
        return weighted(np.float32(softmax(d.masked_scores(a), axis=1)), a)
    kept = np.argsort(-a.sum(axis=(2, 3)), axis=1, kind="stable")[:, : d.channels]  # [N, channels]
    scores = d.masked_scores(np.take_along_axis(a, kept[:, :, None, None], axis=1))
    weights = np.zeros(a.shape[:2], np.float32)
    np.put_along_axis(weights, kept, np.float32(softmax(scores, axis=1)), axis=1)
    return weighted(weights, a)


def ablationcam(d: LayerData) -> np.ndarray:
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): w_k = (s - s_k) / s, s_k with channel k ablated."""
    s = d.scores[:, None].astype(np.float32)
    return weighted((s - np.float32(d.ablated_scores())) / s, d.activations)


def eigencam(d: LayerData) -> np.ndarray:
    """Eigen-CAM (Muhammad & Yeasin 2020, arXiv 2008.00299): first principal component of A (class-agnostic)."""
    return projection(d.activations)


def eigengradcam(d: LayerData) -> np.ndarray:
    """Eigen-Grad-CAM (pytorch-grad-cam): first principal component of G * A."""
    return projection(d.gradients * d.activations)


METHODS = {
    m.name: m
    for m in (
        Method(
            "cam",
            "CAM: activations weighted by the linear head's class weights (GAP -> linear heads)",
            cam,
            needs_linear_head=True,
        ),
        Method("gradcam", "Grad-CAM: activations weighted by their spatially averaged gradients", gradcam, CHANNEL),
        Method("gradcam++", "Grad-CAM++: positive gradients weighted by higher-order terms", gradcampp, ELEMENTWISE),
        Method(
            "smoothgradcam++",
            "Smooth Grad-CAM++: Grad-CAM++ terms averaged over noisy inputs",
            smoothgradcampp,
            SAMPLES,
        ),
        Method("xgradcam", "XGrad-CAM: gradients weighted by normalized activations", xgradcam, CHANNEL),
        Method("layercam", "LayerCAM: activations times positive gradients, per location", layercam, ELEMENTWISE),
        Method("hirescam", "HiResCAM: activations times gradients, per location", hirescam, ELEMENTWISE),
        Method(
            "gradcam-elementwise",
            "Grad-CAM elementwise: positive part of activations times gradients",
            gradcam_elementwise,
            ELEMENTWISE,
        ),
        Method("scorecam", "Score-CAM: softmax of the scores of the input masked by each channel", scorecam),
        Method("ablationcam", "Ablation-CAM: score drop when each channel is ablated (head runs only)", ablationcam),
        Method(
            "eigencam",
            "Eigen-CAM: first principal component of the activations (class-agnostic)",
            eigencam,
            terms=False,
        ),
        Method(
            "eigengradcam",
            "Eigen-Grad-CAM: first principal component of activations times gradients",
            eigengradcam,
            ELEMENTWISE,
            terms=False,
        ),
        Method(
            "attention-rollout",
            "Attention rollout: the attention of every block, multiplied through the "
            "residual connections (vision transformers; class-agnostic)",
            attention_rollout,
            attention=True,
        ),
        Method(
            "gradient-rollout",
            "Gradient-weighted attention rollout (Chefer 2021): positive gradient x "
            "attention, accumulated over the blocks (vision transformers)",
            gradient_rollout,
            ELEMENTWISE,
            attention=True,
        ),
        Method(
            "guided-backprop",
            "Guided Backprop: input gradients through ReLUs that pass positive gradients",
            None,
            input_gradient="guided",
        ),
        Method(
            "guided-gradcam",
            "Guided Grad-CAM: guided backprop times the upsampled Grad-CAM map",
            gradcam,
            CHANNEL,
            input_gradient="guided",
        ),
        Method(
            "smoothgrad",
            "SmoothGrad: input gradients averaged over noisy copies of the input",
            None,
            SAMPLES,
            input_gradient="plain",
        ),
    )
}


def method_named(name: str) -> Method:
    """The Method for a name or alias (names.method_names' grammar), or a user error listing the choices."""
    return METHODS[method_names([name])[0]]
