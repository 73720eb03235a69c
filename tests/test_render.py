"""Pictures: channel order through OpenCV (which works in BGR) and the overlay blend, against closed forms."""

import cv2
import numpy as np
import pytest

from onnxcam import render
from onnxcam.writer import picture_bytes


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_pictures_keep_rgb_order(fmt):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    bgr = cv2.imdecode(np.frombuffer(picture_bytes(rgb, fmt), np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(bgr[8, 8].astype(int) - [0, 0, 200]).max() <= 2  # JPEG may move a value by a little


def test_overlay_is_the_half_blend_of_jet_and_the_image():
    rgb = np.full((6, 8, 3), [10, 120, 250], np.uint8)
    heat = np.linspace(0, 1, 6 * 8, dtype=np.float32).reshape(6, 8)
    jet_bgr = cv2.applyColorMap(np.uint8(heat * 255)[..., None], cv2.COLORMAP_JET).reshape(6, 8, 3)
    expected = 0.5 * jet_bgr[..., ::-1].astype(float) + 0.5 * rgb
    assert np.abs(render.overlay(rgb, heat).astype(float) - expected).max() <= 0.5 + 1e-9  # rounded, not truncated
