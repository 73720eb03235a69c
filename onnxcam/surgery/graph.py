"""Graph surgery: expose target layers, append their gradients, or cut off the head.

`augment` returns a model whose single run gives the logits, the class each
image is explained for, and for every target layer its activations A and the
gradient dScore/dA. The class is a runtime input (negative = top-1, chosen in
the graph), so one augmented model serves every class. What the class's score
is depends on the task (`SEEDS`): a classifier's logit, or a segmentation
model's class scores summed over a region (itself an optional runtime input).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxcam import segmentation
from onnxcam.errors import ModelError
from onnxcam.model import ModelInfo
from onnxcam.names import CLASS_INPUT, REGION_INPUT, SCORES, SEED_INPUT, TARGET_OUTPUT
from onnxcam.surgery.backward import backward
from onnxcam.surgery.builder import Builder


def grad_name(layer: str) -> str:
    return f"onnxcam/grad/{layer}"


def augment(
    info: ModelInfo,
    layers: list,
    gradients: bool = True,
    input_gradient: str | None = None,
    score: str = "logit",
    unit: tuple | None = None,
    fed_seed: bool = False,
) -> onnx.ModelProto:
    """The augmented model (see `augmented_graph`), ready for ONNX Runtime."""
    return finish(augmented_graph(info, layers, gradients, input_gradient, score, unit, fed_seed), info)


def augmented_graph(
    info: ModelInfo,
    layers: list,
    gradients: bool = True,
    input_gradient: str | None = None,
    score: str = "logit",
    unit: tuple | None = None,
    fed_seed: bool = False,
) -> gs.Graph:
    """The model plus outputs: logits, per layer A, and with gradients the target class and dScore/dA.

    input_gradient: None, "plain" or "guided" (ReLUs pass only positive gradients): also output
    dScore/dx for the image input x, as `grad_name(input)`, from the same run.
    score: "logit" or "probability" (the softmax of the logits) of the target class.
    unit: (tensor, channel) or (tensor, channel, i, j): the score is that feature map's sum, or
    that one neuron, instead of a class score (Smooth Grad-CAM++'s feature-map / neuron level).
    fed_seed: dScore/dlogits is a runtime input (`SEED_INPUT`, the logits' shape) instead of a class's seed made
    in the graph: for scores computed outside it (a detection's, onnxcam.detection); no class input, no target.
    """
    assert input_gradient in (None, "plain", "guided"), input_gradient
    assert score in SCORES, score
    graph = _import(info)
    tensors = graph.tensors()
    logits = tensors[info.logits_name]
    outputs = list(graph.outputs)
    _add_output(outputs, logits)
    for name in layers:
        if name not in {i.name for i in graph.inputs}:
            _add_output(outputs, tensors[name])
    if gradients or input_gradient:
        b = Builder(graph, info.opset)
        if fed_seed:
            seed = gs.Variable(SEED_INPUT, dtype=np.float32, shape=["N", *logits.shape[1:]])
            graph.inputs.append(seed)
        else:
            cls = gs.Variable(CLASS_INPUT, dtype=np.int64, shape=["N"])
            graph.inputs.append(cls)
            target, seed = SEEDS[info.task](b, graph, logits, info, cls, score)
            outputs.append(b.named(target, TARGET_OUTPUT, np.int64, ["N"]))
        seeded = logits
        if unit is not None:
            seeded, seed = _unit_seed(b, tensors, unit)
        passes = [(b, [tensors[n] for n in layers] if gradients else [])]
        image = tensors[info.input_name]
        if input_gradient == "guided":  # a second reverse pass: the layers' gradients stay unguided
            passes.append((Builder(graph, info.opset, guided=True, prefix="onnxcam/guided"), [image]))
            passes[-1][0].one_hot = b.one_hot
        elif input_gradient:
            passes[0][1].append(image)
        for builder, wrt in passes:
            if not wrt:
                continue
            grads = backward(builder, wrt, seeded, seed)
            outputs.extend(builder.named(grads[t.name], grad_name(t.name), builder.dtype, t.shape) for t in wrt)
    graph.outputs = outputs
    return graph


def finish(graph: gs.Graph, info: ModelInfo, class_default: bool = True) -> onnx.ModelProto:
    """Clean up and export an edited graph. With class_default, a class input gets the default -1 (top-1)
    as an overridable initializer, so it may be left unfed (clients that cannot feed initializers, such as
    onnxruntime-node, need class_default=False and always feed it); so does a region input (-1: predicted)."""
    model = _export(graph, info)
    defaults = {CLASS_INPUT: np.array([-1], np.int64), REGION_INPUT: np.full((1, 1, 1), -1, np.float32)}
    for name in [i.name for i in model.graph.input if i.name in defaults] if class_default else []:
        model.ir_version = max(model.ir_version, 4)  # callers may feed an initializer only from IR 4
        model.graph.initializer.append(numpy_helper.from_array(defaults[name], name))
    return model


def cut_head(info: ModelInfo, layer: str) -> onnx.ModelProto:
    """The sub-model from `layer` (as an input) to the logits; the image input stays only if still needed."""
    graph = _import(info)
    tensors = graph.tensors()
    a = tensors[layer]
    a.inputs.clear()
    graph.inputs = [a] + [t for t in graph.inputs if t.name != layer]
    graph.outputs = [tensors[info.logits_name]]
    graph.cleanup(remove_unused_graph_inputs=True)
    return _export(graph, info)


def _class_seed(b: Builder, logits, head: str, num_classes: int, cls, score: str):
    """Pick each row's class (negative = the top-1, in the graph); dScore/dlogits for that class's score as
    heads.class_score defines it: softmax heads: the logit or dp_c/dz = p_c (onehot_c - p); multi-label: the
    logit or p_c (1 - p_c) on c; binary (one logit z): class 1 is z, class 0 is -z, probabilities their sigmoid."""
    flat = logits if len(logits.shape) == 2 else b.op("Flatten", logits, axis=1)
    dtype = onnx.helper.np_dtype_to_tensor_dtype(b.dtype)
    z = b.fwd(flat)
    if head == "binary":
        top = b.op("Cast", b.op("Greater", z, b.const(0.0)), to=onnx.TensorProto.INT64)
        top = b.op("Reshape", top, b.const([-1], np.int64))
    else:
        top = b.op("ArgMax", flat, axis=1, keepdims=0)
    target = _chosen(b, cls, top)
    column = b.op("Reshape", target, b.const([-1, 1], np.int64))
    if head == "binary":
        seed = b.op("Sub", b.op("Mul", b.op("Cast", column, to=dtype), b.const(2.0)), b.const(1.0))  # +1 or -1
        if score == "probability":
            p = b.op("Sigmoid", b.op("Mul", z, seed))  # the explained class's probability
            seed = b.op("Mul", seed, b.op("Mul", p, b.op("Sub", b.const(1.0), p)))
    else:
        hot = b.op("Equal", column, b.const(np.arange(num_classes, dtype=np.int64)[None]))
        seed = b.op("Cast", hot, to=dtype)
        b.one_hot[seed.name] = target
        if score == "probability" and head == "multilabel":
            p = b.op("Sigmoid", z)
            seed = b.op("Mul", seed, b.op("Mul", p, b.op("Sub", b.const(1.0), p)))
        elif score == "probability":
            p = b.op("Softmax", z, axis=1)
            p_target = b.reduce_sum(b.op("Mul", p, seed), [1], keepdims=True)
            seed = b.op("Mul", p_target, b.op("Sub", seed, p))
    if len(logits.shape) != 2:
        seed = b.reshape_like(seed, logits)
    return target, seed


def _chosen(b: Builder, cls, default):
    """Each row's class: cls where it is given (>= 0), else the default; cls < 0 ? default : cls, in ops valid from
    opset 7 (Where and integer Less need opset 9)."""
    dtype = onnx.helper.np_dtype_to_tensor_dtype(b.dtype)
    negative = b.op("Cast", b.op("Less", b.op("Cast", cls, to=dtype), b.const(0.0)), to=onnx.TensorProto.INT64)
    return b.op("Add", cls, b.op("Mul", b.op("Sub", default, cls), negative))


def _classify_seed(b: Builder, graph, logits, info: ModelInfo, cls, score: str):
    return _class_seed(b, logits, info.head, info.num_classes, cls, score)


def _segment_seed(b: Builder, graph, logits, info: ModelInfo, cls, score: str):
    """onnxcam.segmentation's rules in the graph: each row's class c (negative = the default class), and
    dScore/dz = onehot(c) over the channels x the region, for score = sum over the region of class c's scores.
    The region is a runtime input, float [N, H, W] (1 inside), where a negative value stands for the pixels
    predicted as c (all of them when none is): its default, one -1, means "predicted" everywhere."""
    assert score == "logit", score
    dtype = onnx.helper.np_dtype_to_tensor_dtype(b.dtype)
    z = b.fwd(logits)
    binary = info.head == "binary"
    scores = b.op("Concat", b.op("Neg", z), z, axis=1) if binary else z  # a one-channel map's two classes
    classes = info.num_classes + binary
    channels = b.const(np.arange(classes, dtype=np.int64).reshape(1, -1, 1, 1))
    hits = b.op("Cast", b.op("Equal", b.op("ArgMax", scores, axis=1, keepdims=1), channels), to=dtype)
    counts = b.reduce_sum(hits, [2, 3], keepdims=False)  # [N, classes] pixels predicted as each class
    if segmentation.has_background(info.labels, info.head):  # class 0 below any other class with one pixel
        h, w = info.logits_shape[2:]
        counts = b.op("Mul", counts, b.const(np.float32([1 / (h * w + 1)] + [1] * (classes - 1))[None]))
    target = _chosen(b, cls, b.op("ArgMax", counts, axis=1, keepdims=0))
    onehot = b.op("Cast", b.op("Equal", b.op("Reshape", target, b.const([-1, 1, 1, 1], np.int64)), channels), to=dtype)
    mine = b.reduce_sum(b.op("Mul", hits, onehot), [1])  # [N, 1, H, W] pixels predicted as the target
    mine = b.op("Add", mine, b.op("Sub", b.const(1.0), b.reduce("ReduceMax", mine, [2, 3])))  # none: all
    region = gs.Variable(REGION_INPUT, dtype=np.float32, shape=["region_n", "region_h", "region_w"])
    graph.inputs.append(region)
    region = b.unsqueeze(region, [1])
    inside = b.where(b.op("Less", region, b.const(0.0)), mine, region)
    seed = b.op("Mul", onehot, inside)
    if binary:  # d/dz of the two classes' scores -z and z
        seed = b.op("Sub", b.slice(seed, [1], [2], [1]), b.slice(seed, [0], [1], [1]))
    return target, seed


# task -> the seed builder: (builder, graph, logits, info, class input, score) -> (target class, dScore/dlogits)
SEEDS = {"classify": _classify_seed, "segment": _segment_seed}


def _unit_seed(b: Builder, tensors, unit):
    """(tensor, seed): the seed is 1 on the chosen channel (or neuron) of that 4-D tensor, per image."""
    name, channel, *position = unit
    if name not in tensors or tensors[name].shape is None or len(tensors[name].shape) != 4:
        raise ModelError(f"unit layer '{name}' is not a 4-D tensor of the model")
    t = tensors[name]
    _, c, h, w = t.shape
    mask = np.zeros((1, c, h, w), np.float32)
    if not 0 <= channel < c or (position and not (0 <= position[0] < h and 0 <= position[1] < w)):
        raise ModelError(f"unit {list(unit[1:])} is outside '{name}' of shape [N, {c}, {h}, {w}]")
    if position:
        mask[0, channel, position[0], position[1]] = 1
    else:
        mask[0, channel] = 1
    return t, b.op("Add", b.op("Mul", b.fwd(t), b.const(0.0)), b.const(mask))  # the mask, with the batch dim


def _add_output(outputs, tensor):
    if tensor.name not in {o.name for o in outputs}:
        outputs.append(tensor)


# Initializers of this many bytes or more go around graph surgery, not through it: protobuf cannot copy a
# message over 2 GB, and no rule reads their values. A data-less stand-in takes their place in the surgery's
# graph, and the exported model gets the real tensor back by name.
HUGE_BYTES = 1 << 30
_STAND_IN = "onnxcam-stand-in"


def _import(info: ModelInfo) -> gs.Graph:
    model = info.model
    if not any(_bytes(t) >= HUGE_BYTES for t in model.graph.initializer):
        return gs.import_onnx(model)
    hollow = onnx.ModelProto(ir_version=model.ir_version)
    hollow.opset_import.extend(model.opset_import)
    hollow.functions.extend(model.functions)
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(hollow.graph, part).extend(getattr(model.graph, part))
    for tensor in model.graph.initializer:
        if _bytes(tensor) < HUGE_BYTES:
            hollow.graph.initializer.append(tensor)
            continue
        stand_in = hollow.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        stand_in.data_location = onnx.TensorProto.EXTERNAL
        stand_in.external_data.add(key="location", value=_STAND_IN)
    return gs.import_onnx(hollow)


def _bytes(tensor) -> int:
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # strings, and types NumPy does not know: small in practice
        return 0
    return itemsize * int(np.prod(tensor.dims, dtype=np.int64))


def _export(graph, info: ModelInfo) -> onnx.ModelProto:
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    originals = {t.name: t for t in info.model.graph.initializer}
    for tensor in model.graph.initializer:
        if any(e.key == "location" and e.value == _STAND_IN for e in tensor.external_data):
            tensor.CopyFrom(originals[tensor.name])
    model.ir_version = info.model.ir_version  # gs writes onnx's newest IR, which ORT may not load
    del model.metadata_props[:]
    return model
