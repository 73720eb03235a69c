"""Graph walks that the other model modules share: constants, and which tensors a tensor depends on."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Inputs that give another tensor's shape, sizes, axes, positions or type, not its values: a tensor that reaches the
# scores only through them (or through Shape / Size, which read nothing but the shape) carries no gradient to
# them. op -> positions of such inputs; None: every input.
SHAPE_OPERANDS = {
    "Shape": None,
    "Size": None,
    "CastLike": (1,),
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Slice": (1, 2, 3, 4),
    "Pad": (1, 3),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Split": (1,),
    "TopK": (1,),
    "OneHot": (1,),
    "CenterCropPad": (1,),
    "ReduceMean": (1,),
    "ReduceSum": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "ReduceProd": (1,),
    "ReduceL1": (1,),
    "ReduceL2": (1,),
    "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,),
}


# Ops that only move values to other places: their output is the same layer as their input.
REARRANGERS = {"Transpose", "Reshape", "Flatten"}


def constants(graph) -> dict:
    """name -> TensorProto of the initializers and Constant node outputs (not decoded: callers convert the
    few they read with numpy_helper.to_array)."""
    tensors = {t.name: t for t in graph.initializer}
    tensors.update(
        (n.output[0], a.t) for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    )
    return tensors


def data_inputs(node) -> list:
    """The node's inputs whose values it computes with: not those that only set a shape (`SHAPE_OPERANDS`)."""
    skipped = SHAPE_OPERANDS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
    return [] if skipped is None else [i for k, i in enumerate(node.input) if i and k not in skipped]


def ancestors(name, producers, inputs=lambda node: [i for i in node.input if i]) -> set:
    """Every tensor that `name` is computed from (through each node's `inputs`), itself included."""
    seen, stack = set(), [name]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in producers:
            stack.extend(inputs(producers[n]))
    return seen


def data_ancestors(name, producers) -> set:
    """The tensors whose values `name` is computed from, itself included: not those that only set a shape
    (`SHAPE_OPERANDS`), so not a layer whose one consumer is a Shape node that sizes a Reshape."""
    return ancestors(name, producers, data_inputs)


def reduce_axes(node, tensors: dict):
    """The axes a Reduce* node reduces (its `axes` attribute, or from opset 18 its constant second input); None
    where they are not known (all axes, or computed)."""
    attr = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if attr is not None:
        return attr
    name = node.input[1] if len(node.input) > 1 else ""
    return numpy_helper.to_array(tensors[name]).reshape(-1).tolist() if name in tensors else None


def args(node, positions) -> list:
    """The node's inputs at these positions, "" for optional ones left out."""
    return [node.input[i] if i < len(node.input) else "" for i in positions]


def inline_constant_branches(model) -> None:
    """Replace each If whose condition is a constant by the nodes of the branch it always takes (Keras exports
    wrap every BatchNormalization in an If on the constant `keras_learning_phase`): the taken branch's nodes and
    initializers join the graph, its outputs feed the If's outputs through Identity nodes. Nested Ifs too."""
    graph = model.graph
    while True:
        values = constants(graph)
        found = next(((k, n) for k, n in enumerate(graph.node) if n.op_type == "If" and n.input[0] in values), None)
        if found is None:
            return
        k, node = found
        taken = (
            "then_branch"
            if bool(np.asarray(numpy_helper.to_array(values[node.input[0]])).reshape(-1)[0])
            else "else_branch"
        )
        branch = next(a.g for a in node.attribute if a.name == taken)
        nodes = list(branch.node) + [
            helper.make_node("Identity", [inner.name], [outer], name=f"{node.name}/{outer}")
            for inner, outer in zip(branch.output, node.output)
        ]
        graph.initializer.extend(branch.initializer)
        graph.value_info.extend(branch.value_info)
        rest = [onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.node[k + 1 :]]
        del graph.node[k:]
        graph.node.extend(nodes + rest)


def add_round_trips(model, names, suffix: str, make) -> None:
    """After each tensor t in `names`, the nodes that make(t) returns, which compute f"{t}/{suffix}" from t exactly
    through a twin of t; t's consumers read that round trip instead of t. The twin is then a layer of its own
    while the model's values stay the same. make(t) -> (nodes, value infos of the tensors they make)."""
    graph = model.graph
    nodes, infos = [], []
    for node in graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.input[:] = [f"{name}/{suffix}" if name in names else name for name in node.input]
        nodes.append(node)
        for out in (o for o in node.output if o in names):
            more_nodes, more_infos = make(out)
            nodes += more_nodes
            infos += more_infos
    del graph.node[:]
    graph.node.extend(nodes)
    graph.value_info.extend(infos)
