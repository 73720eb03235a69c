"""`onnxcam eval` and `onnxcam sanity` end to end on generated shape images and the shapes model."""

import csv
import json
import os
import sys

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from conftest import ROOT
from onnxcam import sanity
from onnxcam.cli import main

sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_shapes  # noqa: E402

SHAPES = os.path.join(ROOT, "models", "shapes", "shapes_cnn.onnx")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """6 held-out shape images (set 3, as in the README's benchmark), with boxes.json and coco.json."""
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes.write_set(str(folder), seed=3, count=6)
    return folder


@pytest.fixture(scope="module")
def evaluated(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    result = run(
        "eval",
        SHAPES,
        images,
        "--method",
        "gradcam",
        "--method",
        "cam",
        "--boxes",
        images / "boxes.json",
        "--out",
        out,
        "--batch-size",
        4,
        "--steps",
        8,
        "--device",
        "cpu",
    )
    return result, out


def test_eval_prints_the_table_and_writes_json_csv_png(evaluated):
    result, out = evaluated
    assert result.exit_code == 0, result.output
    assert "images    6 (6 with boxes from" in result.output
    lines = result.output.splitlines()
    assert "method    gradcam  gradients analytic" in lines and "method    cam" in lines  # the banner
    header = lines[lines.index("") + 1]  # the table follows the banner after an empty line
    assert header.startswith("method ")
    for heading in ("loc. acc", "pointing", "energy", "avg drop", "incr conf", "deletion", "insertion"):
        assert heading in header
    assert any(line.startswith("gradcam ") for line in result.output.splitlines())
    assert sorted(os.listdir(out)) == ["eval.csv", "eval.curves.png", "eval.json"]

    report = json.loads((out / "eval.json").read_text())
    assert list(report["summary"]) == ["gradcam", "cam"]
    s = report["summary"]["gradcam"]
    assert s["images"] == 6 and s["images_with_boxes"] == 6
    assert len(s["deletion_curve"]) == len(s["insertion_curve"]) == 9
    for key in ("localization", "pointing_game", "energy_in_box", "average_drop", "increase_in_confidence"):
        assert 0 <= s[key] <= 100
    assert 0 <= s["deletion_auc"] <= 1 and 0 <= s["insertion_auc"] <= 1
    rows = report["images"]["gradcam"]
    assert len(rows) == 6 and {"y", "o", "iou", "pointing_game", "cam_box"} <= set(rows[0])
    # the summary is the mean of the per-image values
    assert s["deletion_auc"] == pytest.approx(np.mean([r["deletion_auc"] for r in rows]))
    assert s["pointing_game"] == pytest.approx(100 * np.mean([r["pointing_game"] for r in rows]))
    # CAM equals Grad-CAM on a GAP -> linear head
    c = report["summary"]["cam"]
    for key in ("localization", "pointing_game", "deletion_auc", "insertion_auc"):
        assert c[key] == pytest.approx(s[key], abs=1e-4)

    with open(out / "eval.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["gradcam", "cam"]
    assert float(table[0]["insertion_auc"]) == pytest.approx(s["insertion_auc"], abs=1e-5)
    picture = cv2.imread(str(out / "eval.curves.png"))
    assert picture is not None and picture.shape[0] > 300


def test_eval_is_the_same_in_any_batch_size_and_with_coco_boxes(images, evaluated, tmp_path):
    _, out = evaluated
    result = run(
        "eval",
        SHAPES,
        *sorted(images.glob("*.png")),
        "--method",
        "gradcam",
        "--boxes",
        images / "coco.json",
        "--out",
        tmp_path,
        "--batch-size",
        1,
        "--steps",
        8,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    ours = json.loads((tmp_path / "eval.json").read_text())["summary"]["gradcam"]
    before = json.loads((out / "eval.json").read_text())["summary"]["gradcam"]
    for key in ("localization", "pointing_game", "energy_in_box", "average_drop", "deletion_auc", "insertion_auc"):
        assert ours[key] == pytest.approx(before[key], abs=1e-5), key


def test_eval_without_boxes_skips_localization(images, tmp_path):
    result = run(
        "eval",
        SHAPES,
        images / "shape_00000.png",
        "--method",
        "gradcam",
        "--out",
        tmp_path,
        "--steps",
        4,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "(no --boxes: no localization metrics)" in result.output
    s = json.loads((tmp_path / "eval.json").read_text())["summary"]["gradcam"]
    assert s["localization"] is None and s["images_with_boxes"] == 0


def test_eval_errors(images, tmp_path):
    missing = run("eval", SHAPES, tmp_path / "nope.png", "--out", tmp_path)
    assert missing.exit_code == 4 and "image file not found" in missing.output
    (tmp_path / "other.json").write_text(json.dumps({"elsewhere.png": [[0, 0, 4, 4]]}))
    unmatched = run("eval", SHAPES, images, "--boxes", tmp_path / "other.json", "--out", tmp_path)
    assert unmatched.exit_code == 1 and "has an entry in" in unmatched.output
    (tmp_path / "bad.json").write_text(json.dumps({"shape_00000.png": [[5, 5, 1, 1]]}))
    bad = run("eval", SHAPES, images, "--boxes", tmp_path / "bad.json", "--out", tmp_path)
    assert bad.exit_code == 1 and "x1 > x0" in bad.output
    method = run("eval", SHAPES, images, "--method", "nope", "--out", tmp_path)
    assert method.exit_code == 1 and "unknown method 'nope'" in method.output
    assert not (tmp_path / "eval.json").exists()


def test_sanity_cli_on_the_shapes_model(images, tmp_path):
    image = images / "shape_00000.png"
    result = run(
        "sanity", SHAPES, image, "--method", "gradcam", "--steps", 3, "--seed", 1, "--out", tmp_path, "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == [
        "shape_00000.sanity.json",
        "shape_00000.sanity.maps.png",
        "shape_00000.sanity.png",
    ]
    report = json.loads((tmp_path / "shape_00000.sanity.json").read_text())
    curve = report["methods"]["gradcam"]["spearman"]
    assert len(curve) == 4 and curve[0] == pytest.approx(1.0)
    # Grad-CAM depends on the trained weights: its map decorrelates as they are re-initialized
    # (a map that turns flat, all zero, has no ranking left: null in the JSON, counted as 0)
    assert report["methods"]["gradcam"]["passed"] and report["methods"]["gradcam"]["final"] < 0.5
    assert "gradcam: depends on the model" in result.output
    assert len(report["steps"]) == 3 and report["steps"][0]["nodes"][0].endswith("Gemm")
    again = run(
        "sanity",
        SHAPES,
        image,
        "--method",
        "gradcam",
        "--steps",
        3,
        "--seed",
        1,
        "--out",
        tmp_path / "again",
        "--device",
        "cpu",
    )
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "shape_00000.sanity.json").read_text())["methods"] == report["methods"]


def test_cascade_and_randomized_weights():
    proto = onnx.load(SHAPES)
    groups = sanity.parameter_groups(proto)
    assert [op for _, op, _ in groups] == ["Gemm"] + ["Conv"] * 5  # the linear head, then 5 convolutions
    plan = sanity.cascade(proto, 3)
    assert [len(s.nodes) for s in plan] == [1, 3, 2] and plan[0].ops == ["Gemm"]
    assert sum(len(s.initializers) for s in plan) == 12  # weight and bias of each
    a = sanity.randomized(proto, plan[0].initializers, seed=5)
    b = sanity.randomized(proto, plan[0].initializers, seed=5)
    before = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    for name, value in after.items():
        same = np.array_equal(value, before[name])
        assert same == (name not in plan[0].initializers), name
        assert value.shape == before[name].shape and value.dtype == before[name].dtype
    weight = after[plan[0].initializers[0]]
    assert abs(weight.std() - before[plan[0].initializers[0]].std()) < 0.2 * before[plan[0].initializers[0]].std()
    assert a.SerializeToString() == b.SerializeToString()


def test_sanity_tells_guided_backprop_apart_on_relu_layers(images, tmp_path):
    """On a ReLU network guided backprop barely reacts to a re-initialized classifier (Adebayo et al.)."""
    result = run(
        "sanity",
        SHAPES,
        images / "shape_00000.png",
        "--method",
        "gradcam",
        "--method",
        "guided-backprop",
        "--steps",
        2,
        "--out",
        tmp_path,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "shape_00000.sanity.json").read_text())["methods"]
    assert report["gradcam"]["spearman"][1] < 0.5 < 0.8 < report["guided-backprop"]["spearman"][1]
    assert "guided-backprop: depends on the model" in result.output
    assert "the map hardly depends on what the top layer learned" in report["guided-backprop"]["verdict"]
    assert "hardly" not in report["gradcam"]["verdict"]
