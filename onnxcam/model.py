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

# Ops whose 4-D output is NCHW by definition.
_NCHW_SOURCES = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "QLinearConv", "ConvInteger"}
# Ops whose output index along every axis means what their input's does (elementwise ops, normalizations,
# padding, resampling...): they keep its layout, NCHW or permuted. Not Reshape: after it, axes 2 and 3 need
# not be spatial. Transpose permutes the layout, MatMul keeps it only over channels (see `_output_layout`).
_NCHW_KEEPERS = {
    "Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Gelu", "Erf", "Mish", "BatchNormalization", "InstanceNormalization", "Add", "Sub",
    "Mul", "Div", "Concat", "Identity", "Dropout", "Pad", "Resize", "Upsample", "Cast",
    "DequantizeLinear", "QuantizeLinear", "LRN", "Max", "Min", "Sum", "Split", "LayerNormalization",
    "QLinearAdd", "QLinearMul", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearConcat", "QLinearAveragePool",
}
_IDENTITY = (0, 1, 2, 3)
# Quantized (QOperator) ops compute QuantizeLinear(float op(DequantizeLinear(x, scale, zero point), ...)):
# op -> (the float op, positions of the (x, scale, zero point) inputs (None: triples after the output's
# two), positions of the output's (scale, zero point)).
_QLINEAR = {
    "QLinearConv": ("Conv", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMatMul": ("MatMul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearAdd": ("Add", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMul": ("Mul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearLeakyRelu": ("LeakyRelu", ((0, 1, 2),), (3, 4)),
    "QLinearSigmoid": ("Sigmoid", ((0, 1, 2),), (3, 4)),
    "QLinearSoftmax": ("Softmax", ((0, 1, 2),), (3, 4)),
    "QLinearAveragePool": ("AveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearConcat": ("Concat", None, (0, 1)),
    "QGemm": ("Gemm", ((0, 1, 2), (3, 4, 5)), (7, 8)),
}
# Ops that pick some of their integer input's values: the output keeps the input's scale and zero point.
_QUANTIZATION_KEEPERS = {"MaxPool"}
# Ops that turn logits into probabilities: seed the class score at their input.
_PROBABILITY_OPS = {"Softmax", "LogSoftmax", "Sigmoid"}
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze"}
# Refuse models whose declared input would need more than this many elements.
MAX_INPUT_ELEMENTS = 1 << 28
# ... and models with any inferred tensor (batch 1) larger than this (4 GiB of float32).
MAX_TENSOR_ELEMENTS = 1 << 30


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
    """Read an ONNX file, refusing non-ONNX files and external data that is outside the model's folder,
    missing, or shorter than its tensor's declared shape. Every external reference is checked (with
    os.stat only) before any external byte is read."""
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"not an ONNX model: {path} ({type(exc).__name__}); is it complete?") from None
    if not model.graph.node or not model.opset_import:
        raise ModelError(f"not an ONNX model: {path} (no graph nodes or opset)")
    bad_text = _invalid_text(model)
    if bad_text:
        raise ModelError(f"not a valid ONNX model: {path} (field {bad_text} is not UTF-8 text); the file is corrupt")
    base = os.path.dirname(os.path.abspath(path))
    tensors = list(external_data_helper._get_all_tensors(model))
    external = [t for t in tensors if external_data_helper.uses_external_data(t)]
    for tensor in external:
        _check_external_data(tensor, base)
    for tensor in external:
        try:
            external_data_helper.load_external_data_for_tensor(tensor, base)
        except Exception as exc:  # OSError, or the onnx package's own checks (ValueError, ValidationError)
            raise ModelError(f"cannot read the external data of tensor '{tensor.name}' in {path}: {exc}") from None
    for tensor in tensors:
        _check_tensor_data(tensor)
    return model


def _invalid_text(message) -> str | None:
    """The first string field (a name, an op type, ...) that does not hold valid UTF-8, as 'Type.field'.

    protobuf hands such fields back as bytes instead of str; they break name lookups and re-export later."""
    for field_, value in message.ListFields():
        repeated = field_.is_repeated if hasattr(field_, "is_repeated") else field_.label == field_.LABEL_REPEATED
        if field_.type == field_.TYPE_STRING:
            if any(isinstance(v, bytes) for v in (value if repeated else [value])):
                return f"{message.DESCRIPTOR.name}.{field_.name}"
        elif field_.type == field_.TYPE_MESSAGE and field_.message_type.name != "TensorProto":
            for item in value if repeated else [value]:
                found = _invalid_text(item)
                if found:
                    return found
        elif field_.type == field_.TYPE_MESSAGE:  # tensors: check the names, not (megabytes of) raw data
            for item in value if repeated else [value]:
                for text in (item.name, item.doc_string, *(e.key for e in item.external_data),
                             *(e.value for e in item.external_data)):
                    if isinstance(text, bytes):
                        return "TensorProto.name"
    return None


def _check_external_location(tensor, base: str) -> str:
    """The real path of the tensor's external data file, refusing one outside the model's folder.

    realpath resolves symlinks (of the file and of every folder on the way), so a link inside the
    folder that points outside is refused too; nothing is opened here."""
    location = _external_info(tensor).get("location", "")
    outside = ModelError(
        f"external data of tensor '{tensor.name}' points outside the model's folder ({location!r}); refusing to read it"
    )
    if not location or "\0" in location or os.path.isabs(location):
        raise outside
    target = os.path.realpath(os.path.join(base, location))
    if not target.startswith(os.path.realpath(base) + os.sep):
        raise outside
    return target


def _external_info(tensor) -> dict:
    return {e.key: e.value for e in tensor.external_data}


def _check_external_data(tensor, base: str) -> None:
    """Refuse, with os.stat only, external data that escapes, is missing, or cannot hold the tensor."""
    target = _check_external_location(tensor, base)
    info = _external_info(tensor)
    location = info["location"]
    if not os.path.exists(target):
        raise ModelError(
            f"external data file '{location}' of tensor '{tensor.name}' is missing; it must sit next to the model in {base}"
        )
    if not os.path.isfile(target):
        raise ModelError(f"external data '{location}' of tensor '{tensor.name}' is not a regular file")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelError(f"external data of tensor '{tensor.name}' has a non-integer offset or length") from None
    size = os.path.getsize(target)
    available = size - offset
    if offset < 0 or (length is not None and length < 0) or available < (length or 0):
        raise ModelError(
            f"external data of tensor '{tensor.name}' declares offset {offset} and length {length} "
            f"but '{location}' holds {size} bytes: the file is truncated or the model is corrupt"
        )
    expected = _expected_bytes(tensor)
    stored = available if length is None else length
    if expected is not None and stored != expected:
        raise ModelError(
            f"tensor '{tensor.name}' declares shape {list(tensor.dims)} ({expected} bytes) but its external data "
            f"in '{location}' holds {stored} bytes; the model or its data file is corrupt"
        )


# TensorProto types whose elements are packed two to a byte.
_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
_COMPLEX = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


def _elements(tensor) -> int:
    if any(d < 0 for d in tensor.dims):
        raise ModelError(f"tensor '{tensor.name}' declares a negative dimension {list(tensor.dims)}; the model is corrupt")
    return int(np.prod(tensor.dims, dtype=object)) if tensor.dims else 1  # Python ints: no overflow


def _expected_bytes(tensor) -> int | None:
    """Bytes that raw (or external) data of this tensor must hold; None for strings and unknown types."""
    if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # a type this onnx version does not know
        return None
    n = _elements(tensor)
    return (n + 1) // 2 if tensor.data_type in _PACKED else n * itemsize


def _check_tensor_data(tensor) -> None:
    """A tensor's data must match its declared shape, or later numpy / ORT calls fail far from the cause."""
    if tensor.data_type == onnx.TensorProto.UNDEFINED or tensor.data_type not in onnx.TensorProto.DataType.values():
        raise ModelError(f"tensor '{tensor.name}' has no valid element type ({tensor.data_type}); the model is corrupt")
    expected = _expected_bytes(tensor)
    if expected is None:
        return
    if tensor.HasField("raw_data"):
        stored, unit = len(tensor.raw_data), "bytes"
    else:
        n = _elements(tensor)
        expected = (n + 1) // 2 if tensor.data_type in _PACKED else 2 * n if tensor.data_type in _COMPLEX else n
        fields = (tensor.float_data, tensor.int32_data, tensor.int64_data, tensor.double_data, tensor.uint64_data)
        stored, unit = sum(len(f) for f in fields), "values"
    if stored != expected:
        raise ModelError(
            f"tensor '{tensor.name}' declares shape {list(tensor.dims)} ({expected} {unit}) but holds {stored} {unit}; "
            "the model is corrupt"
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
    _check_nodes(model)
    model = onnx.ModelProto.FromString(model.SerializeToString())  # we edit shapes: work on a copy
    image_input = _pick_input(model, input_name)
    output = _pick_output(model.graph, output_name)
    _drop_other_inputs(model, image_input.name, output)
    layout, shape = _pin_input_shape(image_input, input_size)
    model = _infer_shapes(model)

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    logits = _logits_of(output, producers)
    shapes = _static_shapes(model)
    _check_tensor_sizes(shapes, producers)
    _check_inferred_types(model, producers, logits)
    logits_shape = shapes.get(logits)
    num_classes = logits_shape[1] if logits_shape and len(logits_shape) >= 2 else None
    if (not isinstance(num_classes, int) or num_classes < 1
            or any(d != 1 for d in logits_shape[2:] if isinstance(d, int))):
        raise ModelError(f"the logits tensor '{logits}' has shape {logits_shape}; expected [N, classes] with a known class count")

    nchw_input = {image_input.name} if layout == "NCHW" else set()
    tensors = constants(graph)
    quantized = _quantized(graph, tensors) if opset >= 10 else {}  # QuantizeLinear comes with opset 10
    layouts = _layouts(graph, shapes, nchw_input, tensors)
    layers = _candidate_layers(graph, shapes, producers, logits, layouts, _float_names(model), quantized)
    names = {layer.name for layer in layers}
    _add_float_twins(model, {t: params for t, params in quantized.items() if _twin(t) in names}, tensors)
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


def _infer_shapes(model) -> onnx.ModelProto:
    """ONNX shape inference, with data propagation so that Resize sizes and Reshape shapes computed from Shape
    ops are known (without it where it fails: it is the less tried part), and through the quantized ops that
    ONNX does not know, spelled in standard ops while shapes are inferred (`_standard_spelling`). It runs on
    the graph without its weights' data (`_skeleton`) and writes what it finds into `model`, which it returns."""
    spelled = _standard_spelling(_skeleton(model))
    for data_prop in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(spelled, strict_mode=False, data_prop=data_prop)
            break
        except Exception as exc:  # InferenceError, or an internal error of the propagation
            error = exc
    else:
        raise ModelError(f"shape inference failed on this model: {error}".splitlines()[0])
    names = {o for n in model.graph.node for o in n.output}
    del model.graph.value_info[:]
    model.graph.value_info.extend(vi for vi in inferred.graph.value_info if vi.name in names)  # not the spelling's
    outputs = {o.name: o for o in inferred.graph.output}
    for output in model.graph.output:
        output.CopyFrom(outputs[output.name])
    return model


# Initializers with more elements than this are weights: shape inference needs only their type and shape
# (smaller ones may be shapes or sizes that data propagation reads).
SKELETON_ELEMENTS = 1024


def _skeleton(model) -> onnx.ModelProto:
    """The model with its large initializers turned into typed graph inputs: ONNX shape inference copies the
    whole model into C++ and back, which for a 100 MB model costs more than the inference itself."""
    graph = model.graph
    skeleton = onnx.ModelProto(ir_version=max(model.ir_version, 4))
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(skeleton.graph, part).extend(getattr(graph, part))
    skeleton.graph.name = graph.name
    declared = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if _elements(tensor) <= SKELETON_ELEMENTS:
            skeleton.graph.initializer.append(tensor)
        elif tensor.name not in declared:
            skeleton.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return skeleton


def _standard_spelling(model) -> onnx.ModelProto:
    """The model with each quantized op of another domain (com.microsoft QLinearAdd...) replaced by
    DequantizeLinear -> its float op -> QuantizeLinear, which ONNX shape inference knows; the model itself
    if it has none. For shapes and types only: ONNX Runtime runs the model as it is."""
    if not any(n.op_type in _QLINEAR and n.domain not in ("", "ai.onnx") for n in model.graph.node):
        return model
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    spelled = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    for node in spelled.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type not in _QLINEAR or node.domain in ("", "ai.onnx") or attrs.get("channels_last"):
            nodes.append(node)
            continue
        op, triples, (scale, zero_point) = _QLINEAR[node.op_type]
        triples = triples or [(i, i + 1, i + 2) for i in range(2, len(node.input), 3)]
        out = node.output[0]
        floats = [f"{out}/float_input{k}" for k in range(len(triples))]
        nodes += [helper.make_node("DequantizeLinear", _args(node, triple), [f]) for triple, f in zip(triples, floats)]
        known = onnx.defs.get_schema(op, opset).attributes
        quantized = bool(_args(node, [scale])[0])  # QGemm without an output scale gives floats
        y = f"{out}/float" if quantized else out
        nodes.append(helper.make_node(op, floats, [y], **{k: v for k, v in attrs.items() if k in known}))
        if quantized:
            nodes.append(helper.make_node("QuantizeLinear", [y, *_args(node, [scale, zero_point])], [out]))
    del spelled.graph.node[:]
    spelled.graph.node.extend(nodes)
    return spelled


def _args(node, positions) -> list:
    """The node's inputs at these positions, "" for optional ones left out."""
    return [node.input[i] if i < len(node.input) else "" for i in positions]


def _check_nodes(model) -> None:
    """Node by node, what ONNX itself requires: every input defined, a registered op (for the ONNX domains),
    the op's number of inputs and outputs, attribute types. (onnx.checker.check_model would also judge the
    whole graph, and refuse models that ONNX Runtime runs; its per-node check is what catches corruption.)"""
    graph = model.graph
    types = onnx.TensorProto.DataType.values()
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type not in types:
            raise ModelError(
                f"tensor '{vi.name}' declares element type {vi.type.tensor_type.elem_type}, which ONNX does not "
                "define; the model is corrupt"
            )
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {
        t.values.name for t in graph.sparse_initializer} | {o for n in graph.node for o in n.output}
    context = onnx.checker.C.CheckerContext()
    context.ir_version = model.ir_version
    context.opset_imports = {o.domain: o.version for o in model.opset_import}
    for node in graph.node:
        missing = [i for i in node.input if i and i not in defined]
        if missing:
            raise ModelError(
                f"node '{node.name}' ({node.op_type}) reads '{missing[0]}', which no node, input or initializer "
                "of the graph defines; the model is corrupt"
            )
        if any(a.HasField("g") or len(a.graphs) for a in node.attribute):
            continue  # subgraphs read outer names: checking them alone would fail; ORT judges them
        try:
            onnx.checker.check_node(node, context)
        except Exception as exc:  # ValidationError
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"node '{node.name}' ({node.op_type}) is invalid: {first}") from None


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


def _drop_other_inputs(model, image: str, output: str) -> None:
    """Inputs besides the image cannot be fed: refuse them if the scores need them, else drop them together
    with the nodes and outputs that use them (ONNX Runtime demands every graph input, used or not)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    others = {i.name for i in graph.input if i.name not in initializers and i.name != image}
    if not others:
        return
    producers = {out: node for node in graph.node for out in node.output}
    needed = others & _ancestors(output, producers)
    if needed:
        raise ModelError(
            f"the scores '{output}' also depend on input(s) {', '.join(sorted(needed))}; onnxcam feeds only the "
            f"image input '{image}'. Fold the other inputs into the model as constants (or choose another --output)"
        )
    tainted = set(others)
    kept_nodes = []
    for node in graph.node:  # nodes are topologically sorted in a valid model
        if tainted.intersection(node.input):
            tainted.update(node.output)
        else:
            kept_nodes.append(node)
    kept_outputs = [o for o in graph.output if o.name not in tainted]
    kept_inputs = [i for i in graph.input if i.name not in others]
    for field_, kept in ((graph.node, kept_nodes), (graph.output, kept_outputs), (graph.input, kept_inputs)):
        copies = [type(k).FromString(k.SerializeToString()) for k in kept]
        del field_[:]
        field_.extend(copies)


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def _pin_input_shape(value_info, input_size):
    """Fix the input's spatial size (batch stays symbolic) and return (layout, shape)."""
    dims = value_info.type.tensor_type.shape.dim
    raw = _dims(value_info)
    elem = value_info.type.tensor_type.elem_type
    try:
        numeric = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).kind in "fiu"
    except Exception:
        numeric = False
    if not numeric:
        kind = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else elem
        raise ModelError(f"input '{value_info.name}' has element type {kind}; an image input holds numbers")
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
        raise ModelError(
            f"input '{value_info.name}' declares {shape}: {elements} elements, more than onnxcam allows "
            f"({MAX_INPUT_ELEMENTS}); the model is corrupt, or give a smaller --input-size"
        )
    return layout, (batch, *shape[1:])


def _pick_output(graph, name):
    names = [o.name for o in graph.output]
    if name is not None:
        if name not in names:
            raise ModelError(f"no model output named '{name}'; outputs: {', '.join(names)}")
        return name
    if not names:
        raise ModelError("the model has no outputs")
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


def _check_tensor_sizes(shapes: dict, producers: dict) -> None:
    """Refuse a model whose (inferred) tensors would not fit in memory, before ONNX Runtime allocates them."""
    for name, dims in shapes.items():
        elements = int(np.prod([d for d in dims if d], dtype=object)) if dims else 1
        if elements > MAX_TENSOR_ELEMENTS:
            node = producers.get(name)
            where = f" (output of {node.op_type} node '{node.name}')" if node is not None else ""
            raise ModelError(
                f"tensor '{name}'{where} would have shape {list(dims)} ({elements} elements per image), more than "
                f"onnxcam allows ({MAX_TENSOR_ELEMENTS}); if the input size is dynamic, give a smaller --input-size"
            )


def _check_inferred_types(model, producers: dict, logits: str) -> None:
    """A standard op on the way to the scores whose inputs are typed but whose output is not failed shape
    inference (a bad attribute, mismatched shapes): say so now, not deep inside graph surgery. Custom-domain
    ops are not judged (ONNX cannot infer them; the finite-difference fallback still copes with them)."""
    graph = model.graph
    typed = {t.name for t in graph.initializer} | {
        vi.name for vi in [*graph.input, *graph.output, *graph.value_info] if vi.type.tensor_type.elem_type}
    for name in sorted(_ancestors(logits, producers)):
        node = producers.get(name)
        if (node is None or node.domain not in ("", "ai.onnx") or name in typed
                or not all(i in typed for i in node.input if i) or node.op_type in ("If", "Loop", "Scan")):
            continue
        try:
            onnx.shape_inference.infer_shapes(model, strict_mode=True)
            why = ""
        except Exception as exc:
            lines = [line.strip() for line in str(exc).splitlines() if f"node name: {node.name})" in line]
            why = f": {lines[0][lines[0].find('(op_type'):]}" if lines else ""
        raise ModelError(
            f"shape inference fails at {node.op_type} node '{node.name}' (its output '{name}' gets no type){why}; "
            "the model is corrupt"
        )


def _static_shapes(model) -> dict:
    """name -> tuple of dims (int, or None where unknown/symbolic) for every typed tensor."""
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return shapes


def _float_names(model) -> set:
    """Tensors of a floating type: only those carry activations worth explaining (not QDQ's uint8)."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    return {vi.name for vi in list(model.graph.value_info) + list(model.graph.output)
            if vi.type.tensor_type.elem_type in floats}


def _candidate_layers(graph, shapes, producers, logits, layouts, floats, quantized):
    """NCHW tensors with spatial size > 1 that feed the logits: float ones, and the float twins of quantized ones."""
    ancestors = _ancestors(logits, producers)
    layers = []
    for node in graph.node:
        out = node.output[0] if node.output else ""
        shape = shapes.get(out)
        if layouts.get(out) != _IDENTITY or out not in ancestors or not (shape[2] and shape[3] and shape[2] * shape[3] > 1):
            continue
        if out in floats:
            layers.append(Layer(out, node.op_type, node.name, shape))
        elif out in quantized:
            layers.append(Layer(_twin(out), node.op_type, node.name, shape))
    return layers


def _layouts(graph, shapes, nchw_input, tensors) -> dict:
    """name -> p for the 4-D tensors whose axes are known NCHW axes: axis i is NCHW axis p[i], so a tensor is
    NCHW when p is the identity (NCHW -> Transpose(0, 2, 3, 1) -> NHWC ops -> Transpose(0, 3, 1, 2) is)."""
    layouts = dict.fromkeys(nchw_input, _IDENTITY)
    for node in graph.node:
        p = _output_layout(node, layouts, tensors)
        if p is not None:
            layouts.update((out, p) for out in node.output if len(shapes.get(out, ())) == 4)
    return layouts


def _output_layout(node, layouts, tensors):
    if node.op_type in _NCHW_SOURCES:
        return _IDENTITY
    if any(a.name == "channels_last" and a.i for a in node.attribute):  # QLinear pools: reads its input as NHWC
        return None
    known = {layouts[i] for i in node.input if i in layouts}
    if len(known) != 1:  # no input with a layout, or inputs that disagree
        return None
    p = known.pop()
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [3, 2, 1, 0])
        return tuple(p[i] for i in perm)
    if node.op_type == "MatMul":  # x @ W mixes x's last axis: a layout survives only where that axis is C
        weight = tensors.get(node.input[1])
        return p if node.input[0] in layouts and p[3] == 1 and weight is not None and len(weight.dims) == 2 else None
    return p if node.op_type in _NCHW_KEEPERS else None


def constants(graph) -> dict:
    """name -> TensorProto of the initializers and Constant node outputs (not decoded: callers convert the
    few they read with numpy_helper.to_array)."""
    tensors = {t.name: t for t in graph.initializer}
    tensors.update((n.output[0], a.t) for n in graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value")
    return tensors


def _quantized(graph, tensors) -> dict:
    """Integer tensor -> its (scale, zero point) names, for outputs of quantized ops whose scale and zero point
    are constant scalars: the tensor's float value is DequantizeLinear(tensor, scale, zero point)."""
    found = {}
    for node in graph.node:
        if node.op_type in _QLINEAR:
            params = _args(node, _QLINEAR[node.op_type][2])
            if all(name in tensors and _elements(tensors[name]) == 1 for name in params):
                found[node.output[0]] = tuple(params)
        elif node.op_type in _QUANTIZATION_KEEPERS and node.input[0] in found:
            found[node.output[0]] = found[node.input[0]]
    return found


def _twin(name: str) -> str:
    """The float twin of quantized tensor `name` (see `_add_float_twins`)."""
    return f"{name}/dequantized"


def _add_float_twins(model, quantized: dict, tensors: dict) -> None:
    """Give each quantized tensor t a float twin, DequantizeLinear(t, scale, zero point), and feed t's consumers
    QuantizeLinear(twin, scale, zero point) instead: an exact round trip, so the logits do not change, and the
    twin is a float target layer that the head reads (where finite differences can step)."""
    if not quantized:
        return
    graph = model.graph
    infos = {vi.name: vi for vi in [*graph.value_info, *graph.output] if vi.name in quantized}
    nodes, twins = [], []
    for node in graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.input[:] = [f"{name}/requantized" if name in quantized else name for name in node.input]
        nodes.append(node)
        for out in (o for o in node.output if o in quantized):
            scale, zero_point = quantized[out]
            requantized = f"{out}/requantized"
            nodes += [helper.make_node("DequantizeLinear", [out, scale, zero_point], [_twin(out)], name=_twin(out)),
                      helper.make_node("QuantizeLinear", [_twin(out), scale, zero_point], [requantized], name=requantized)]
            for name, elem in ((_twin(out), tensors[scale].data_type), (requantized, None)):
                twin = onnx.ValueInfoProto.FromString(infos[out].SerializeToString())
                twin.name = name
                twin.type.tensor_type.elem_type = elem or twin.type.tensor_type.elem_type
                twins.append(twin)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.value_info.extend(twins)


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
