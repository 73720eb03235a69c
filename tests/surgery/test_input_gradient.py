"""Gradients with respect to the image input, plain and guided, from the same run as the layer gradients."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxcam.model import inspect_model
from onnxcam.surgery import CLASS_INPUT, augment, grad_name
from tinymodels import IN_SHAPE, Net, classifier, session


def _relu_model():
    """x -> Conv 3x3 pad 1 -> A -> Relu -> Tanh -> Flatten -> MatMul -> logits."""
    net = Net(opset=13)
    return classifier(net, net.op("Tanh", net.op("Relu", "A", name="relu")))


def _run(model, x, classes, layers=("A",), **kwargs):
    aug = session(augment(inspect_model(model), list(layers), **kwargs))
    names = [o.name for o in aug.get_outputs()]
    return dict(zip(names, aug.run(None, {"x": x, CLASS_INPUT: classes})))


def test_input_gradient_matches_finite_differences():
    model = _relu_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *IN_SHAPE)).astype(np.float32)
    classes = np.array([1, 6])
    g = _run(model, x, classes, input_gradient="plain")[grad_name("x")]
    assert g.shape == x.shape and g.dtype == np.float32
    plain = session(model)

    def score(x_):
        return float(plain.run(None, {"x": x_.astype(np.float32)})[0][[0, 1], classes].sum())

    for _ in range(3):
        v = g / np.linalg.norm(g) + (r := rng.normal(size=x.shape)) / np.linalg.norm(r)
        eps = 1e-3 * np.linalg.norm(x)  # small: the Relu's kinks sit between the image and the score
        fd = (score(x + eps * v) - score(x - eps * v)) / (2 * eps)
        assert abs(fd - float((g * v).sum())) < 1e-3 * abs(fd)


def test_guided_backprop_closed_form_and_unguided_layer_gradients():
    """Guided: dA = g * [A > 0] * [g > 0] at the Relu, then the conv's transpose, computed here in NumPy."""
    model = _relu_model()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, *IN_SHAPE)).astype(np.float32)
    out = _run(model, x, np.array([4]), input_gradient="guided")
    a, g_a = out["A"][0], out[grad_name("A")][0]

    # The layer gradient of the same run is the plain one ...
    np.testing.assert_allclose(g_a, _run(model, x, np.array([4]))[grad_name("A")][0], rtol=1e-6, atol=1e-7)
    # ... and it is the gradient at the Relu's output times the Relu's mask, so g_relu is known where A > 0.
    upstream = np.where(a > 0, g_a, 0.0)
    guided_a = upstream * (upstream > 0)
    # Conv 3x3, pad 1, stride 1, transposed: dx[c, i, j] = sum_{o, di, dj} W[o, c, di, dj] * dA[o, i + 1 - di, j + 1 - dj]
    w = weights["conv_w"]
    padded = np.pad(guided_a, ((0, 0), (1, 1), (1, 1)))
    _, h, wd = IN_SHAPE
    expected = np.zeros(IN_SHAPE)
    for di in range(3):
        for dj in range(3):
            window = padded[:, 2 - di : 2 - di + h, 2 - dj : 2 - dj + wd]
            expected += np.einsum("oc,ohw->chw", w[:, :, di, dj], window)
    np.testing.assert_allclose(out[grad_name("x")][0], expected, rtol=1e-4, atol=1e-6)
    assert (guided_a < 0).sum() == 0 and (upstream < 0).any()  # the case really drops negative gradients


def _blocked_relu_model(channels=16, size=4, classes=3):
    """x [N, 16, 4, 4] -> Relu -> Flatten -> MatMul -> logits: 16 channels fill ONNX Runtime's NCHWc blocks, so
    the Relu's mask is the blocked step (a depthwise Conv with a fused HardSigmoid), not Greater + Cast."""
    rng = np.random.default_rng(2)
    fc = rng.normal(size=(channels * size * size, classes)).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], name="relu"),
        helper.make_node("Flatten", ["y"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "blocked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(fc, "fc")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, fc


def test_blocked_relu_mask_is_exact_at_subnormals_zeros_and_huge_values():
    """dScore/dx = fc[:, c] where x > 0 (guided: also where fc[:, c] > 0), else 0, for every positive float:
    subnormals (2^-149), normal tiny, huge (the step's scaling overflows to inf) and exact zeros."""
    model, fc = _blocked_relu_model()
    rng = np.random.default_rng(3)
    values = np.array([0.0, -0.0, 2.0**-149, 1e-40, 1e-30, 1.0, 1e30, 3e38, -1e-40, -1.0, -3e38], np.float32)
    x = rng.choice(values, size=(2, 16, 4, 4)).astype(np.float32)
    classes = np.array([0, 2])
    for kind in ("plain", "guided"):
        g = _run(model, x, classes, layers=["y"], input_gradient=kind)[grad_name("x")]
        upstream = fc[:, classes].T.reshape(x.shape)
        keep = (x > 0) & (upstream > 0) if kind == "guided" else x > 0
        np.testing.assert_array_equal(g, np.where(keep, upstream, 0.0))
