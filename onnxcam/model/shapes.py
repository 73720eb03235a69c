"""Every tensor's shape, as far as onnxcam needs it: from ONNX shape inference where it can, else by running.

Static inference (with data propagation, on the graph without its weights, through the quantized ops ONNX
does not know) gives most shapes. Shapes computed at run time from values it cannot follow (Paddle exports,
ShuffleNet's channel shuffle with a dynamic batch, Swin's window partition) stay unknown there; ONNX Runtime
knows them once it runs, so `learn_shapes` runs the model once on zeros and writes what it saw into the
model's value_info, where layout tracking, candidate layers and the backward rules read shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxcam.errors import ModelError
from onnxcam.model.graph import args, constants, data_ancestors
from onnxcam.model.load import elements
from onnxcam.model.quantized import QLINEAR
from onnxcam.runtime import CPU, ort_error_text, session_options

# Refuse models with any tensor (batch 1) larger than this (4 GiB of float32).
MAX_TENSOR_ELEMENTS = 1 << 30
# Run the model to learn shapes only when its input (batch 1) holds at most this many elements (a 4096 x 4096
# RGB image): a larger run costs more than the answer is worth, and a smaller --input-size does.
PROBE_MAX_INPUT_ELEMENTS = 3 << 24
BATCH = "N"  # the symbolic batch dimension of the image input (see inspect._pin_input_shape)


def infer_shapes(model) -> onnx.ModelProto:
    """ONNX shape inference, with data propagation so that Resize sizes and Reshape shapes computed from Shape
    ops are known (without it where it fails: it is the less tried part), and through the quantized ops that
    ONNX does not know, spelled in standard ops while shapes are inferred (`standard_spelling`). It runs on
    the graph without its weights' data (`skeleton`) and writes what it finds into `model`, which it returns."""
    spelled = standard_spelling(skeleton(model))
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


def skeleton(model) -> onnx.ModelProto:
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
        if elements(tensor) <= SKELETON_ELEMENTS:
            skeleton.graph.initializer.append(tensor)
        elif tensor.name not in declared:
            skeleton.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return skeleton


def standard_spelling(model) -> onnx.ModelProto:
    """The model with each quantized op of another domain (com.microsoft QLinearAdd...) replaced by
    DequantizeLinear -> its float op -> QuantizeLinear, which ONNX shape inference knows; the model itself
    if it has none. For shapes and types only: ONNX Runtime runs the model as it is."""
    if not any(n.op_type in QLINEAR and n.domain not in ("", "ai.onnx") for n in model.graph.node):
        return model
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    spelled = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    for node in spelled.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type not in QLINEAR or node.domain in ("", "ai.onnx") or attrs.get("channels_last"):
            nodes.append(node)
            continue
        op, triples, (scale, zero_point) = QLINEAR[node.op_type]
        triples = triples or [(i, i + 1, i + 2) for i in range(2, len(node.input), 3)]
        out = node.output[0]
        floats = [f"{out}/float_input{k}" for k in range(len(triples))]
        nodes += [helper.make_node("DequantizeLinear", args(node, triple), [f]) for triple, f in zip(triples, floats)]
        known = onnx.defs.get_schema(op, opset).attributes
        quantized = bool(args(node, [scale])[0])  # QGemm without an output scale gives floats
        y = f"{out}/float" if quantized else out
        nodes.append(helper.make_node(op, floats, [y], **{k: v for k, v in attrs.items() if k in known}))
        if quantized:
            nodes.append(helper.make_node("QuantizeLinear", [y, *args(node, [scale, zero_point])], [out]))
    del spelled.graph.node[:]
    spelled.graph.node.extend(nodes)
    return spelled


def static_shapes(model) -> dict:
    """name -> tuple of dims (int, or None where unknown/symbolic) for every typed tensor."""
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return shapes


def check_tensor_sizes(shapes: dict, producers: dict) -> None:
    """Refuse a model whose (inferred) tensors would not fit in memory, before ONNX Runtime allocates them."""
    for name, dims in shapes.items():
        count = int(np.prod([d for d in dims if d], dtype=object)) if dims else 1
        if count > MAX_TENSOR_ELEMENTS:
            node = producers.get(name)
            where = f" (output of {node.op_type} node '{node.name}')" if node is not None else ""
            raise ModelError(
                f"tensor '{name}'{where} would have shape {list(dims)} ({count} elements per image), more than "
                f"onnxcam allows ({MAX_TENSOR_ELEMENTS}); if the input size is dynamic, give a smaller --input-size"
            )


