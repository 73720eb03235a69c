"""Channel gradient sums by central differences, for heads with an op that has no backward rule.

Channel-weight methods need only s_k = sum_ij G_kij P_kij for a pattern P
(ones for Grad-CAM, A itself for XGrad-CAM). That is one directional
derivative per channel: s_k = d score(A + eps P_k) / d eps, with P_k = P on
channel k and 0 elsewhere. Central differences need 2K runs of the head, done
as batched rows, never K*h*w runs.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnxcam.model import constants

# Rows per head run: bounds memory at ROWS * K * h * w floats.
ROWS = 64
# Step, relative to the layer's mean |activation|: small enough to stay on one
# linear piece of most ReLU kinks, large enough for float32 rounding.
RELATIVE_STEP = 1e-2


def quantization_step(model) -> float:
    """The largest QuantizeLinear scale in a model (0 if none): steps below it see a staircase, not a slope."""
    tensors = constants(model.graph)
    scales = [
        float(np.max(np.abs(numpy_helper.to_array(tensors[n.input[1]]))))
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[1] in tensors
    ]
    return max(scales, default=0.0)


def channel_derivatives(
    run_head,
    layer: str,
    activations: np.ndarray,
    pattern: np.ndarray,
    classes: np.ndarray,
    extra_feeds: dict | None,
    score_of,
    min_step: float = 0.0,
    progress=None,
) -> np.ndarray:
    """[N, K]: d score_n / d eps along `pattern` restricted to each channel, by central differences.

    run_head: feeds -> logits [rows, ...] of the head cut off at `layer` (any number of rows).
    extra_feeds: other head inputs (the image, when the head still needs it), batch-first.
    score_of: (logits [rows, C], classes [rows]) -> scores [rows].
    min_step: a floor for the step (quantized heads: above their quantization step).
    progress: None or (channels done, channels in all) -> None, after each head run.
    """
    n, k = activations.shape[:2]
    out = np.zeros((n, k), np.float64)
    dtype = activations.dtype
    for i in range(n):
        a = activations[i].astype(np.float32)
        eps = max(RELATIVE_STEP * max(float(np.abs(a).mean()), 1e-6), min_step)
        feeds_i = {name: value[i : i + 1] for name, value in (extra_feeds or {}).items()}
        for start in range(0, k, ROWS // 2):
            channels = range(start, min(start + ROWS // 2, k))
            rows = np.repeat(a[None], 2 * len(channels), axis=0)
            for r, c in enumerate(channels):
                rows[2 * r, c] += eps * pattern[i, c]
                rows[2 * r + 1, c] -= eps * pattern[i, c]
            feeds = {layer: rows.astype(dtype)}
            feeds.update({name: np.repeat(v, len(rows), axis=0) for name, v in feeds_i.items()})
            logits = run_head(feeds).reshape(len(rows), -1)
            scores = score_of(logits, np.full(len(rows), classes[i])).astype(np.float64)
            out[i, start : start + len(channels)] = (scores[0::2] - scores[1::2]) / (2 * eps)
            if progress is not None:
                progress(i * k + start + len(channels), n * k)
    return out.astype(np.float32)
