"""Segmentation (issue #18): the task chosen from the output's shape, the class-over-region score against an
independent reference (pytorch-grad-cam 1.5.7's SemanticSegmentationTarget maps on torchvision's FCN and
DeepLabV3, tools/make_segmentation_fixtures.py; central finite differences of the region score), the default
class and region rules, export, and the command line."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcam import Explainer, segmentation
from onnxcam.cli import main
from onnxcam.errors import ModelError, OnnxcamError
from onnxcam.export import export
from onnxcam.model import inspect_model
from onnxcam.model.inspect import TASK_SHAPES
from onnxcam.names import CLASS_INPUT, MAP_OUTPUT, REGION_INPUT, TARGET_OUTPUT, TASKS
from onnxcam.surgery import augment, cut_head, grad_name
from tinymodels import Net, classifier, segmenter, session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "segment")
PARITY_METHODS = ("gradcam", "gradcam++", "hirescam")


def _fixture(name):
    f = np.load(os.path.join(FIXTURES, f"{name}.npz"))
    path = os.path.join(ROOT, str(f["model"]))
    with open(path, "rb") as model:
        assert hashlib.sha256(model.read()).hexdigest() == str(f["model_sha256"]), "stale fixture: rebuild it"
    return path, f


@pytest.mark.parametrize("name", ["fcn_small", "deeplabv3_small"])
def test_maps_equal_pytorch_grad_cam_semantic_segmentation_target(name):
    """Each row explains its class over the pixels the model predicts as it (the reference's mask is that of
    torch's output; onnxcam finds its own in the graph): the maps agree within 1e-3."""
    path, f = _fixture(name)
    ex = Explainer(path, layer=str(f["layer"]), device="cpu")
    x, targets, masks = f["input"], f["targets"], f["masks"].astype(bool)
    for method in PARITY_METHODS:
        reference = f[f"map/{method}"] / 65535.0
        given = ex.explain(x, method, target=targets, region=masks)  # the reference's own region, fed
        assert np.abs(given.maps - reference).max() <= 1e-3, method
        assert np.array_equal(given.region, masks)
        predicted = ex.explain(x, method, target=targets)
        assert (predicted.region == masks).mean() > 0.999  # a pixel whose top-2 logits tie may flip
        assert np.corrcoef(predicted.maps.ravel(), reference.ravel())[0, 1] > 0.999


def test_the_numpy_path_and_gradient_free_scores_follow_the_same_region():
    """The maps computed in NumPy from A and dScore/dA equal the in-graph ones; Ablation-CAM's unablated score is
    the region sum of the class's logits (SemanticSegmentationTarget), from the same forward output."""
    path, f = _fixture("fcn_small")
    x, targets = f["input"][:2], f["targets"][:2]
    in_graph = Explainer(path, layer=str(f["layer"]), device="cpu").explain(x, "gradcam", target=targets)
    numpy_path = Explainer(path, layer=str(f["layer"]), device="cpu", maps_in_graph=False)
    assert np.abs(numpy_path.explain(x, "gradcam", target=targets).maps - in_graph.maps).max() < 1e-4
    z = session(onnx.load(path)).run(None, {"input": x})[0]
    inside = segmentation.regions(z, "softmax", targets)
    expected = np.array([(z[i, c] * inside[i]).sum() for i, c in enumerate(targets)])
    np.testing.assert_allclose(segmentation.region_score(z, "softmax", targets, inside), expected, rtol=1e-5)
    assert np.array_equal(in_graph.region, inside)


def _finite_difference_check(model, classes, region=None, layer="B"):
    """<G, v> of the augmented model against central differences of the region score of the cut-off head, for
    a random direction v and v = G."""
    info = inspect_model(model)
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 12)).astype(np.float32)
    feeds = {"x": x, CLASS_INPUT: np.int64(classes)}
    if region is not None:
        feeds[REGION_INPUT] = np.float32(region)
    a, g, target, z = session(augment(info, [layer])).run(
        [layer, grad_name(layer), TARGET_OUTPUT, info.logits_name], feeds
    )
    inside = segmentation.regions(z, info.head, target, region)
    head = session(cut_head(info, layer))
    rng = np.random.default_rng(2)
    for v in (rng.normal(size=a.shape), g):
        v = v * np.linalg.norm(a) / np.linalg.norm(v)
        eps = 1e-3
        plus, minus = (head.run(None, {layer: np.float32(a + s * eps * v)})[0] for s in (1, -1))
        score = [segmentation.region_score(out, info.head, target, inside)[0] for out in (plus, minus)]
        fd = (score[0] - score[1]) / (2 * eps)
        assert abs(fd - float((g * v).sum())) <= 2e-3 * max(
            abs(fd), np.linalg.norm(g) * np.linalg.norm(v) / np.sqrt(g.size)
        )
    return target, inside


