"""Faithfulness and localization metrics for saliency maps, as pure NumPy / OpenCV functions.

Faithfulness (does the map point at what the model uses?):

- `average_drop`, `increase_in_confidence` (Chattopadhay et al. 2018, Grad-CAM++): the class
  probability on the image (Y) against the probability on the image multiplied by its map (O).
- `deletion_curve` / `insertion_curve` and `auc` (Petsiuk et al. 2018, RISE): remove the pixels
  the map ranks highest (or insert them into a blurred image) step by step and track the class
  probability. A faithful map makes the deletion curve fall fast (low AUC) and the insertion
  curve rise fast (high AUC).

Localization against ground truth (does the map point at the object?):

- `pointing_game` (Zhang et al. 2016): the map's maximum falls inside the object (box or mask),
  with a 15-pixel tolerance as in the paper.
- `localization_hit` (Zhou et al. 2016, CAM): the box of the largest connected region >= 20% of
  the map's maximum has IoU >= 0.5 with a true box.
- `energy_in_box` (Wang et al. 2020, Score-CAM): the share of the map's sum inside the boxes.

Conventions. A map is [H, W] (or [N, H, W]) at the model's input size. Boxes are
(x0, y0, x1, y1) in pixel-edge coordinates, as COCO's (x, y, x + w, y + h): pixel (i, j) spans
[j, j+1] x [i, i+1], so a box over the pixels 10..19 is (10, 10, 20, 20). Input tensors are in
the model's layout, "NCHW" or "NHWC", after preprocessing: 0 there is the preprocessing's mean
colour, the deletion baseline.
"""

from __future__ import annotations

import cv2
import numpy as np

from onnxcam import postprocess

POINTING_TOLERANCE = 15  # pixels (Zhang et al. 2016)
BOX_THRESHOLD = 0.2  # of the map's maximum (Zhou et al. 2016)
IOU_THRESHOLD = 0.5
STEPS = 32


# -- faithfulness ---------------------------------------------------------------------------


def average_drop(y: np.ndarray, o: np.ndarray) -> float:
    """Average Drop % = 100/N * sum_i max(0, Y_i - O_i) / Y_i.

    y: [N] class probabilities on the images; o: [N] the same class's probabilities on the images
    multiplied by their maps. Lower is better: the map keeps what the model needs."""
    y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
    return float(100.0 * np.mean(np.maximum(0.0, y - o) / y))


def increase_in_confidence(y: np.ndarray, o: np.ndarray) -> float:
    """Increase in Confidence % = 100/N * sum_i [O_i > Y_i] (same Y and O as `average_drop`).
    Higher is better: the map alone convinces the model more than the whole image."""
    y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
    return float(100.0 * np.mean(o > y))


def explanation_map(maps: np.ndarray, saliency: np.ndarray | None = None) -> np.ndarray:
    """[N, H, W] the map an explanation is judged by: `Explanation.maps`, or for methods with an
    input-level saliency [N, C, H, W] (guided backprop, Guided Grad-CAM, SmoothGrad) its max |.| over
    channels, min-max normalized (for Guided Grad-CAM that is the product, not the Grad-CAM factor)."""
    if saliency is None:
        return maps
    return postprocess.saliency_map(saliency)


