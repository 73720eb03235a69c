"""Backward rules: op type -> vector-Jacobian product, written in standard ONNX ops.

A rule gets the Builder, the forward node and the gradients of the node's
outputs (None where no gradient reaches an output), and returns one gradient
per node input (None for inputs that are not differentiable, such as shapes
or indices). Rules reuse forward tensors rather than recomputing them, and
every node they emit is valid at the model's own opset.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from onnxcam.errors import UnsupportedOpError
from onnxcam.surgery.builder import NeedsStaticShape

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


def _no_gradient(b, node, g):
    return [None] * len(node.inputs)


def no_gradient(*op_types):
    """Ops whose outputs carry no gradient by nature (shapes, indices, comparisons): in the table, so that
    "which ops carry none" has one home, and a walker that meets them knows it is not a missing rule."""
    for op in op_types:
        RULES[op] = _no_gradient


def carries_no_gradient(op_type: str) -> bool:
    return RULES.get(op_type) is _no_gradient


no_gradient(
    "Shape",
    "Size",
    "ArgMax",
    "ArgMin",
    "NonZero",
    "TopK",
    "Equal",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "IsNaN",
    "IsInf",
)


def unsupported(node, why: str) -> UnsupportedOpError:
    """A rule that is missing, or exists but not for this form of the op. The message says why; how to go on
    depends on the command, so callers add their own hint (`UnsupportedOpError.reason` is the short form)."""
    reason = f"no backward rule for {node.op} (node '{node.name}'){' ' + why if why else ''}"
    where = "" if why else "; it lies between the target layer and the class score"
    return UnsupportedOpError(reason + where, op=node.op, node=node.name, reason=reason)


def _optional_input(node, i):
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


def _constant_value(node, t):
    """The value of input t: an initializer, or the output of a Constant node (torch.onnx writes those)."""
    if hasattr(t, "values"):
        return np.asarray(t.values)
    producer = t.inputs[0] if t.inputs else None
    if producer is not None and producer.op == "Constant":
        for key in ("value", "value_ints", "value_int", "value_floats", "value_float"):
            if key in producer.attrs:
                value = producer.attrs[key]
                return np.asarray(value.values if hasattr(value, "values") else value)
    raise NeedsStaticShape(t.name, "a computed value")


def _static(t):
    if t.shape is None or any(not isinstance(d, int) for d in t.shape[1:]):
        raise NeedsStaticShape(t.name, t.shape)
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
    """Guided backpropagation (Springenberg 2015) also drops negative incoming gradients: Relu(g) where y > 0.
    The mask is read off the output (y > 0 exactly where x > 0): reading the input would keep ONNX Runtime
    from fusing the activation into the Conv before it, which costs the forward pass a separate pass and two
    layout reorders."""
    y = b.fwd(node.outputs[0])
    gradient = b.op("Relu", g[0]) if b.guided else g[0]
    if _blockable(y):
        return [b.op("Mul", gradient, _step(b, y))]
    return [b.mask(gradient, b.op("Greater", y, b.const(0.0)))]


@vjp("Clip")
def _clip(b, node, g):
    """min < y < max exactly where min < x < max: read off the output, as for Relu, so Conv + Clip stay fused.
    (The blocked form of `_step` measured no faster here: it takes two steps and two Muls.)"""
    y = b.fwd(node.outputs[0])
    if b.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    else:
        lo, hi = [None if t is None else b.fwd(t) for t in (_optional_input(node, 1), _optional_input(node, 2))]
    conditions = []
    if lo is not None:
        conditions.append(b.op("Greater", y, lo))
    if hi is not None:
        conditions.append(b.op("Less", y, hi))
    if not conditions:
        return [g[0]]
    inside = conditions[0] if len(conditions) == 1 else b.op("And", *conditions)
    return [b.mask(g[0], inside)]


# ONNX Runtime's CPU provider runs Convs whose channels are a multiple of its block (8 or 16) in a blocked
# NCHWc layout, and keeps Add, Mul and Relu between such tensors in it; any other op (Greater, Cast, Where)
# costs a reorder of each input out of the layout and of its result back in. A mask made by a Conv keeps a
# whole backward pass in the layout.
NCHWC_BLOCK = 16


def _fills_blocks(shape) -> bool:
    """Whether a tensor of this shape is 4-D with channels that fill NCHWc blocks."""
    return shape is not None and len(shape) == 4 and isinstance(shape[1], int) and shape[1] % NCHWC_BLOCK == 0


def _blockable(t) -> bool:
    """Whether t is a 4-D float32 tensor whose channels fill NCHWc blocks."""
    return t.dtype is not None and np.dtype(t.dtype) == np.float32 and _fills_blocks(t.shape)


def _pointwise(b, t, channels: int, weight: float):
    """weight * t by a depthwise 1x1 Conv."""
    w = b.const(np.full([channels, 1, 1, 1], weight, np.float32))
    return b.op("Conv", t, w, group=channels, kernel_shape=[1, 1])


def _blocked(b, t, shape):
    """t itself (times 1.0 by a depthwise 1x1 Conv, exact), in ONNX Runtime's NCHWc layout from here on: a
    gradient in plain NCHW takes every Add it meets (and so a whole residual stream) out of the layout."""
    return _pointwise(b, t, shape[1], 1.0) if _fills_blocks(shape) else t


def unblocked(t):
    """t as it was before `_blocked`, where nothing reads t any more in the backward (a wanted tensor's gradient
    that the reverse pass does not carry further): there the identity Conv only costs ONNX Runtime a reorder
    into its layout, the Conv and a reorder back out."""
    node = t.inputs[0] if len(t.inputs) == 1 and not t.outputs else None
    if node is None or node.op != "Conv" or len(node.inputs) != 2:
        return t
    weight = node.inputs[1]
    channels = weight.shape[0] if isinstance(weight, gs.Constant) else None
    identity = (
        channels is not None
        and node.attrs.get("group") == channels
        and tuple(weight.shape) == (channels, 1, 1, 1)
        and np.all(weight.values == 1.0)
    )
    return node.inputs[0] if identity else t


def _step(b, y):
    """1.0 where y > 0, else 0.0, exactly and in the NCHWc layout: HardSigmoid(2^126 * 2^100 * y) = min(1,
    max(0, 2^226 y)) takes every positive float (subnormals included) to >= 1 (or inf), so to 1. ONNX Runtime
    fuses the HardSigmoid into the Conv: one pass over y."""
    return b.op("HardSigmoid", _pointwise(b, y, y.shape[1], 2.0**100), alpha=2.0**126, beta=0.0)


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
    rows = b.one_hot.get(g[0].name)
    if rows is not None and not ta and isinstance(w, gs.Constant):
        # a class's one-hot seed times the weights is that class's row of them, exactly (1 * w plus zeros):
        # a Gather reads K weights, the product all C * K of them, as many bytes as the forward's head
        da = b.op("Gather", w, rows, axis=0 if tb else 1)
        da = da if tb else b.op("Transpose", da, perm=[1, 0])
        da = da if alpha == 1.0 else b.op("Mul", da, b.const(alpha))
    elif ta:
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
    for t in (a, w, node.outputs[0]):
        if t.shape is None:
            raise NeedsStaticShape(t.name, None)
    if len(a.shape) < 2 or len(w.shape) < 2:
        raise unsupported(node, "with a 1-D operand")
    out = node.outputs[0].shape

    def swap_last(t):
        perm = list(range(len(t.shape)))
        perm[-2:] = perm[-1], perm[-2]
        return b.op("Transpose", b.fwd(t), perm=perm)

    da = b.op("MatMul", g[0], swap_last(w))
    dw = b.op("MatMul", swap_last(a), g[0])
    batch = list(out[:-2])
    return [b.unbroadcast(da, batch + list(a.shape[-2:]), a), b.unbroadcast(dw, batch + list(w.shape[-2:]), w)]


@vjp("Conv")
def _conv(b, node, g):
    x, w = node.inputs[:2]
    in_shape, out_shape, k = _static(x), _static(node.outputs[0]), _static(w)[2:]
    spatial = len(k)
    strides = node.attrs.get("strides", [1] * spatial)
    dilations = node.attrs.get("dilations", [1] * spatial)
    begin, end = _conv_pads(node, in_shape[2:], out_shape[2:], k, strides, dilations)
    group = node.attrs.get("group", 1)
    reach = [(k[i] - 1) * dilations[i] for i in range(spatial)]
    if all(reach[i] >= begin[i] for i in range(spatial)):
        if all(st == 1 for st in strides):
            return [_conv_backward_as_conv(b, g[0], w, group, dilations, reach, begin, in_shape, out_shape), None, None]
        if group > 1 and _static(w)[1] == 1:  # depthwise: ORT's ConvTranspose does a GEMM and col2im per channel
            spread, spread_shape = _spread(b, g[0], out_shape, strides)
            return [
                _conv_backward_as_conv(b, spread, w, group, dilations, reach, begin, in_shape, spread_shape),
                None,
                None,
            ]
    output_padding = [
        in_shape[2 + i] + begin[i] + end[i] - ((out_shape[2 + i] - 1) * strides[i] + reach[i] + 1)
        for i in range(spatial)
    ]
    dx = b.op(
        "ConvTranspose",
        g[0],
        b.fwd(w),
        group=group,
        strides=strides,
        dilations=dilations,
        kernel_shape=k,
        pads=begin + end,
        output_padding=output_padding,
    )
    return [_blocked(b, dx, in_shape), None, None]


def _spread(b, g, out_shape, strides):
    """g with strides - 1 zeros between its entries along each spatial axis, by a depthwise ConvTranspose of
    a 1x1 kernel of ones (cheaper than Reshape + Pad, DepthToSpace or Resize + mask); and its shape."""
    spatial, channels = len(strides), out_shape[1]
    size = [(out_shape[2 + i] - 1) * strides[i] + 1 for i in range(spatial)]
    spread = b.op(
        "ConvTranspose",
        g,
        b.const(np.ones([channels, 1] + [1] * spatial)),
        group=channels,
        strides=strides,
        kernel_shape=[1] * spatial,
    )
    return spread, out_shape[:2] + size


def _conv_backward_as_conv(b, g, w, group, dilations, reach, begin, in_shape, out_shape):
    """For stride 1, dX = Conv(g, W'): W' is W flipped in space with in and out channels swapped per group,
    the pads reach - begin before and whatever makes the input's size after (g cut short where it reaches
    past what any dX entry reads). The same sums as ConvTranspose, but ONNX Runtime's Conv kernels are far
    faster on depthwise and grouped convolutions. A strided depthwise conv comes here with g spread by `_spread`; strided dense and grouped convs keep
    ConvTranspose, which is as fast as any alternative measured there (tools/bench_conv_backward.py)."""
    m, c_per_group, *k = _static(w)
    spatial = len(k)
    flipped = b.fwd(w)
    for axis in range(2, 2 + spatial):
        flipped = _reverse(b, flipped, _static(w), axis)
    if c_per_group > 1 or m // group > 1:  # depthwise (1 and 1): W' is W flipped
        grouped = b.op("Reshape", flipped, b.const([group, m // group, c_per_group, *k], np.int64))
        swapped = b.op("Transpose", grouped, perm=[0, 2, 1] + list(range(3, 3 + spatial)))
        flipped = b.op("Reshape", swapped, b.const([group * c_per_group, m // group, *k], np.int64))
    out_size, in_size = out_shape[2:], in_shape[2:]
    used = [min(out_size[i], in_size[i] + begin[i]) for i in range(spatial)]  # dX reads g up to in + begin - 1
    if used != list(out_size):
        g = b.slice(g, [0] * spatial, used, list(range(2, 2 + spatial)))
    pads = [reach[i] - begin[i] for i in range(spatial)] + [in_size[i] - used[i] + begin[i] for i in range(spatial)]
    return b.op("Conv", g, flipped, group=group, dilations=dilations, kernel_shape=k, pads=pads)


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
    return [_blocked(b, b.op("Mul", g[0], b.const(spread)), shape)]


@vjp("ReduceMean", "ReduceSum")
def _reduce_mean_sum(b, node, g):
    x = node.inputs[0]
    shape = _static(x)
    axes = _reduce_axes(node, len(shape))
    if axes is None:  # noop_with_empty_axes
        return [g[0], None]
    if 0 in axes:  # the spread below keeps the batch axis of g (and the count would need N)
        raise unsupported(node, "over the batch axis: the score of one image would depend on the others")
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


def _str_attr(node, name, default):
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def _flat_value(node, t):
    """A constant input as a flat Python list (initializer or Constant node)."""
    return _constant_value(node, t).reshape(-1).tolist()


# -- more elementwise functions -------------------------------------------------


@vjp("Neg")
def _neg(b, node, g):
    return [b.op("Neg", g[0])]


@elementwise("Exp")
def _exp(b, node, x, y):
    return y


@vjp("Log")
def _log(b, node, g):
    return [b.op("Div", g[0], b.fwd(node.inputs[0]))]


@vjp("Sqrt")
def _sqrt(b, node, g):
    return [b.op("Div", g[0], b.op("Mul", b.fwd(node.outputs[0]), b.const(2.0)))]


@elementwise("Reciprocal")
def _reciprocal(b, node, x, y):
    return b.op("Neg", b.op("Mul", y, y))


@elementwise("Abs")
def _abs(b, node, x, y):
    return _sign(b, x)


def _sign(b, x):
    positive, negative = (b.op("Cast", b.op(op, x, b.const(0.0)), to=_dtype_code(b)) for op in ("Greater", "Less"))
    return b.op("Sub", positive, negative)


@elementwise("Softplus")
def _softplus(b, node, x, y):
    return b.op("Sigmoid", x)


@elementwise("Elu")
def _elu(b, node, x, y):
    # x > 0: 1; else alpha * exp(x) = y + alpha
    alpha = node.attrs.get("alpha", 1.0)
    return b.where(b.op("Greater", x, b.const(0.0)), b.const(1.0), b.op("Add", y, b.const(alpha)))


@elementwise("Selu")
def _selu(b, node, x, y):
    alpha = node.attrs.get("alpha", 1.67326319217681884765625)
    gamma = node.attrs.get("gamma", 1.05070102214813232421875)
    return b.where(b.op("Greater", x, b.const(0.0)), b.const(gamma), b.op("Add", y, b.const(alpha * gamma)))


@elementwise("Celu")
def _celu(b, node, x, y):
    alpha = node.attrs.get("alpha", 1.0)
    inside = b.op("Exp", b.op("Div", x, b.const(alpha)))
    return b.where(b.op("Greater", x, b.const(0.0)), b.const(1.0), inside)


@elementwise("ThresholdedRelu")
def _thresholded_relu(b, node, x, y):
    return b.op("Cast", b.op("Greater", x, b.const(node.attrs.get("alpha", 1.0))), to=_dtype_code(b))


@elementwise("Mish")
def _mish(b, node, x, y):
    # y = x tanh(softplus(x)): dy/dx = t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x))
    t = b.op("Tanh", b.op("Softplus", x))
    return b.op("Add", t, b.op("Mul", b.op("Mul", x, b.op("Sigmoid", x)), b.op("Sub", b.const(1.0), b.op("Mul", t, t))))


@elementwise("Gelu")
def _gelu(b, node, x, y):
    return gelu_slope(b, x, tanh=_str_attr(node, "approximate", "none") == "tanh")


def gelu_slope(b, x, tanh: bool):
    """dGelu/dx, exact (erf) or of the tanh approximation."""
    if tanh:
        # y = x (1 + tanh(u)) / 2, u = c (x + 0.044715 x^3): dy/dx = (1 + t) / 2 + x (1 - t^2) u' / 2
        c = math.sqrt(2.0 / math.pi)
        x2 = b.op("Mul", x, x)
        u = b.op("Mul", b.op("Add", x, b.op("Mul", b.op("Mul", x2, x), b.const(0.044715))), b.const(c))
        du = b.op("Add", b.op("Mul", x2, b.const(3 * 0.044715 * c)), b.const(c))
        t = b.op("Tanh", u)
        half_x_du = b.op("Mul", b.op("Mul", x, du), b.const(0.5))
        return b.op(
            "Add",
            b.op("Mul", b.op("Add", t, b.const(1.0)), b.const(0.5)),
            b.op("Mul", half_x_du, b.op("Sub", b.const(1.0), b.op("Mul", t, t))),
        )
    # y = x Phi(x): dy/dx = Phi(x) + x phi(x)
    phi = b.op("Mul", b.op("Exp", b.op("Mul", b.op("Mul", x, x), b.const(-0.5))), b.const(1.0 / math.sqrt(2 * math.pi)))
    erf = b.op("Erf", b.op("Mul", x, b.const(1.0 / math.sqrt(2.0))))
    cdf = b.op("Mul", b.op("Add", erf, b.const(1.0)), b.const(0.5))
    return b.op("Add", cdf, b.op("Mul", x, phi))


@vjp("Pow")
def _pow(b, node, g):
    x, p = node.inputs
    out = node.outputs[0].shape
    xf, y = b.fwd(x), b.fwd(node.outputs[0])
    try:
        exponent = _constant_value(node, p).astype(np.float64)
    except NeedsStaticShape:
        exponent = None
    if exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0:
        slope = b.op("Mul", xf, b.const(2.0))  # the common x^2 (LayerNorm written out): exact, no Pow
    elif exponent is not None:
        slope = b.op("Mul", b.op("Pow", xf, b.const(exponent - 1.0)), b.const(exponent))
    else:  # an exponent computed in the graph (it may be an integer tensor from opset 12)
        pf = b.op("Cast", p, to=_dtype_code(b)) if np.dtype(p.dtype or np.float32).kind != "f" else b.fwd(p)
        slope = b.op("Mul", b.op("Pow", xf, b.op("Sub", pf, b.const(1.0))), pf)
    dx = b.unbroadcast(b.op("Mul", g[0], slope), out, x)
    dp = b.unbroadcast(b.op("Mul", g[0], b.op("Mul", y, b.op("Log", xf))), out, p)  # used only if p is on the path
    return [dx, dp]


@vjp("PRelu")
def _prelu(b, node, g):
    x, slope = node.inputs
    out = node.outputs[0].shape
    xf, sf = b.fwd(x), b.fwd(slope)
    positive = b.op("Greater", xf, b.const(0.0))
    dx = b.where(positive, g[0], b.op("Mul", g[0], sf))
    dslope = b.unbroadcast(b.where(positive, b.const(0.0), b.op("Mul", g[0], xf)), out, slope)
    return [b.unbroadcast(dx, out, x), dslope]


@vjp("Cast", "CastLike")
def _cast(b, node, g):
    # Reached only when the output is a float (integer and bool tensors carry no gradient); the
    # gradient stays float32 whatever the float type of the input.
    return [g[0], None]


@vjp("Where")
def _where(b, node, g):
    condition, a, c = node.inputs
    out = node.outputs[0].shape
    zero = b.const(0.0)
    return [
        None,
        b.unbroadcast(b.op("Where", condition, g[0], zero), out, a),
        b.unbroadcast(b.op("Where", condition, zero, g[0]), out, c),
    ]


@vjp("Sum", "Mean")
def _sum_mean(b, node, g):
    out = node.outputs[0].shape
    grad = g[0] if node.op == "Sum" else b.op("Mul", g[0], b.const(1.0 / len(node.inputs)))
    return [b.unbroadcast(grad, out, x) for x in node.inputs]


@vjp("Max", "Min")
def _max_min(b, node, g):
    """The gradient goes to the input that gives the output; on a tie to the first such input."""
    out = node.outputs[0].shape
    y = b.fwd(node.outputs[0])
    beyond = "Less" if node.op == "Max" else "Greater"  # no input lies beyond the output: equal = not beyond
    taken, grads = None, []
    for x in node.inputs:
        hit = b.op("Not", b.op(beyond, b.fwd(x), y))
        first = hit if taken is None else b.op("And", hit, b.op("Not", taken))
        taken = hit if taken is None else b.op("Or", taken, hit)
        grads.append(b.unbroadcast(b.mask(g[0], first), out, x))
    return grads


# -- softmax and normalization --------------------------------------------------


def _softmax_axes(b, node, rank):
    """Opset 13 normalizes along one axis; before, the input is coerced to 2-D at `axis` (default 1). The opset is
    the model's, or the `opset` attribute of a QLinearSoftmax's stand-in (vjp_quantized.py)."""
    opset = node.attrs.get("opset", b.opset)
    axis = node.attrs.get("axis", -1 if opset >= 13 else 1) % rank
    return [axis] if opset >= 13 else list(range(axis, rank))


@vjp("Softmax")
def _softmax(b, node, g):
    y = b.fwd(node.outputs[0])
    axes = _softmax_axes(b, node, len(node.inputs[0].shape))
    inner = b.reduce_sum(b.op("Mul", g[0], y), axes, keepdims=True)
    return [b.op("Mul", y, b.op("Sub", g[0], inner))]


@vjp("LogSoftmax")
def _log_softmax(b, node, g):
    y = b.fwd(node.outputs[0])
    axes = _softmax_axes(b, node, len(node.inputs[0].shape))
    total = b.reduce_sum(g[0], axes, keepdims=True)
    return [b.op("Sub", g[0], b.op("Mul", b.op("Exp", y), total))]


def _normalize_backward(b, x, axes, epsilon, dxhat):
    """d/dx of xhat = (x - mean) / sqrt(var + eps) over `axes`, given dL/dxhat; also returns xhat."""
    mean = b.reduce("ReduceMean", x, axes)
    centered = b.op("Sub", x, mean)
    var = b.reduce("ReduceMean", b.op("Mul", centered, centered), axes)
    rstd = b.op("Div", b.const(1.0), b.op("Sqrt", b.op("Add", var, b.const(epsilon))))
    xhat = b.op("Mul", centered, rstd)
    mean_d = b.reduce("ReduceMean", dxhat, axes)
    mean_dx = b.reduce("ReduceMean", b.op("Mul", dxhat, xhat), axes)
    inner = b.op("Sub", b.op("Sub", dxhat, mean_d), b.op("Mul", xhat, mean_dx))
    return b.op("Mul", rstd, inner), xhat


@vjp("InstanceNormalization")
def _instance_norm(b, node, g):
    x, scale, bias = node.inputs
    rank = len(x.shape)
    per_channel = [-1] + [1] * (rank - 2)
    gamma = b.op("Reshape", b.fwd(scale), b.const(per_channel, np.int64))
    eps = node.attrs.get("epsilon", 1e-5)
    dx, xhat = _normalize_backward(b, b.fwd(x), range(2, rank), eps, b.op("Mul", g[0], gamma))
    others = [0] + list(range(2, rank))
    dscale = b.reduce_sum(b.op("Mul", g[0], xhat), others, keepdims=False)
    return [dx, dscale, b.reduce_sum(g[0], others, keepdims=False)]


@vjp("LayerNormalization")
def _layer_norm(b, node, g):
    if any(t is not None for t in g[1:]):
        raise unsupported(node, "for its Mean and InvStdDev outputs (only Y is differentiated)")
    x, scale = node.inputs[:2]
    rank = len(x.shape)
    axis = node.attrs.get("axis", -1) % rank
    out = node.outputs[0].shape
    dx, xhat = _normalize_backward(
        b, b.fwd(x), range(axis, rank), node.attrs.get("epsilon", 1e-5), b.op("Mul", g[0], b.fwd(scale))
    )
    grads = [dx, b.unbroadcast(b.op("Mul", g[0], xhat), out, scale)]
    if _optional_input(node, 2) is not None:
        grads.append(b.unbroadcast(g[0], out, node.inputs[2]))
    return grads


@vjp("LRN")
def _lrn(b, node, g):
    """y = x d^-beta, d = bias + alpha/size * S(x^2), S the sum over channels c - (size-1)//2 .. c + size//2:
    dx = g d^-beta - 2 alpha beta/size * x * S^T(g y / d). S^T sums the mirrored window (for even sizes
    the two extents differ, so they swap)."""
    x, y = b.fwd(node.inputs[0]), b.fwd(node.outputs[0])
    size = int(node.attrs["size"])
    alpha, beta, bias = (node.attrs.get(k, v) for k, v in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    rank, channels = len(node.inputs[0].shape), _static_dim(node, node.inputs[0].shape, 1)
    below, above = (size - 1) // 2, size // 2
    square_sum = _channel_window_sum(b, b.op("Mul", x, x), rank, channels, below, above)
    d = b.op("Add", b.op("Mul", square_sum, b.const(alpha / size)), b.const(bias))
    back = _channel_window_sum(b, b.op("Div", b.op("Mul", g[0], y), d), rank, channels, above, below)
    cross = b.op("Mul", b.op("Mul", x, back), b.const(2.0 * alpha * beta / size))
    return [b.op("Sub", b.op("Mul", g[0], b.op("Pow", d, b.const(-beta))), cross)]


def _channel_window_sum(b, t, rank, channels, below, above):
    """s[:, c] = sum of t[:, c - below .. c + above] (channels outside count 0): a zero Pad on the channel
    axis, one Slice per offset, one Sum. Exact float32 adds, valid at every opset."""
    begins, ends = [0] * rank, [0] * rank
    begins[1], ends[1] = below, above
    padded = b.pad(t, begins, ends)
    return b.op("Sum", *(b.slice(padded, [j], [j + channels], [1]) for j in range(below + above + 1)))


# -- reductions with a selection -------------------------------------------------


def _keep_reduced_dims(b, node, t, axes):
    return t if node.attrs.get("keepdims", 1) else b.unsqueeze(t, axes)


@vjp("ReduceMax", "ReduceMin")
def _reduce_max_min(b, node, g):
    """The gradient goes to the extreme entries, split evenly among ties (the subgradient that
    treats tied entries alike; ties do not happen with float activations in practice)."""
    x = node.inputs[0]
    axes = _reduce_axes(node, len(x.shape))
    if axes is None:  # noop_with_empty_axes
        return [g[0], None]
    y = _keep_reduced_dims(b, node, b.fwd(node.outputs[0]), axes)
    grad = _keep_reduced_dims(b, node, g[0], axes)
    return [_spread_to_extremes(b, b.fwd(x), y, grad, axes, node.op == "ReduceMax"), None]


@vjp("GlobalMaxPool")
def _global_max_pool(b, node, g):
    x = node.inputs[0]
    return [_spread_to_extremes(b, b.fwd(x), b.fwd(node.outputs[0]), g[0], range(2, len(x.shape)), True)]


def _spread_to_extremes(b, x, y, g, axes, is_max):
    hit = b.op("Not", b.op("Less" if is_max else "Greater", x, y))  # x == y; Equal takes floats only from opset 11
    hit = b.op("Cast", hit, to=_dtype_code(b))
    count = b.reduce_sum(hit, axes, keepdims=True)
    return b.op("Mul", hit, b.op("Div", g, count))


@vjp("ReduceSumSquare", "ReduceL2", "ReduceL1", "ReduceLogSumExp")
def _reduce_norms(b, node, g):
    x = node.inputs[0]
    axes = _reduce_axes(node, len(x.shape))
    xf = b.fwd(x)
    if axes is None:  # noop_with_empty_axes: the op is elementwise
        axes, y, grad = [], b.fwd(node.outputs[0]), g[0]
    else:
        y = _keep_reduced_dims(b, node, b.fwd(node.outputs[0]), axes)
        grad = _keep_reduced_dims(b, node, g[0], axes)
    if node.op == "ReduceSumSquare":
        slope = b.op("Mul", xf, b.const(2.0))
    elif node.op == "ReduceL2":
        slope = b.op("Div", xf, y)
    elif node.op == "ReduceL1":
        slope = _sign(b, xf)
    else:  # d/dx log sum exp(x) = exp(x - y)
        slope = b.op("Exp", b.op("Sub", xf, y))
    return [b.op("Mul", grad, slope), None]


# -- placing and taking slices (pure data movement: exact, deterministic) -------


def _place(b, g, shape, axis, size, start, step):
    """Zeros of length `size` on `axis`, with g's entries j at start + j * step (step > 0); entries
    that fall outside [0, size) are dropped. `shape` is g's shape (static except the batch axis);
    returns the result and its shape, or (None, shape) when nothing lands inside."""
    length = shape[axis]
    kept = [j for j in range(length) if 0 <= start + j * step < size]
    new_shape = list(shape)
    new_shape[axis] = size
    if not kept:
        return None, new_shape
    j0, j1 = kept[0], kept[-1] + 1
    if (j0, j1) != (0, length):
        g = b.slice(g, [j0], [j1], [axis])
    n, first = j1 - j0, start + j0 * step
    if step > 1 and n > 1:  # interleave step - 1 zeros: [.., n, ..] -> [.., n, step, ..] -> [.., n * step, ..]
        assert axis > 0, "interleaving along the batch axis"
        rank = len(shape)
        gaps = [0] * (axis + 1) + [step - 1] + [0] * (rank - axis - 1)
        spread = b.pad(b.unsqueeze(g, [axis + 1]), [0] * (rank + 1), gaps)
        merged = [0] + [int(d) for d in shape[1:axis]] + [-1] + [int(d) for d in shape[axis + 1 :]]
        g = b.slice(b.op("Reshape", spread, b.const(merged, np.int64)), [0], [(n - 1) * step + 1], [axis])
    extent = (n - 1) * step + 1
    rank = len(shape)
    begins, ends = [0] * rank, [0] * rank
    begins[axis], ends[axis] = first, size - first - extent
    if first or ends[axis]:
        g = b.pad(g, begins, ends)
    return g, new_shape


def _take(b, t, shape, axis, start, count, step):
    """t[.., start : start + count * step : step, ..] along a static axis (any opset)."""
    if b.opset >= 10 or step == 1:
        return b.slice(t, [start], [start + (count - 1) * step + 1], [axis], [step] if step != 1 else None)
    # Before opset 10 Slice has no steps: take count * step entries, fold them to [count, step], keep column 0.
    # The caller pads t so that start + count * step <= shape[axis].
    t = b.slice(t, [start], [start + count * step], [axis])
    folded = [0] + [int(d) for d in shape[1:axis]] + [count, step] + [int(d) for d in shape[axis + 1 :]]
    t = b.slice(b.op("Reshape", t, b.const(folded, np.int64)), [0], [1], [axis + 1])
    out = [0] + [int(d) for d in shape[1:axis]] + [count] + [int(d) for d in shape[axis + 1 :]]
    return b.op("Reshape", t, b.const(out, np.int64))


def _reverse(b, t, shape, axis):
    """t reversed along a static axis (Gather: valid at every opset)."""
    return b.op("Gather", t, b.const(np.arange(shape[axis])[::-1].copy(), np.int64), axis=axis)


def _static_dim(node, shape, axis):
    if shape is None:
        raise NeedsStaticShape(node.inputs[0].name, None)
    d = shape[axis]
    if not isinstance(d, int):
        raise unsupported(node, f"along axis {axis} of symbolic size '{d}' (the batch axis)")
    return d


@vjp("Concat")
def _concat(b, node, g):
    rank = len(node.outputs[0].shape)
    axis = node.attrs["axis"] % rank
    grads, offset = [], 0
    for x in node.inputs:
        size = _static_dim(node, x.shape, axis)
        grads.append(b.slice(g[0], [offset], [offset + size], [axis]))
        offset += size
    return grads


@vjp("Split")
def _split(b, node, g):
    """Outputs without a gradient contribute zeros: each gradient is padded to the input's extent, then summed."""
    x = node.inputs[0]
    rank = len(x.shape)
    axis = node.attrs.get("axis", 0) % rank
    size = _static_dim(node, x.shape, axis)
    parts, offset = [], 0
    for out, grad in zip(node.outputs, g):
        length = _static_dim(node, out.shape, axis)
        if grad is not None:
            placed, _ = _place(b, grad, list(out.shape), axis, size, offset, 1)
            parts.append(placed)
        offset += length
    total = parts[0] if len(parts) == 1 else b.op("Sum", *parts)
    return [total] + [None] * (len(node.inputs) - 1)


