"""Detectors: decoding against ultralytics' NMS, gradients against torch autograd, Eigen-CAM against
pytorch-grad-cam's YOLO tutorial, and `run` end to end. References: tests/fixtures/detection/yolov8_tiny.npz,
made with torch by tools/make_yolo_fixtures.py (which also built models/detect/yolov8_tiny.onnx)."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from conftest import DEMO, ROOT, YOLO
from onnxcam import Explainer, detection
from onnxcam.cli import main
from onnxcam.names import SEED_INPUT
from onnxcam.sessions import SessionSpec
from onnxcam.surgery import grad_name

MODEL, CLASSIFIER = YOLO, DEMO
NECK = (15, 18, 21)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(ROOT, "tests", "fixtures", "detection", "yolov8_tiny.npz")))


@pytest.fixture(scope="module")
def ex():
    return Explainer(MODEL, device="cpu")


@pytest.mark.parametrize(("output", "prefix", "kind"), [("output", "nms", "v8"), ("output5", "nms5", "v5")])
def test_decode_equals_ultralytics_nms(ref, output, prefix, kind):
    found = detection.decode(ref[output], kind, float(ref["conf"]), float(ref["iou"]))
    candidates = int((ref["output"][:, 4:].max(axis=1) > ref["conf"]).sum())
    assert len(ref[f"{prefix}/scores"]) < candidates  # NMS dropped some
    assert [d.image for d in found] == ref[f"{prefix}/images"].tolist()
    assert [d.anchor for d in found] == ref[f"{prefix}/anchors"].tolist()
    assert [d.cls for d in found] == ref[f"{prefix}/classes"].tolist()
    np.testing.assert_allclose([d.box for d in found], ref[f"{prefix}/boxes"], atol=1e-3)
    np.testing.assert_allclose([d.score for d in found], ref[f"{prefix}/scores"], atol=1e-6)


def test_layouts():
    assert detection.layout((None, 84, 8400)) == "v8"
    assert detection.layout((None, 25200, 85)) == "v5"
    assert detection.layout((None, 1000)) is None
    assert detection.layout((None, 4, 4)) is None


def test_v5_seed_is_the_gradient_of_objectness_times_class(ref):
    """The seed of a v5 product score against central differences of `score`."""
    row = ref["output5"][0].astype(np.float64)
    target = detection.Target("score", 0, 3, (7, 100))
    g = detection.seed(row, target, "v5")
    eps = 1e-4
    for a, j in [(7, 4), (7, 8), (100, 4), (100, 8), (100, 9), (5, 4)]:
        plus, minus = row.copy(), row.copy()
        plus[a, j] += eps
        minus[a, j] -= eps
        fd = (detection.score(plus[None], target, "v5") - detection.score(minus[None], target, "v5")) / (2 * eps)
        assert abs(float(fd[0]) - g[a, j]) < 1e-3


def test_inspect_finds_the_neck_and_labels(ex, ref):
    assert ex.info.task == "detect"
    assert ex.layers == ref["neck"].tolist()  # the outputs of ultralytics' model[15], [18], [21]
    assert ex.info.num_classes == 20 and ex.info.labels[14] == "person"
    assert ex.preset == "unit"


def test_neck_ignores_shapes_read_off_another_scale(ex, tmp_path):
    """ultralytics' dynamic export reshapes every scale's map to (x[0].shape[0], no, -1): a path from the finest
    scale into the other scales' Reshape shapes that carries no values (NudeNet 3.4.2's 320n.onnx is such an
    export). The neck found is the same."""
    model = onnx.load(MODEL)
    graph = model.graph
    finest = "/model.22/cv2.0/cv2.0.2/Conv_output_0"
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    added = [
        onnx.helper.make_node("Shape", [finest], ["dyn/shape"]),
        onnx.helper.make_node("Slice", ["dyn/shape", "dyn/zero", "dyn/one"], ["dyn/batch"]),
    ]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), "dyn/zero"),
            numpy_helper.from_array(np.array([1], np.int64), "dyn/one"),
        ]
    )
    for node in graph.node:
        if node.op_type == "Reshape" and node.name.startswith("/model.22/Reshape"):
            graph.initializer.append(numpy_helper.from_array(constants[node.input[1]][1:], node.name + "/rest"))
            added.append(
                onnx.helper.make_node("Concat", ["dyn/batch", node.name + "/rest"], [node.name + "/shape"], axis=0)
            )
            node.input[1] = node.name + "/shape"
    assert len(added) == 2 + 6
    at = next(k for k, n in enumerate(graph.node) if n.output[0] == finest) + 1
    for k, node in enumerate(added):
        graph.node.insert(at + k, node)
    onnx.checker.check_model(model)
    path = str(tmp_path / "dynamic_reshapes.onnx")
    onnx.save(model, path)
    assert Explainer(path, device="cpu").layers == ex.layers


@pytest.mark.parametrize("kind", detection.TARGETS)
def test_gradients_equal_torch_autograd(ex, ref, kind):
    x = ref["input"][:1]
    raw = ex.sessions.run_model(SessionSpec.forward(), x)[ex.info.logits_name]
    anchor, cls = int(ref["target/anchor"]), int(ref["target/class"])
    found = detection.decode(raw, "v8", float(ref["conf"]), float(ref["iou"]))
    target = next(t for t in detection.targets(found, kind) if t.cls == cls and anchor in t.anchors)
    seed = detection.seed(raw[0], target, "v8")[None]
    out = ex.sessions.run(SessionSpec.seeded(), {ex.info.input_name: x, SEED_INPUT: seed})
    scale = max(np.abs(ref[f"grad/{kind}/{i}"]).max() for i in NECK)
    for i, layer in zip(NECK, ex.layers):
        error = np.abs(out[grad_name(layer)] - ref[f"grad/{kind}/{i}"]).max() / scale
        assert error < 1e-3, (kind, layer, error)


def test_eigencam_equals_pytorch_grad_cam(ex, ref):
    """EigenCAM on the neck (the automatic layers), and on the tutorial's model.model[-2] alone. A detection
    is asked for (conf 0) so each image gets a map; Eigen-CAM's does not depend on it."""
    res = ex.explain(ref["input"], method="eigencam", conf=0.0, max_det=1)
    assert res.images.tolist() == [0, 1, 2]
    np.testing.assert_allclose(res.maps, ref["eigencam/neck"], atol=1e-3)
    tutorial = Explainer(MODEL, device="cpu", layer=str(ref["neck"][-1]))
    res = tutorial.explain(ref["input"], method="eigencam", conf=0.0, max_det=1)
    np.testing.assert_allclose(res.maps, ref["eigencam/tutorial"], atol=1e-3)