def masked_input(x: np.ndarray, heatmap: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """x * map in the model's input tensor space: x [N, C, H, W] (or [N, H, W, C]), map [N, H, W]."""
    m = np.asarray(heatmap, np.float32)
    return (x * (m[:, None] if layout == "NCHW" else m[..., None])).astype(x.dtype)


def ranking(heatmap: np.ndarray) -> np.ndarray:
    """Flat pixel indices of an [H, W] map from the highest value to the lowest (ties: row-major order)."""
    return np.argsort(-np.asarray(heatmap, np.float64).reshape(-1), kind="stable")


def step_counts(pixels: int, steps: int = STEPS) -> np.ndarray:
    """[steps + 1] how many pixels are changed at each point of a curve: round(k * pixels / steps)."""
    return np.round(np.arange(steps + 1) * pixels / steps).astype(np.int64)


def reveal(
    start: np.ndarray, end: np.ndarray, heatmap: np.ndarray, steps: int = STEPS, layout: str = "CHW"
) -> np.ndarray:
    """[steps + 1, ...] copies of one input `start` ([C, H, W] or [H, W, C]) in which the first
    round(k * H * W / steps) pixels of `ranking(heatmap)` (all channels) take their values from `end`,
    k = 0..steps. Deletion: start = x, end = the baseline; insertion: start = blurred x, end = x."""
    chw = layout in ("CHW", "NCHW")
    h, w = heatmap.shape
    order = ranking(heatmap)
    rank = np.empty(h * w, np.int64)
    rank[order] = np.arange(h * w)
    rank = rank.reshape(h, w)
    counts = step_counts(h * w, steps)
    changed = rank[None] < counts[:, None, None]  # [steps + 1, H, W]
    changed = changed[:, None] if chw else changed[..., None]
    return np.where(changed, end[None], start[None]).astype(start.dtype)


def blurred(x: np.ndarray, sigma: float | None = None, layout: str = "CHW") -> np.ndarray:
    """A Gaussian blur of one input tensor [C, H, W] (or [H, W, C]), channel by channel.
    Default sigma: max(H, W) / 16 pixels (14 px at 224): enough to erase an object's shape."""
    chw = layout in ("CHW", "NCHW")
    hwc = np.moveaxis(x, 0, -1) if chw else x
    sigma = max(hwc.shape[:2]) / 16 if sigma is None else sigma
    out = cv2.GaussianBlur(
        np.ascontiguousarray(hwc, np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT
    )
    out = out.reshape(hwc.shape)
    return np.ascontiguousarray(np.moveaxis(out, -1, 0) if chw else out, dtype=x.dtype)


def deletion_inputs(
    x: np.ndarray, heatmap: np.ndarray, steps: int = STEPS, layout: str = "CHW", baseline: float = 0.0
) -> np.ndarray:
    """[steps + 1, ...] the input with its top-ranked pixels set to `baseline` (0 in input tensor
    space: the preprocessing's mean colour), a fraction k / steps of the pixels at row k."""
    return reveal(x, np.full_like(x, baseline), heatmap, steps, layout)


def insertion_inputs(
    x: np.ndarray, heatmap: np.ndarray, steps: int = STEPS, layout: str = "CHW", sigma: float | None = None
) -> np.ndarray:
    """[steps + 1, ...] a blurred copy of the input into which its top-ranked pixels are put back,
    a fraction k / steps of the pixels at row k (row 0: all blurred; the last: the input itself)."""
    return reveal(blurred(x, sigma, layout), x, heatmap, steps, layout)


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at n evenly spaced points of [0, 1] (trapezoid rule):
    AUC = (sum - first/2 - last/2) / (n - 1)."""
    c = np.asarray(curve, np.float64)
    return float((c.sum() - c[0] / 2 - c[-1] / 2) / (len(c) - 1))


def curve(probability, inputs: np.ndarray, target: int, rows: int = 64) -> np.ndarray:
    """The class probability along a deletion or insertion sequence, run in batches of `rows`.
    probability: [M, ...] inputs -> [M, C] class probabilities (the model)."""
    return np.concatenate([probability(inputs[i : i + rows])[:, target] for i in range(0, len(inputs), rows)])


# -- localization ---------------------------------------------------------------------------


def check_box(box) -> tuple:
    """(x0, y0, x1, y1) as floats, or a ValueError saying why the value is not such a box: four finite
    numbers with x1 > x0 and y1 > y0 (it may lie partly or wholly outside the image)."""
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"the box {box!r} is not four numbers [x0, y0, x1, y1]") from None
    if len(values) != 4:
        raise ValueError(f"the box {list(values)} is not four numbers [x0, y0, x1, y1]")
    if not all(np.isfinite(values)):
        raise ValueError(f"the box {list(values)} holds a value that is not a finite number")
    x0, y0, x1, y1 = values
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"the box {list(values)} is not [x0, y0, x1, y1] with x1 > x0, y1 > y0")
    return values


def box_mask(boxes, shape: tuple) -> np.ndarray:
    """[H, W] bool: the pixels whose centre lies in any of the boxes (x0 <= j + 0.5 < x1, same for y); the
    parts of a box outside the image cover nothing."""
    h, w = shape
    mask = np.zeros((h, w), bool)
    for box in boxes:
        x0, y0, x1, y1 = check_box(box)
        c0, c1 = (int(np.clip(np.ceil(v - 0.5), 0, w)) for v in (x0, x1))
        r0, r1 = (int(np.clip(np.ceil(v - 0.5), 0, h)) for v in (y0, y1))
        mask[r0:r1, c0:c1] = True
    return mask


def peak(heatmap: np.ndarray) -> tuple:
    """(x, y): the centre of the map's maximum pixel (the first one in row-major order)."""
    i, j = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return (j + 0.5, i + 0.5)


def point_in_boxes(point: tuple, boxes, tolerance: float = POINTING_TOLERANCE) -> bool:
    """Whether (x, y) lies within `tolerance` (Euclidean) of any box."""
    x, y = point
    for x0, y0, x1, y1 in boxes:
        dx = max(x0 - x, 0.0, x - x1)
        dy = max(y0 - y, 0.0, y - y1)
        if np.hypot(dx, dy) <= tolerance:
            return True
    return False


def point_in_mask(point: tuple, mask: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> bool:
    """Whether the centre of some pixel of the mask lies within `tolerance` (Euclidean) of (x, y)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return False
    return bool(np.min(np.hypot(xs + 0.5 - point[0], ys + 0.5 - point[1])) <= tolerance)


def pointing_game(
    heatmap: np.ndarray, boxes=None, mask: np.ndarray | None = None, tolerance: float = POINTING_TOLERANCE
) -> bool:
    """Pointing game (Zhang et al. 2016): a hit if the map's maximum lies within `tolerance` pixels
    of the object, given as boxes (x0, y0, x1, y1) or as an [H, W] bool mask (the mask wins if both)."""
    point = peak(heatmap)
    if mask is not None:
        return point_in_mask(point, mask, tolerance)
    return point_in_boxes(point, boxes, tolerance)


def iou(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1) in pixel-edge coordinates."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def cam_box(heatmap: np.ndarray, threshold: float = BOX_THRESHOLD):
    """The CAM localization box (Zhou et al. 2016), (x0, y0, x1, y1) in pixel-edge coordinates: the
    bounding box of the largest 8-connected region where the map is >= threshold * its max
    (`onnxcam.postprocess.box`); None for an all-zero map."""
    found = postprocess.box(np.asarray(heatmap, np.float32), threshold)
    if found is None:
        return None
    x0, y0, x1, y1 = found  # inclusive pixel indices
    return (x0, y0, x1 + 1, y1 + 1)


def localization_hit(
    heatmap: np.ndarray, boxes, threshold: float = BOX_THRESHOLD, iou_threshold: float = IOU_THRESHOLD
) -> bool:
    """CAM localization: correct if `cam_box(heatmap)` has IoU >= iou_threshold with a true box."""
    found = cam_box(heatmap, threshold)
    return found is not None and max((iou(found, b) for b in boxes), default=0.0) >= iou_threshold


def energy_in_box(heatmap: np.ndarray, boxes=None, mask: np.ndarray | None = None) -> float:
    """Energy-based pointing game (Score-CAM): sum of the map inside the boxes (their union, or the
    mask) / sum of the whole map; 0 for an all-zero map."""
    m = np.asarray(heatmap, np.float64)
    inside = mask if mask is not None else box_mask(boxes, m.shape)
    total = m.sum()
    return float(m[inside].sum() / total) if total > 0 else 0.0


def scale_boxes(boxes, image_size: tuple, input_size: tuple) -> list:
    """Boxes in an image's pixels (width, height of image_size = (H, W)) -> the model input's pixels,
    as onnxcam resizes straight (no crop): x * W_in / W, y * H_in / H."""
    sy, sx = input_size[0] / image_size[0], input_size[1] / image_size[1]
    return [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in boxes]


# -- rank correlation -----------------------------------------------------------------------


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flattened array, ties sharing their average rank (scipy's 'average')."""
    a = np.asarray(a).reshape(-1)
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(a), np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's correlation of the (average-tie) ranks of a and b;
    NaN when either is constant (no ranking to compare)."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")
