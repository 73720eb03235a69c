"""Transformer token layers as candidate target layers, through exact NCHW "grid twins".

A vision transformer keeps its activations as tokens [N, T, C]: `prefix` tokens (class, distillation,
registers) and then the h x w patch grid, row-major. pytorch-grad-cam explains such a layer with a
`reshape_transform` that drops the prefix tokens and lays the rest on the grid as [N, C, h, w]. onnxcam does
the same inside the graph: a token layer t gets the twin

    grid = Transpose(Reshape(t[:, prefix:], [N, h, w, C]), (0, 3, 1, 2))          [N, C, h, w]

and t's consumers read Concat(t[:, :prefix], Reshape(Transpose(grid), [N, h*w, C])) instead of t, an exact
round trip. The twin is then an ordinary NCHW candidate (gradients, in-graph maps, export), and its gradient
is the gradient of t's grid tokens.

The grid (h, w) is the patch embedding's: a 4-D NCHW tensor flattened into tokens ([N, C, h*w] transposed, or
[N, h, w, C] reshaped); the prefix is what a Concat along the token axis puts before those patch tokens.
A token layer is a candidate only if its grid tokens still reach the logits: with class-token pooling the
last block's output reaches them only through the class token (a Gather or Slice of the prefix), so the
automatic choice falls on the input of the last block's attention, as pytorch-grad-cam's tutorials choose
`blocks[-1].norm1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper, numpy_helper

from onnxcam.model.graph import REARRANGERS, add_round_trips, data_inputs

# Ops that change or select along the token axis of a [N, T, C] tensor; anything else that keeps the shape is
# taken to work token by token (norms, linear layers, activations, residual adds).
_SELECTORS = {"Gather", "Slice"}


@dataclass(frozen=True)
class TokenGrid:
    """How one token sequence [N, prefix + h*w, C] lies on its patch grid."""

    tokens: int  # T
    prefix: int
    height: int
    width: int


def grid_name(name: str) -> str:
    """The NCHW grid twin of token tensor `name`."""
    return f"{name}/grid"


def token_layers(graph, shapes: dict, layouts: dict, feeding: set, logits: str, tensors: dict) -> dict:
    """{token tensor: TokenGrid} for the [N, T, C] tensors whose grid tokens reach `logits`. tensors: the
    graph's constants (model.graph.constants)."""
    producers = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for node in graph.node:
        for name in data_inputs(node):
            consumers.setdefault(name, []).append(node)
    found = {}
    for start, grid in _sequences(graph, shapes, layouts, consumers):
        width = shapes[start][2]
        for name in _descendants(start, consumers):
            shape = shapes.get(name)
            if (
                name in feeding
                and name not in found
                and shape is not None
                and len(shape) == 3
                and shape[0] is None
                and shape[1] == grid.tokens
                and shape[2] == width
                and producers.get(name) is not None
                and producers[name].op_type not in REARRANGERS
                and _grid_reaches(name, grid, consumers, shapes, logits, tensors)
            ):
                found[name] = grid
    return found


def _sequences(graph, shapes, layouts, consumers):
    """(first token tensor, TokenGrid) for each patch embedding flattened into tokens."""
    identity = (0, 1, 2, 3)
    for node in graph.node:
        for out in node.output:
            shape = shapes.get(out)
            if layouts.get(out) != identity or shape is None or len(shape) != 4 or not all(shape[1:]):
                continue
            _, c, h, w = shape
            patches = _flattened(out, consumers, shapes, (h * w, c))
            if patches is None:
                continue
            prefix, start = _prefixed(patches, consumers, shapes, c)
            yield start, TokenGrid(prefix + h * w, prefix, h, w)


def _flattened(name, consumers, shapes, want, depth=3):
    """The tensor [N, h*w, C] that `name` [N, C, h, w] becomes through Reshape / Flatten / Transpose only, in
    row-major grid order (channels moved last by a Transpose), or None."""
    frontier = [(name, False)]
    for _ in range(depth):
        nxt = []
        for t, moved in frontier:
            for node in consumers.get(t, []):
                if node.op_type not in REARRANGERS:
                    continue
                out = node.output[0]
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                now_moved = moved or (node.op_type == "Transpose" and perm in ([0, 2, 1], [0, 2, 3, 1]))
                if node.op_type == "Transpose" and not now_moved:
                    continue
                shape = shapes.get(out)
                if now_moved and shape is not None and len(shape) == 3 and tuple(shape[1:]) == want:
                    return out
                nxt.append((out, now_moved))
        frontier = nxt
    return None


def _prefixed(patches, consumers, shapes, c):
    """(prefix tokens, the sequence's first tensor): a Concat along the token axis that puts tokens before the
    patches (class, distillation, registers), else (0, the patches)."""
    for node in consumers.get(patches, []):
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if node.op_type != "Concat" or axis not in (1, -2):
            continue
        before = node.input[: list(node.input).index(patches)]
        sizes = [shapes.get(i) for i in before]
        if all(s is not None and len(s) == 3 and isinstance(s[1], int) and s[2] == c for s in sizes):
            if list(node.input).index(patches) == len(node.input) - 1:
                return sum(s[1] for s in sizes), node.output[0]
    return 0, patches


def _descendants(start, consumers) -> list:
    """Tensors computed from `start` (data edges), in discovery order."""
    seen, order, stack = {start}, [start], [start]
    while stack:
        for node in consumers.get(stack.pop(), []):
            for out in node.output:
                if out and out not in seen:
                    seen.add(out)
                    order.append(out)
                    stack.append(out)
    return order


