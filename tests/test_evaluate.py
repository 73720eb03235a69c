"""onnxcam.evaluate: reading ground-truth boxes, the inputs eval takes, and the evaluation engine."""

import json
import os

import pytest

from onnxcam.errors import ImageError, OnnxcamError
from onnxcam.evaluate import pictures, read_boxes
from onnxcam.outputs import input_paths


def test_read_boxes_matches_names_paths_and_single_boxes(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "b.jpg", "sub/c.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    images = pictures(input_paths([str(tmp_path), str(tmp_path / "sub" / "c.png")], tensors=False))
    assert [os.path.basename(p) for p in images] == ["a.png", "b.jpg", "c.png"]
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [1, 2, 3, 4], "sub/c.png": [[0, 0, 5, 5], [6, 6, 8, 9]],
                                                     "b.jpg": []}))
    found = read_boxes(str(tmp_path / "boxes.json"), images)
    assert found == {images[0]: [(1, 2, 3, 4)], images[2]: [(0, 0, 5, 5), (6, 6, 8, 9)]}
    coco = {"images": [{"id": 7, "file_name": "b.jpg"}], "annotations": [{"image_id": 7, "bbox": [10, 20, 5, 5]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert read_boxes(str(tmp_path / "coco.json"), images) == {images[1]: [(10, 20, 15, 25)]}
