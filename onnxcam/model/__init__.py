"""Load an ONNX classifier and find what explaining it needs.

load.py       read the file; external data, tensor data and node checks
inspect.py    ModelInfo, Layer, inspect_model: the image input, logits, head kind, candidate layers
shapes.py     static shape inference, and shapes learned by running where it cannot know them
layout.py     which axes of a tensor are the image's N, C, H, W (forward from convolutions, back from poolings)
tokens.py     transformer token layers and their NCHW grid twins, attention maps
channels_last.py  channels-last grids [N, H, W, C] and their NCHW twins
decompose.py  fused attention ops rewritten into standard ONNX ops
quantized.py  float twins of quantized (QOperator) tensors
metadata.py   labels and preprocessing from exporters' metadata; labels files
graph.py      constants and graph walks the others share
"""

from onnxcam.model.graph import constants
from onnxcam.model.inspect import MAX_INPUT_ELEMENTS, Layer, ModelInfo, inspect_model
from onnxcam.model.load import load_model
from onnxcam.model.metadata import read_labels
from onnxcam.model.shapes import MAX_TENSOR_ELEMENTS

__all__ = [
    "MAX_INPUT_ELEMENTS",
    "MAX_TENSOR_ELEMENTS",
    "Layer",
    "ModelInfo",
    "constants",
    "inspect_model",
    "load_model",
    "read_labels",
]
