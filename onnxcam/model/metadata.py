"""Class names and preprocessing from what exporters write into a model's metadata_props, and from a labels file.

Conventions read (each value is untrusted text: parsed as JSON or a Python literal, never evaluated, and
bounded in size):

- onnxcam's own: `onnxcam.labels` (names, one a line) and `onnxcam.preprocess` (a preset name).
- Ultralytics (YOLOv5/v8/11 `export`): `names`, str() of a dict {0: 'name', ...} (or of a list); `task`
  "classify" or "detect" means RGB / 255 (its classify_transforms use mean 0, std 1; its detectors take 0..1),
  and "detect" means letterboxed images (its predictor's LetterBox; names.RESIZES).
- PaddleOCR / RapidOCR: `character`, names one a line (for orientation classifiers "0", "90", "180", "270").
- QGIS Deepness models: `class_names`, JSON {"0": "name", ...}.
- Windows ML (written by WinMLTools, onnxmltools, keras2onnx and other onnxconverter-common converters):
  `Image.BitmapPixelFormat` (Gray8, Rgb8, Bgr8, Rgba8, Bgra8) and `Image.NominalPixelRange`
  (NominalRange_0_255, the default; Normalized_0_1; Normalized_1_1; NominalRange_16_235), compared without
  regard to case as onnxconverter-common does.

tf2onnx and Hugging Face optimum write no labels or preprocessing into the ONNX file (optimum keeps id2label
in config.json next to it).
"""

from __future__ import annotations

import ast
import json
import os

from onnxcam.errors import OnnxcamError

# Metadata values longer than this are not parsed (a 1000-class label list is some 20 kB).
MAX_VALUE_CHARS = 1 << 22
# Labels files larger than this are refused unread.
MAX_LABELS_FILE_BYTES = 1 << 24

_WINML_ORDER = {"rgb8": "rgb", "rgba8": "rgb", "gray8": "rgb", "bgr8": "bgr", "bgra8": "bgr"}
_WINML_PRESETS = {
    ("rgb", "nominalrange_0_255"): "raw",
    ("rgb", "normalized_0_1"): "unit",
    ("rgb", "normalized_1_1"): "inception",
    ("bgr", "nominalrange_0_255"): "bgr",
}


def metadata(model) -> dict:
    """The model's metadata_props as a dict (the last value of a repeated key wins, as ONNX Runtime's map)."""
    return {p.key: p.value for p in model.metadata_props}


def labels_from_metadata(meta: dict, count: int) -> tuple:
    """(names, where they came from, notes): the first convention present whose names number `count`; notes
    say which metadata held names that do not fit (they are not used)."""
    readers = (
        ("onnxcam.labels", lambda v: v.split("\n")),
        ("names", _literal_names),
        ("character", lambda v: v.splitlines()),
        ("class_names", _literal_names),
    )
    notes = []
    for key, read in readers:
        value = meta.get(key)
        if value is None:
            continue
        names = read(value) if len(value) <= MAX_VALUE_CHARS else None
        if names is None:
            notes.append(f"metadata '{key}' is not a list of class names; not used")
        elif len(names) != count:
            notes.append(f"metadata '{key}' holds {len(names)} names but the model has {count} classes; not used")
        else:
            return names, f"metadata '{key}'", notes
    return None, None, notes


def preset_from_metadata(meta: dict) -> tuple:
    """(preset name, where it came from), or (None, None) where the metadata determines none."""
    if meta.get("onnxcam.preprocess"):
        return meta["onnxcam.preprocess"], "metadata 'onnxcam.preprocess'"
    pixel_format = meta.get("Image.BitmapPixelFormat")
    if pixel_format is not None:
        pixel_range = meta.get("Image.NominalPixelRange", "NominalRange_0_255")
        preset = _WINML_PRESETS.get((_WINML_ORDER.get(pixel_format.lower()), pixel_range.lower()))
        if preset:
            return (
                preset,
                f"metadata Image.BitmapPixelFormat={pixel_format}, Image.NominalPixelRange={pixel_range} (Windows ML)",
            )
    task = _ultralytics_task(meta)
    if task in ("classify", "detect"):
        return "unit", f"metadata task={task} (Ultralytics)"
    return None, None


def resize_from_metadata(meta: dict) -> tuple:
    """(names.RESIZES name, where it came from), or (None, None) where the metadata determines none."""
    if _ultralytics_task(meta) == "detect":
        return "letterbox", "metadata task=detect (Ultralytics)"
    return None, None


def _ultralytics_task(meta: dict) -> str | None:
    """The `task` of an ultralytics export (one with its `names` or its author), else None."""
    return meta.get("task") if "names" in meta or "Ultralytics" in meta.get("author", "") else None


def read_labels(path: str, count: int | None = None) -> list:
    """Class names from a file: a JSON list, a JSON object {index: name} (indices 0..n-1), or text with one
    name a line. With `count`, a file holding another number of names is an error naming both."""
    try:
        size = os.path.getsize(path)
        if size > MAX_LABELS_FILE_BYTES:
            raise OnnxcamError(
                f"the labels file {path} holds {size} bytes, more than onnxcam reads ({MAX_LABELS_FILE_BYTES})"
            )
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OnnxcamError(f"cannot read the labels file {path}: {reason}; it must be UTF-8 text") from None
    names = None
    if text.lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = None  # not JSON after all: a text file whose first name starts with a bracket
        if value is not None:
            names = _names(value)
            if names is None:
                raise OnnxcamError(
                    f"the labels file {path} is JSON but not a list of names or an object "
                    '{"0": name, ...} with the indices 0..n-1'
                )
    if names is None:
        names = text.splitlines()
        while names and not names[-1].strip():
            names.pop()  # trailing blank lines
    if count is not None and len(names) != count:
        raise OnnxcamError(f"the labels file {path} holds {len(names)} names but the model has {count} classes")
    return names


def _literal_names(value: str):
    """Names from a Python literal or JSON (a list, or a dict of indices 0..n-1), or None."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return _names(parse(value))
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            continue
    return None


def _names(value):
    """A list of names from a list of strings (or numbers), or a dict whose keys are the indices 0..n-1."""
    if isinstance(value, dict):
        indexed = {_index(k): v for k, v in value.items()}
        if None in indexed or len(indexed) != len(value) or sorted(indexed) != list(range(len(indexed))):
            return None
        value = [indexed[k] for k in range(len(indexed))]
    if not isinstance(value, list) or not all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value
    ):
        return None
    return [v if isinstance(v, str) else str(v) for v in value]


def _index(key):
    """A class index from a dict key: an int, or a string of digits; None for anything else."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    return int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else None