@pytest.mark.parametrize("opset", [11, 13])
def test_the_seed_is_the_gradient_of_the_class_summed_over_its_predicted_region(opset):
    model = segmenter(opset=opset)
    target, inside = _finite_difference_check(model, [-1])
    z = session(model).run(None, {"x": np.random.default_rng(1).normal(size=(1, 3, 16, 12)).astype(np.float32)})[0]
    assert target[0] == segmentation.default_class(z, "softmax", background=False)[0]
    assert inside.any() and not inside.all()


def test_a_given_region_and_a_class_predicted_nowhere():
    region = np.zeros((1, 16, 12), np.float32)
    region[0, 2:9, 3:7] = 1
    _, inside = _finite_difference_check(segmenter(), [2], region)
    assert np.array_equal(inside, region > 0)
    model = segmenter(classes=8)
    z = session(model).run(None, {"x": np.random.default_rng(1).normal(size=(1, 3, 16, 12)).astype(np.float32)})[0]
    absent = [c for c in range(8) if not (z.argmax(axis=1) == c).any()]
    assert absent
    _, inside = _finite_difference_check(model, absent[:1])  # no pixel predicted as the class: the whole output
    assert inside.all()


def test_a_one_channel_sigmoid_map_explains_its_positive_side():
    """One channel (a text or foreground detector's probability): class 1 is the logit z over z > 0, the default;
    class 0 is -z over z <= 0."""
    model = segmenter(classes=1, end="Sigmoid")
    info = inspect_model(model)
    assert (info.task, info.head, info.logits_name) == ("segment", "binary", model.graph.node[-2].output[0])
    target, inside = _finite_difference_check(model, [-1])
    assert target[0] == 1
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 12)).astype(np.float32)
    z = session(augment(info, [], gradients=False)).run([info.logits_name], {"x": x})[0]
    assert np.array_equal(inside[0], z[0, 0] > 0)
    _finite_difference_check(model, [0])


def test_default_class_passes_over_a_background_named_in_the_labels():
    z = np.zeros((2, 3, 2, 2), np.float32)
    z[0, 0] = 1  # every pixel background
    z[1, 0] = 1
    z[1, 2, 0, 0] = 2  # one pixel of class 2
    assert segmentation.default_class(z, "softmax", background=False).tolist() == [0, 0]
    assert segmentation.default_class(z, "softmax", background=True).tolist() == [0, 2]
    assert segmentation.has_background(["__background__", "cat"], "softmax")
    assert not segmentation.has_background(["cat", "dog"], "softmax")
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 12)).astype(np.float32)
    plain = Explainer(segmenter(), device="cpu")
    labelled = Explainer(segmenter(), device="cpu", labels=["background", "a", "b", "c"])
    fractions = plain.explain(x).scores[0]
    for method in ("gradcam", "scorecam"):  # chosen in the graph, and in NumPy
        assert plain.explain(x, method).targets[0] == np.argmax(fractions)
        got = labelled.explain(x, method).targets[0]
        assert got == (1 + np.argmax(fractions[1:]) if np.argmax(fractions) == 0 else np.argmax(fractions))


def test_the_task_follows_the_output_shape_and_a_wrong_choice_is_refused():
    assert set(TASK_SHAPES) <= set(TASKS)
    assert inspect_model(classifier(Net(13), "A")).task == "classify"
    info = inspect_model(segmenter())
    assert (info.task, info.num_classes, info.logits_shape, info.auto_layer.name) == (
        "segment",
        4,
        (None, 4, 16, 12),
        "B",
    )
    with pytest.raises(ModelError, match=r"--task segment needs .*\[N, 10\] \(a classify output\)"):
        inspect_model(classifier(Net(13), "A"), task="segment")
    with pytest.raises(ModelError, match=r"--task classify needs .*\[1, 4, 16, 12\] \(a segment output\)"):
        inspect_model(segmenter(), task="classify")
    with pytest.raises(ModelError, match=r"detect.*\[1, 4, 16, 12\]"):
        inspect_model(segmenter(), task="detect")
    with pytest.raises(OnnxcamError, match="unknown task"):
        inspect_model(segmenter(), task="count")


def test_what_does_not_apply_to_segmentation_is_refused():
    ex = Explainer(segmenter(), device="cpu")
    x = np.zeros((1, 3, 16, 12), np.float32)
    for kwargs in ({"score": "probability"}, {"aug_smooth": True}):
        with pytest.raises(OnnxcamError, match="does not apply to segmentation"):
            ex.explain(x, **kwargs)
    with pytest.raises(OnnxcamError, match="applies to segmentation models"):
        Explainer(classifier(Net(13), "A"), device="cpu").explain(
            np.zeros((1, 3, 7, 6), np.float32), region=np.ones((7, 6))
        )
    with pytest.raises(OnnxcamError, match="region is a mask"):
        ex.explain(x, region=np.ones(5))
    with pytest.raises(OnnxcamError, match="use it with --resize stretch"):  # a letterbox would shift the mask
        Explainer(segmenter(), device="cpu", resize="letterbox").explain(x, region=np.ones((16, 12)))


