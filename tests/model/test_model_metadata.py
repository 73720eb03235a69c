"""Labels and preprocessing from the metadata that exporters write, and labels files.

The metadata values are written the way each exporter writes them (Ultralytics: str() of its names dict;
PaddleOCR: names joined by newlines; Windows ML converters: the Image.* keys), and read back through
inspect_model; a preset is checked by what it does to pixels (closed forms)."""

import json

import numpy as np
import pytest
from onnx import helper

from onnxcam import preprocess
from onnxcam.errors import OnnxcamError
from onnxcam.model import inspect_model, read_labels
from tinymodels import CLASSES, Net, classifier

NAMES = [f"name {k}" for k in range(CLASSES)]


def _with_metadata(classes=CLASSES, **props):
    net = Net(opset=13)
    model = classifier(net, net.op("Relu", "A"), classes=classes)
    helper.set_model_props(model, props)
    return model


@pytest.mark.parametrize(
    "props, source",
    [
        ({"onnxcam.labels": "\n".join(NAMES)}, "metadata 'onnxcam.labels'"),
        ({"names": str(dict(enumerate(NAMES))), "task": "classify", "author": "Ultralytics"}, "metadata 'names'"),
        ({"names": str(NAMES)}, "metadata 'names'"),  # YOLOv5's list
        ({"character": "\n".join(NAMES)}, "metadata 'character'"),
        ({"class_names": json.dumps({str(k): n for k, n in enumerate(NAMES)})}, "metadata 'class_names'"),
    ],
)
def test_labels_from_exporters_metadata(props, source):
    info = inspect_model(_with_metadata(**props))
    assert info.labels == NAMES and info.labels_source == source and info.notes == []


def test_binary_head_takes_two_names():
    """A single logit stands for two classes, negative then positive: Paddle's '0\\n180' fits it."""
    info = inspect_model(_with_metadata(classes=1, character="0_degree\n180_degree"))
    assert info.head == "binary" and info.labels == ["0_degree", "180_degree"]


@pytest.mark.parametrize(
    "value",
    [
        "__import__('os').system('touch /tmp/onnxcam-pwned')",  # never evaluated
        "{0: 'a', 2: 'b'}",  # not the indices 0..n-1
        "[" * 100000 + "]" * 100000,  # too deep for the parser
        "{0: ['a'], 1: 'b'}",  # not names
    ],
)
def test_unsafe_or_malformed_names_are_not_used(value, tmp_path):
    info = inspect_model(_with_metadata(names=value))
    assert info.labels is None and info.labels_source is None
    assert info.notes == ["metadata 'names' is not a list of class names; not used"]


def test_names_of_another_count_are_not_used():
    info = inspect_model(_with_metadata(names=str(dict(enumerate(NAMES[:3])))))
    assert info.labels is None
    assert info.notes == [f"metadata 'names' holds 3 names but the model has {CLASSES} classes; not used"]


PIXEL = np.array([[[10, 128, 250]]], np.uint8)  # one RGB pixel


@pytest.mark.parametrize(
    "props, preset, expected",
    [
        ({"Image.BitmapPixelFormat": "Bgr8", "Image.NominalPixelRange": "NominalRange_0_255"}, "bgr", [250, 128, 10]),
        ({"Image.BitmapPixelFormat": "Bgr8"}, "bgr", [250, 128, 10]),  # Windows ML's default range is 0..255
        (
            {"Image.BitmapPixelFormat": "Rgb8", "Image.NominalPixelRange": "Normalized_0_1"},
            "unit",
            [10 / 255, 128 / 255, 250 / 255],
        ),
        (
            {"Image.BitmapPixelFormat": "rgba8", "Image.NominalPixelRange": "normalized_1_1"},
            "inception",
            [(10 - 127.5) / 127.5, (128 - 127.5) / 127.5, (250 - 127.5) / 127.5],
        ),
        ({"task": "classify", "author": "Ultralytics", "names": "{0: 'a'}"}, "unit", [10 / 255, 128 / 255, 250 / 255]),
        ({"task": "detect", "author": "Ultralytics"}, "unit", [10 / 255, 128 / 255, 250 / 255]),
        ({"onnxcam.preprocess": "lite"}, "lite", [(10 - 127) / 128, (128 - 127) / 128, (250 - 127) / 128]),
    ],
)
def test_preprocessing_from_metadata(props, preset, expected):
    info = inspect_model(_with_metadata(**props))
    assert info.preprocess == preset and info.preprocess_source.startswith("metadata")
    x = preprocess.to_tensor([PIXEL], (1, 1), "NCHW", 3, preset, np.float32)
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "props",
    [
        {},
        {"Image.BitmapPixelFormat": "Bgr8", "Image.NominalPixelRange": "Normalized_0_1"},
        {"Image.BitmapPixelFormat": "Nv12"},
        {"task": "segment", "author": "Ultralytics"},
    ],
)
def test_no_preset_where_the_metadata_determines_none(props):
    info = inspect_model(_with_metadata(**props))
    assert info.preprocess is None and info.preprocess_source is None


@pytest.mark.parametrize(
    "text",
    ["\n".join(NAMES) + "\n", json.dumps(NAMES), json.dumps({str(k): n for k, n in reversed(list(enumerate(NAMES)))})],
)
def test_labels_file_formats(tmp_path, text):
    path = tmp_path / "labels"
    path.write_text(text, encoding="utf-8")
    assert read_labels(str(path), CLASSES) == NAMES


def test_labels_file_of_another_count_names_both(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(NAMES[:3]))
    with pytest.raises(OnnxcamError, match=f"holds 3 names but the model has {CLASSES} classes"):
        read_labels(str(path), CLASSES)


def test_labels_text_that_looks_like_json(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("[unused]\n{brace}\n")
    assert read_labels(str(path)) == ["[unused]", "{brace}"]


@pytest.mark.parametrize("text", ['{"0": "a", "2": "b"}', '{"a": "b"}', '[["a"]]', '{"0": null}'])
def test_json_labels_that_are_not_names(tmp_path, text):
    path = tmp_path / "labels.json"
    path.write_text(text)
    with pytest.raises(OnnxcamError, match="is JSON but not a list of names"):
        read_labels(str(path))


def test_unreadable_labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(OnnxcamError, match="cannot read the labels file .*UTF-8"):
        read_labels(str(path))