def _grid_reaches(name, grid, consumers, shapes, logits, tensors) -> bool:
    """Whether the grid tokens of `name` reach the logits: some path gets there without a selection that keeps
    prefix tokens only, or after the tokens were mixed (an attention matrix [.., T, T], a reduction or any
    selection over the token axis that keeps grid tokens)."""
    stack, seen = [(name, False)], set()
    while stack:
        t, mixed = stack.pop()
        if t == logits:
            return True
        if (t, mixed) in seen:
            continue
        seen.add((t, mixed))
        shape = shapes.get(t)
        tokens_here = shape is not None and len(shape) == 3 and shape[1] == grid.tokens
        for node in consumers.get(t, []):
            if tokens_here and not mixed and node.op_type in _SELECTORS and _prefix_only(node, grid, tensors):
                continue
            for out in node.output:
                out_shape = shapes.get(out) or ()
                mixes = sum(1 for d in out_shape[1:] if d == grid.tokens) >= 2 or (
                    tokens_here and (len(out_shape) < 3 or out_shape[1] != grid.tokens)
                )
                stack.append((out, mixed or mixes))
    return False


def _prefix_only(node, grid, tensors) -> bool:
    """Whether a Gather / Slice over the token axis keeps only prefix tokens (the class token of a ViT head)."""

    def value(k):
        name = node.input[k] if k < len(node.input) else ""
        return numpy_helper.to_array(tensors[name]).reshape(-1) if name in tensors else None

    if node.op_type == "Gather":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        indices = value(1)
        if axis not in (1, -2) or indices is None:
            return False
        return bool(np.all(np.where(indices < 0, indices + grid.tokens, indices) < grid.prefix))
    starts, ends, axes = value(1), value(2), value(3)
    if starts is None or ends is None:
        return False
    for s, e, a in zip(starts, ends, axes if axes is not None else range(len(starts))):
        if a in (1, -2):
            s = s + grid.tokens if s < 0 else s
            e = min(e + grid.tokens if e < 0 else e, grid.tokens)
            return bool(s < e <= grid.prefix)
    return False


def attention_maps(graph, shapes: dict, grid: TokenGrid, feeding: set) -> list:
    """The attention probabilities of every block, in order: Softmax outputs [N, heads, T, T] over the tokens of
    `grid` that reach the logits (what attention rollout multiplies)."""
    found = []
    for node in graph.node:
        shape = shapes.get(node.output[0]) if node.output else None
        if (
            node.op_type == "Softmax"
            and node.output[0] in feeding
            and shape is not None
            and len(shape) == 4
            and shape[0] is None
            and shape[2] == shape[3] == grid.tokens
        ):
            found.append(node.output[0])
    return found


def add_grid_twins(model, layers: dict, opset: int) -> None:
    """Give each token layer its NCHW grid twin (see the module's docstring); its consumers read the round trip."""
    if not layers:
        return
    graph = model.graph

    def make(out):
        c, g, elem = _width(graph, out), layers[out], _elem_type(graph, out)
        shapes = {
            grid_name(out): [c, g.height, g.width],
            f"{out}/tokens": [g.tokens, c],
            f"{out}/grid/patches": [g.height * g.width, c],
            f"{out}/grid/nhwc": [g.height, g.width, c],
            f"{out}/grid/back/nhwc": [g.height, g.width, c],
            f"{out}/grid/back": [g.height * g.width, c],
            f"{out}/grid/prefix": [g.prefix, c],
        }
        infos = [helper.make_tensor_value_info(name, elem, ["N", *dims]) for name, dims in shapes.items()]
        return _twin_nodes(out, g, opset, graph), infos

    add_round_trips(model, layers, "tokens", make)


def _twin_nodes(name, g: TokenGrid, opset, graph) -> list:
    c = _width(graph, name)

    def const(suffix, values):
        out = f"{name}/grid/{suffix}"
        return out, helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.asarray(values, np.int64)))

    made = []

    def slice_tokens(start, end, out):
        if opset < 10:
            return [helper.make_node("Slice", [name], [out], starts=[start], ends=[end], axes=[1])]
        names = []
        for suffix, v in (("s", [start]), ("e", [end]), ("a", [1])):
            n, node = const(f"{out.rsplit('/', 1)[-1]}_{suffix}", v)
            made.append(node)
            names.append(n)
        return [helper.make_node("Slice", [name, *names], [out])]

    grid_tokens = f"{name}/grid/patches"
    nodes = slice_tokens(g.prefix, g.tokens, grid_tokens)
    to_grid, n1 = const("shape_nhwc", [0, g.height, g.width, c])
    to_tokens, n2 = const("shape_tokens", [0, g.height * g.width, c])
    made += [n1, n2]
    nhwc, back = f"{name}/grid/nhwc", f"{name}/grid/back"
    nodes += [
        helper.make_node("Reshape", [grid_tokens, to_grid], [nhwc]),
        helper.make_node("Transpose", [nhwc], [grid_name(name)], perm=[0, 3, 1, 2]),
        helper.make_node("Transpose", [grid_name(name)], [f"{back}/nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [f"{back}/nhwc", to_tokens], [back]),
    ]
    if g.prefix:
        prefix = f"{name}/grid/prefix"
        nodes += slice_tokens(0, g.prefix, prefix)
        nodes.append(helper.make_node("Concat", [prefix, back], [f"{name}/tokens"], axis=1))
    else:
        nodes.append(helper.make_node("Identity", [back], [f"{name}/tokens"]))
    return made + nodes


def _value_info(graph, name):
    return next((vi for vi in [*graph.value_info, *graph.output] if vi.name == name), None)


def _width(graph, name) -> int:
    return _value_info(graph, name).type.tensor_type.shape.dim[2].dim_value


def _elem_type(graph, name) -> int:
    return _value_info(graph, name).type.tensor_type.elem_type
