"""Load an ONNX classifier and find what explaining it needs.

`inspect_model` answers, once per model: which input takes the image (and in
which layout), which tensor holds the logits (the pre-softmax scores), and
which 4-D NCHW tensors are candidate target layers. It also pins the input's
spatial size, so that shape inference gives every layer a static shape; only
the batch dimension stays symbolic.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import external_data_helper, helper

from onnxcam.errors import ModelError

# Ops whose 4-D output is NCHW with the same spatial meaning as their first
# 4-D input (or, for Conv-like ops, by definition). Transpose and Reshape break
# the chain: after them, axes 2 and 3 need not be spatial.
_NCHW_SOURCES = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "QLinearConv", "ConvInteger"}
_NCHW_KEEPERS = {
    "Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Gelu", "Erf", "Mish", "BatchNormalization", "InstanceNormalization", "Add", "Sub",
    "Mul", "Div", "Concat", "Identity", "Dropout", "Pad", "Resize", "Upsample", "Cast",
    "DequantizeLinear", "QuantizeLinear", "LRN", "Max", "Min", "Sum", "Split",
}
# Ops that turn logits into probabilities: seed the class score at their input.
_PROBABILITY_OPS = {"Softmax", "LogSoftmax", "Sigmoid"}
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze"}
# Refuse models whose declared input would need more than this many elements.
MAX_INPUT_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class Layer:
    """A candidate target tensor: NCHW, spatial size > 1, on the way to the logits."""

    name: str
    op: str
    node: str
    shape: tuple


@dataclass
class ModelInfo:
    model: onnx.ModelProto  # shape-inferred, spatial size pinned
    input_name: str
    input_shape: tuple  # batch entry is None when dynamic
    layout: str  # "NCHW" or "NHWC"
    output_name: str
    logits_name: str
    num_classes: int
    opset: int
    layers: list = field(default_factory=list)
    labels: list | None = None
    preprocess: str | None = None

    @property
    def size(self) -> tuple:
        """(height, width) of the image input."""
        s = self.input_shape
        return (s[2], s[3]) if self.layout == "NCHW" else (s[1], s[2])

    @property
    def input_dtype(self) -> np.dtype:
        elem = next(i for i in self.model.graph.input if i.name == self.input_name).type.tensor_type.elem_type
        return helper.tensor_dtype_to_np_dtype(elem)

    @property
    def auto_layer(self) -> Layer:
        """The last candidate before the logits: where Grad-CAM is usually computed."""
        return self.layers[-1]

    def resolve_layer(self, name: str | None) -> Layer:
        """A layer by tensor name or node name (its first output); None picks the automatic one."""
        if name is None:
            return self.auto_layer
        for layer in self.layers:
            if name in (layer.name, layer.node):
                return layer
        known = [layer.name for layer in self.layers] + [layer.node for layer in self.layers if layer.node]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(
            f"no target layer named '{name}' (it must be a 4-D NCHW tensor with spatial size > 1 "
            f"that feeds the logits).{hint} 'onnxcam inspect' lists them."
        )

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels and 0 <= index < len(self.labels) else f"class {index}"


def load_model(path: str) -> onnx.ModelProto:
    """Read an ONNX file, refusing non-ONNX files and external data outside the model's folder."""
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"not an ONNX model: {path} ({type(exc).__name__})") from None
    if not model.graph.node or not model.opset_import:
        raise ModelError(f"not an ONNX model: {path} (no graph nodes or opset)")
    base = os.path.dirname(os.path.abspath(path))
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            _check_external_location(tensor, base)
    try:
        external_data_helper.load_external_data_for_model(model, base)
    except OSError as exc:
        raise ModelError(f"cannot read external data of {path}: {exc.strerror}: {exc.filename}") from None
    return model


def _check_external_location(tensor, base: str) -> None:
    location = {e.key: e.value for e in tensor.external_data}.get("location", "")
    target = os.path.realpath(os.path.join(base, location))
    if os.path.isabs(location) or not target.startswith(os.path.realpath(base) + os.sep):
        raise ModelError(
            f"external data of tensor '{tensor.name}' points outside the model's folder ({location!r}); refusing to read it"
        )


