"""The finite-difference fallback: against analytic gradients and a closed form, and how it is chosen."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from conftest import CHELSEA, DEMO
from onnxcam import Explainer, OnnxcamError, UnsupportedOpError
from onnxcam.cli import main
from tinymodels import Net, classifier


@pytest.mark.parametrize(
    "layer, tolerance",
    [
        ("/_head_act/Clip_output_0", 1e-3),  # GAP -> linear head: exact but for float32 rounding of the scores
        ("/_blocks.10/Add_output_0", 5e-2),  # ReLU6 kinks downstream: central differences average across them
    ],
)
def test_fd_gradcam_matches_analytic_on_the_demo(layer, tolerance):
    analytic = Explainer(DEMO, layer=layer, device="cpu", gradients="analytic").explain(CHELSEA)
    fd = Explainer(DEMO, layer=layer, device="cpu", gradients="fd").explain(CHELSEA)
    assert analytic.gradients == "analytic" and fd.gradients == "finite differences"
    assert fd.targets[0] == analytic.targets[0]
    assert np.abs(fd.maps - analytic.maps).max() < tolerance


def _softsign_model(path):
    """x -> Conv -> A -> Softsign -> Flatten -> MatMul: Softsign has no backward rule."""
    net = Net(opset=13)
    model = classifier(net, net.op("Softsign", "A", name="squash"))
    onnx.save(model, path)
    return model


def _softsign_gradcam_closed_form(model, x, cls):
    """Grad-CAM by hand: G = W_fc[:, c] (as A's shape) * softsign'(A), w = mean_ij G."""
    import onnxruntime as ort

    a = ort.InferenceSession(_with_output(model, "A").SerializeToString()).run(["A"], {"x": x})[0]
    fc = numpy_helper.to_array(model.graph.initializer[-1])
    g = fc[:, cls].reshape(a.shape[1:])[None] / (1 + np.abs(a)) ** 2
    cam = np.maximum((g.mean(axis=(2, 3), keepdims=True) * a).sum(1), 0)
    return cam


def _with_output(model, name):
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def test_auto_falls_back_to_fd_for_an_op_without_a_rule(tmp_path):
    path = str(tmp_path / "softsign.onnx")
    model = _softsign_model(path)
    x = np.random.default_rng(1).normal(size=(2, 3, 7, 6)).astype(np.float32)
    ex = Explainer(path, device="cpu")
    res = ex.explain(x, target=[3, 7])
    assert res.gradients == "finite differences"
    assert ex.missing_rule == "no backward rule for Softsign (node 'squash')"
    for i, cls in enumerate((3, 7)):
        expected = _softsign_gradcam_closed_form(model, x[i : i + 1], cls)[0]
        assert np.abs(res.raw[i] - expected).max() < 1e-3 * max(expected.max(), 1e-6)

    with pytest.raises(UnsupportedOpError, match=r"no backward rule for Softsign \(node 'squash'\)"):
        Explainer(path, device="cpu", gradients="analytic").explain(x)


def test_cli_says_which_gradients_ran(tmp_path):
    path = str(tmp_path / "softsign.onnx")
    _softsign_model(path)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(2).normal(size=(1, 3, 7, 6)).astype(np.float32))
    result = CliRunner().invoke(main, ["run", path, str(x)])
    assert result.exit_code == 0, result.output
    assert (
        "method    gradcam  gradients finite differences (no backward rule for Softsign (node 'squash'); about "
        in result.output
        and " s an image)" in result.output
    )

    result = CliRunner().invoke(main, ["run", path, str(x), "--gradients", "analytic"])
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: no backward rule for Softsign (node 'squash')")
    assert len(result.stderr.strip().splitlines()) == 1


def test_finite_differences_are_estimated_and_refused_when_they_would_take_minutes(tmp_path, monkeypatch):
    """Before falling back, the head is timed: the estimate is kept (fd_seconds), and in 'auto' mode a fallback
    that would take more than FD_LIMIT_S an image is refused with a hint instead of running for minutes."""
    import onnxcam.explainer

    path = str(tmp_path / "softsign.onnx")
    _softsign_model(path)
    ex = Explainer(path, device="cpu")
    assert ex.gradient_source("gradcam") == "finite differences" and 0 < ex.fd_seconds < 1
    monkeypatch.setattr(onnxcam.explainer, "FD_LIMIT_S", ex.fd_seconds / 10)
    with pytest.raises(OnnxcamError, match=r"finite differences instead would take about .* --gradients fd"):
        Explainer(path, device="cpu").gradient_source("gradcam")
    explicit = Explainer(path, device="cpu", gradients="fd")  # asked for: estimated, not refused
    assert explicit.gradient_source("gradcam") == "finite differences" and explicit.fd_seconds > 0
