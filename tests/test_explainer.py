"""The Python API on the real demo model, against closed forms and finite differences."""

import numpy as np
import onnxruntime as ort
import pytest

from conftest import CAT_CLASSES, CHELSEA, COFFEE, DEMO
from onnxcam import Explainer, ModelError, OnnxcamError
from onnxcam.sessions import MAPS
from onnxcam.surgery import CLASS_INPUT, augment, cut_head, grad_name


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_predicts_the_cat_and_gradcam_equals_cam(demo_explainer):
    grad = demo_explainer.explain(CHELSEA, method="gradcam")
    cam = demo_explainer.explain(CHELSEA, method="cam")
    assert grad.targets[0] in CAT_CLASSES
    assert grad.targets[0] == cam.targets[0] == grad.scores[0].argmax()
    # GAP -> linear head: dY/dA_kij = W_ck / HW, so Grad-CAM's weights are CAM's divided by HW.
    assert np.abs(grad.maps - cam.maps).max() < 1e-4
    assert grad.maps.shape == (1, 224, 224) and grad.maps.dtype == np.float32
    assert grad.maps.min() >= 0 and grad.maps.max() <= 1
    assert grad.raw.shape == (1, 7, 7) and grad.raw.min() >= 0


@pytest.mark.parametrize("cls", [282, 0, 967])
def test_any_class_in_graph_equals_cam(demo_explainer, cls):
    """The class input reaches the graph: Grad-CAM for a non-top class still equals that class's CAM."""
    grad = demo_explainer.explain(CHELSEA, method="gradcam", target=cls)
    cam = demo_explainer.explain(CHELSEA, method="cam", target=cls)
    assert grad.targets[0] == cam.targets[0] == cls
    assert np.abs(grad.maps - cam.maps).max() < 1e-4


def test_batch_and_explicit_targets(demo_explainer):
    res = demo_explainer.explain([CHELSEA, COFFEE], target=[285, 967])
    assert list(res.targets) == [285, 967]
    assert res.scores[1].argmax() == 967  # espresso
    single = demo_explainer.explain(COFFEE, target=967)
    np.testing.assert_allclose(single.maps[0], res.maps[1], atol=1e-5)


def test_augmented_model_keeps_the_logits(demo_explainer):
    info = demo_explainer.info
    x = demo_explainer.prepare([CHELSEA, COFFEE])
    plain = _session(info.model).run(["logits"], {"input": x})[0]
    aug = augment(info, demo_explainer.layers)
    logits = _session(aug).run(["logits"], {"input": x, CLASS_INPUT: np.array([-1, -1])})[0]
    assert np.abs(logits - plain).max() < 1e-5


@pytest.mark.parametrize(
    "layer, step",
    [
        ("/_head_act/Clip_output_0", 1e-2),  # linear head: large steps are exact and beat fp32 rounding
        ("/_blocks.15/Clip_1_output_0", 3e-4),  # ReLU6 kinks downstream: small steps stay on one linear piece
        ("/_blocks.10/Add_output_0", 3e-4),
    ],
)
def test_gradient_matches_finite_differences(demo_explainer, layer, step):
    """dScore/dA from the appended ONNX nodes vs central differences of the cut-off head (ORT forward only)."""
    info = demo_explainer.info
    x = demo_explainer.prepare(CHELSEA)
    a, g = _session(augment(info, [layer])).run([layer, grad_name(layer)], {"input": x, CLASS_INPUT: np.array([285])})
    head = _session(cut_head(info, layer))
    assert [i.name for i in head.get_inputs()] == [layer]

    def score(a_):
        return float(head.run(["logits"], {layer: a_.astype(np.float32)})[0][0, 285])

    rng = np.random.default_rng(0)
    eps = step * float(np.abs(a).mean()) * np.sqrt(a.size)
    for _ in range(3):
        r = rng.standard_normal(a.shape)
        v = g / np.linalg.norm(g) + r / np.linalg.norm(r)  # half along G, half random: <G, v> is not ~0
        v /= np.linalg.norm(v)
        fd = (score(a + eps * v) - score(a - eps * v)) / (2 * eps)
        analytic = float((g * v).sum())
        assert abs(fd - analytic) < 1e-3 * abs(analytic), (fd, analytic)


