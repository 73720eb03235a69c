"""Models pinned to a fixed batch size: every path pads to it and drops the padding, and splits larger inputs.

The reference is the same network with a dynamic batch, run by plain ONNX Runtime and by onnxcam.
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from conftest import CHELSEA, COFFEE, ROOT
from onnxcam import Explainer
from onnxcam.cli import main

RESNET = os.path.join(ROOT, "models", "zoo", "resnet.onnx")
METHODS = ("gradcam", "gradcam++", "hirescam", "eigencam", "ablationcam", "scorecam", "guided-backprop")


def _pinned(batch: int) -> onnx.ModelProto:
    model = onnx.load(RESNET)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[0].dim_value = batch
    return model


@pytest.fixture(scope="module")
def dynamic():
    return Explainer(RESNET, device="cpu")


@pytest.fixture(scope="module", params=[2, 16])
def pinned(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("pinned") / f"batch{request.param}.onnx"
    onnx.save(_pinned(request.param), path)
    return str(path), request.param


def _inputs(ex, rows):
    images = ex.prepare([CHELSEA, COFFEE])
    return np.concatenate([images] * (rows // 2 + 1))[:rows]


@pytest.mark.parametrize("rows", [1, 3, 17])
def test_logits_of_any_number_of_rows(dynamic, pinned, rows):
    path, batch = pinned
    ex = Explainer(path, device="cpu")
    assert ex.info.input_shape[0] == batch
    x = _inputs(ex, rows)
    plain = ort.InferenceSession(RESNET, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(ex.logits(x), plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_pads_and_splits(dynamic, pinned, method):
    path, _ = pinned
    ex = Explainer(path, device="cpu")
    x = _inputs(ex, 3)
    got, ref = ex.explain(x, method=method), dynamic.explain(x, method=method)
    np.testing.assert_array_equal(got.targets, ref.targets)
    assert got.maps.shape == ref.maps.shape == (3, 96, 96)
    assert np.abs(got.maps - ref.maps).max() < 1e-4


def test_finite_differences_and_in_graph_maps_on_a_fixed_batch(dynamic, pinned):
    path, _ = pinned
    x = _inputs(dynamic, 3)
    ref = dynamic.explain(x, method="gradcam").maps
    for options in ({"gradients": "fd"}, {"maps_in_graph": False}, {}):
        got = Explainer(path, device="cpu", **options).explain(x, method="gradcam", target=[1, 2, 3])
        want = dynamic.explain(x, method="gradcam", target=[1, 2, 3]).maps
        assert np.abs(got.maps - want).max() < 1e-3, options
    assert ref.shape == (3, 96, 96)


def test_cli_runs_more_images_than_the_batch_and_a_many_row_npy(pinned, tmp_path):
    path, batch = pinned
    ex = Explainer(path, device="cpu")
    np.save(tmp_path / "rows.npy", _inputs(ex, batch + 1))
    result = CliRunner().invoke(
        main,
        [
            "run",
            path,
            CHELSEA,
            COFFEE,
            CHELSEA.replace("chelsea", "coffee"),
            "--out",
            str(tmp_path / "a"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        main, ["run", path, str(tmp_path / "rows.npy"), "--out", str(tmp_path / "b"), "--npy", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output


def test_onnx_runtime_errors_keep_their_telling_line():
    """A session fed a batch its model refuses: the message keeps ORT's "index: 0 Got: 1 Expected: 2" line."""
    from onnxcam.errors import ModelError
    from onnxcam.sessions import _run_session

    session = ort.InferenceSession(_pinned(2).SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelError, match=r"index: 0 Got: 1 Expected: 2") as caught:
        _run_session(session, ["logits"], {"input": np.zeros((1, 3, 96, 96), np.float32)})
    assert "\n" not in str(caught.value) and "Please fix" not in str(caught.value)


def test_huge_initializers_go_around_graph_surgery(dynamic, monkeypatch):
    """Initializers over HUGE_BYTES (protobuf cannot copy a message over 2 GB) travel by name around the surgery:
    with the bound lowered so that every weight tensor goes around, the maps stay the same."""
    import onnxcam.surgery.graph as surgery_graph

    x = _inputs(dynamic, 2)
    want = {m: dynamic.explain(x, method=m).maps for m in ("gradcam", "guided-backprop")}
    monkeypatch.setattr(surgery_graph, "HUGE_BYTES", 4096)
    monkeypatch.setenv("ONNXCAM_CACHE_DIR", "off")  # the surgery must run
    imported = []
    import_onnx = surgery_graph.gs.import_onnx
    monkeypatch.setattr(surgery_graph.gs, "import_onnx", lambda m: imported.append(m) or import_onnx(m))
    ex = Explainer(RESNET, device="cpu")
    for method, maps in want.items():
        assert np.abs(ex.explain(x, method=method).maps - maps).max() < 1e-5, method
    assert imported and all(
        any(e.value == surgery_graph._STAND_IN for t in m.graph.initializer for e in t.external_data) for m in imported
    )
