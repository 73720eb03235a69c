"""onnxcam: CAM / Grad-CAM explanations for any exported ONNX image classifier."""

from onnxcam.errors import ImageError, ModelError, OnnxcamError, UnsupportedOpError
from onnxcam.explainer import Explainer, Explanation

__version__ = "0.1.0"
__all__ = ["Explainer", "Explanation", "OnnxcamError", "ModelError", "ImageError", "UnsupportedOpError"]
