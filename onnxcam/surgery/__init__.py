"""Graph surgery on ONNX classifiers: expose layers, append gradients, cut heads."""

from onnxcam.surgery.graph import CLASS_INPUT, SCORES, TARGET_OUTPUT, augment, cut_head, grad_name

__all__ = ["augment", "cut_head", "grad_name", "CLASS_INPUT", "SCORES", "TARGET_OUTPUT"]