def unknown_shapes(model, names) -> list:
    """The tensors among `names` whose shape static inference left open: no shape, or an axis after the first
    with no size (the first, the batch, may stay symbolic)."""
    known = set()
    for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input]:
        tensor_type = vi.type.tensor_type
        if tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in tensor_type.shape.dim[1:]):
            known.add(vi.name)
    return [name for name in names if name not in known]


def learn_shapes(model, names: list, image: str, shape: tuple) -> None:
    """Run `model` on zeros of the image input's `shape` (batch None: one image, then two) and write the shapes that
    tensors `names` took into its value_info (or graph outputs). Shape(t) of each is what comes back, not t.

    The batch stays symbolic: with a dynamic batch the model runs on one image and on two, and an axis whose size
    changes between them depends on the batch (written "N" where it is the batch itself, else left open: Swin's
    windows of every image, an attention's [3, N, heads, T, d]); axes static inference knew keep their sizes."""
    graph = model.graph
    infos = {vi.name: vi for vi in [*graph.value_info, *graph.output]}
    is_typed = {n: bool(n in infos and infos[n].type.tensor_type.elem_type) for n in names}
    typed = [n for n in names if is_typed[n]]
    untyped = [n for n in names if not is_typed[n]]  # ops ONNX does not know: fetch the tensor, for its dtype
    shapes = [f"onnxcam/probe/shape{k}" for k in range(len(typed))]
    nodes = [helper.make_node("Shape", [n], [out], name=out) for n, out in zip(typed, shapes)]
    got, twice = _probe(
        model, shapes + untyped, nodes, image, shape, f"the shapes of {len(names)} tensors (for example '{names[0]}')"
    )
    for k, (name, value, doubled) in enumerate(zip(typed + untyped, got, twice)):
        shape_only = k < len(typed)
        dims, dims2 = (
            (tuple(int(d) for d in v) for v in (value, doubled)) if shape_only else (value.shape, doubled.shape)
        )
        _write_shape(model, infos.get(name), name, dims, dims2, None if shape_only else value.dtype)


# Operands that backward rules need as constants (starts of a Slice, pads, repeats, axes, split sizes...),
# op -> their positions. Swin and Paddle exports compute some of them from Shape ops.
RULE_OPERANDS = {
    "Slice": (1, 2, 3, 4),
    "Pad": (1, 2, 3),
    "Tile": (1,),
    "Split": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Gather": (1,),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "ReduceMean": (1,),
    "ReduceSum": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "ReduceSumSquare": (1,),
    "ReduceL1": (1,),
    "ReduceL2": (1,),
    "ReduceLogSumExp": (1,),
}
FOLD_MAX_ELEMENTS = 1024  # a shape operand is small; anything larger is data


