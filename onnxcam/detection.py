"""Object detectors' raw heads, in NumPy: the layouts ultralytics exports, decoding with NMS, and the score of a
detection that a map explains (with its gradient w.r.t. the raw output: the seed of the backward pass).

Layouts (one row per image):
- "v8": [4 + C, A] (YOLOv8/11): cx, cy, w, h in input pixels, then C class scores (already sigmoid-ed);
- "v5": [A, 5 + C] (YOLOv5): cx, cy, w, h, objectness, C class probabilities; a detection's score is
  objectness x class probability.
Decoding follows ultralytics' non_max_suppression: anchors whose best score exceeds `conf` keep their best class,
then greedy NMS per class (a box is dropped when its IoU with a kept box of its class exceeds `iou`), at most
`max_det` per image, best first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcam.errors import OnnxcamError
from onnxcam.names import check_choice

LAYOUTS = ("v8", "v5")
# What a detection map explains (names.DETECTION_TARGETS): its class score, the sum of the scores of every
# detection of its class in the image, or the sum of its box's raw coordinates (cx + cy + w + h).
TARGETS = ("score", "class", "box")
MAX_DETECTIONS = 300


@dataclass(frozen=True)
class Detection:
    """One detection of image `image`: box (x1, y1, x2, y2) in model-input pixels, class, score, anchor index."""

    image: int
    box: tuple
    cls: int
    score: float
    anchor: int


@dataclass(frozen=True)
class Target:
    """What one map explains: a target kind at these anchors of one image, for one class."""

    kind: str
    image: int
    cls: int
    anchors: tuple


def layout(shape) -> str | None:
    """The layout of a raw head output [N, a, b] (anchors outnumber the 4 + C values per anchor), or None."""
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        return None
    values, anchors = shape[1], shape[2]
    if anchors > values >= 5:
        return "v8"
    if values > anchors >= 6:
        return "v5"
    return None


def class_count(shape, kind: str) -> int:
    return shape[1] - 4 if kind == "v8" else shape[2] - 5


def _split(row: np.ndarray, kind: str):
    """(boxes [A, 4] as cx, cy, w, h; scores [A, C] as the detection scores) of one image's raw output."""
    row = np.asarray(row, np.float32)
    if kind == "v8":
        return row[:4].T, row[4:].T
    return row[:, :4], row[:, 4:5] * row[:, 5:]


def decode(output: np.ndarray, kind: str, conf: float, iou: float, max_det: int = MAX_DETECTIONS) -> list:
    """[Detection] of every image of a raw head output [N, ...], best first within each image."""
    if not 0 <= conf <= 1 or not 0 <= iou <= 1:
        raise OnnxcamError(f"--conf and --iou are between 0 and 1, not {conf} and {iou}")
    found = []
    for i, row in enumerate(output):
        boxes, scores = _split(row, kind)
        best = scores.max(axis=1)
        anchors = np.flatnonzero(best > conf)
        cls = scores[anchors].argmax(axis=1)
        xyxy = np.concatenate(
            [boxes[anchors, :2] - boxes[anchors, 2:] / 2, boxes[anchors, :2] + boxes[anchors, 2:] / 2], 1
        )
        keep = nms(xyxy, best[anchors], cls, iou)[:max_det]
        found += [
            Detection(i, tuple(float(v) for v in xyxy[k]), int(cls[k]), float(best[anchors[k]]), int(anchors[k]))
            for k in keep
        ]
    return found


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> list:
    """Indices kept by greedy class-wise NMS, best score first."""
    order = np.argsort(-scores, kind="stable")
    dropped = np.zeros(len(order), bool)
    keep = []
    for position, k in enumerate(order):
        if dropped[position]:
            continue
        keep.append(int(k))
        rest = order[position + 1 :]
        dropped[position + 1 :] |= (classes[rest] == classes[k]) & (_iou(boxes[k], boxes[rest]) > iou)
    return keep


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    top_left = np.maximum(box[:2], others[:, :2])
    bottom_right = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-9)


def targets(detections: list, kind: str, cls: int | None = None) -> list:
    """The maps to make: one Target per detection ("score", "box"), or per (image, class) ("class": all of that
    class's detections at once); only detections of class `cls` when given."""
    check_choice("detection target", kind, TARGETS)
    chosen = [d for d in detections if cls is None or d.cls == cls]
    if kind != "class":
        return [Target(kind, d.image, d.cls, (d.anchor,)) for d in chosen]
    groups = {}
    for d in chosen:
        groups.setdefault((d.image, d.cls), []).append(d.anchor)
    return [Target(kind, image, c, tuple(anchors)) for (image, c), anchors in groups.items()]


def score(rows: np.ndarray, target: Target, kind: str) -> np.ndarray:
    """[M] the explained score of `target` on M raw output rows (of its image, or of changed inputs)."""
    anchors = list(target.anchors)
    if target.kind == "box":
        boxes = rows[:, :4] if kind == "v8" else rows.transpose(0, 2, 1)[:, :4]
        return np.float32(boxes[:, :, anchors].sum(axis=(1, 2)))
    if kind == "v8":
        return np.float32(rows[:, 4 + target.cls, anchors].sum(axis=1))
    return np.float32((rows[:, anchors, 4] * rows[:, anchors, 5 + target.cls]).sum(axis=1))


def class_scores(row: np.ndarray, anchor: int, kind: str) -> np.ndarray:
    """[C] the detection scores of every class at one anchor (v5: objectness x class probability)."""
    return _split(row, kind)[1][anchor]


def seed(row: np.ndarray, target: Target, kind: str) -> np.ndarray:
    """d score / d output for one image's raw output row (the same shape): ones where the score reads a value,
    and for v5's product objectness x class, each factor's partner at the forward point."""
    g = np.zeros(row.shape, np.float32)
    anchors = list(target.anchors)
    if target.kind == "box":
        if kind == "v8":
            g[:4, anchors] = 1
        else:
            g[anchors, :4] = 1
    elif kind == "v8":
        g[4 + target.cls, anchors] = 1
    else:
        g[anchors, 4] = row[anchors, 5 + target.cls]
        g[anchors, 5 + target.cls] = row[anchors, 4]
    return g