def test_the_exported_model_maps_the_class_over_its_region(tmp_path):
    model = segmenter()
    info = inspect_model(model)
    exported = export(info, ["B"], "gradcam")
    ex = Explainer(model, layer="B", device="cpu")
    x = np.random.default_rng(3).normal(size=(1, 3, 16, 12)).astype(np.float32)
    run = session(exported)
    heat, target = run.run([MAP_OUTPUT, TARGET_OUTPUT], {"x": x})
    res = ex.explain(x, "gradcam")
    assert target[0] == res.targets[0] and np.abs(heat - res.maps).max() < 1e-5
    region = np.zeros((1, 16, 12), np.float32)
    region[0, :8] = 1
    heat, target = run.run([MAP_OUTPUT, TARGET_OUTPUT], {"x": x, CLASS_INPUT: np.int64([2]), REGION_INPUT: region})
    assert np.abs(heat - ex.explain(x, "gradcam", target=2, region=region[0]).maps).max() < 1e-5


def test_the_command_line_writes_the_overlay_and_the_region_in_json(tmp_path):
    path, _ = _fixture("deeplabv3_small")
    image = str(tmp_path / "photo.png")
    cv2.imwrite(image, np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    mask = str(tmp_path / "mask.png")
    cv2.imwrite(mask, np.uint8(np.arange(80)[None].repeat(60, 0) < 40) * 255)
    out = str(tmp_path / "out")
    runner = CliRunner()
    result = runner.invoke(main, ["run", path, image, "--out", out, "--json"])
    assert result.exit_code == 0, result.output
    record = json.load(open(os.path.join(out, "photo.gradcam.json")))
    assert os.path.isfile(os.path.join(out, "photo.gradcam.png"))
    explained = record["explanations"][0]
    assert explained["region"]["source"] == "predicted"
    assert explained["target"]["class"] == record["predictions"][0]["class"]  # no background in the labels
    assert explained["target"]["fraction"] == pytest.approx(explained["region"]["fraction"])
    assert sum(p["fraction"] for p in record["predictions"]) <= 1 + 1e-6
    result = runner.invoke(main, ["run", path, image, "--out", out, "--json", "--region", mask, "-t", "1"])
    assert result.exit_code == 0, result.output
    explained = json.load(open(os.path.join(out, "photo.gradcam.json")))["explanations"][0]
    assert explained["region"] == {"source": mask, "pixels": 128 * 64, "fraction": 0.5}
    assert explained["target"]["class"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "detect"], "--task detect needs an output of shape [N, 4+C, A]"),
        (["--region", "missing.png"], "region mask: image file not found"),
    ],
)
def test_command_line_errors_are_one_line(tmp_path, args, message):
    path, _ = _fixture("fcn_small")
    image = str(tmp_path / "photo.png")
    cv2.imwrite(image, np.zeros((20, 20, 3), np.uint8))
    result = CliRunner().invoke(main, ["run", path, image, "--out", str(tmp_path), *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")


def test_segment_on_a_classifier_is_a_one_line_error(tmp_path):
    model = str(tmp_path / "classifier.onnx")
    onnx.save(classifier(Net(13), "A"), model)
    result = CliRunner().invoke(main, ["inspect", model, "--task", "segment"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --task segment needs an output of shape [N, C, H, W]")
    assert lines[0].endswith("has shape [N, 10] (a classify output)")


def test_a_real_text_detector_explains_its_text():
    """PaddleOCR's PP-OCRv4 DBNet text detector (models/real): a one-channel probability map. Its default class is
    text (class 1) over the pixels it calls text, and the Grad-CAM map follows that region."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import real_models

    page, (x0, y0, x1, y1) = real_models.render_page()
    model = os.path.join(ROOT, "models", "real", "ch_PP-OCRv4_det_infer.onnx")
    assert real_models.sha256(model) == "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"  # README
    ex = Explainer(model, device="cpu", input_size=(320, 320), preprocess_preset="inception")
    assert (ex.info.task, ex.info.head) == ("segment", "binary")
    res = ex.explain(page, "gradcam")
    inside = res.region[0]
    assert res.targets[0] == 1 and 0.01 < inside.mean() < 0.2
    ys, xs = np.nonzero(inside)
    scale = 320 / 400
    assert xs.min() >= (x0 - 10) * scale and xs.max() <= (x1 + 10) * scale  # text found where the ink is
    assert ys.min() >= (y0 - 10) * scale and ys.max() <= (y1 + 10) * scale
    assert np.corrcoef(res.maps[0].ravel(), inside.ravel())[0, 1] > 0.7