def fold_shape_operands(model, feeding: set, image: str, shape: tuple) -> None:
    """Turn the rule operands computed from shapes alone into constants: a Slice whose starts come from
    Shape -> Gather -> Mul... of tensors of the pinned size has the same starts for every image and batch size.
    Those that depend on the image's values (not only through Shape or Size) are left alone; a probe at batch 1
    and 2 gives the values, and those that change with the batch are left alone too."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    fixed = constants(graph)
    wanted = {}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or not any(i in feeding for i in node.input):
            continue
        for k in RULE_OPERANDS.get(node.op_type, ()):
            name = node.input[k] if k < len(node.input) else ""
            if name and name not in fixed and name in producers and name not in wanted:
                if image not in data_ancestors(name, producers):
                    wanted[name] = None
    if not wanted:
        return
    names = list(wanted)
    got, twice = _probe(
        model, names, [], image, shape, f"the values of {len(names)} shape operands (for example '{names[0]}')"
    )
    folded = {}
    for name, value, doubled in zip(names, got, twice):
        if value.size <= FOLD_MAX_ELEMENTS and value.shape == doubled.shape and np.array_equal(value, doubled):
            folded[name] = f"{name}/folded"
            graph.initializer.append(numpy_helper.from_array(value, folded[name]))
    for node in graph.node:
        for k in RULE_OPERANDS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            if k < len(node.input) and node.input[k] in folded:
                node.input[k] = folded[node.input[k]]


def _probe(model, names: list, extra_nodes: list, image: str, shape: tuple, what: str) -> tuple:
    """(values at one image, values at two) of tensors `names` of `model` (plus `extra_nodes`) run on zeros of the
    image input's shape; a model with a fixed batch runs once, and both are the same."""
    rows = shape[0] or 1
    feed_shape = (rows, *shape[1:])
    if int(np.prod(feed_shape[1:], dtype=object)) > PROBE_MAX_INPUT_ELEMENTS:
        raise ModelError(
            f"{what} are known only by running the model, and its input {list(feed_shape)} is too "
            "large to run it for that; give a smaller --input-size"
        )
    probe, weights = _weightless(model)
    probe.graph.node.extend(extra_nodes)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    elem = next(i for i in model.graph.input if i.name == image).type.tensor_type.elem_type
    zeros = np.zeros(feed_shape, helper.tensor_dtype_to_np_dtype(elem))
    try:
        options = session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # one run: building costs more
        options.log_severity_level = 4  # the failure is reported below, once
        options.add_external_initializers(list(weights), list(weights.values()))
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=[CPU])
        got = session.run(names, {image: zeros})
        # a second batch size tells the axes that follow the batch from those that happen to match it
        twice = session.run(names, {image: np.concatenate([zeros, zeros])}) if shape[0] is None else got
    except Exception as exc:  # ORT's Fail / InvalidArgument / RuntimeException..., or an allocation failure
        raise ModelError(
            f"{what} are known only by running the model, and ONNX Runtime cannot run it on zeros "
            f"of shape {list(feed_shape)}: {ort_error_text(exc)}"
        ) from None
    return got, twice


# Element types whose initializers ONNX Runtime can take from NumPy arrays (numpy_helper.to_array's dtype).
_NUMPY_TYPES = {
    getattr(onnx.TensorProto, t)
    for t in (
        "FLOAT",
        "DOUBLE",
        "FLOAT16",
        "INT8",
        "UINT8",
        "INT16",
        "UINT16",
        "INT32",
        "UINT32",
        "INT64",
        "UINT64",
        "BOOL",
    )
}


def _weightless(model) -> tuple:
    """(a copy of `model` whose large initializers are stubs, {name: OrtValue} of their data) for
    SessionOptions.add_external_initializers: protobuf serialization of 100 MB of weights costs more than the
    probe's run, and ONNX Runtime then parses them again."""
    graph = model.graph
    copy = onnx.ModelProto(ir_version=model.ir_version)
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(copy.graph, part).extend(getattr(graph, part))
    copy.graph.name = graph.name
    weights = {}
    for tensor in graph.initializer:
        if elements(tensor) <= SKELETON_ELEMENTS or tensor.data_type not in _NUMPY_TYPES:
            copy.graph.initializer.append(tensor)
            continue
        weights[tensor.name] = ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(tensor))
        stub = copy.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value="onnxcam-in-memory")  # never read: ORT takes `weights`
    return copy, weights


def _write_shape(model, info, name: str, dims: tuple, dims2: tuple, dtype) -> None:
    """Record `dims` (seen at one image; `dims2` at two, or the same for a fixed batch) as `name`'s shape,
    keeping the sizes static inference knew."""
    if info is None:
        info = model.graph.value_info.add()
        info.name = name
    tensor_type = info.type.tensor_type
    if dtype is not None and not tensor_type.elem_type:
        tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    old = tensor_type.shape.dim if tensor_type.HasField("shape") else []
    before = [(d.dim_value if d.HasField("dim_value") else None, d.dim_param) for d in old]
    if len(before) != len(dims):
        before = [(None, "")] * len(dims)
    if len(dims2) != len(dims):  # the rank itself depends on the batch: nothing is known
        dims2 = (None,) * len(dims)
    tensor_type.ClearField("shape")
    tensor_type.shape.SetInParent()
    for size, size2, (value, param) in zip(dims, dims2, before):
        dim = tensor_type.shape.dim.add()
        if value is not None:
            dim.dim_value = value
        elif param == BATCH or (size, size2) == (1, 2):
            dim.dim_param = BATCH
        elif size == size2:
            dim.dim_value = size
