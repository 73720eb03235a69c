"""Which axes of a tensor are the image's batch, channels, rows and columns.

A layout p has one entry per axis of a tensor: axis i is NCHW axis p[i] (0 N, 1 C, 2 H, 3 W). A tensor is an
NCHW map, a possible target layer, when p is the identity: NCHW -> Transpose(0, 2, 3, 1) -> NHWC ops ->
Transpose(0, 3, 1, 2) is one again. A Reshape that splits C into parts (several axes with p[i] = 1) or merges
such parts back, in any order, only permutes the channels: ShuffleNet's channel shuffle, [N, C, H, W] ->
[N, g, C/g, H, W] -> Transpose(0, 2, 1, 3, 4) -> [N, C, H, W], keeps N, H and W, so it keeps the layout.

Layouts are found forward from the ops that define them (`layouts`) and backward from a global pooling, whose
pooled axes are H and W (`pooled_layouts`): Swin keeps its stages channels-last, [N, H, W, C] and, between
windowed attentions, tokens [N, H*W, C], and pools them with ReduceMean over axes (1, 2); what was lost on the
way forward (the windows, the shifts) is found again going back from the pooling through the ops that keep
every position where it was.
"""

from __future__ import annotations

from onnxcam.model.graph import data_inputs, reduce_axes
from onnxcam.model.tokens import TokenGrid

# Ops whose 4-D output is NCHW by definition.
NCHW_SOURCES = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "QLinearConv", "ConvInteger"}
# Ops whose output index along every axis means what their input's does (elementwise ops, normalizations,
# padding, resampling...): they keep its layout, NCHW or permuted. Transpose permutes the layout, Reshape keeps
# it only where it splits or merges channels, MatMul only over channels (see `_output_layout`).
NCHW_KEEPERS = {
    "Relu",
    "Clip",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Celu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Gelu",
    "Erf",
    "Mish",
    "BatchNormalization",
    "InstanceNormalization",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Concat",
    "Identity",
    "Dropout",
    "Pad",
    "Resize",
    "Upsample",
    "Cast",
    "DequantizeLinear",
    "QuantizeLinear",
    "LRN",
    "Max",
    "Min",
    "Sum",
    "Split",
    "LayerNormalization",
    "QLinearAdd",
    "QLinearMul",
    "QLinearLeakyRelu",
    "QLinearSigmoid",
    "QLinearConcat",
    "QLinearAveragePool",
}
# Ops that read their 4-D input as NCHW by definition: pooling over axes 2 and 3.
NCHW_SINKS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
IDENTITY = (0, 1, 2, 3)
NHWC = (0, 2, 3, 1)
CHANNEL = 1
# The layout of a 4-D tensor that a global pooling reads, by the axes it pools.
POOLED_AXES = {(2, 3): IDENTITY, (1, 2): NHWC}
_POOLING_REDUCES = {"ReduceMean", "ReduceMax"}


def layouts(graph, shapes: dict, nchw_input: set, tensors: dict) -> dict:
    """name -> p for the tensors whose axes are all known NCHW axes (see the module's docstring). A tensor that a
    global pooling reads is NCHW even where its axes were lost on the way (Swin's windows, a transformer's
    channels-last stage permuted back before the pooling)."""
    found = dict.fromkeys(nchw_input, IDENTITY)
    found.update((n.input[0], IDENTITY) for n in graph.node if _pooled_layout(n, shapes, tensors) == IDENTITY)
    for node in graph.node:
        p = _output_layout(node, found, tensors, shapes)
        if p is not None:
            found.update((out, p) for out in node.output if len(shapes.get(out) or ()) == len(p))
    return found


def _output_layout(node, found, tensors, shapes):
    if node.op_type in NCHW_SOURCES:
        return IDENTITY
    if any(a.name == "channels_last" and a.i for a in node.attribute):  # QLinear pools: reads its input as NHWC
        return None
    known = {found[i] for i in node.input if i in found}
    if len(known) != 1:  # no input with a layout, or inputs that disagree
        return None
    p = known.pop()
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(len(p)))[::-1])
        return tuple(p[i] for i in perm) if sorted(perm) == list(range(len(p))) else None
    if node.op_type == "Reshape":
        return _reshaped(p, shapes.get(node.input[0]), shapes.get(node.output[0])) if node.input[0] in found else None
    if node.op_type == "MatMul":  # x @ W mixes x's last axis: a layout survives only where that axis is C
        weight = tensors.get(node.input[1])
        return (
            p if node.input[0] in found and p[-1] == CHANNEL and weight is not None and len(weight.dims) == 2 else None
        )
    return p if node.op_type in NCHW_KEEPERS else None


