"""Shapes that static inference cannot know, learned by running the model once (onnxcam.model.shapes), and
what onnxcam does with them: candidate layers, layouts through a channel shuffle, and backward rules, checked
against plain ONNX Runtime outputs and closed forms."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.errors import ModelError
from onnxcam.model import inspect_model
from onnxcam.surgery import CLASS_INPUT, augment, grad_name
from tinymodels import Net, computed_resize, session

CLASSES = 5


def _model(net, image_dims, scores, outputs_dims=("N", CLASSES)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(image_dims))
    out = helper.make_tensor_value_info(scores, TensorProto.FLOAT, list(outputs_dims))
    graph = helper.make_graph(net.nodes, "probe", [x], [out], net.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", net.opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def _conv_relu(net, x, cin, cout, stride=1):
    w = net.randn(cout, cin, 3, 3, scale=1.0 / np.sqrt(cin * 9))
    return net.op("Relu", net.op("Conv", x, w, net.randn(cout, scale=0.1), pads=[1, 1, 1, 1], strides=[stride, stride]))


def _linear_head(net, features, channels):
    """[N, channels] -> logits = features @ W + b; returns (logits, W as an array)."""
    w = net.rng.normal(0, 1, (channels, CLASSES)).astype(np.float32)
    name = net.const(w)
    return net.op("Add", net.op("MatMul", features, name), net.randn(CLASSES)), w


def _shape_slice(net, tensor, start, end):
    return net.op("Slice", net.op("Shape", tensor), net.ints([start]), net.ints([end]))


def _gradients(info, layer, x, classes):
    """(logits, dLogit[class]/dLayer) from the augmented model."""
    aug = session(augment(info, [layer]))
    names = [o.name for o in aug.get_outputs()]
    out = dict(zip(names, aug.run(None, {info.input_name: x, CLASS_INPUT: np.asarray(classes, np.int64)})))
    return out[info.logits_name], out[grad_name(layer)]


def _static_shape(model, name):
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return tuple(d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim)
    return None


def paddle_classifier():
    """Paddle-style: x [N, 3, H, W] dynamic -> conv blocks -> Reshape to Concat(Shape(B)[0:2], [-1]) ->
    ReduceMean over the last axis -> linear -> Softmax. Static inference cannot size the Reshape."""
    net = Net(opset=11)
    a = _conv_relu(net, "x", 3, 6)
    b = _conv_relu(net, a, 6, 8, stride=2)
    flat = net.op("Reshape", b, net.op("Concat", _shape_slice(net, b, 0, 2), net.ints([-1]), axis=0))
    logits, w = _linear_head(net, net.op("ReduceMean", flat, axes=[2], keepdims=0), 8)
    return _model(net, ("N", 3, "H", "W"), net.op("Softmax", logits, axis=1)), a, b, flat, logits, w


def test_paddle_style_dynamic_size_gets_logits_and_candidates():
    model, a, b, flat, logits, w = paddle_classifier()
    assert _static_shape(model, flat) is None or None in _static_shape(model, flat)[1:]  # the case to cover
    info = inspect_model(model, input_size=(48, 192))
    x = np.random.default_rng(0).normal(size=(2, 3, 48, 192)).astype(np.float32)
    plain_logits = _logits_of_plain(model, logits, x)
    assert info.logits_name == logits and info.num_classes == plain_logits.shape[1] == CLASSES
    assert info.auto_layer.name == b and info.auto_layer.shape == (None, 8, 24, 96)
    assert a in {layer.name for layer in info.layers}
    got, grad = _gradients(info, b, x, [1, 3])
    np.testing.assert_allclose(got, plain_logits, rtol=1e-5, atol=1e-5)
    # ReduceMean over H*W then a linear layer: dLogit_c/dB[k, i, j] = W[k, c] / (H * W), everywhere.
    expected = np.stack([np.broadcast_to(w[:, c, None, None] / (24 * 96), (8, 24, 96)) for c in (1, 3)])
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)


def _logits_of_plain(model, name, x):
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.append(onnx.ValueInfoProto(name=name))
    return session(probe).run([name], {"x": x})[0]


def shuffle_classifier(data_dependent=False):
    """ShuffleNet-style: conv block A -> channel shuffle (Reshape to [N, 2, C/2, H, W] -> Transpose(0, 2, 1, 3, 4)
    -> Reshape to [N, C, H, W], the shapes computed from Shape(A) at a dynamic batch) -> conv block C -> GAP ->
    linear. With data_dependent, the 5-D shape also goes through the data (0 * max(A)), which no inference sees."""
    net = Net(opset=13)
    a = _conv_relu(net, "x", 3, 8)
    batch, spatial = _shape_slice(net, a, 0, 1), _shape_slice(net, a, 2, 4)
    groups = net.ints([2, 4])
    if data_dependent:
        zero = net.op("Cast", net.op("Mul", net.op("ReduceMax", a, keepdims=0), net.const(0.0)), to=TensorProto.INT64)
        groups = net.op("Add", groups, zero)
    split = net.op("Reshape", a, net.op("Concat", batch, groups, spatial, axis=0))
    shuffled = net.op("Transpose", split, perm=[0, 2, 1, 3, 4])
    merged = net.op("Reshape", shuffled, net.op("Concat", batch, net.ints([8]), spatial, axis=0))
    c = _conv_relu(net, merged, 8, 6)
    pooled = net.op("Flatten", net.op("GlobalAveragePool", c), axis=1)
    logits, w = _linear_head(net, pooled, 6)
    return _model(net, ("N", 3, 10, 12), logits), a, merged, c, w


@pytest.mark.parametrize("data_dependent", [False, True])
def test_channel_shuffle_keeps_later_layers_candidates(data_dependent):
    """A shuffle only permutes channels: N, H, W keep their places, so the tensors after it are NCHW maps and
    the automatic layer is the last conv block, whose gradient is the closed form of GAP -> linear."""
    model, a, merged, c, w = shuffle_classifier(data_dependent)
    info = inspect_model(model)
    names = [layer.name for layer in info.layers]
    assert a in names and merged in names and info.auto_layer.name == c
    assert info.auto_layer.shape == (None, 6, 10, 12)
    x = np.random.default_rng(1).normal(size=(3, 3, 10, 12)).astype(np.float32)
    got, grad = _gradients(info, c, x, [0, 2, 4])
    np.testing.assert_allclose(got, _logits_of_plain(model, info.logits_name, x), rtol=1e-5, atol=1e-5)
    expected = np.stack([np.broadcast_to(w[:, k, None, None] / 120, (6, 10, 12)) for k in (0, 2, 4)])
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)


def test_gradient_through_a_channel_shuffle_matches_finite_differences():
    model, a, *_ = shuffle_classifier()
    info = inspect_model(model)
    x = np.random.default_rng(2).normal(size=(2, 3, 10, 12)).astype(np.float32)
    classes = np.array([1, 3])
    _, grad = _gradients(info, a, x, classes)
    shifted = _shifted(model, a)
    rng = np.random.default_rng(3)
    for _ in range(3):
        v = rng.normal(size=grad.shape).astype(np.float32)
        eps = 1e-3
        up, down = (shifted.run(None, {"x": x, "delta": s * eps * v})[0][[0, 1], classes].sum() for s in (1, -1))
        fd = (up - down) / (2 * eps)
        assert abs(fd - float((grad * v).sum())) < 2e-2 * abs(fd) + 1e-3


def _shifted(model, layer):
    """The model with `layer` replaced by layer + delta (a new input): finite differences at the layer."""
    shifted = onnx.ModelProto.FromString(model.SerializeToString())
    for node in shifted.graph.node:
        node.input[:] = [f"{layer}/shifted" if i == layer else i for i in node.input]
    position = next(k for k, n in enumerate(shifted.graph.node) if layer in n.output) + 1
    shifted.graph.node.insert(position, helper.make_node("Add", [layer, "delta"], [f"{layer}/shifted"]))
    shifted.graph.input.append(helper.make_tensor_value_info("delta", TensorProto.FLOAT, None))
    return session(shifted)


def swin_style_classifier():
    """Swin-style: A [N, C, H, W] -> Reshape to [N, C, H*W] -> Transpose -> tokens [N, H*W, C] -> Reshape to
    [N, H, W, C] (computed from Shape(A)) -> Transpose(0, 3, 1, 2) -> GlobalAveragePool -> linear. The round
    trip gives A back, so dLogit_c/dA = W[:, c] / (H * W)."""
    net = Net(opset=13)
    a = _conv_relu(net, "x", 3, 4)
    batch, channels, spatial = _shape_slice(net, a, 0, 1), _shape_slice(net, a, 1, 2), _shape_slice(net, a, 2, 4)
    tokens = net.op(
        "Transpose", net.op("Reshape", a, net.op("Concat", batch, channels, net.ints([-1]), axis=0)), perm=[0, 2, 1]
    )
    grid = net.op("Reshape", tokens, net.op("Concat", batch, spatial, net.ints([-1]), axis=0))
    nchw = net.op("Transpose", grid, perm=[0, 3, 1, 2], name="permute")
    logits, w = _linear_head(net, net.op("Flatten", net.op("GlobalAveragePool", nchw, name="gap"), axis=1), 4)
    return _model(net, ("N", 3, 6, 8), logits), a, nchw, w


def test_global_average_pool_after_a_computed_transpose_gets_its_shape():
    model, a, nchw, w = swin_style_classifier()
    info = inspect_model(model)
    shapes = {
        vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
        for vi in info.model.graph.value_info
    }
    assert shapes[nchw] == ["N", 4, 6, 8]
    x = np.random.default_rng(4).normal(size=(2, 3, 6, 8)).astype(np.float32)
    got, grad = _gradients(info, a, x, [0, 4])
    np.testing.assert_allclose(got, _logits_of_plain(model, info.logits_name, x), rtol=1e-5, atol=1e-5)
    expected = np.stack([np.broadcast_to(w[:, k, None, None] / 48, (4, 6, 8)) for k in (0, 4)])
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)


def _sized_by(kind, net, side, y):
    """y, resized / reshaped / expanded / tiled by a size that `side` sets (and nothing else of `side`)."""
    if kind == "shape":  # as the int8 MobileNetV2: Shape(DequantizeLinear(...)) sizes a Reshape
        return net.op("Reshape", y, net.op("Concat", _shape_slice(net, side, 0, 1), net.ints([-1]), axis=0))
    zero = net.op("Cast", net.op("Mul", net.op("ReduceMax", side, keepdims=0), net.const(0.0)), to=TensorProto.INT64)
    if kind == "reshape":
        return net.op("Reshape", y, net.op("Add", net.ints([0, -1]), zero))
    if kind == "expand":
        return net.op("Expand", y, net.op("Add", net.ints([1, 1]), zero))
    if kind == "tile":
        return net.op("Tile", y, net.op("Add", net.ints([1, 1]), zero))
    if kind == "constant_of_shape":
        ones = net.op(
            "ConstantOfShape", net.op("Add", net.ints([1]), zero), value=numpy_helper.from_array(np.ones(1, np.float32))
        )
        return net.op("Mul", y, ones)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["shape", "reshape", "expand", "tile", "constant_of_shape"])
def test_a_tensor_that_only_sets_a_shape_is_not_a_candidate(kind):
    """Its values never reach the logits, so no gradient does: it must not be offered (nor chosen)."""
    net = Net(opset=13)
    a = _conv_relu(net, "x", 3, 4)
    side = net.op(
        "DequantizeLinear",
        net.op("QuantizeLinear", _conv_relu(net, a, 4, 4), net.const(0.1), net.const(0, np.uint8)),
        net.const(0.1),
        net.const(0, np.uint8),
    )
    pooled = net.op("Flatten", net.op("GlobalAveragePool", a), axis=1)
    logits, _ = _linear_head(net, _sized_by(kind, net, side, pooled), 4)
    model = _model(net, ("N", 3, 6, 8), logits)
    info = inspect_model(model)
    assert side not in {layer.name for layer in info.layers}
    assert info.auto_layer.name == a
    if kind == "tile":
        return  # Tile's backward rule needs constant repeats (vjp.py); the candidates are what is checked here
    x = np.random.default_rng(5).normal(size=(2, 3, 6, 8)).astype(np.float32)
    got, grad = _gradients(info, a, x, [0, 1])
    np.testing.assert_allclose(got, _logits_of_plain(model, logits, x), rtol=1e-5, atol=1e-5)
    assert np.ptp(grad) > 0


def test_a_failing_probe_is_one_line():
    """A model that ONNX Runtime cannot run at the size in use (a Reshape to 7 channels of 8, computed from the
    data so that no inference sees it): the error says why in one line."""
    net = Net(opset=13)
    b = _conv_relu(net, "x", 3, 8)
    zero = net.op("Cast", net.op("Mul", net.op("ReduceMax", "x", keepdims=0), net.const(0.0)), to=TensorProto.INT64)
    flat = net.op("Reshape", b, net.op("Add", net.ints([0, 7, -1]), zero))
    logits, _ = _linear_head(net, net.op("ReduceMean", flat, axes=[2], keepdims=0), 7)
    with pytest.raises(ModelError) as raised:
        inspect_model(_model(net, ("N", 3, 6, 8), logits))
    message = str(raised.value)
    assert "\n" not in message and "known only by running the model" in message and "reshape" in message.lower()


def test_ops_onnx_does_not_know_get_type_and_shape_from_the_run():
    """com.microsoft Gelu (as ONNX Runtime's optimizers write it): ONNX infers nothing after it; the run does."""
    net = Net(opset=13)
    a = _conv_relu(net, "x", 3, 4)
    gelu = net.op("Gelu", a)
    net.nodes[-1].domain = "com.microsoft"
    logits, _ = _linear_head(net, net.op("Flatten", net.op("GlobalAveragePool", gelu), axis=1), 4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 8])
    graph = helper.make_graph(
        net.nodes, "fused", [x], [helper.make_tensor_value_info(logits, TensorProto.FLOAT, None)], net.initializers
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    info = inspect_model(model)
    assert info.num_classes == CLASSES and info.auto_layer.name == gelu and info.auto_layer.shape == (None, 4, 6, 8)
    xs = np.random.default_rng(6).normal(size=(2, 3, 6, 8)).astype(np.float32)
    got, _ = _gradients(info, a, xs, [0, 1])
    np.testing.assert_allclose(got, session(model).run(None, {"x": xs})[0], rtol=1e-5, atol=1e-5)


def test_no_probe_where_static_inference_knows_every_shape(monkeypatch):
    import onnxcam.model.inspect as inspect_module

    def refuse(*args):
        raise AssertionError("probed")

    monkeypatch.setattr(inspect_module, "learn_shapes", refuse)
    info = inspect_model(computed_resize())  # sizes from Shape ops: data propagation knows them
    assert info.auto_layer.shape == (None, 4, 12, 12)


def test_no_probe_of_a_too_large_input(monkeypatch):
    import onnxcam.model.shapes as shapes_module

    monkeypatch.setattr(shapes_module, "PROBE_MAX_INPUT_ELEMENTS", 3 * 48 * 192 - 1)
    model, *_ = paddle_classifier()
    with pytest.raises(
        ModelError, match=r"its input \[1, 3, 48, 192\] is too large to run it for that; give a smaller"
    ):
        inspect_model(model, input_size=(48, 192))


def test_a_fixed_batch_is_probed_at_its_size():
    """A model exported for 4 images at a time is run with 4 rows: the learned shapes carry that batch."""
    model, a, b, flat, logits, w = paddle_classifier()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    info = inspect_model(model, input_size=(48, 192))
    assert info.input_shape[0] == 4 and info.auto_layer.shape == (4, 8, 24, 96)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in info.model.graph.value_info}
    assert shapes[flat] == [4, 8, 24 * 96]
    x = np.random.default_rng(7).normal(size=(4, 3, 48, 192)).astype(np.float32)
    got, _ = _gradients(info, b, x, [0, 1, 2, 3])
    np.testing.assert_allclose(got, _logits_of_plain(model, logits, x), rtol=1e-5, atol=1e-5)


