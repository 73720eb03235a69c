"""Quantized (QOperator) graphs: which integer tensors have a float value worth explaining, and their float twins.

A QLinearConv's uint8 output t means DequantizeLinear(t, scale, zero point). `add_float_twins` makes that float
tensor part of the graph, where the head reads it, so that it can be a target layer like any other.
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxcam.model.graph import add_round_trips, args
from onnxcam.model.load import elements

# Quantized (QOperator) ops compute QuantizeLinear(float op(DequantizeLinear(x, scale, zero point), ...)):
# op -> (the float op, positions of the (x, scale, zero point) inputs (None: triples after the output's
# two), positions of the output's (scale, zero point)).
QLINEAR = {
    "QLinearConv": ("Conv", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMatMul": ("MatMul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearAdd": ("Add", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMul": ("Mul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearLeakyRelu": ("LeakyRelu", ((0, 1, 2),), (3, 4)),
    "QLinearSigmoid": ("Sigmoid", ((0, 1, 2),), (3, 4)),
    "QLinearSoftmax": ("Softmax", ((0, 1, 2),), (3, 4)),
    "QLinearAveragePool": ("AveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearConcat": ("Concat", None, (0, 1)),
    "QGemm": ("Gemm", ((0, 1, 2), (3, 4, 5)), (7, 8)),
}
# Ops that pick some of their integer input's values: the output keeps the input's scale and zero point.
_QUANTIZATION_KEEPERS = {"MaxPool"}


def quantized_tensors(graph, tensors) -> dict:
    """Integer tensor -> its (scale, zero point) names, for outputs of quantized ops whose scale and zero point
    are constant scalars: the tensor's float value is DequantizeLinear(tensor, scale, zero point)."""
    found = {}
    for node in graph.node:
        if node.op_type in QLINEAR:
            params = args(node, QLINEAR[node.op_type][2])
            if all(name in tensors and elements(tensors[name]) == 1 for name in params):
                found[node.output[0]] = tuple(params)
        elif node.op_type in _QUANTIZATION_KEEPERS and node.input[0] in found:
            found[node.output[0]] = found[node.input[0]]
    return found


def twin(name: str) -> str:
    """The float twin of quantized tensor `name` (see `add_float_twins`)."""
    return f"{name}/dequantized"


def add_float_twins(model, quantized: dict, tensors: dict) -> None:
    """Give each quantized tensor t a float twin, DequantizeLinear(t, scale, zero point), and feed t's consumers
    QuantizeLinear(twin, scale, zero point) instead: an exact round trip, so the logits do not change, and the
    twin is a float target layer that the head reads (where finite differences can step)."""
    if not quantized:
        return
    graph = model.graph
    infos = {vi.name: vi for vi in [*graph.value_info, *graph.output] if vi.name in quantized}

    def make(out):
        scale, zero_point = quantized[out]
        requantized = f"{out}/requantized"
        nodes = [
            helper.make_node("DequantizeLinear", [out, scale, zero_point], [twin(out)], name=twin(out)),
            helper.make_node("QuantizeLinear", [twin(out), scale, zero_point], [requantized], name=requantized),
        ]
        values = []
        for name, elem in ((twin(out), tensors[scale].data_type), (requantized, None)):
            info = onnx.ValueInfoProto.FromString(infos[out].SerializeToString())
            info.name = name
            info.type.tensor_type.elem_type = elem or info.type.tensor_type.elem_type
            values.append(info)
        return nodes, values

    add_round_trips(model, quantized, "requantized", make)