def _pooled_layout(node, shapes, tensors):
    """The layout of the 4-D tensor that `node` pools globally over its H and W axes, or None."""
    if not node.input or len(shapes.get(node.input[0]) or ()) != 4:
        return None
    if node.op_type in NCHW_SINKS:
        return IDENTITY
    axes = reduce_axes(node, tensors) if node.op_type in _POOLING_REDUCES else None
    return POOLED_AXES.get(tuple(sorted(a % 4 for a in axes))) if axes else None


def pooled_layouts(graph, shapes: dict, tensors: dict, known: dict) -> dict:
    """name -> layout for the tensors found backward from a global pooling (see the module's docstring), not
    already in `known`: a 4-D layout, or for tokens [N, h*w, C] that a Reshape lays on an NHWC grid [N, h, w, C],
    their TokenGrid (no prefix tokens). Going back keeps a layout through the ops that keep every position
    (elementwise ops and normalizations, to their inputs of the output's shape), Transpose, a linear layer over
    the channels, and the Reshapes between tokens and their grid."""
    producers = {o: n for n in graph.node for o in n.output}
    stack = [(n.input[0], p) for n in graph.node if (p := _pooled_layout(n, shapes, tensors)) is not None]
    found = {}
    while stack:
        name, p = stack.pop()
        if name in found or known.get(name, p) != p:
            continue
        found[name] = p
        node = producers.get(name)
        if node is not None and node.domain in ("", "ai.onnx"):
            stack.extend(_input_layouts(node, name, p, shapes, tensors))
    return {name: p for name, p in found.items() if name not in known}


def _input_layouts(node, name, p, shapes, tensors) -> list:
    """(input, layout) for the inputs of `node` whose layout the layout p of its output `name` tells."""
    out, first = shapes.get(name), node.input[0]
    before = shapes.get(first)
    if out is None:
        return []
    if node.op_type in NCHW_KEEPERS:
        return [(i, p) for i in data_inputs(node) if shapes.get(i) == out]
    if before is None:
        return []
    if node.op_type == "Transpose" and not isinstance(p, TokenGrid):
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(len(p)))[::-1])
        q = [None] * len(p)
        for i, axis in enumerate(perm):
            q[axis] = p[i]
        return [(first, tuple(q))]
    if node.op_type == "Reshape" and before[0] is None and out[0] is None:
        if p == NHWC and before[1:] == (out[1] * out[2], out[3]):
            return [(first, TokenGrid(out[1] * out[2], 0, out[1], out[2]))]
        if isinstance(p, TokenGrid) and len(before) == 4 and before[1:] == (p.height, p.width, out[2]):
            return [(first, NHWC)]
        return []
    if node.op_type == "MatMul":
        weight = tensors.get(node.input[1])
        over_channels = isinstance(p, TokenGrid) or p[-1] == CHANNEL
        same = before[:-1] == out[:-1]
        return [(first, p)] if over_channels and same and weight is not None and len(weight.dims) == 2 else []
    return []


def _reshaped(p: tuple, before, after):
    """The layout after a Reshape from shape `before` to `after` (None entries: the symbolic batch), or None
    unless every axis but the channels' parts keeps its size and place."""
    groups = _axis_groups(before, after) if before is not None and after is not None and len(before) == len(p) else None
    if groups is None:
        return None
    out = []
    for ins, outs in groups:
        roles = {p[i] for i in ins}
        if len(ins) == 1 and len(outs) == 1:
            out.append(p[ins[0]])
        elif roles == {CHANNEL}:
            out.extend([CHANNEL] * len(outs))
        else:
            return None
    return tuple(out)


def _axis_groups(before: tuple, after: tuple):
    """Pairs (input axes, output axes) of consecutive axes with equal products of sizes, left to right: how a
    Reshape splits and merges axes. None where sizes are unknown or no such pairing exists."""
    groups, i, j = [], 0, 0
    while i < len(before) and j < len(after):
        if before[i] is None or after[j] is None:
            if before[i] is not None or after[j] is not None:
                return None
            groups.append(([i], [j]))  # the symbolic batch, kept where it was
            i, j = i + 1, j + 1
            continue
        ins, outs, a, b = [i], [j], before[i], after[j]
        i, j = i + 1, j + 1
        while a != b:
            if a < b and i < len(before) and before[i] is not None:
                a, i = a * before[i], i + 1
                ins.append(i - 1)
            elif a > b and j < len(after) and after[j] is not None:
                b, j = b * after[j], j + 1
                outs.append(j - 1)
            else:
                return None
        groups.append((ins, outs))
    return groups if i == len(before) and j == len(after) else None