def test_one_map_per_detection_and_item(ex, ref):
    res = ex.explain(ref["input"], method="gradcam", conf=float(ref["conf"]))
    assert len(res.maps) == len(ref["nms/scores"]) and res.maps.shape[1:] == (160, 160)
    assert res.targets.tolist() == ref["nms/classes"].tolist()
    assert [d[0].anchor for d in res.detections] == ref["nms/anchors"].tolist()
    assert len(res.item(0).maps) == len(res.maps) and len(res.item(1).maps) == 0
    by_class = ex.explain(ref["input"][:1], method="gradcam", conf=float(ref["conf"]), detection_target="class")
    assert len(by_class.maps) == len(set(ref["nms/classes"].tolist()))
    one = ex.explain(ref["input"][:1], target=int(ref["target/class"]), conf=float(ref["conf"]))
    assert set(one.targets.tolist()) == {int(ref["target/class"])}


def test_gradient_free_methods_score_the_detection(ex, ref):
    for method in ("ablationcam", "scorecam"):
        res = ex.explain(ref["input"][:1], method=method, conf=float(ref["conf"]), max_det=1, scorecam_channels=8)
        assert res.maps.shape == (1, 160, 160) and not res.flat[0]


def test_options_that_do_not_apply(ex, ref):
    with pytest.raises(Exception, match="does not apply to detectors"):
        ex.explain(ref["input"][:1], method="cam")
    with pytest.raises(Exception, match="apply to detectors"):
        Explainer(CLASSIFIER, device="cpu").explain(ref["input"][:1, :, :, :], conf=0.5)


