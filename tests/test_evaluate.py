"""onnxcam.evaluate: reading ground-truth boxes, the inputs eval takes, and the evaluation engine."""

import json
import os

import numpy as np
import pytest

import hostile_files as hf
from onnxcam import Explainer, metrics
from onnxcam.errors import ImageError, OnnxcamError
from onnxcam.evaluate import EvalOptions, Evaluation, pictures, read_boxes
from onnxcam.methods import softmax
from onnxcam.outputs import input_paths
from tinymodels import session


def test_read_boxes_matches_names_paths_and_single_boxes(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "b.jpg", "sub/c.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    images = pictures(input_paths([str(tmp_path), str(tmp_path / "sub" / "c.png")], tensors=False))
    assert [os.path.basename(p) for p in images] == ["a.png", "b.jpg", "c.png"]
    (tmp_path / "boxes.json").write_text(
        json.dumps({"a.png": [1, 2, 3, 4], "sub/c.png": [[0, 0, 5, 5], [6, 6, 8, 9]], "b.jpg": []})
    )
    found = read_boxes(str(tmp_path / "boxes.json"), images)
    assert found == {images[0]: [(1, 2, 3, 4)], images[2]: [(0, 0, 5, 5), (6, 6, 8, 9)]}
    coco = {"images": [{"id": 7, "file_name": "b.jpg"}], "annotations": [{"image_id": 7, "bbox": [10, 20, 5, 5]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert read_boxes(str(tmp_path / "coco.json"), images) == {images[1]: [(10, 20, 15, 25)]}


def test_inputs_eval_refuses(tmp_path):
    tensor = tmp_path / "x.npy"
    tensor.write_bytes(b"")
    with pytest.raises(ImageError, match="eval needs pictures"):
        pictures([str(tensor)])
    with pytest.raises(ImageError, match="image file not found"):
        pictures([str(tmp_path / "nope.png")])
    (tmp_path / "boxes.json").write_text(json.dumps({"elsewhere.png": [[0, 0, 4, 4]]}))
    with pytest.raises(OnnxcamError, match="no image of the 1 given has an entry in"):
        read_boxes(str(tmp_path / "boxes.json"), [str(tmp_path / "a.png")])


def test_evaluation_against_plain_onnx_runtime(tmp_path):
    """Each image's values recomputed from the metric definitions with the model run by plain ONNX Runtime."""
    model = hf.tiny()
    paths = []
    for seed in range(3):
        paths.append(str(tmp_path / f"{seed}.png"))
        (tmp_path / f"{seed}.png").write_bytes(hf.encode(".png", hf.picture(h=30, w=40, seed=seed)))
    truth = {paths[0]: [(8.0, 5.0, 30.0, 25.0)], paths[2]: [(0.0, 0.0, 10.0, 30.0), (30.0, 0.0, 40.0, 10.0)]}
    ex = Explainer(model, device="cpu")
    options = EvalOptions(steps=4, tolerance=3.0, box_threshold=0.3, iou=0.2)
    evaluation = Evaluation(ex, ["gradcam"], options)
    evaluation.add(paths[:2], truth)
    evaluation.add(paths[2:], truth)
    rows = evaluation.rows["gradcam"]

    plain = session(model)

    def probabilities(x):
        return softmax(plain.run(None, {"x": x})[0])

    x = ex.prepare(paths)
    res = ex.explain(x, "gradcam")
    for i, row in enumerate(rows):
        target, heat = int(res.targets[i]), res.maps[i]
        assert row["target"] == int(np.argmax(probabilities(x[i : i + 1])))
        assert row["y"] == pytest.approx(probabilities(x[i : i + 1])[0, target], rel=1e-5)
        masked = x[i : i + 1] * heat[None, None]
        assert row["o"] == pytest.approx(probabilities(masked.astype(np.float32))[0, target], rel=1e-5, abs=1e-7)
        deletion = probabilities(metrics.deletion_inputs(x[i], heat, 4, "CHW"))[:, target]
        insertion = probabilities(metrics.insertion_inputs(x[i], heat, 4, "CHW"))[:, target]
        assert row["deletion_auc"] == pytest.approx(metrics.auc(deletion), rel=1e-5)
        assert row["insertion_auc"] == pytest.approx(metrics.auc(insertion), rel=1e-5)
        if paths[i] not in truth:
            assert "localization" not in row
            continue
        # the map's peak pixel centre, scaled from the 7 x 6 input to the 30 x 40 picture
        r, c = np.unravel_index(np.argmax(heat), heat.shape)
        point = ((c + 0.5) * 40 / 6, (r + 0.5) * 30 / 7)
        near = [
            np.hypot(max(x0 - point[0], 0, point[0] - x1), max(y0 - point[1], 0, point[1] - y1)) <= 3.0
            for x0, y0, x1, y1 in truth[paths[i]]
        ]
        assert row["pointing_game"] == any(near)
        scaled = [(x0 * 6 / 40, y0 * 7 / 30, x1 * 6 / 40, y1 * 7 / 30) for x0, y0, x1, y1 in truth[paths[i]]]
        assert row["localization"] == (row["iou"] >= 0.2) and 0 <= row["iou"] <= 1
        assert row["localization"] == metrics.localization_hit(heat, scaled, 0.3, 0.2)
    summary = evaluation.summary()["gradcam"]
    assert summary["images"] == 3 and summary["images_with_boxes"] == 2
    y, o = [r["y"] for r in rows], [r["o"] for r in rows]
    assert summary["average_drop"] == pytest.approx(metrics.average_drop(y, o))
