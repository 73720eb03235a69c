"""Line charts drawn with OpenCV (no plotting library): deletion / insertion curves, sanity curves."""

from __future__ import annotations

import cv2
import numpy as np

# tab20-like colours (RGB): distinguishable for up to 20 series
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)
FONT = cv2.FONT_HERSHEY_SIMPLEX
MARGIN = (56, 20, 34, 46)  # left, right, top, bottom


def line_chart(
    series: list,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple = (0.0, 1.0),
    size: tuple = (380, 520),
    xticks: list | None = None,
    markers: bool = False,
    yticks: int = 5,
) -> np.ndarray:
    """An RGB uint8 [H, W, 3] chart of `series` = [(label, xs, ys), ...], colours in PALETTE order.
    NaN values leave a gap. xticks: [(x, text), ...]; default: 5 evenly spaced values. yticks: how
    many evenly spaced horizontal grid lines, ylim included."""
    h, w = size
    left, right, top, bottom = MARGIN
    image = np.full((h, w, 3), 255, np.uint8)
    xs_all = np.concatenate([np.asarray(s[1], np.float64) for s in series]) if series else np.zeros(1)
    x_lo, x_hi = float(np.nanmin(xs_all)), float(np.nanmax(xs_all))
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    y_lo, y_hi = ylim

    def to_px(x, y):
        px = left + (x - x_lo) / (x_hi - x_lo) * (w - left - right)
        py = top + (y_hi - y) / (y_hi - y_lo) * (h - top - bottom)
        return int(round(px)), int(round(py))

    grey, black = (210, 210, 210), (0, 0, 0)
    for y in np.linspace(y_lo, y_hi, yticks):
        cv2.line(image, to_px(x_lo, y), to_px(x_hi, y), grey, 1)
        _text(image, f"{y:.2f}".rstrip("0").rstrip(".") if y else "0", (20, to_px(x_lo, y)[1] + 4))
    ticks = xticks if xticks is not None else [(x, f"{x:g}") for x in np.linspace(x_lo, x_hi, 5)]
    for x, text in ticks:
        px, py = to_px(x, y_lo)
        cv2.line(image, (px, py), (px, py + 4), black, 1)
        _text(image, text, (px - 4 * len(text), py + 16))
    cv2.rectangle(image, to_px(x_lo, y_hi), to_px(x_hi, y_lo), black, 1)
    if y_lo < 0 < y_hi:
        cv2.line(image, to_px(x_lo, 0), to_px(x_hi, 0), (150, 150, 150), 1)
    for k, (_, xs, ys) in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        points = [to_px(x, min(max(y, y_lo), y_hi)) if np.isfinite(y) else None for x, y in zip(xs, ys)]
        for a, b in zip(points, points[1:]):
            if a and b:
                cv2.line(image, a, b, colour, 2, cv2.LINE_AA)
        if markers:
            for p in points:
                if p:
                    cv2.circle(image, p, 3, colour, -1, cv2.LINE_AA)
    _text(image, title, (left, 20), scale=0.5)
    _text(image, xlabel, ((w - 7 * len(xlabel)) // 2, h - 8))
    label = np.full((16, h, 3), 255, np.uint8)  # the y label, written sideways
    _text(label, ylabel, ((h - 7 * len(ylabel)) // 2, 12))
    image[:, :16] = np.minimum(image[:, :16], np.rot90(label, 1)[:, :16])
    return image


def legend(labels: list, height: int, width: int = 200) -> np.ndarray:
    """A column with one coloured line and label per series, in PALETTE order."""
    image = np.full((height, width, 3), 255, np.uint8)
    for k, label in enumerate(labels):
        y = MARGIN[2] + 10 + 18 * k
        cv2.line(image, (6, y - 4), (30, y - 4), PALETTE[k % len(PALETTE)], 3, cv2.LINE_AA)
        _text(image, label[:24], (36, y))
    return image


def side_by_side(images: list) -> np.ndarray:
    """Images of the same height next to each other."""
    return np.hstack(images)


def _text(image, text, origin, scale=0.4):
    cv2.putText(image, text, origin, FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