def _picture(tmp_path, name):
    import skimage.data

    path = str(tmp_path / f"{name}.png")
    cv2.imwrite(path, cv2.cvtColor(getattr(skimage.data, name)(), cv2.COLOR_RGB2BGR))
    return path


def test_run_writes_a_map_per_detection_with_boxes_in_image_pixels(tmp_path, ref):
    image, empty = _picture(tmp_path, "astronaut"), _picture(tmp_path, "coffee")
    out = tmp_path / "out"
    # a plain resize, as the fixture's tensors were made (tests/test_letterbox.py: the letterbox run makes by default)
    args = ["run", MODEL, image, empty, "--out", str(out), "--json", "--max-det", "4", "--resize", "stretch"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "no detection above --conf" in result.output
    record = json.loads((out / "astronaut.gradcam.json").read_text())
    assert record["task"] == "detect" and len(record["explanations"]) == 4
    h, w = cv2.imread(image).shape[:2]
    expected = ref["nms/boxes"][:4] * np.float32([w / 160, h / 160, w / 160, h / 160])
    boxes = np.float32([e["detections"][0]["box"] for e in record["explanations"]])
    np.testing.assert_allclose(boxes, np.clip(expected, 0, [w - 1, h - 1, w - 1, h - 1]), atol=1)
    assert [e["detections"][0]["label"] for e in record["explanations"]][0] == record["detections"][0]["label"]
    for k, e in enumerate(record["explanations"]):
        assert e["map"].endswith(f"astronaut.gradcam.d{k}.png") and os.path.isfile(e["map"])
    assert json.loads((out / "coffee.gradcam.json").read_text())["detections"] == []


@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_an_image_alone_without_detections_is_an_empty_explanation(tmp_path, method):
    """The whole batch finds nothing: no maps, no error (a batch of one image of a cat, letterboxed)."""
    empty = _picture(tmp_path, "chelsea")
    res = Explainer(MODEL, device="cpu").explain(empty, method=method)
    assert res.maps.shape[0] == 0 and res.flat.shape == (0,) and res.detections == []
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", MODEL, empty, "--out", str(out), "--method", method])
    assert result.exit_code == 0, result.output
    assert "no detection above --conf" in result.output and "wrote" not in result.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        (MODEL, ["--task", "segment"], "'output0' has shape [1, 24, 525]"),
        (MODEL, ["--task", "classify"], "--task classify needs an output of shape [N, C]"),
        (CLASSIFIER, ["--task", "detect"], "--task detect needs an output of shape"),
        (MODEL, ["--method", "guided-backprop"], "does not apply to detectors"),
        (MODEL, ["--target", "top-2"], "a detector explains each detection above --conf"),
        (MODEL, ["--units", "3"], "--units works on classify models and segment models"),
        (MODEL, ["--region", os.path.join(ROOT, "examples", "chelsea.png")], "--region does not apply to detectors"),
    ],
)
def test_run_refusals_are_one_line(tmp_path, model, args, message):
    image = _picture(tmp_path, "astronaut")
    result = CliRunner().invoke(main, ["run", model, image, "--out", str(tmp_path / "o"), *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert (
        len(result.output.strip().splitlines()[-1]) > 0 and not (tmp_path / "o" / "astronaut.gradcam.d0.png").exists()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", MODEL, "-o", "{tmp}/x.onnx"], "export works on classify models and segment models"),
        (["eval", MODEL, "{image}"], "eval works on classify models"),
        (["sanity", MODEL, "{image}"], "sanity works on classify models and segment models"),
    ],
)
def test_commands_without_meaning_for_a_detector_refuse_in_one_line(tmp_path, args, message):
    image = _picture(tmp_path, "coffee")
    args = [a.format(tmp=tmp_path, image=image) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert (
        result.output.strip().splitlines()[-1]
        == f"Error: {message}; 'output0' of shape [N, 24, 525] makes this one a detect model"
    )
    assert not (tmp_path / "x.onnx").exists()
