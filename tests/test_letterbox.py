"""Letterbox: an ultralytics detector's pictures fit as ultralytics' own predictor fits them, and its boxes and maps
mapped back onto the picture. References: tests/fixtures/detection/yolov8_letterbox.npz, ultralytics' `predict` on
the committed ONNX model (tools/make_yolo_fixtures.py --letterbox): the tensor it fed the model and its detections
in image pixels, on non-square pictures (landscape and portrait, shrunk and enlarged)."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import DEMO, ROOT, YOLO
from onnxcam import Explainer, postprocess, preprocess
from onnxcam.cli import main
from onnxcam.errors import OnnxcamError

MODEL, CLASSIFIER = YOLO, DEMO


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(ROOT, "tests", "fixtures", "detection", "yolov8_letterbox.npz")))


@pytest.fixture(scope="module")
def ex():
    return Explainer(MODEL, device="cpu")


def test_ultralytics_detectors_letterbox_and_others_stretch(ex):
    assert (ex.resize, ex.info.resize_source) == ("letterbox", "metadata task=detect (Ultralytics)")
    assert Explainer(MODEL, device="cpu", resize="stretch").resize == "stretch"
    assert Explainer(CLASSIFIER, device="cpu").resize == "stretch"
    with pytest.raises(OnnxcamError, match="unknown resize 'crop'; choose one of stretch, letterbox"):
        Explainer(CLASSIFIER, device="cpu", resize="crop")


def test_tensor_equals_ultralytics_predictor(ex, ref):
    for name in ref["names"]:
        x = ex.prepare(ref[f"image/{name}"])
        assert np.abs(x - ref[f"input/{name}"]).max() <= 1 / 255, name


def _ordered(boxes, scores, classes):
    order = np.lexsort((classes, -scores))
    return np.float32(boxes)[order], np.float32(scores)[order], np.int64(classes)[order]


def test_run_finds_what_yolo_predict_finds(tmp_path, ref):
    paths = []
    for name in ref["names"]:
        paths.append(str(tmp_path / f"{name}.png"))
        cv2.imwrite(paths[-1], cv2.cvtColor(ref[f"image/{name}"], cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", MODEL, *paths, "--out", str(out), "--json", "--pictures", "none"])
    assert result.exit_code == 0, result.output
    for name in ref["names"]:
        record = json.loads((out / f"{name}.gradcam.json").read_text())
        assert record["resize"] == "letterbox"
        found = record["detections"]
        mine = _ordered([d["box"] for d in found], np.float32([d["score"] for d in found]), [d["class"] for d in found])
        theirs = _ordered(ref[f"boxes/{name}"], ref[f"scores/{name}"], ref[f"classes/{name}"])
        h, w = ref[f"image/{name}"].shape[:2]
        assert len(mine[0]) == len(theirs[0]) > 0, name
        np.testing.assert_array_equal(mine[2], theirs[2])
        np.testing.assert_allclose(mine[1], theirs[1], atol=1e-4)
        # ultralytics clips to the image's edge (x = w), onnxcam to its last pixel (w - 1)
        np.testing.assert_allclose(mine[0], np.minimum(theirs[0], [w - 1, h - 1, w - 1, h - 1]), atol=1)


@pytest.mark.parametrize("image_size", [(201, 301), (241, 161), (97, 145), (160, 160), (3, 900)])
def test_a_map_lies_under_its_box(image_size):
    """A map that is one inside a box of the input and zero elsewhere, mapped to the image, is boxed (as run
    boxes maps) where the box itself maps: overlay, boxes and masks line up with the detections' boxes."""
    fit = preprocess.fit("letterbox", (160, 160), image_size)
    (h, w), (top, left), (sh, sw) = image_size, (fit.top, fit.left), fit.scaled
    box = (left + 0.3 * sw, top + 0.25 * sh, left + 0.7 * sw, top + 0.9 * sh)
    heat = np.zeros((160, 160), np.float32)
    heat[round(box[1]) : round(box[3]), round(box[0]) : round(box[2])] = 1
    on_image = fit.map_to_image(heat)
    assert on_image.shape == (h, w)
    found = postprocess.boxes(on_image, 0.5)[0].box
    expected = fit.box_to_image(box)
    assert np.abs(np.subtract(found, expected)).max() <= max(1, np.ceil(max(h / sh, w / sw))), (found, expected)


def test_letterbox_geometry_follows_ultralytics():
    """LetterBox(auto=False): r = min(H/h, W/w) (enlarging too), each side rounded, pads round(d/2 -+ 0.1)."""
    fit = preprocess.fit("letterbox", (160, 160), (201, 301))
    assert (fit.scaled, fit.top, fit.left) == ((107, 160), 26, 0)  # 53 rows of padding: 26 above, 27 below
    assert preprocess.fit("letterbox", (160, 160), (97, 145)).scaled == (107, 160)  # enlarged
    assert preprocess.fit("letterbox", (160, 320), (1, 3000)).scaled == (1, 320)  # at least a pixel a side
    stretch = preprocess.fit("stretch", (160, 160), (201, 301))
    assert (stretch.scaled, stretch.top, stretch.left) == ((160, 160), 0, 0)
    assert stretch.box_to_image((16, 32, 160, 160)) == [30, 40, 300, 200]  # scaled, clipped to the last pixel
    padded = np.ones((160, 160), np.float32)
    padded[26:133] = 0  # the picture's rows are 26..132: the bands above and below are cut away
    assert fit.map_to_image(padded).max() == 0
    with pytest.raises(OnnxcamError, match="unknown resize"):
        preprocess.fit("crop", (160, 160), (10, 10))


def test_run_resize_override(tmp_path, ref):
    """--resize stretch feeds the detector a plain resize (its fixtures' tensors, tests/test_detection.py);
    --resize letterbox on a classifier maps its box back through the padding; the JSON says which."""
    path = str(tmp_path / "astronaut.png")
    cv2.imwrite(path, cv2.cvtColor(ref["image/astronaut_241x161"], cv2.COLOR_RGB2BGR))
    for model, resize in ((MODEL, "stretch"), (CLASSIFIER, "letterbox")):
        out = tmp_path / resize
        args = ["run", model, path, "--out", str(out), "--json", "--pictures", "none", "--resize", resize]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        record = json.loads((out / "astronaut.gradcam.json").read_text())
        assert record["resize"] == resize
    box = record["explanations"][0]["box"]
    assert 0 <= box[0] <= box[2] <= 160 and 0 <= box[1] <= box[3] <= 240
