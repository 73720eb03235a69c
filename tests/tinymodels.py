"""Tiny ONNX classifiers built with onnx.helper, for tests that need a model made to measure.

    net = Net(opset=13)
    feat = net.op("Relu", "A")
    model = classifier(net, feat)

gives  x [N, 3, 7, 6] -> Conv 3x3 pad 1 -> A [N, 4, 7, 6] -> Relu -> Flatten -> MatMul -> logits [N, 10],
with random weights and a symbolic batch, so A is a candidate target layer of
`onnxcam.model.inspect_model`.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

IN_SHAPE = (3, 7, 6)  # C, H, W of the image input; H != W catches swapped axes
CHANNELS = 4  # channels of the target layer A
CLASSES = 10


def ir_version(opset: int) -> int:
    """An IR version that this opset allows and onnxruntime 1.31 loads (at most 13)."""
    return 8 if opset <= 18 else 10


class Net:
    """Grows a graph node by node; `op` returns the output name(s), so calls chain."""

    def __init__(self, opset: int, seed: int = 0, a_scale: float = 1.0):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.a_scale = a_scale  # rough standard deviation of A's entries
        self.nodes, self.initializers = [], []
        self._ids = itertools.count()

    def _name(self, hint):
        return f"{hint}_{next(self._ids)}"

    def const(self, value, dtype=np.float32) -> str:
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def const_node(self, value, dtype=np.float32) -> str:
        """The same as `const`, but made by a Constant node (as torch.onnx often writes them)."""
        return self.op("Constant", value=numpy_helper.from_array(np.asarray(value, dtype=dtype)))

    def ints(self, values) -> str:
        return self.const(values, np.int64)

    def randn(self, *shape, scale=1.0) -> str:
        return self.const(self.rng.normal(0.0, scale, shape))

    def op(self, op_type, *inputs, outputs=1, name=None, **attrs):
        names = [self._name(op_type.lower()) for _ in range(outputs)]
        node_name = name or self._name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names[0] if outputs == 1 else names


def classifier(net: Net, feature: str, classes: int = CLASSES) -> onnx.ModelProto:
    """Close the graph: the image conv that makes 'A' goes first; `feature` (batch first) -> Flatten -> MatMul."""
    c, h, w = IN_SHAPE
    conv_w = net.rng.normal(0.0, net.a_scale / np.sqrt(c * 9), (CHANNELS, c, 3, 3))
    first = [
        numpy_helper.from_array(conv_w.astype(np.float32), "conv_w"),
        numpy_helper.from_array(net.rng.normal(0.0, 0.1 * net.a_scale, CHANNELS).astype(np.float32), "conv_b"),
    ]
    stem = helper.make_node(
        "Conv", ["x", "conv_w", "conv_b"], ["A"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, h, w])

    def build(outputs, nodes, initializers):
        graph = helper.make_graph([stem] + nodes, "tiny", [x], outputs, first + initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", net.opset)])
        model.ir_version = ir_version(net.opset)
        return model

    probe = build([helper.make_tensor_value_info(feature, TensorProto.FLOAT, None)], net.nodes, net.initializers)
    inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True)
    dims = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim[1:]]
    if not dims or not all(dims):
        raise AssertionError(f"feature '{feature}' needs a static shape after the batch axis, got {dims}")
    flat = net.op("Flatten", feature, axis=1)
    fc = net.randn(int(np.prod(dims)), classes, scale=1.0 / np.sqrt(np.prod(dims)))
    logits = net.op("MatMul", flat, fc)
    out = helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", classes])
    model = build([out], net.nodes, net.initializers)
    onnx.checker.check_model(model, full_check=True)
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A single-threaded CPU session (tests run side by side on few cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def computed_resize(data_dependent: bool = False, opset: int = 13) -> onnx.ModelProto:
    """x [N, 3, 8, 8] -> Conv -> Relu (R) -> Resize to computed sizes -> Relu -> GlobalAveragePool 'gap' -> logits.

    The sizes are [N, 4] of Shape(R) (N dynamic) and [12, 12]: a constant that ONNX shape inference sees only with
    data propagation, or, with data_dependent, 0 * max(x) + 12, which no inference sees (the Resize output's
    height and width stay unknown).
    """
    net = Net(opset)
    r = net.op("Relu", net.op("Conv", "x", net.randn(4, 3, 3, 3, scale=0.3), pads=[1, 1, 1, 1]))
    head = net.op("Slice", net.op("Shape", r), net.ints([0]), net.ints([2]))
    if data_dependent:
        zero = net.op("Mul", net.op("ReduceMax", "x", keepdims=0), net.const(0.0))
        tail = net.op("Cast", net.op("Add", zero, net.const([12.0, 12.0])), to=TensorProto.INT64)
    else:
        tail = net.ints([12, 12])
    sizes = net.op("Concat", head, tail, axis=0)
    u = net.op("Resize", r, "", "", sizes, mode="linear")
    pooled = net.op("GlobalAveragePool", net.op("Relu", u), name="gap")
    logits = net.op("MatMul", net.op("Flatten", pooled, axis=1), net.randn(4, CLASSES, scale=0.5))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    out = helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", CLASSES])
    graph = helper.make_graph(net.nodes, "computed_resize", [x], [out], net.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version(opset)
    onnx.checker.check_model(model, full_check=True)
    return model


def gap_linear(
    classes: int, tail: str | None = None, seed: int = 0, head_scale: float = 1.0, bias_scale: float = 0.1
) -> tuple:
    """(model, logits name): x -> Conv -> Relu (A [N, 4, 7, 6]) -> GlobalAveragePool -> Flatten -> Gemm -> logits
    [N, classes] (-> tail: "Softmax" or "Sigmoid"), the CAM head, for tests of heads and their scores."""
    net = Net(13, seed=seed)
    c, h, w = IN_SHAPE
    conv = net.op("Conv", "x", net.randn(4, c, 3, 3, scale=0.5), kernel_shape=[3, 3], pads=[1] * 4)
    flat = net.op("Flatten", net.op("GlobalAveragePool", net.op("Relu", conv, name="relu")), axis=1)
    weights, bias = net.randn(classes, 4, scale=head_scale), net.randn(classes, scale=bias_scale)
    logits = net.op("Gemm", flat, weights, bias, transB=1, name="fc")
    out = net.op(tail, logits, **({"axis": 1} if tail == "Softmax" else {})) if tail else logits
    graph = helper.make_graph(
        net.nodes,
        "gap_linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", classes])],
        net.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, logits


def segmenter(classes: int = 4, opset: int = 13, end: str | None = None, seed: int = 0) -> onnx.ModelProto:
    """A tiny segmentation model, as torchvision's FCN is built: x [N, 3, 16, 12] -> Conv -> Relu 'A'
    [N, 8, 16, 12] -> Conv stride 2 -> Relu 'B' [N, 8, 8, 6] -> Conv 1x1 -> [N, classes, 8, 6] -> Resize
    (bilinear, half-pixel) to 16x12 -> 'out' (then `end`: "Softmax" over the classes, or "Sigmoid")."""
    net = Net(opset, seed)
    net.op("Relu", net.op("Conv", "x", net.randn(8, 3, 3, 3, scale=0.5), net.randn(8, scale=0.1), pads=[1, 1, 1, 1]))
    net.nodes[-1].output[0] = "A"
    conv = net.op("Conv", "A", net.randn(8, 8, 3, 3, scale=0.3), net.randn(8, scale=0.1), pads=[1] * 4, strides=[2, 2])
    net.op("Relu", conv)
    net.nodes[-1].output[0] = "B"
    low = net.op("Conv", "B", net.randn(classes, 8, 1, 1, scale=0.5), net.randn(classes, scale=0.3))
    mode = "pytorch_half_pixel" if opset >= 11 else None
    attrs = {"mode": "linear", "coordinate_transformation_mode": mode} if mode else {"mode": "linear"}
    if opset >= 13:  # sizes (the batch pinned to 1 below: Resize's sizes name it)
        out = net.op("Resize", low, "", "", net.ints([1, classes, 16, 12]), **attrs)
    else:
        out = net.op("Resize", low, net.const(np.zeros(0)), net.const([1, 1, 2, 2]), **attrs)
    if end:
        out = net.op(end, out, **({"axis": 1} if end == "Softmax" else {}))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 12])
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, classes, 16, 12])
    graph = helper.make_graph(net.nodes, "segmenter", [x], [y], net.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version(opset)
    onnx.checker.check_model(model, full_check=True)
    return model
