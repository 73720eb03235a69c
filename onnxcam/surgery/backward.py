"""The reverse pass: walk the graph from the class score back to the wanted tensors, rule by rule.

Rules live in `vjp.RULES` (one per op type, ops without gradient included); this
walker only decides which nodes lie on the path, sums the contributions of
tensors used twice, and turns a rule's failure into one UnsupportedOpError that
names the op, the node and why.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcam.errors import OnnxcamError, UnsupportedOpError
from onnxcam.model.graph import SHAPE_OPERANDS
from onnxcam.surgery import vjp_tokens  # noqa: F401  (its rules join the table)
from onnxcam.surgery.builder import Builder, NeedsStaticShape
from onnxcam.surgery.vjp import RULES, carries_no_gradient, unblocked, unsupported
from onnxcam.surgery.vjp_quantized import quantized_values


def backward(b: Builder, wrt: list, score: gs.Tensor, seed: gs.Tensor) -> dict:
    """Reverse pass from `score` (with cotangent `seed`) to each tensor in `wrt`; name -> gradient."""
    b.quantized = quantized_values(b.graph)
    on_path = _float_descendants(b.graph, wrt, b.quantized)
    grads = {score.name: seed}
    for node in reversed(list(b.graph.nodes)):  # rules append nodes: walk a snapshot
        if not any(o.name in grads for o in node.outputs) or not any(i.name in on_path for i in node.inputs):
            continue
        rule = RULES.get(node.op)
        if rule is None:
            raise unsupported(node, "")
        try:
            contributions = rule(b, node, [grads.get(o.name) for o in node.outputs])
        except NeedsStaticShape as need:
            reason = f"the rule for {node.op} (node '{node.name}') needs the shape of '{need.tensor}'"
            raise UnsupportedOpError(
                f"the backward rule for {node.op} (node '{node.name}') needs static shapes, but '{need.tensor}' "
                f"has shape {need.shape}, known only at run time",
                op=node.op,
                node=node.name,
                reason=reason,
            ) from None
        for inp, g in zip(node.inputs, contributions):
            if inp.name not in on_path:
                continue
            if g is None:
                raise AssertionError(f"rule for {node.op} gave no gradient for input '{inp.name}' of '{node.name}'")
            grads[inp.name] = _shaped(b.op("Add", grads[inp.name], g) if inp.name in grads else g, inp, b.dtype)
    missing = [t.name for t in wrt if t.name not in grads]
    if missing:
        cut = _integer_cut(b.graph, on_path, score)
        if cut is not None:  # e.g. QuantizeLinear: the float path goes through integers
            raise unsupported(
                cut, "on the way from the target layer to the class score: it turns the path into integers"
            )
        raise OnnxcamError(f"'{score.name}' does not depend on {', '.join(missing)}: no gradient reaches it")
    return {t.name: unblocked(grads[t.name]) for t in wrt}


def _shaped(g, x, dtype):
    """g, declared with x's shape (a gradient has its tensor's shape): ONNX's shape inference loses the batch
    dimension's name on the way back (Reshape to a computed shape), and ONNX Runtime keeps an elementwise op
    in its blocked NCHWc layout only where it can tell that both inputs have the same shape."""
    if isinstance(g, gs.Variable) and g.shape is None and x.shape is not None:
        g.shape, g.dtype = list(x.shape), dtype
    return g


def _float_descendants(graph, starts, quantized: dict) -> set:
    """Names of the tensors with float values that depend on any of `starts`: float tensors, and integer ones
    that stand for a float value (`quantized`); other integer tensors (indices, shapes) carry no gradient."""
    names = {t.name for t in starts}
    for node in graph.nodes:
        skipped = SHAPE_OPERANDS.get(node.op, ()) if node.domain in ("", "ai.onnx") else ()
        if skipped is not None and any(i.name in names for k, i in enumerate(node.inputs) if k not in skipped):
            names.update(
                o.name for o in node.outputs if o.dtype is None or np.dtype(o.dtype).kind == "f" or o.name in quantized
            )
    return names


def _integer_cut(graph, on_path: set, score):
    """The first node that takes a float tensor on the path and gives only integers, on the way to `score`
    (ops that carry no gradient by nature, such as Shape or ArgMax, are not a cut)."""
    ancestors, stack = set(), [score]
    while stack:
        t = stack.pop()
        if t.name not in ancestors:
            ancestors.add(t.name)
            stack.extend(i for node in t.inputs for i in node.inputs)
    for node in graph.nodes:
        if (
            not carries_no_gradient(node.op)
            and any(i.name in on_path for i in node.inputs)
            and not any(o.name in on_path for o in node.outputs)
            and any(o.name in ancestors for o in node.outputs)
        ):
            return node
    return None
