"""onnxcam.model: which tensors are candidate target layers, on tiny graphs made to measure.

A tensor is a candidate only if its axes 2 and 3 are the image's rows and columns: layouts are followed
through Transposes (NCHW -> NHWC -> NCHW is NCHW again) and ops that keep every index's meaning, and lost
where an op mixes a spatial axis (a MatMul over W) or a Transpose leaves H and W swapped. Its shape must be
known (Resize sizes computed from Shape ops are, by data propagation; others by running the model once), and
a quantized (integer) tensor is explained through its float twin.
"""

import numpy as np
import onnx
import pytest

from onnxcam.model import inspect_model
from onnxcam.surgery import augment
from tinymodels import CHANNELS, Net, classifier, computed_resize, session

NHWC, NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def convnext_branch(net):
    """A ConvNeXt block's NHWC part: LayerNorm over C, Linear (MatMul + bias), Erf GELU, layer scale."""
    y = net.op("Transpose", "A", perm=NHWC)
    y = net.op("LayerNormalization", y, net.const(np.full(CHANNELS, 1.2)), net.const(np.full(CHANNELS, 0.1)), axis=-1)
    y = net.op("Add", net.op("MatMul", y, net.randn(CHANNELS, 8)), net.randn(8))
    gelu = net.op(
        "Mul",
        net.op("Mul", y, net.const(0.5)),
        net.op("Add", net.op("Erf", net.op("Div", y, net.const(np.sqrt(2.0)))), net.const(1.0)),
    )
    return net.op("Transpose", net.op("Mul", gelu, net.randn(8)), perm=NCHW)


def swapped_then_relu(net):
    """H and W swapped: a [N, C, W, H] map, not the image's."""
    return net.op("Relu", net.op("Transpose", "A", perm=[0, 1, 3, 2]))


def swapped_twice(net):
    return net.op("Relu", net.op("Transpose", swapped_then_relu(net), perm=[0, 1, 3, 2]))


def matmul_over_w(net):
    """NCHW -> [N, H, C, W] -> MatMul with a [W, W] weight (mixes columns) -> back: not a map of the image."""
    y = net.op("Transpose", "A", perm=[0, 2, 1, 3])
    return net.op("Transpose", net.op("MatMul", y, net.randn(6, 6)), perm=[0, 2, 1, 3])


def matmul_on_nchw(net):
    """MatMul on an NCHW tensor acts on its last axis, W."""
    return net.op("Relu", net.op("MatMul", "A", net.randn(6, 6)))


@pytest.mark.parametrize(
    "body, candidate",
    [
        (convnext_branch, True),
        (swapped_twice, True),
        (swapped_then_relu, False),
        (matmul_over_w, False),
        (matmul_on_nchw, False),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_layouts_through_transposes(body, candidate):
    net = Net(opset=17)
    feature = body(net)
    info = inspect_model(classifier(net, feature))
    names = [layer.name for layer in info.layers]
    assert names[0] == "A"
    assert (feature in names) == candidate, names
    if candidate:
        assert info.auto_layer.shape[1:] == (8 if body is convnext_branch else CHANNELS, 7, 6)
    else:
        assert names == ["A"]  # nothing after the layout is lost


def test_computed_resize_sizes_get_static_shapes():
    """Resize sizes computed by Shape -> Slice -> Concat at a dynamic batch: data propagation makes them known."""
    info = inspect_model(computed_resize())
    assert info.auto_layer.op == "Relu" and info.auto_layer.shape[1:] == (4, 12, 12)
    assert [layer.op for layer in info.layers] == ["Conv", "Relu", "Resize", "Relu"]


def test_data_dependent_resize_sizes_are_learned_by_running():
    """Sizes no inference sees: one run of the model gives them, as ONNX Runtime computes them."""
    model = computed_resize(data_dependent=True)
    info = inspect_model(model)
    assert [layer.op for layer in info.layers] == ["Conv", "Relu", "Resize", "Relu"]
    resized = info.layers[2].name
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.append(onnx.ValueInfoProto(name=resized))
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    assert session(probe).run([resized], {"x": x})[0].shape[1:] == info.layers[2].shape[1:] == (4, 12, 12)
    assert info.layers[2].shape[0] is None  # the batch stays symbolic


def test_quantized_layers_are_float_twins_that_keep_the_logits():
    """QLinearConv's uint8 output (and MaxPool's of it) gets a float twin, DequantizeLinear(t), shown with the op
    and node that made t; t's consumers read QuantizeLinear(twin) instead, an exact round trip."""
    net = Net(opset=13)
    q = net.op("QuantizeLinear", "A", net.const(0.05), net.const(128, np.uint8))
    w = net.const(net.rng.integers(-20, 20, (4, CHANNELS, 3, 3)), np.int8)
    conv = net.op(
        "QLinearConv",
        q,
        net.const(0.05),
        net.const(128, np.uint8),
        w,
        net.const(0.01),
        net.const(0, np.int8),
        net.const(0.04),
        net.const(100, np.uint8),
        pads=[1, 1, 1, 1],
        name="qconv",
    )
    pooled = net.op("MaxPool", conv, kernel_shape=[2, 2], name="pool")
    feature = net.op("DequantizeLinear", pooled, net.const(0.04), net.const(100, np.uint8))
    model = classifier(net, feature)
    info = inspect_model(model)
    assert [(layer.name, layer.op, layer.node) for layer in info.layers[1:3]] == [
        (f"{conv}/dequantized", "QLinearConv", "qconv"),
        (f"{pooled}/dequantized", "MaxPool", "pool"),
    ]
    x = np.random.default_rng(0).normal(size=(2, 3, 7, 6)).astype(np.float32)
    logits = model.graph.output[0].name
    twin = f"{conv}/dequantized"
    got, twin_value = session(augment(info, [twin], gradients=False)).run([logits, twin], {"x": x})
    assert np.array_equal(got, session(model).run([logits], {"x": x})[0])
    assert twin_value.dtype == np.float32 and np.ptp(twin_value) > 0
