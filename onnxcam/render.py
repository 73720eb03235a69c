"""Pictures for people: heatmap overlays, boxes, saliency images and side-by-side grids."""

from __future__ import annotations

import cv2
import numpy as np

BOX_COLOUR = (0, 255, 0)
LABEL_HEIGHT = 22


def overlay(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, boxes=()) -> np.ndarray:
    """Blend a JET-coloured [0, 1] heatmap (any size) over an RGB uint8 image; draw `boxes` (x0, y0, x1, y1,
    inclusive image pixels)."""
    h, w = rgb.shape[:2]
    heat = heatmap if heatmap.shape == (h, w) else cv2.resize(heatmap, (w, h))
    colored = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(colored, alpha, np.ascontiguousarray(rgb, np.uint8), 1 - alpha, 0)
    for box in boxes:
        cv2.rectangle(out, box[:2], box[2:], BOX_COLOUR, max(1, round(min(h, w) / 150)))
    return out


def labelled_box(picture: np.ndarray, box, text: str) -> None:
    """Draw a box (image pixels) and its label above it, in place."""
    h, w = picture.shape[:2]
    thickness = max(1, round(min(h, w) / 150))
    cv2.rectangle(picture, tuple(box[:2]), tuple(box[2:]), BOX_COLOUR, thickness)
    scale = max(0.35, min(h, w) / 600)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = box[0], max(box[1], th + base)
    cv2.rectangle(picture, (x, y - th - base), (x + tw, y), BOX_COLOUR, -1)
    cv2.putText(picture, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def saliency_image(gradient: np.ndarray) -> np.ndarray:
    """A [C, H, W] input gradient as an RGB uint8 picture (pytorch-grad-cam's deprocess_image)."""
    g = gradient.transpose(1, 2, 0)
    g = (g - g.mean()) / (g.std() + 1e-5) * 0.1 + 0.5
    g = np.uint8(np.clip(g, 0, 1) * 255)
    return np.repeat(g, 3, axis=2) if g.shape[2] == 1 else g


def grid(tiles: list, labels: list, height: int = 224) -> np.ndarray:
    """Tiles side by side at a common height, each with its label above it."""
    columns = []
    for tile, label in zip(tiles, labels):
        scale = height / tile.shape[0]
        tile = cv2.resize(tile, (max(1, round(tile.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)
        bar = np.full((LABEL_HEIGHT, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, label[:40], (4, LABEL_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        columns.append(np.vstack([bar, tile]))
        columns.append(np.full((height + LABEL_HEIGHT, 4, 3), 255, np.uint8))
    return np.hstack(columns[:-1])