@vjp("Slice")
def _slice(b, node, g):
    x = node.inputs[0]
    shape = list(node.outputs[0].shape)
    rank = len(shape)
    if b.opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes"), None
    else:
        starts, ends = (_flat_value(node, t) for t in node.inputs[1:3])
        axes = _flat_value(node, node.inputs[3]) if _optional_input(node, 3) is not None else None
        steps = _flat_value(node, node.inputs[4]) if _optional_input(node, 4) is not None else None
    axes = list(range(len(starts))) if axes is None else [a % rank for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    grad = g[0]
    for axis, start, end, step in zip(axes, starts, ends, steps):
        dim = x.shape[axis]
        if not isinstance(dim, int):  # the batch axis: fine if the slice keeps all of it
            if step == 1 and start in (0, -(2**63)) and end >= 2**31 - 1:
                continue
            raise unsupported(node, f"along the batch axis {axis}")
        index = np.arange(dim)[slice(int(start), int(end), int(step))]
        if step < 0:  # the gradient of a reversed slice is the reversed gradient, placed with step |step|
            grad, index = _reverse(b, grad, shape, axis), index[::-1]
        if len(index) == dim and abs(step) == 1:
            continue
        grad, shape = _place(b, grad, shape, axis, dim, int(index[0]), abs(int(step)))
    return [grad] + [None] * (len(node.inputs) - 1)


@vjp("Pad")
def _pad(b, node, g):
    x = node.inputs[0]
    rank = len(x.shape)
    mode = _str_attr(node, "mode", "constant")
    pads = node.attrs["pads"] if b.opset < 11 else _flat_value(node, node.inputs[1])
    axes = list(range(rank))
    if b.opset >= 18 and _optional_input(node, 3) is not None:
        axes = [a % rank for a in _flat_value(node, node.inputs[3])]
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begins[a], ends[a] = int(pads[i]), int(pads[i + len(axes)])
    grad, shape = g[0], list(node.outputs[0].shape)
    for a in range(rank):
        pb, pe = begins[a], ends[a]
        if not pb and not pe:
            continue
        dim = _static_dim(node, x.shape, a)
        if mode != "constant" and (pb < 0 or pe < 0):
            raise unsupported(node, f"in {mode} mode with negative pads")
        # the entries of x that survive on this axis: x[lo:hi] sits at lo + pb .. hi + pb of the output
        lo, hi = max(0, -pb), min(dim, shape[a] - pb)
        center = b.slice(grad, [lo + pb], [hi + pb], [a])
        parts = [_place(b, center, _resized(shape, a, hi - lo), a, dim, lo, 1)[0]]
        if mode == "edge":
            for start, length, at in ((0, pb, 0), (pb + dim, pe, dim - 1)):
                if length:
                    edge = b.reduce_sum(b.slice(grad, [start], [start + length], [a]), [a], keepdims=True)
                    parts.append(_place(b, edge, _resized(shape, a, 1), a, dim, at, 1)[0])
        elif mode == "reflect":
            if pb >= dim or pe >= dim:
                raise unsupported(node, f"in reflect mode with pads {pb}, {pe} not below the size {dim} of axis {a}")
            for start, length, at in ((0, pb, 1), (pb + dim, pe, dim - 1 - pe)):
                if length:
                    part = _reverse(b, b.slice(grad, [start], [start + length], [a]), _resized(shape, a, length), a)
                    parts.append(_place(b, part, _resized(shape, a, length), a, dim, at, 1)[0])
        elif mode == "wrap":
            if pb > dim or pe > dim:
                raise unsupported(node, f"in wrap mode with pads {pb}, {pe} above the size {dim} of axis {a}")
            for start, length, at in ((0, pb, dim - pb), (pb + dim, pe, 0)):
                if length:
                    part = b.slice(grad, [start], [start + length], [a])
                    parts.append(_place(b, part, _resized(shape, a, length), a, dim, at, 1)[0])
        elif mode != "constant":
            raise unsupported(node, f"in mode '{mode}'")
        grad = parts[0] if len(parts) == 1 else b.op("Sum", *parts)
        shape = _resized(shape, a, dim)
    return [grad] + [None] * (len(node.inputs) - 1)


def _resized(shape, axis, size):
    shape = list(shape)
    shape[axis] = size
    return shape


@vjp("Expand")
def _expand(b, node, g):
    return [b.unbroadcast(g[0], node.outputs[0].shape, node.inputs[0]), None]


@vjp("Tile")
def _tile(b, node, g):
    """Sum the tiles: [.., r * d, ..] -> [.., r, d, ..] -> ReduceSum over r."""
    x = node.inputs[0]
    repeats = [int(r) for r in _flat_value(node, node.inputs[1])]
    shape = list(x.shape)
    if repeats[0] != 1:
        raise unsupported(node, "with repeats along the batch axis")
    folded, summed = [0], []
    for a in range(1, len(shape)):
        folded += [repeats[a], shape[a]] if repeats[a] != 1 else [shape[a]]
        if repeats[a] != 1:
            summed.append(len(folded) - 2)
    if not summed:
        return [g[0], None]
    grad = b.op("Reshape", g[0], b.const(folded, np.int64))
    return [b.reduce_sum(grad, summed, keepdims=False), None]


# -- transposed convolution, pooling, resizing ------------------------------------


@vjp("ConvTranspose")
def _conv_transpose(b, node, g):
    """dX = Conv(dY, W) with the same group, strides, dilations and begin pads; the end pads are what makes
    the result as long as X (ConvTranspose's output_padding and end pads cut dY's tail)."""
    x, w = node.inputs[:2]
    in_shape, out_shape, k = _static(x), _static(node.outputs[0]), _static(w)[2:]
    n = len(k)
    strides = node.attrs.get("strides", [1] * n)
    dilations = node.attrs.get("dilations", [1] * n)
    output_padding = node.attrs.get("output_padding", [0] * n)
    auto_pad = _str_attr(node, "auto_pad", "NOTSET")
    full = [(in_shape[2 + i] - 1) * strides[i] + output_padding[i] + (k[i] - 1) * dilations[i] + 1 for i in range(n)]
    if "output_shape" in node.attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if auto_pad != "NOTSET" and "output_shape" not in node.attrs and any(output_padding):
            raise unsupported(
                node, "with auto_pad SAME and output_padding (ONNX shape inference and ORT disagree on the output size)"
            )
        # as ORT and the spec do: the odd pad goes to the end for SAME_UPPER, to the beginning otherwise
        total = [full[i] - out_shape[2 + i] for i in range(n)]
        if any(t < 0 for t in total):
            raise unsupported(node, f"with an output_shape beyond the full output ({total})")
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
    elif auto_pad == "VALID":
        begin = [0] * n
    else:
        begin = list(node.attrs.get("pads", [0] * (2 * n)))[:n]
    # dY's entries o = i * s + kk * d - begin; Conv reads o up to (I - 1) s + (k - 1) d - begin
    end = [
        max(0, (in_shape[2 + i] - 1) * strides[i] + (k[i] - 1) * dilations[i] - begin[i] - out_shape[2 + i] + 1)
        for i in range(n)
    ]
    dx = b.op(
        "Conv",
        g[0],
        b.fwd(w),
        group=node.attrs.get("group", 1),
        strides=strides,
        dilations=dilations,
        kernel_shape=k,
        pads=begin + end,
    )
    size = [(out_shape[2 + i] + begin[i] + end[i] - (k[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(n)]
    if size != in_shape[2:]:  # dY reaches past X's last window (output_padding >= stride): cut
        dx = b.slice(dx, [0] * n, in_shape[2:], list(range(2, 2 + n)))
    return [dx, None, None]


def _pool_geometry(node):
    """Static shapes, kernel, strides, dilations and explicit begin pads of a pooling node."""
    x = node.inputs[0]
    in_shape, out_shape = _static(x), _static(node.outputs[0])
    k = list(node.attrs["kernel_shape"])
    n = len(k)
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    begin, _ = _conv_pads(node, in_shape[2:], out_shape[2:], k, strides, dilations)
    return in_shape, out_shape, k, strides, dilations, begin


@vjp("MaxPool")
def _max_pool(b, node, g):
    """Each window's gradient goes to its first maximum (row-major), the element ORT's MaxPool returns.
    Opset 16+: MaxPool's Indices (flat over N*C*H*W) and ScatterElements(reduction="add") into zeros from
    ConstantOfShape (a fill; Expand of a zero copies it element by element). Cheaper formulations measured
    slower on ResNet-50's stem pool (tools/bench_pool_backward.py). Before: per window offset, a mask of
    where the maximum sits, placed by strided zero-interleaving."""
    if any(t is not None for t in g[1:]):
        raise unsupported(node, "for its Indices output")
    xf = b.fwd(node.inputs[0])
    if b.opset >= 16:
        attrs = {k: v for k, v in node.attrs.items() if k != "storage_order"}  # row-major indices
        _, indices = b.ops("MaxPool", xf, outputs=2, **attrs)
        flat = b.op("Reshape", xf, b.const([-1], np.int64))
        zeros = b.op("ConstantOfShape", b.op("Shape", flat))  # float32 zeros
        grad = b.op(
            "ScatterElements",
            zeros,
            b.op("Reshape", indices, b.const([-1], np.int64)),
            b.op("Reshape", g[0], b.const([-1], np.int64)),
            axis=0,
            reduction="add",
        )
        return [b.reshape_like(grad, node.inputs[0])]
    in_shape, out_shape, k, strides, dilations, begin = _pool_geometry(node)
    spatial = range(len(k))
    # pad with -inf so that windows never pick padding; cover every window (ceil_mode) and, for the
    # fold in _take before opset 10, count * stride entries from the last offset
    padded = [
        max(begin[i] + in_shape[2 + i], (k[i] - 1) * dilations[i] + out_shape[2 + i] * strides[i]) for i in spatial
    ]
    ends = [padded[i] - begin[i] - in_shape[2 + i] for i in spatial]
    xp = b.pad(xf, [0, 0] + begin, [0, 0] + ends, value=-np.inf)
    padded_shape = in_shape[:2] + padded
    y = b.fwd(node.outputs[0])
    taken, parts = None, []
    for offset in itertools.product(*(range(size) for size in k)):
        patch, shape = xp, list(padded_shape)
        for i in spatial:
            patch = _take(b, patch, shape, 2 + i, offset[i] * dilations[i], out_shape[2 + i], strides[i])
            shape[2 + i] = out_shape[2 + i]
        hit = b.op("Not", b.op("Less", patch, y))  # patch == max; Equal takes floats only from opset 11
        first = hit if taken is None else b.op("And", hit, b.op("Not", taken))
        taken = hit if taken is None else b.op("Or", taken, hit)
        part, shape = b.mask(g[0], first), list(out_shape)
        for i in spatial:
            start = offset[i] * dilations[i] - begin[i]
            part, shape = _place(b, part, shape, 2 + i, in_shape[2 + i], start, strides[i])
            if part is None:
                break
        if part is not None:
            parts.append(part)
    return [parts[0] if len(parts) == 1 else b.op("Sum", *parts)]


@vjp("AveragePool")
def _average_pool(b, node, g):
    """dX = grouped ConvTranspose of dY / divisor with a kernel of ones. The divisor of each window is read
    off AveragePool itself (ORT folds it once): AveragePool(ones) = valid count / divisor."""
    in_shape, out_shape, k, strides, dilations, begin = _pool_geometry(node)
    n, channels = len(k), in_shape[1]
    valid = np.ones([], np.float64)
    for i in range(n):  # how many entries of each window lie inside X, per axis, multiplied out
        taps = (np.arange(out_shape[2 + i]) * strides[i] - begin[i])[:, None] + np.arange(k[i]) * dilations[i]
        valid = np.multiply.outer(valid, ((taps >= 0) & (taps < in_shape[2 + i])).sum(axis=1))
    ones = b.const(np.ones([1, 1] + in_shape[2:]))
    attrs = dict(node.attrs)
    reciprocal = b.op("Div", b.op("AveragePool", ones, **attrs), b.const(np.maximum(valid, 1.0)))
    full = [(out_shape[2 + i] - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1 for i in range(n)]
    end = [max(0, full[i] - begin[i] - in_shape[2 + i]) for i in range(n)]
    output_padding = [max(0, in_shape[2 + i] + begin[i] - full[i]) for i in range(n)]
    extra = {"dilations": dilations} if any(d != 1 for d in dilations) else {}
    dx = b.op(
        "ConvTranspose",
        b.op("Mul", g[0], reciprocal),
        b.const(np.ones([channels, 1] + k)),
        group=channels,
        strides=strides,
        kernel_shape=k,
        pads=begin + end,
        output_padding=output_padding,
        **extra,
    )
    return [dx]


@vjp("Resize", "Upsample")
def _resize(b, node, g):
    """Resize is linear in X and separable: per resized axis, dX = dY contracted (MatMul) with that axis's
    interpolation matrix. The matrix is the node's own resize of a batch of unit vectors along the axis,
    so it follows every mode, coordinate transformation and rounding rule exactly as the runtime does
    (ORT folds it to a constant once)."""
    x = node.inputs[0]
    in_shape, out_shape = _static(x), _static(node.outputs[0])
    rank = len(in_shape)
    if _str_attr(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise unsupported(
            node,
            "with coordinate_transformation_mode tf_crop_and_resize (points outside the "
            "region take extrapolation_value: not linear in X)",
        )
    if _str_attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise unsupported(node, "with keep_aspect_ratio_policy other than stretch")
    scales = _resize_scales(b, node, rank)
    grad = g[0]
    for a in range(rank):
        if in_shape[a] == out_shape[a] and (scales is None or scales[a] == 1.0):
            continue
        if a == 0:  # the batch axis: symbolic, shape inference may rename it
            if (scales[0] == 1.0) if scales is not None else not isinstance(out_shape[0], int):
                continue
            raise unsupported(node, "along the batch axis")
        m = _interpolation_matrix(b, node, rank, a, in_shape[a], out_shape[a], scales)  # [in, out]
        if a == rank - 2:  # [in, out] @ [.., out, W]
            grad = b.op("MatMul", m, grad)
        else:  # move the axis last: [.., out] @ [out, in]
            perm = [i for i in range(rank) if i != a] + [a]
            moved = grad if a == rank - 1 else b.op("Transpose", grad, perm=perm)
            moved = b.op("MatMul", moved, b.op("Transpose", m, perm=[1, 0]))
            grad = moved if a == rank - 1 else b.op("Transpose", moved, perm=[int(i) for i in np.argsort(perm)])
    return [grad] + [None] * (len(node.inputs) - 1)


def _resize_scales(b, node, rank):
    """Per-axis scales when the node gives scales (they, not the sizes, set the coordinate mapping); None for sizes."""
    if node.op == "Upsample" and b.opset < 9:
        return [float(s) for s in node.attrs["scales"]]
    if node.op == "Upsample" or b.opset < 11:
        return [float(s) for s in _flat_value(node, node.inputs[1])]
    t = _optional_input(node, 2)
    values = _flat_value(node, t) if t is not None else []
    if not values:
        return None
    axes = node.attrs.get("axes")
    if axes is None:
        return [float(s) for s in values]
    full = [1.0] * rank
    for a, s in zip(axes, values):
        full[a % rank] = float(s)
    return full


def _interpolation_matrix(b, node, rank, axis, size_in, size_out, scales):
    """M [in, out]: M[i, o] = weight of input i in output o along `axis`, by resizing unit vectors."""
    shape = [1] * rank
    shape[0] = shape[axis] = size_in
    eye = b.const(np.eye(size_in).reshape(shape))
    attrs = {k: v for k, v in node.attrs.items() if k not in ("axes", "keep_aspect_ratio_policy", "scales")}
    empty = b.const(np.zeros(0)) if b.opset < 13 else gs.Variable.empty()
    if scales is not None:
        axis_scales = np.ones(rank, np.float32)
        axis_scales[axis] = scales[axis]
        if node.op == "Upsample" and b.opset < 9:
            out = b.op("Upsample", eye, scales=[float(s) for s in axis_scales], **attrs)
        elif node.op == "Upsample" or b.opset < 11:
            out = b.op(node.op, eye, b.const(axis_scales), **attrs)
        else:
            out = b.op("Resize", eye, empty, b.const(axis_scales), **attrs)
    else:
        sizes = list(shape)
        sizes[axis] = size_out
        out = b.op(
            "Resize", eye, empty, b.const(np.zeros(0)) if b.opset < 13 else empty, b.const(sizes, np.int64), **attrs
        )
    return b.op("Reshape", out, b.const([size_in, size_out], np.int64))