def inspect_model(
    model: onnx.ModelProto,
    input_name: str | None = None,
    output_name: str | None = None,
    input_size: tuple | None = None,
) -> ModelInfo:
    """Find the image input, the logits and the candidate layers of a classifier."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError("the model imports no default-domain ONNX opset")
    if opset < 7:
        raise ModelError(f"the model uses opset {opset}; onnxcam (and ONNX Runtime) need opset 7 or newer")
    model = onnx.ModelProto.FromString(model.SerializeToString())  # we edit shapes: work on a copy
    image_input = _pick_input(model, input_name)
    layout, shape = _pin_input_shape(image_input, input_size)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:
        raise ModelError(f"shape inference failed on this model: {exc}".splitlines()[0]) from None

    graph = model.graph
    output = _pick_output(graph, output_name)
    producers = {out: node for node in graph.node for out in node.output}
    logits = _logits_of(output, producers)
    shapes = _static_shapes(model)
    logits_shape = shapes.get(logits)
    num_classes = logits_shape[1] if logits_shape and len(logits_shape) >= 2 else None
    if not isinstance(num_classes, int) or any(d != 1 for d in logits_shape[2:] if isinstance(d, int)):
        raise ModelError(f"the logits tensor '{logits}' has shape {logits_shape}; expected [N, classes] with a known class count")

    nchw_input = {image_input.name} if layout == "NCHW" else set()
    layers = _candidate_layers(graph, shapes, producers, logits, nchw_input)
    if not layers:
        raise ModelError(
            "no candidate target layer: no 4-D NCHW tensor with spatial size > 1 feeds the logits "
            f"'{logits}' (ops in the model: {', '.join(sorted({n.op_type for n in graph.node}))})"
        )
    meta = {p.key: p.value for p in model.metadata_props}
    labels = meta.get("onnxcam.labels")
    return ModelInfo(
        model=model,
        input_name=image_input.name,
        input_shape=shape,
        layout=layout,
        output_name=output,
        logits_name=logits,
        num_classes=num_classes,
        opset=opset,
        layers=layers,
        labels=labels.split("\n") if labels else None,
        preprocess=meta.get("onnxcam.preprocess"),
    )


def _pick_input(model, name):
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if name is not None:
        match = [i for i in inputs if i.name == name]
        if not match:
            raise ModelError(f"no model input named '{name}'; inputs: {', '.join(i.name for i in inputs)}")
        return match[0]
    images = [i for i in inputs if len(i.type.tensor_type.shape.dim) == 4]
    if not images:
        described = ", ".join(f"{i.name} {_dims(i)}" for i in inputs) or "none"
        raise ModelError(f"no image-like (4-D) input; inputs: {described}")
    if len(inputs) > 1:
        raise ModelError(
            f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); choose the image one with --input NAME"
        )
    return images[0]


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def _pin_input_shape(value_info, input_size):
    """Fix the input's spatial size (batch stays symbolic) and return (layout, shape)."""
    dims = value_info.type.tensor_type.shape.dim
    raw = _dims(value_info)
    if len(raw) != 4:
        raise ModelError(f"input '{value_info.name}' has shape {raw}; an image input is 4-D")
    layout = "NHWC" if raw[3] in (1, 3) and raw[1] not in (1, 3) else "NCHW"
    channel_axis, spatial_axes = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    if not isinstance(raw[channel_axis], int) or raw[channel_axis] <= 0:
        raise ModelError(f"input '{value_info.name}' has shape {raw}: its channel count is not fixed")
    for axis, size in zip(spatial_axes, input_size or (None, None)):
        if size is not None:
            dims[axis].Clear()
            dims[axis].dim_value = int(size)
        elif not isinstance(raw[axis], int) or raw[axis] <= 0:
            raise ModelError(
                f"input '{value_info.name}' has a dynamic spatial size {raw}; give one with --input-size HEIGHT WIDTH"
            )
    shape = _dims(value_info)
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    if batch is None:
        dims[0].Clear()
        dims[0].dim_param = "N"
    elements = (batch or 1) * shape[1] * shape[2] * shape[3]
    if elements > MAX_INPUT_ELEMENTS:
        raise ModelError(f"input '{value_info.name}' declares {shape}: too large to allocate")
    return layout, (batch, *shape[1:])


def _pick_output(graph, name):
    names = [o.name for o in graph.output]
    if name is not None:
        if name not in names:
            raise ModelError(f"no model output named '{name}'; outputs: {', '.join(names)}")
        return name
    if len(names) > 1:
        raise ModelError(f"the model has {len(names)} outputs ({', '.join(names)}); choose the scores with --output NAME")
    return names[0]


def _logits_of(output, producers):
    """Walk back from the output past reshapes; if a Softmax-like op is met, its input holds the logits."""
    name = output
    while name in producers and producers[name].op_type in _PASS_THROUGH:
        name = producers[name].input[0]
    node = producers.get(name)
    return node.input[0] if node is not None and node.op_type in _PROBABILITY_OPS else output


def _static_shapes(model) -> dict:
    """name -> tuple of dims (int, or None where unknown/symbolic) for every typed tensor."""
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return shapes


def _candidate_layers(graph, shapes, producers, logits, nchw_input):
    ancestors = _ancestors(logits, producers)
    nchw = set(nchw_input)
    layers = []
    for node in graph.node:
        if node.op_type in _NCHW_SOURCES or (node.op_type in _NCHW_KEEPERS and any(i in nchw for i in node.input)):
            nchw.update(node.output)
        out = node.output[0] if node.output else ""
        shape = shapes.get(out)
        if out in nchw and out in ancestors and shape and len(shape) == 4 and shape[2] and shape[3] and shape[2] * shape[3] > 1:
            layers.append(Layer(out, node.op_type, node.name, shape))
    return layers


def _ancestors(name, producers) -> set:
    seen, stack = set(), [name]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in producers:
            stack.extend(i for i in producers[n].input if i)
    return seen
