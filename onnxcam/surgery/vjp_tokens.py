"""Backward rules for the ops of transformer graphs: token selection, Einsum, and the fused ops that ONNX
Runtime's transformer optimizer writes (com.microsoft Gelu, FastGelu, BiasGelu, QuickGelu,
SkipLayerNormalization). Registered in the one table, `vjp.RULES`; checked against finite differences in
tests/surgery/test_vjp_tokens.py.
"""

from __future__ import annotations

import numpy as np

from onnxcam.surgery.builder import NeedsStaticShape
from onnxcam.surgery.vjp import (
    _constant_value,
    _normalize_backward,
    _optional_input,
    _str_attr,
    gelu_slope,
    unsupported,
    vjp,
)


@vjp("Gather")
def _gather(b, node, g):
    """y = x.take(indices, axis) with constant indices: dx = g summed into the picked positions, as a MatMul of g
    (the index axis moved last) with a constant one-hot [indices, size] matrix; repeated indices add up."""
    data, indices = node.inputs
    if data.shape is None:
        raise NeedsStaticShape(data.name, None)
    rank = len(data.shape)
    axis = node.attrs.get("axis", 0) % rank
    if axis == 0 and not isinstance(data.shape[0], int):  # a leading axis of known size is not the batch (qkv)
        raise unsupported(node, "along the batch axis: the score of one image would depend on the others")
    size = data.shape[axis]
    if not isinstance(size, int):
        raise NeedsStaticShape(data.name, data.shape)
    picked = _constant_value(node, indices).astype(np.int64)
    picked = np.where(picked < 0, picked + size, picked)
    flat = picked.reshape(-1)
    hot = np.zeros((flat.size, size), np.float32)
    hot[np.arange(flat.size), flat] = 1.0
    grad = g[0]
    if picked.ndim == 0:
        grad = b.unsqueeze(grad, [axis])
    elif picked.ndim > 1:  # the index axes as one
        out = node.outputs[0].shape
        if out is None or any(not isinstance(d, int) for d in out[1:]):
            raise NeedsStaticShape(node.outputs[0].name, out)
        merged = [0] + list(out[1:axis]) + [flat.size] + list(out[axis + picked.ndim :])
        grad = b.op("Reshape", grad, b.const(merged, np.int64))
    perm = [i for i in range(rank) if i != axis] + [axis]
    summed = b.op("MatMul", b.op("Transpose", grad, perm=perm), b.const(hot))
    return [b.op("Transpose", summed, perm=[int(i) for i in np.argsort(perm)]), None]


@vjp("Einsum")
def _einsum(b, node, g):
    """Each operand's gradient is the Einsum of the output gradient with the other operands, subscripts
    swapped: 'ij,jk->ik' gives dA = 'ik,jk->ij' and dB = 'ik,ij->jk'. Without ellipses, repeated
    subscripts within an operand (diagonals) or subscripts summed inside one operand only."""
    equation = _str_attr(node, "equation", "").replace(" ", "")
    lhs, _, out = equation.partition("->")
    terms = lhs.split(",")
    if not _:
        once = [c for c in sorted(set(lhs.replace(",", ""))) if lhs.count(c) == 1]
        out = "".join(once)
    if "." in equation or any(len(set(t)) != len(t) for t in terms):
        raise unsupported(node, f"with the equation '{equation}' (ellipses or repeated subscripts)")
    grads = []
    for i, term in enumerate(terms):
        others = [t for j, t in enumerate(terms) if j != i]
        if set(term) - set(out) - set("".join(others)):
            raise unsupported(node, f"with the equation '{equation}' (a subscript summed inside one operand)")
        inputs = [b.fwd(t) for j, t in enumerate(node.inputs) if j != i]
        grads.append(b.op("Einsum", g[0], *inputs, equation=",".join([out, *others]) + "->" + term))
    return grads


def _biased(b, node):
    """x + bias (the optional second input of the com.microsoft Gelu family)."""
    x = b.fwd(node.inputs[0])
    bias = _optional_input(node, 1)
    return x if bias is None else b.op("Add", x, b.fwd(bias))


def _gelu_family(b, node, g, slope):
    """y = f(x + bias): dx = g f'(x + bias), dbias = g f'(...) summed to the bias's shape."""
    d = b.op("Mul", g[0], slope)
    grads = [d]
    if _optional_input(node, 1) is not None:
        grads.append(b.unbroadcast(d, node.outputs[0].shape, node.inputs[1]))
    return grads


@vjp("FastGelu")
def _fast_gelu(b, node, g):  # com.microsoft: the tanh approximation of Gelu, of x + bias
    return _gelu_family(b, node, g, gelu_slope(b, _biased(b, node), tanh=True))


@vjp("BiasGelu")
def _bias_gelu(b, node, g):  # com.microsoft: erf Gelu of x + bias
    return _gelu_family(b, node, g, gelu_slope(b, _biased(b, node), tanh=False))


@vjp("QuickGelu")
def _quick_gelu(b, node, g):
    """com.microsoft: y = x sigmoid(alpha x); dy/dx = s + alpha x s (1 - s)."""
    alpha = float(node.attrs.get("alpha", 1.702))
    x = b.fwd(node.inputs[0])
    s = b.op("Sigmoid", b.op("Mul", x, b.const(alpha)))
    slope = b.op("Add", s, b.op("Mul", b.op("Mul", b.op("Mul", x, b.const(alpha)), s), b.op("Sub", b.const(1.0), s)))
    return [b.op("Mul", g[0], slope)]


@vjp("SkipLayerNormalization")
def _skip_layer_norm(b, node, g):
    """com.microsoft: s = input + skip (+ bias); y = LayerNorm(s) over the last axis with gamma (and beta);
    output 3, where present, is s itself. Inputs: input, skip, gamma, beta, bias."""
    if any(t is not None for t in g[1:3]):
        raise unsupported(node, "for its mean and inverse standard deviation outputs")
    x, skip = node.inputs[:2]
    terms = [b.fwd(x), b.fwd(skip)] + ([b.fwd(node.inputs[4])] if _optional_input(node, 4) is not None else [])
    s = terms[0]
    for t in terms[1:]:
        s = b.op("Add", s, t)
    rank = len(x.shape)
    gamma = b.fwd(node.inputs[2])
    ds = b.op("Mul", g[0], gamma) if g[0] is not None else None
    total, xhat = None, None
    if ds is not None:
        total, xhat = _normalize_backward(b, s, [rank - 1], node.attrs.get("epsilon", 1e-12), ds)
    if len(g) > 3 and g[3] is not None:  # the sum output is used too
        total = g[3] if total is None else b.op("Add", total, g[3])
    out = node.outputs[0].shape
    grads = [
        b.unbroadcast(total, out, x),
        b.unbroadcast(total, out, skip),
        b.unbroadcast(b.op("Mul", g[0], xhat), out, node.inputs[2]) if xhat is not None else None,
    ]
    if len(node.inputs) > 3:
        grads.append(b.unbroadcast(g[0], out, node.inputs[3]) if _optional_input(node, 3) is not None else None)
    if len(node.inputs) > 4:
        grads.append(b.unbroadcast(total, out, node.inputs[4]) if _optional_input(node, 4) is not None else None)
    return grads
