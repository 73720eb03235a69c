"""Recognise a CAM-style head (layer -> global average pool -> linear) and read its weights.

CAM (Zhou et al. 2016, arXiv 1512.04150) is defined only for this head: the
class score is sum_k w_k^c * mean_ij A_kij, so the map sum_k w_k^c A_k is exact.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnxcam.errors import ModelError
from onnxcam.model import ModelInfo, constants
from onnxcam.model.graph import reduce_axes

_NO_OPS = {"Identity", "Dropout", "Flatten", "Reshape", "Squeeze"}


def linear_head_weights(info: ModelInfo, layer: str) -> np.ndarray:
    """W [classes, channels] of the linear layer that follows global pooling of `layer` (a binary head's one row
    w gives two classes: -w and w)."""
    graph = info.model.graph
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tensors = constants(graph)

    def single_next(name):
        nodes = consumers.get(name, [])
        return nodes[0] if len(nodes) == 1 else None

    def fail(why):
        raise ModelError(
            f"method 'cam' needs a head '{layer}' -> global average pool -> linear layer; {why}. Use gradcam, which equals CAM on such heads."
        )

    node = single_next(layer)
    while node is not None and node.op_type in _NO_OPS:
        node = single_next(node.output[0])
    if node is None or not _is_global_average(node, tensors):
        fail(f"'{layer}' is not followed only by global average pooling")
    node = single_next(node.output[0])
    while node is not None and node.op_type in _NO_OPS:
        node = single_next(node.output[0])
    if node is None or node.op_type not in ("Gemm", "MatMul") or node.input[1] not in tensors:
        fail("the pooled features do not go straight into a Gemm/MatMul with constant weights")
    scores = node.output[0]
    bias = single_next(scores)
    if bias is not None and bias.op_type == "Add" and any(i in tensors for i in bias.input):
        scores = bias.output[0]
    if scores != info.logits_name:
        fail("its linear layer does not produce the logits directly")
    w = numpy_helper.to_array(tensors[node.input[1]]).astype(np.float32)
    attrs = {a.name: a for a in node.attribute}
    transposed = node.op_type == "Gemm" and attrs.get("transB") is not None and attrs["transB"].i == 1
    w = w if transposed else w.T
    if node.op_type == "Gemm" and "alpha" in attrs:
        w = w * attrs["alpha"].f
    if w.shape[0] != info.num_classes:
        fail(f"its linear layer has {w.shape[0]} outputs, the logits {info.num_classes}")
    return np.concatenate([-w, w]) if info.head == "binary" else w  # binary: class 0 scores -z


def _is_global_average(node, tensors) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    axes = reduce_axes(node, tensors) if node.op_type == "ReduceMean" else None
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]
