"""The exported explained model: same maps as the Python API, in ORT from Python and from Node.js."""

import json
import os
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import node_packages
from conftest import CHELSEA, COFFEE, DEMO, ROOT
from onnxcam import Explainer
from onnxcam.cli import main
from onnxcam.export import MAP_OUTPUT, METHODS, export
from onnxcam.surgery import CLASS_INPUT, TARGET_OUTPUT
from tinymodels import Net, classifier

NODE_DIR = node_packages.NODE_DIR


def _session(model):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def two_images(demo_explainer):
    return demo_explainer.prepare([CHELSEA, COFFEE])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_exported_map_equals_the_python_map(demo_explainer, two_images, method):
    model = export(demo_explainer.info, demo_explainer.layers, method)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10
    session = _session(model)
    heat, target, logits = session.run([MAP_OUTPUT, TARGET_OUTPUT, "logits"], {"input": two_images})
    ref = demo_explainer.explain(two_images, method=method)
    assert list(target) == list(ref.targets) == [285, 967]
    assert heat.dtype == np.float32 and heat.shape == (2, 224, 224)
    assert np.abs(heat - ref.maps).max() <= 1e-4
    assert np.abs(logits - ref.scores).max() <= 1e-5
    chosen = session.run([MAP_OUTPUT], {"input": two_images, CLASS_INPUT: np.array([281, 504])})[0]
    assert np.abs(chosen - demo_explainer.explain(two_images, method=method, target=[281, 504]).maps).max() <= 1e-4


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"cam"}))
def test_export_at_opset_7(method):
    """An opset-7 Caffe2 export (before Resize, float Equal and Where): the exported map and the Explainer's
    in-graph map equal the map computed in NumPy from A and dScore/dA."""
    path = os.path.join(ROOT, "models", "zoo", "caffe2_opset7.onnx")
    host = Explainer(path, device="cpu", maps_in_graph=False)
    assert host.info.opset == 7
    x = host.prepare([CHELSEA, COFFEE])
    ref = host.explain(x, method=method)
    model = export(host.info, host.layers, method)
    onnx.checker.check_model(model, full_check=True)
    heat = _session(model).run([MAP_OUTPUT], {host.info.input_name: x})[0]
    assert np.abs(heat - ref.maps).max() <= 1e-4
    in_graph = Explainer(path, device="cpu").explain(x, method=method)
    assert in_graph.gradients == "analytic" and np.abs(in_graph.maps - ref.maps).max() <= 1e-4


def test_dynamic_batch_and_metadata(demo_explainer):
    model = export(demo_explainer.info, demo_explainer.layers, "gradcam")
    meta = json.loads({p.key: p.value for p in model.metadata_props}["onnxcam.export"])
    assert meta["method"] == "gradcam" and meta["layers"] == demo_explainer.layers
    assert CLASS_INPUT in meta["inputs_and_outputs"] and MAP_OUTPUT in meta["inputs_and_outputs"]
    x = demo_explainer.prepare(CHELSEA)
    heat = _session(model).run([MAP_OUTPUT], {"input": np.repeat(x, 5, axis=0)})[0]
    assert heat.shape == (5, 224, 224) and np.abs(heat - heat[:1]).max() == 0


def test_cli_export_writes_a_loadable_model(tmp_path):
    out = tmp_path / "demo.cam.onnx"
    result = CliRunner().invoke(main, ["export", DEMO, "-o", str(out), "--method", "gradcam++"])
    assert result.exit_code == 0, result.output
    assert "onnxcam/map [N, 224, 224]" in result.output
    assert MAP_OUTPUT in [o.name for o in onnx.load(str(out)).graph.output]
    refused = CliRunner().invoke(main, ["export", DEMO, "-o", DEMO])
    assert refused.exit_code == 1 and "refusing to overwrite" in refused.stderr


def test_node_client_gets_the_same_map(tmp_path, demo_explainer, two_images):
    """onnxruntime-node runs the exported model: no Python in the loop. Its package is installed here
    (`npm ci`) where tests/node/node_modules is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed on this machine")
    missing = node_packages.install()
    if missing:
        pytest.skip(missing)
    (tmp_path / "x.f32").write_bytes(two_images.astype("<f4").tobytes())

    def run_node(class_input, classes):
        model = tmp_path / f"demo.{class_input}.onnx"
        onnx.save(export(demo_explainer.info, demo_explainer.layers, "gradcam", class_input), str(model))
        done = subprocess.run(
            [
                node,
                os.path.join(NODE_DIR, "run_exported.mjs"),
                str(model),
                str(tmp_path / "x.f32"),
                ",".join(map(str, two_images.shape)),
                str(tmp_path / "map.f32"),
            ]
            + classes,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=NODE_DIR,
        )
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout.strip().splitlines()[-1])
        return reply, np.frombuffer((tmp_path / "map.f32").read_bytes(), "<f4").reshape(2, 224, 224)

    reply, heat = run_node("optional", [])  # left unfed: the top-1 classes
    assert reply == {"dims": [2, 224, 224], "target": [285, 967]}
    assert np.abs(heat - demo_explainer.explain(two_images).maps).max() <= 1e-4
    reply, heat = run_node("required", ["282,-1"])  # -1: top-1
    assert reply == {"dims": [2, 224, 224], "target": [282, 967]}
    assert np.abs(heat - demo_explainer.explain(two_images, target=[282, 967]).maps).max() <= 1e-4


def test_export_hint_names_only_what_export_has(tmp_path):
    """An op without a backward rule (Softsign) between the layer and the scores: export says to choose another
    layer, never to use an option (--gradients) that export does not have."""
    model = tmp_path / "softsign.onnx"
    net = Net(opset=13)
    onnx.save(classifier(net, net.op("Softsign", "A", name="squash")), model)
    result = CliRunner().invoke(main, ["export", str(model), "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 3, result.output
    assert "no backward rule for" in result.stderr and "--layer" in result.stderr
    assert "--gradients" not in result.stderr and not (tmp_path / "q.onnx").exists()
