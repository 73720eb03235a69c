"""Backward rules through quantized graphs (QDQ and QOperator: QuantizeLinear, QLinearConv, QLinearAdd, ...).

A quantized function is a staircase: its true derivative is zero almost everywhere. Explanations use the
straight-through estimator instead, the slope of the float function that the integers approximate: the
gradient of an integer tensor t is the gradient with respect to its float value DequantizeLinear(t, scale,
zero point) (`quantized_values`; rules read that value through `Builder.fwd`). So DequantizeLinear passes its
gradient through, QuantizeLinear passes it where it does not saturate, and a QLinear op is its float op
(model.quantized.QLINEAR) on the dequantized inputs, its gradient masked where the output saturates, which
is also how QOperator models express a ReLU fused into the op (the output's range starts at 0). Checked op by
op against central differences of the float op (tests/surgery/test_vjp_quantized.py), and against central
differences of quantized heads (tests/test_real_models.py, steps above the quantization's).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx_graphsurgeon as gs

from onnxcam.model.quantized import QLINEAR
from onnxcam.surgery.vjp import RULES, _constant_value, _softmax_axes, unsupported, vjp

# Ops that move an integer tensor's entries without computing with them: the output has the input's scale
# and zero point, and the op's own rule carries the gradient of the float values.
_QUANTIZATION_KEEPERS = {
    "MaxPool",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Identity",
    "Slice",
    "Split",
    "Gather",
}


def quantized_values(graph: gs.Graph) -> dict:
    """Integer tensor name -> (scale, zero point) tensors: the outputs of QuantizeLinear and QLinear ops, and what
    data movement makes of them, whose float value is DequantizeLinear(tensor, scale, zero point)."""
    found = {}
    for node in graph.nodes:
        if node.op == "QuantizeLinear":
            found[node.outputs[0].name] = (node.inputs[1], _input(node, 2))
        elif node.op in QLINEAR:
            scale, zero_point = (_input(node, i) for i in QLINEAR[node.op][2])
            if scale is not None:  # QGemm without an output scale gives floats
                found[node.outputs[0].name] = (scale, zero_point)
        elif node.op in _QUANTIZATION_KEEPERS and node.inputs and node.inputs[0].name in found:
            found.update((o.name, found[node.inputs[0].name]) for o in node.outputs)
    return found


@vjp("DequantizeLinear")
def _dequantize_linear(b, node, g):
    return [g[0], None, None]


@vjp("QuantizeLinear")
def _quantize_linear(b, node, g):
    """Passed where the input rounds into the integer range, as PyTorch's fake quantization does (so not where
    the quantization clips, such as a ReLU that the quantized model leaves to the range's lower end)."""
    return [_in_range(b, node, node.outputs[0], g[0], b.fwd(node.inputs[0]), 0.5), None, None]


@vjp(*QLINEAR)
def _qlinear(b, node, g):
    """The float op's own rule on a stand-in node: the dequantized inputs in, the dequantized output out (for ops
    whose rule reads that output, the float op's own, which the integers only round: `_FLOAT_OUTPUT`)."""
    float_op, triples, (scale_at, zero_at) = QLINEAR[node.op]
    if triples is None:  # QLinearConcat: (output scale, zero point), then one triple per input
        triples = [(k, k + 1, k + 2) for k in range(2, len(node.inputs), 3)]
    if node.attrs.get("channels_last", 0):
        raise unsupported(node, "with channels_last")
    inputs = [_dequantized(b, node, *(node.inputs[i] for i in t), _weight_axis(node)) for t in triples]
    out = node.outputs[0]
    quantized = _input(node, scale_at) is not None
    attrs = {k: v for k, v in node.attrs.items() if k != "channels_last"}
    if node.op == "QLinearSoftmax":  # its axis defaults to -1, and its `opset` says whose Softmax it computes
        attrs.setdefault("axis", -1)
    else:
        attrs.pop("opset", None)
    twin = SimpleNamespace(op=float_op, name=node.name, attrs=attrs, inputs=inputs, outputs=[out])
    recompute = _FLOAT_OUTPUT.get(float_op)
    if recompute is not None:
        y = recompute(b, twin)
        y.dtype, y.shape = b.dtype, out.shape  # rules read the output's shape
        twin.outputs = [y]
        grad = _in_range(b, node, out, g[0], twin.outputs[0], 0.0) if quantized else g[0]
    else:
        twin.outputs = [b.fwd(out) if quantized else out]
        grad = _in_range(b, node, out, g[0], twin.outputs[0], -0.5) if quantized else g[0]
    twin_grads = RULES[float_op](b, twin, [grad])
    grads = [None] * len(node.inputs)
    for t, gx in zip(triples, twin_grads):
        grads[t[0]] = gx
    return grads


def _weight_axis(node) -> int:
    """The axis of a constant weight's per-channel scales: its output channels (Conv's first axis, the columns
    of MatMul's and Gemm's B, which Gemm's transB stores first)."""
    if node.op == "QLinearConv" or (node.op == "QGemm" and node.attrs.get("transB", 0)):
        return 0
    return -1


def _softmax(b, twin):
    x = twin.inputs[0]
    axes = _softmax_axes(b, twin, len(x.shape))
    e = b.op("Exp", b.op("Sub", x, b.reduce("ReduceMax", x, axes)))
    return b.op("Div", e, b.reduce_sum(e, axes))


# Float ops whose rule reads their output, which is cheap to compute again: their output from the dequantized
# inputs (the quantized output is off by up to half a step, and saturates where the float output does not).
_FLOAT_OUTPUT = {"Sigmoid": lambda b, twin: b.op("Sigmoid", twin.inputs[0]), "Softmax": _softmax}


def _dequantized(b, node, x, scale, zero_point, axis):
    """x's float value, with x's shape: a constant for constant x (per-channel scales on `axis`), else
    DequantizeLinear (per-tensor scale)."""
    s = _constant_value(node, scale).astype(np.float32)
    z = np.zeros(1) if zero_point is None else _constant_value(node, zero_point)
    if isinstance(x, gs.Constant):
        values = np.asarray(x.values)
        if s.size > 1 and axis == 0:
            s, z = (v.reshape([-1] + [1] * (values.ndim - 1)) for v in (s, z))
        return b.const((values.astype(np.float32) - z.astype(np.float32)) * s)
    if s.size > 1:
        raise unsupported(node, f"with a per-channel scale for the computed tensor '{x.name}'")
    return b.dequantized(x, scale, zero_point)


def _in_range(b, node, q, g, value, margin):
    """g where `value` lies within the integer range of the quantized tensor q widened by `margin` steps at both
    ends: +0.5 for a float input (what rounds into the range), -0.5 for q's own float value (strictly inside:
    where a QLinear op's output sits at an end of its range, the float op's result was clipped there, or is as
    good as; half a step in, so that float rounding cannot flip the comparison)."""
    scale, zero_point = b.quantized[q.name]
    s = _constant_value(node, scale)
    if s.size != 1:
        raise unsupported(node, f"with a per-channel scale for the computed tensor '{q.name}'")
    z = np.zeros((), np.uint8) if zero_point is None else _constant_value(node, zero_point)  # uint8 by default
    info = np.iinfo(z.dtype)
    s, z = float(s.reshape(-1)[0]), int(z.reshape(-1)[0])
    low, high = (info.min - margin - z) * s, (info.max + margin - z) * s
    inside = b.op("And", b.op("Greater", value, b.const(low)), b.op("Less", value, b.const(high)))
    return b.mask(g, inside)


def _input(node, i):
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None
