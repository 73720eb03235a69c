"""onnxcam: CAM / Grad-CAM explanations for any exported ONNX image classifier.

Names are imported on first use (PEP 562), so `import onnxcam` loads neither ONNX, ONNX Runtime nor OpenCV
until something needs them: `onnxcam.Explainer` imports the explainer, `onnxcam.outputs` (any submodule)
imports that module. The command line relies on it to start instantly.
"""

import importlib
import importlib.util

__version__ = "0.1.0"
__all__ = ["Explainer", "Explanation", "OnnxcamError", "ModelError", "ImageError", "UnsupportedOpError"]

_HOMES = {  # public name -> the module that defines it
    "Explainer": "onnxcam.explainer",
    "Explanation": "onnxcam.explainer",
    "OnnxcamError": "onnxcam.errors",
    "ModelError": "onnxcam.errors",
    "ImageError": "onnxcam.errors",
    "UnsupportedOpError": "onnxcam.errors",
}


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
