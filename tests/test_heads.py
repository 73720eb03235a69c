"""Single-logit (binary sigmoid) and multi-label heads: which class is predicted, and which score is explained.

References: closed forms on a GAP -> linear head (the gradient of z w.r.t. A is w / hw), pytorch-grad-cam's
BinaryClassifierOutputTarget (class 1: z, class 0: -z), and central finite differences of the head.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxcam import Explainer, heads
from onnxcam.export import MAP_OUTPUT, export
from tinymodels import IN_SHAPE, gap_linear, session


def _gap_linear(classes: int, sigmoid_output: bool, seed: int = 0) -> onnx.ModelProto:
    return gap_linear(classes, "Sigmoid" if sigmoid_output else None, seed=seed)[0]


def _inputs(n=6, seed=1):
    return np.random.default_rng(seed).normal(size=(n, *IN_SHAPE)).astype(np.float32)


def test_binary_head_predicts_by_the_sign_of_its_logit():
    model = _gap_linear(1, sigmoid_output=True)
    ex = Explainer(model, device="cpu")
    x = _inputs()
    z = session(model).run(None, {"x": x})[0]  # sigmoid(z): the package's own output
    assert ex.head == "binary" and ex.num_classes == 2
    res = ex.explain(x, "gradcam")
    np.testing.assert_array_equal(res.targets, (z[:, 0] > 0.5).astype(int))
    np.testing.assert_allclose(heads.probabilities(res.scores, "binary")[:, 1], z[:, 0], rtol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam++"])
def test_binary_classes_explain_the_logit_and_its_negative(method):
    """On GAP -> linear, Grad-CAM of class 1 is relu(sum_k w_k A_k) and of class 0 relu(-sum_k w_k A_k)."""
    model = _gap_linear(1, sigmoid_output=True)
    x = _inputs()
    for maps_in_graph in (True, False):
        ex = Explainer(model, device="cpu", maps_in_graph=maps_in_graph)
        for cls in (0, 1):
            res = ex.explain(x, method, target=cls)
            cam = ex.explain(x, "cam", target=cls)
            assert list(res.targets) == [cls] * len(x)
            if method != "gradcam++":  # Grad-CAM and HiResCAM equal CAM on this head
                assert np.abs(res.maps - cam.maps).max() < 1e-4, (method, cls, maps_in_graph)
            assert res.maps.shape == (len(x), *IN_SHAPE[1:])
    a = Explainer(model, device="cpu", maps_in_graph=False).explain(x, "gradcam", target=0).raw
    w = [t for t in model.graph.initializer if t.dims == [1, 4]][0]
    acts = session_outputs(model, x, next(n.output[0] for n in model.graph.node if n.op_type == "Relu"))
    hw = IN_SHAPE[1] * IN_SHAPE[2]  # Grad-CAM's weights on GAP -> linear: w / hw
    want = np.maximum(-np.einsum("k,nkhw->nhw", onnx.numpy_helper.to_array(w)[0], acts), 0) / hw
    np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-6)


def session_outputs(model, x, name):
    m = onnx.ModelProto.FromString(model.SerializeToString())
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return session(m).run([name], {"x": x})[0]


@pytest.mark.parametrize("kind,classes", [("binary", 1), ("softmax", 5)])
def test_probability_score_matches_finite_differences(kind, classes):
    """The graph's seed for --score probability (binary: sigmoid(+-z)) against central differences of the head."""
    model = _gap_linear(classes, sigmoid_output=False, seed=3)
    x = _inputs()
    analytic = Explainer(model, device="cpu").explain(x, "gradcam", target=0, score="probability")
    fd = Explainer(model, device="cpu", gradients="fd").explain(x, "gradcam", target=0, score="probability")
    assert fd.gradients == "finite differences" and analytic.gradients == "analytic"
    assert np.abs(analytic.maps - fd.maps).max() < 1e-3


def test_binary_head_exports():
    model = _gap_linear(1, sigmoid_output=True)
    ex = Explainer(model, device="cpu")
    x = _inputs()
    for method in ("gradcam", "cam"):
        exported = export(ex.info, ex.layers, method)
        for cls in (0, 1):
            heat = session(exported).run([MAP_OUTPUT], {"x": x, "onnxcam/class": np.full(len(x), cls)})[0]
            assert np.abs(heat - ex.explain(x, method, target=cls).maps).max() < 1e-4


def test_target_out_of_range_counts_two_classes_for_a_binary_head():
    ex = Explainer(_gap_linear(1, sigmoid_output=True), device="cpu")
    with pytest.raises(Exception, match="out of range; the model has 2 classes"):
        ex.explain(_inputs(1), target=2)


def test_cli_shows_both_outcomes_of_a_binary_head_and_checks_the_labels_count(tmp_path):
    """A logit of -3.4 is not '100% upside_down': the printout gives sigmoid's two outcomes with their names."""
    import json

    from click.testing import CliRunner

    from onnxcam.cli import main

    model = _gap_linear(1, sigmoid_output=True)
    onnx.save(model, tmp_path / "binary.onnx")
    x = _inputs(1)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "labels.json").write_text(json.dumps(["normal", "upside_down"]))
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(tmp_path / "binary.onnx"),
            str(tmp_path / "x.npy"),
            "--labels",
            str(tmp_path / "labels.json"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    p = float(session(model).run(None, {"x": x})[0][0, 0])
    shown = {
        line.split()[-1]: float(line.split()[-3].rstrip("%")) / 100
        for line in result.output.splitlines()
        if line.strip().endswith(("normal", "upside_down")) and "%" in line
    }
    assert shown == pytest.approx({"upside_down": p, "normal": 1 - p}, abs=1e-3)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(tmp_path / "binary.onnx"),
            str(tmp_path / "x.npy"),
            "--labels",
            str(tmp_path / "three.txt"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 1 and "3" in result.stderr and "2" in result.stderr, result.output


def test_a_ready_tensor_gets_no_preprocessing_notice(tmp_path):
    from click.testing import CliRunner

    from onnxcam.cli import main

    onnx.save(_gap_linear(3, sigmoid_output=False), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", _inputs(1))
    result = CliRunner().invoke(
        main, ["run", str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0 and "assumed" not in result.output, result.output
