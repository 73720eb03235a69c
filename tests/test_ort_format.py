"""`onnxcam export --format ort`: ONNX Runtime's ORT format (mobile and minimal builds) gives the same maps."""

import json

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner

from conftest import CHELSEA, COFFEE, DEMO
from onnxcam.cli import main
from onnxcam.export import MAP_OUTPUT
from onnxcam.surgery import CLASS_INPUT, TARGET_OUTPUT


def test_ort_format_export_gives_the_python_map(tmp_path, demo_explainer):
    out = tmp_path / "demo.cam.ort"
    result = CliRunner().invoke(main, ["export", DEMO, "-o", str(out), "--format", "ort", "--method", "gradcam++"])
    assert result.exit_code == 0, result.output
    assert "ORT format" in result.output
    assert out.read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier, not an ONNX protobuf
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # the format by the suffix
    meta = json.loads(session.get_modelmeta().custom_metadata_map["onnxcam.export"])
    assert meta["method"] == "gradcam++"
    x = demo_explainer.prepare([CHELSEA, COFFEE])
    heat, target = session.run([MAP_OUTPUT, TARGET_OUTPUT], {"input": x})
    ref = demo_explainer.explain(x, method="gradcam++")
    assert list(target) == list(ref.targets) == [285, 967]
    assert np.abs(heat - ref.maps).max() <= 1e-5
    heat = session.run([MAP_OUTPUT], {"input": x, CLASS_INPUT: np.array([281, 504])})[0]
    assert np.abs(heat - demo_explainer.explain(x, method="gradcam++", target=[281, 504]).maps).max() <= 1e-5


def test_ort_format_needs_the_ort_suffix(tmp_path):
    out = tmp_path / "demo.cam.onnx"
    result = CliRunner().invoke(main, ["export", DEMO, "-o", str(out), "--format", "ort"])
    assert result.exit_code == 1 and "must end in .ort" in result.stderr
    assert not out.exists()
