"""Backward rules: op type -> vector-Jacobian product, written in standard ONNX ops.

A rule gets the Builder, the forward node and the gradients of the node's
outputs (None where no gradient reaches an output), and returns one gradient
per node input (None for inputs that are not differentiable, such as shapes
or indices). Rules reuse forward tensors rather than recomputing them, and
every node they emit is valid at the model's own opset.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from onnxcam.errors import UnsupportedOpError

RULES = {}


def vjp(*op_types):
    def register(fn):
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


def elementwise(*op_types):
    """For y = f(x): the rule only gives dy/dx, in terms of (builder, node, x, y)."""

    def register(derivative):
        def rule(b, node, g):
            return [b.op("Mul", g[0], derivative(b, node, b.fwd(node.inputs[0]), b.fwd(node.outputs[0])))]

        return vjp(*op_types)(rule)

    return register


def _optional_input(node, i):
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


def _constant_value(node, t):
    """The value of input t: an initializer, or the output of a Constant node (torch.onnx writes those)."""
    if hasattr(t, "values"):
        return np.asarray(t.values)
    producer = t.inputs[0] if t.inputs else None
    if producer is not None and producer.op == "Constant":
        value = producer.attrs.get("value", producer.attrs.get("value_ints"))
        return np.asarray(value.values if hasattr(value, "values") else value)
    raise UnsupportedOpError(
        f"{node.op} (node '{node.name}') takes '{t.name}' from a computed tensor; its backward rule needs it constant",
        op=node.op, node=node.name,
    )


def _static(t, what="shape"):
    if t.shape is None or any(not isinstance(d, int) for d in t.shape[1:]):
        raise AssertionError(f"static {what} needed for '{t.name}', got {t.shape}")
    return list(t.shape)


# -- pass-through and shape ops -------------------------------------------------


@vjp("Identity", "Dropout")
def _identity(b, node, g):
    return [g[0]]


@vjp("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(b, node, g):
    return [b.reshape_like(g[0], node.inputs[0])]


@vjp("Transpose")
def _transpose(b, node, g):
    rank = len(node.inputs[0].shape)
    perm = node.attrs.get("perm", list(reversed(range(rank))))
    return [b.op("Transpose", g[0], perm=[int(i) for i in np.argsort(perm)])]


# -- activations ----------------------------------------------------------------


@vjp("Relu")
def _relu(b, node, g):
    """Guided backpropagation (Springenberg 2015) also drops negative incoming gradients."""
    positive = b.op("Greater", b.fwd(node.inputs[0]), b.const(0.0))
    if b.guided:
        positive = b.op("And", positive, b.op("Greater", g[0], b.const(0.0)))
    return [b.mask(g[0], positive)]


@vjp("Clip")
def _clip(b, node, g):
    x = b.fwd(node.inputs[0])
    if b.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    else:
        lo, hi = [None if t is None else b.fwd(t) for t in (_optional_input(node, 1), _optional_input(node, 2))]
    conditions = []
    if lo is not None:
        conditions.append(b.op("Greater", x, lo))
    if hi is not None:
        conditions.append(b.op("Less", x, hi))
    if not conditions:
        return [g[0]]
    inside = conditions[0] if len(conditions) == 1 else b.op("And", *conditions)
    return [b.mask(g[0], inside)]


@elementwise("Sigmoid")
def _sigmoid(b, node, x, y):
    return b.op("Mul", y, b.op("Sub", b.const(1.0), y))


@elementwise("Tanh")
def _tanh(b, node, x, y):
    return b.op("Sub", b.const(1.0), b.op("Mul", y, y))


@elementwise("LeakyRelu")
def _leaky_relu(b, node, x, y):
    alpha = node.attrs.get("alpha", 0.01)
    positive = b.op("Cast", b.op("Greater", x, b.const(0.0)), to=_dtype_code(b))
    return b.op("Add", positive, b.op("Mul", b.op("Sub", b.const(1.0), positive), b.const(alpha)))


@elementwise("HardSigmoid")
def _hard_sigmoid(b, node, x, y):
    alpha, beta = node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)
    z = b.op("Add", b.op("Mul", x, b.const(alpha)), b.const(beta))
    inside = b.op("And", b.op("Greater", z, b.const(0.0)), b.op("Less", z, b.const(1.0)))
    return b.op("Mul", b.op("Cast", inside, to=_dtype_code(b)), b.const(alpha))


@elementwise("HardSwish")
def _hard_swish(b, node, x, y):
    # y = x * relu6(x + 3) / 6: slope (2x + 3) / 6 on (-3, 3), 0 below, 1 above. The slope runs from -0.5
    # to 1.5 inside, so clipping it to [0, 1] would be wrong on (-3, -1.5) and (1.5, 3). (HardSwish is opset 14+.)
    slope = b.op("Div", b.op("Add", b.op("Mul", x, b.const(2.0)), b.const(3.0)), b.const(6.0))
    above = b.op("Where", b.op("Greater", x, b.const(3.0)), b.const(1.0), slope)
    return b.op("Where", b.op("Less", x, b.const(-3.0)), b.const(0.0), above)


@elementwise("Erf")
def _erf(b, node, x, y):
    return b.op("Mul", b.op("Exp", b.op("Neg", b.op("Mul", x, x))), b.const(2.0 / math.sqrt(math.pi)))


def _dtype_code(b):
    return helper.np_dtype_to_tensor_dtype(b.dtype)


# -- arithmetic with broadcasting -----------------------------------------------


@vjp("Add")
def _add(b, node, g):
    out = node.outputs[0].shape
    return [b.unbroadcast(g[0], out, x) for x in node.inputs]


@vjp("Sub")
def _sub(b, node, g):
    out = node.outputs[0].shape
    return [b.unbroadcast(g[0], out, node.inputs[0]), b.unbroadcast(b.op("Neg", g[0]), out, node.inputs[1])]


@vjp("Mul")
def _mul(b, node, g):
    x0, x1 = node.inputs
    out = node.outputs[0].shape
    return [b.unbroadcast(b.op("Mul", g[0], b.fwd(x1)), out, x0), b.unbroadcast(b.op("Mul", g[0], b.fwd(x0)), out, x1)]


@vjp("Div")
def _div(b, node, g):
    x0, x1 = node.inputs
    out = node.outputs[0].shape
    dx0 = b.op("Div", g[0], b.fwd(x1))
    dx1 = b.op("Neg", b.op("Mul", dx0, b.fwd(node.outputs[0])))
    return [b.unbroadcast(dx0, out, x0), b.unbroadcast(dx1, out, x1)]


# -- linear layers --------------------------------------------------------------


@vjp("Gemm")
def _gemm(b, node, g):
    a, w = (b.fwd(t) for t in node.inputs[:2])
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    ta, tb = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
    zero = [] if b.opset >= 11 else [b.const(0.0)]  # C is required before opset 11
    if ta:
        da = b.op("Gemm", w, g[0], *zero, alpha=alpha, transA=tb, transB=1)
    else:
        da = b.op("Gemm", g[0], w, *zero, alpha=alpha, transB=1 - tb)
    if tb:
        dw = b.op("Gemm", g[0], a, *zero, alpha=alpha, transA=1, transB=ta)
    else:
        dw = b.op("Gemm", a, g[0], *zero, alpha=alpha, transA=1 - ta)
    grads = [da, dw]
    if _optional_input(node, 2) is not None:
        scaled = b.op("Mul", g[0], b.const(beta)) if beta != 1.0 else g[0]
        grads.append(b.unbroadcast(scaled, node.outputs[0].shape, node.inputs[2]))
    return grads


@vjp("MatMul")
def _matmul(b, node, g):
    a, w = node.inputs
    if len(a.shape) < 2 or len(w.shape) < 2:
        raise AssertionError(f"MatMul '{node.name}' with a 1-D operand")
    out = node.outputs[0].shape

    def swap_last(t):
        perm = list(range(len(t.shape)))
        perm[-2:] = perm[-1], perm[-2]
        return b.op("Transpose", b.fwd(t), perm=perm)

    da = b.op("MatMul", g[0], swap_last(w))
    dw = b.op("MatMul", swap_last(a), g[0])
    batch = list(out[:-2])
    return [
        b.unbroadcast(da, batch + list(a.shape[-2:]), a),
        b.unbroadcast(dw, batch + list(w.shape[-2:]), w),
    ]


@vjp("Conv")
def _conv(b, node, g):
    x, w = node.inputs[:2]
    in_shape, out_shape, k = _static(x), _static(node.outputs[0]), _static(w)[2:]
    spatial = len(k)
    strides = node.attrs.get("strides", [1] * spatial)
    dilations = node.attrs.get("dilations", [1] * spatial)
    begin, end = _conv_pads(node, in_shape[2:], out_shape[2:], k, strides, dilations)
    output_padding = [
        in_shape[2 + i] + begin[i] + end[i] - ((out_shape[2 + i] - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1)
        for i in range(spatial)
    ]
    dx = b.op(
        "ConvTranspose", g[0], b.fwd(w),
        group=node.attrs.get("group", 1), strides=strides, dilations=dilations, kernel_shape=k,
        pads=begin + end, output_padding=output_padding,
    )
    return [dx, None, None]


def _conv_pads(node, in_size, out_size, k, strides, dilations):
    """Explicit (begin, end) pads, resolving auto_pad the way the Conv spec does."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    n = len(k)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (out_size[i] - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1 - in_size[i]) for i in range(n)]
        small = [t // 2 for t in total]
        big = [t - s for t, s in zip(total, small)]
        return (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    pads = list(node.attrs.get("pads", [0] * (2 * n)))
    return pads[:n], pads[n:]


@vjp("BatchNormalization")
def _batch_norm(b, node, g):
    x, scale, _, _, var = node.inputs[:5]
    eps = node.attrs.get("epsilon", 1e-5)
    factor_shape = [-1] + [1] * (len(x.shape) - 2)
    if all(hasattr(t, "values") for t in (scale, var)):
        factor = b.const((scale.values / np.sqrt(var.values.astype(np.float64) + eps)).reshape(factor_shape))
    else:
        factor = b.op("Div", b.fwd(scale), b.op("Sqrt", b.op("Add", b.fwd(var), b.const(eps))))
        factor = b.op("Reshape", factor, b.const(factor_shape, np.int64))
    return [b.op("Mul", g[0], factor), None, None, None, None]


# -- pooling and reductions -----------------------------------------------------


@vjp("GlobalAveragePool")
def _global_average_pool(b, node, g):
    shape = _static(node.inputs[0])
    spread = np.full([1] + shape[1:], 1.0 / np.prod(shape[2:]))
    return [b.op("Mul", g[0], b.const(spread))]


@vjp("ReduceMean", "ReduceSum")
def _reduce_mean_sum(b, node, g):
    x = node.inputs[0]
    shape = _static(x)
    axes = _reduce_axes(node, len(shape))
    if axes is None:  # noop_with_empty_axes
        return [g[0], None]
    grad = g[0] if node.attrs.get("keepdims", 1) else b.unsqueeze(g[0], axes)
    count = np.prod([shape[a] for a in axes]) if node.op == "ReduceMean" else 1
    spread = np.full([1] + shape[1:], 1.0 / count)
    return [b.op("Mul", grad, b.const(spread)), None]


def _reduce_axes(node, rank):
    if _optional_input(node, 1) is not None:
        axes = _constant_value(node, node.inputs[1]).tolist()
    else:
        axes = node.attrs.get("axes")
    if not axes:
        return None if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(a % rank for a in axes)