def test_input_forms_agree(demo_explainer):
    from onnxcam.preprocess import load_image

    rgb = load_image(CHELSEA)
    tensor = demo_explainer.prepare(CHELSEA)
    by_path = demo_explainer.explain(CHELSEA)
    assert np.array_equal(demo_explainer.explain(rgb).maps, by_path.maps)
    assert np.array_equal(demo_explainer.explain(tensor).maps, by_path.maps)


def test_bad_arguments_are_user_errors(demo_explainer):
    with pytest.raises(OnnxcamError, match="out of range"):
        demo_explainer.explain(CHELSEA, target=1000)
    with pytest.raises(OnnxcamError, match="unknown method"):
        demo_explainer.explain(CHELSEA, method="nope")
    with pytest.raises(OnnxcamError, match="input tensor has shape"):
        demo_explainer.explain(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(ModelError, match="Did you mean"):
        Explainer(DEMO, layer="/_head_act/Clip_output", device="cpu")


def test_cam_refuses_a_layer_without_a_linear_head():
    ex = Explainer(DEMO, layer="/_blocks.15/Clip_1_output_0", device="cpu")
    with pytest.raises(ModelError, match="method 'cam' needs a head"):
        ex.explain(CHELSEA, method="cam")
    assert ex.explain(CHELSEA, method="gradcam").maps.shape == (1, 224, 224)


def test_several_layers_are_averaged(demo_explainer):
    layers = ["/_head_act/Clip_output_0", "/_blocks.15/Clip_1_output_0"]
    both = Explainer(DEMO, layer=layers, device="cpu").explain(CHELSEA)
    singles = [Explainer(DEMO, layer=name, device="cpu").explain(CHELSEA).maps[0] for name in layers]
    # DESIGN.md: relu, mean over layers, min-max again; each single map is already in [0, 1].
    expected = np.mean(singles, axis=0)
    expected = (expected - expected.min()) / (1e-7 + expected.max() - expected.min())
    assert np.abs(both.maps[0] - expected).max() < 1e-5


# -- maps computed inside the graph (the default; pytorch-grad-cam parity of both paths in test_parity.py) --


def test_maps_in_graph_return_only_the_maps():
    """Activations and gradients stay inside the run: the session's outputs are logits, targets, and
    one h x w map per layer; the explanation still equals the host path's, also for a unit seed."""
    from onnxcam.names import MAP_OUTPUT
    from onnxcam.surgery import TARGET_OUTPUT
    from onnxcam.surgery.maps import layer_map_name

    layers = ["/_blocks.15/_project_conv/Conv_output_0", None]
    host = Explainer(DEMO, layer=layers, device="cpu", maps_in_graph=False)
    device = Explainer(DEMO, layer=layers, device="cpu")
    for kwargs in ({}, {"target": 281, "score": "probability"}, {"unit": (host.layers[1], 5)}):
        a, b = (
            host.explain([CHELSEA, COFFEE], "gradcam++", **kwargs),
            device.explain([CHELSEA, COFFEE], "gradcam++", **kwargs),
        )
        np.testing.assert_array_equal(a.targets, b.targets)
        assert np.abs(a.maps - b.maps).max() < 1e-5
        assert np.abs(a.raw - b.raw).max() <= 1e-5 * np.abs(a.raw).max()  # raw maps are not normalized
    (session,) = [s for spec, s in device.sessions._sessions.items() if spec.kind == MAPS][:1]
    outputs = {o.name for o in session.get_outputs()}
    assert outputs == {device.info.logits_name, TARGET_OUTPUT, MAP_OUTPUT} | {
        layer_map_name(lay) for lay in device.layers
    }


def test_maps_in_graph_leave_finite_differences_and_eigen_smooth_to_the_host():
    ex = Explainer(DEMO, device="cpu", gradients="fd")
    res = ex.explain(CHELSEA, "gradcam")
    assert res.gradients == "finite differences" and not any(spec.kind == MAPS for spec in ex.sessions._sessions)
    ex = Explainer(DEMO, device="cpu")
    ex.explain(CHELSEA, "gradcam", eigen_smooth=True)
    assert not any(spec.kind == MAPS for spec in ex.sessions._sessions)


def test_cuda_sessions_choose_cudnn_algorithms_by_heuristic():
    """Batch sizes vary (a folder's last chunk, Score-CAM's and finite differences' rows): cuDNN's default
    exhaustive search would benchmark every new shape. CPU gets no options."""
    from onnxcam.runtime import CPU, CUDA, with_options

    assert with_options([CUDA, CPU]) == [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    assert with_options([CPU]) == [CPU]