def test_rule_operands_computed_from_shapes_are_folded():
    """Swin computes a Slice's starts from Shape ops: the value is the same for every image and batch size, so it
    becomes a constant the Slice rule can read; a start computed from the image's values stays as it is."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxcam.model import inspect_model
    from onnxcam.surgery import augment

    def model(data_dependent):
        nodes = [
            helper.make_node("Conv", ["x", "w"], ["A"], pads=[1, 1, 1, 1]),
            helper.make_node("Shape", ["A"], ["shape"]),
            helper.make_node("Gather", ["shape", "two"], ["h"], axis=0),  # H of A
            helper.make_node("Div", ["h", "two"], ["half"]),
            helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0)
            if data_dependent
            else helper.make_node("Identity", ["half"], ["start_raw"]),
        ]
        if data_dependent:
            nodes += [
                helper.make_node("Cast", ["peak"], ["peak_i"], to=TensorProto.INT64),
                helper.make_node("Min", ["peak_i", "half"], ["start_raw"]),
            ]
        nodes += [
            helper.make_node("Unsqueeze", ["start_raw", "zero"], ["start"]),
            helper.make_node("Slice", ["A", "start", "big", "axis2"], ["S"]),
            helper.make_node("GlobalAveragePool", ["S"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("MatMul", ["f", "fc"], ["logits"]),
        ]
        rng = np.random.default_rng(0)
        inits = [
            numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array(2, np.int64), "two"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([100], np.int64), "big"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
            numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "fc"),
        ]
        graph = helper.make_graph(
            nodes,
            "swinish",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 6])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
            inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m

    info = inspect_model(model(data_dependent=False))
    slice_node = next(n for n in info.model.graph.node if n.op_type == "Slice")
    assert slice_node.input[1].endswith("/folded")
    augment(info, ["A"])  # the Slice rule reads its starts
    info = inspect_model(model(data_dependent=True))
    assert not next(n for n in info.model.graph.node if n.op_type == "Slice").input[1].endswith("/folded")


def test_an_if_on_a_constant_is_inlined():
    """Keras exports put every BatchNormalization in an If on the constant learning phase: the taken branch's
    ops join the graph, so the layers after it are candidates again; the logits stay those ONNX Runtime gives."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from onnxcam.model import inspect_model

    rng = np.random.default_rng(0)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["A"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Mul", ["A", "scale"], ["scaled"]), helper.make_node("Sigmoid", ["scaled"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.float32(0.7), "scale")],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["A"], pads=[1, 1, 1, 1]),
        helper.make_node("If", ["phase"], ["y"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Conv", ["y", "w2"], ["B"]),
        helper.make_node("GlobalAveragePool", ["B"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(False), "phase"),
        numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "keras",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        inits,
        value_info=[y],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    info = inspect_model(model)
    assert "If" not in {n.op_type for n in info.model.graph.node}
    assert info.auto_layer.name == "B" and "y" in {layer.name for layer in info.layers}
    x = rng.normal(size=(2, 3, 8, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(info.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"x": x}
    )[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_ready_tensor_fixes_a_dynamic_size(tmp_path):
    """A .npy for a model with dynamic H and W needs no --input-size: its own shape gives the size."""
    from click.testing import CliRunner
    from onnx import TensorProto, helper, numpy_helper

    from onnxcam.cli import main

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["A"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["A"], ["R"]),
        helper.make_node("GlobalAveragePool", ["R"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(4, 2)).astype(np.float32), "fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "dyn.onnx"))
    np.save(tmp_path / "x.npy", rng.normal(size=(1, 3, 12, 20)).astype(np.float32))
    result = CliRunner().invoke(
        main, ["run", str(tmp_path / "dyn.onnx"), str(tmp_path / "x.npy"), "--npy", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "out" / "x.gradcam.npy").shape == (12, 20)
