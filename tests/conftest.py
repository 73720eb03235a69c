import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "efficientnet_lite0.onnx")
YOLO = os.path.join(ROOT, "models", "detect", "yolov8_tiny.onnx")  # tools/make_yolo_fixtures.py
CHELSEA = os.path.join(ROOT, "examples", "chelsea.png")
COFFEE = os.path.join(ROOT, "examples", "coffee.png")
CAT_CLASSES = range(281, 294)  # ImageNet: tabby ... cheetah; 281-285 are domestic cats
# A box around chelsea's head and body in examples/chelsea.png (451x300), x0, y0, x1, y1.
CHELSEA_CAT_BOX = (60, 0, 420, 300)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """Sessions cache into a fresh folder per test run: never the user's ~/.cache, never stale."""
    folder = tmp_path_factory.mktemp("onnxcam-cache")
    os.environ["ONNXCAM_CACHE_DIR"] = str(folder)
    yield folder


@pytest.fixture(scope="session")
def demo_explainer():
    from onnxcam import Explainer

    return Explainer(DEMO, device="cpu")
