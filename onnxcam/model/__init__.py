"""Load an ONNX classifier and find what explaining it needs.

load.py       read the file; external data, tensor data and node checks
inspect.py    ModelInfo, Layer, inspect_model: the image input, logits, head, candidate layers
shapes.py     static shape inference, and shapes learned by running where it cannot know them
layout.py     which axes of a tensor are the image's N, C, H, W
quantized.py  float twins of quantized (QOperator) tensors
heads.py      what the scores mean: softmax, single-logit (binary) or multi-label sigmoid
metadata.py   labels and preprocessing from exporters' metadata; labels files
graph.py      constants and graph walks the others share
"""

from onnxcam.model.graph import constants
from onnxcam.model.heads import BINARY, HEADS, MULTILABEL, SOFTMAX, probabilities
from onnxcam.model.inspect import MAX_INPUT_ELEMENTS, Layer, ModelInfo, inspect_model
from onnxcam.model.load import load_model
from onnxcam.model.metadata import read_labels
from onnxcam.model.shapes import MAX_TENSOR_ELEMENTS

__all__ = [
    "BINARY", "HEADS", "MAX_INPUT_ELEMENTS", "MAX_TENSOR_ELEMENTS", "MULTILABEL", "SOFTMAX", "Layer", "ModelInfo",
    "constants", "inspect_model", "load_model", "probabilities", "read_labels",
]
