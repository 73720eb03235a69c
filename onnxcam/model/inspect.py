"""Inspect a classifier: which input takes the image (and in which layout), which tensor holds the logits
(the pre-softmax scores) and what they mean (the head), which tensors are candidate target layers, and the
labels and preprocessing its metadata records.

`inspect_model` pins the input's spatial size, so that every layer gets a static shape (from shape inference,
or where that cannot know it, from one run of the model: `shapes.learn_shapes`); only the batch dimension
stays symbolic.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxcam import detection, heads
from onnxcam.errors import ModelError
from onnxcam.model.channels_last import add_nchw_twins, is_channels_last, is_new_layer, nchw_name
from onnxcam.model.decompose import decompose_attention
from onnxcam.model.graph import REARRANGERS, ancestors, constants, data_ancestors, inline_constant_branches
from onnxcam.model.layout import IDENTITY, NHWC, layouts, pooled_layouts
from onnxcam.model.load import check_nodes
from onnxcam.model.metadata import labels_from_metadata, metadata, preset_from_metadata, resize_from_metadata
from onnxcam.model.neck import neck_layers
from onnxcam.model.quantized import add_float_twins, quantized_tensors, twin
from onnxcam.model.shapes import (
    check_tensor_sizes,
    fold_shape_operands,
    infer_shapes,
    learn_shapes,
    static_shapes,
    unknown_shapes,
)
from onnxcam.model.tokens import TokenGrid, add_grid_twins, attention_maps, grid_name, token_layers
from onnxcam.names import TASKS, check_choice, format_shape

# Ops that turn logits into probabilities: seed the class score at their input.
_PROBABILITY_OPS = {"Softmax", "LogSoftmax", "Sigmoid"}
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze"}
# Refuse models whose declared input would need more than this many elements.
MAX_INPUT_ELEMENTS = 1 << 28


def _classify_shape(dims) -> bool:
    """[C] or [C, 1, 1]: one score per class (a dimension known only at run time is taken for 1)."""
    return isinstance(dims[0], int) and dims[0] >= 1 and all(d == 1 for d in dims[1:] if isinstance(d, int))


def _detect_shape(dims) -> bool:
    """A raw YOLO head: [4 + C, A] or [A, 5 + C] (onnxcam.detection.layout)."""
    return detection.layout((None, *dims)) is not None


def _segment_shape(dims) -> bool:
    """[C, H, W] with H*W > 1: one score per class and pixel."""
    return len(dims) == 3 and all(isinstance(d, int) and d >= 1 for d in dims) and dims[1] * dims[2] > 1


# task -> (does the explained output's shape, after the batch axis, fit it; how that shape is written), in the
# order the automatic choice tries them.
TASK_SHAPES = {
    "classify": (_classify_shape, "[N, C]"),
    "detect": (_detect_shape, "[N, 4+C, A] (YOLOv8/11) or [N, A, 5+C] (YOLOv5), anchors A > 4+C"),
    "segment": (_segment_shape, "[N, C, H, W] with H*W > 1"),
}


@dataclass(frozen=True)
class Layer:
    """A candidate target tensor: NCHW, spatial size > 1, on the way to the logits (for a transformer's token
    layer, its NCHW grid twin: `tokens` tells the token tensor's grid and prefix)."""

    name: str
    op: str
    node: str
    shape: tuple
    tokens: TokenGrid | None = None


@dataclass
class ModelInfo:
    """What explaining a classifier needs to know about it, found once by `inspect_model`."""

    model: onnx.ModelProto  # shape-inferred (shapes learned by running where needed), spatial size pinned
    input_name: str
    input_shape: tuple  # batch entry is None when dynamic
    layout: str  # "NCHW" or "NHWC"
    output_name: str
    logits_name: str
    num_classes: int  # entries of the logits per image (1 for a single-logit head)
    opset: int
    layers: list = field(default_factory=list)
    task: str = "classify"  # one of names.TASKS, chosen from the explained output's shape (`TASK_SHAPES`)
    logits_shape: tuple = ()  # the explained output's static shape, batch entry None
    labels: list | None = None  # one name per class (a single-logit head has two: negative, positive)
    preprocess: str | None = None  # a preprocess.PRESETS name the metadata determines
    head: str = "softmax"  # what the scores mean: one of heads.KINDS (see `_head_kind`)
    labels_source: str | None = None  # where `labels` came from, e.g. "metadata 'names'"
    preprocess_source: str | None = None  # where `preprocess` came from
    resize: str | None = None  # a names.RESIZES name the metadata determines (ultralytics detectors: letterbox)
    resize_source: str | None = None  # where `resize` came from
    notes: list = field(default_factory=list)  # metadata seen but not used, and why
    attention: list = field(default_factory=list)  # a transformer's attention probabilities [N, heads, T, T]
    neck: list = field(default_factory=list)  # detect: the feature maps the detection head reads, one a scale

    def require_task(self, what: str, tasks: tuple) -> None:
        """Refuse, in one line, a command that means nothing for this model's task (eval's class benchmarks on a
        detector, say)."""
        if self.task not in tasks:
            raise ModelError(
                f"{what} works on {' and '.join(f'{t} models' for t in tasks)}; '{self.logits_name}' of shape "
                f"{format_shape(self.logits_shape)} makes this one a {self.task} model"
            )

    @property
    def default_layers(self) -> list:
        """The layers explained when none is named: a detector's neck maps, else the automatic layer."""
        return list(self.neck) or [self.auto_layer.name]

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
        """The last candidate before the logits: where Grad-CAM is usually computed. For segmentation, the last
        that is not a per-class map (the logits themselves and their resizes have as many channels as classes)."""
        if self.task == "segment":
            features = [layer for layer in self.layers if layer.shape[1] != self.num_classes]
            return (features or self.layers)[-1]
        return self.layers[-1]

    def resolve_layer(self, name: str | None) -> Layer:
        """A layer by tensor name or node name (its first output; a token tensor stands for its grid twin);
        None picks the automatic one."""
        if name is None:
            return self.auto_layer
        for layer in self.layers:
            if layer.name in (name, layer.node, grid_name(name), nchw_name(name)):
                return layer
        known = [layer.name for layer in self.layers] + [layer.node for layer in self.layers if layer.node]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(
            f"no target layer named '{name}' (it must be a 4-D NCHW tensor with spatial size > 1, or transformer "
            f"tokens on a patch grid, that feeds the logits).{hint} 'onnxcam inspect' lists them."
        )

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels and 0 <= index < len(self.labels) else f"class {index}"


def inspect_model(
    model: onnx.ModelProto,
    input_name: str | None = None,
    output_name: str | None = None,
    input_size: tuple | None = None,
    task: str | None = None,
) -> ModelInfo:
    """Find the image input, the logits, the head and the candidate layers of a classifier (or, by the output's
    shape or `task`, a detector or a segmentation model)."""
    if task is not None:
        check_choice("task", task, TASKS)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError("the model imports no default-domain ONNX opset")
    if opset < 7:
        raise ModelError(f"the model uses opset {opset}; onnxcam (and ONNX Runtime) need opset 7 or newer")
    check_nodes(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # we edit shapes: work on a copy (CopyFrom: no 2 GB protobuf limit, unlike serializing)
    model = copy
    inline_constant_branches(model)
    image_input = _pick_input(model, input_name)
    output = _pick_output(model.graph, output_name)
    _drop_other_inputs(model, image_input.name, output)
    layout, shape = _pin_input_shape(image_input, input_size)
    model = infer_shapes(model)
    if decompose_attention(model):  # fused attention ops as the standard ops they stand for
        model = infer_shapes(model)

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    probability = _probability_node(output, producers)
    logits = probability.input[0] if probability is not None else output
    shapes = static_shapes(model)
    check_tensor_sizes(shapes, producers)
    _check_inferred_types(model, producers, logits)
    # Tensors whose values reach the logits: candidates, and what the backward rules go through.
    feeding = data_ancestors(logits, producers)
    unknown = unknown_shapes(model, [o for n in graph.node for o in n.output if o in feeding])
    if unknown:
        learn_shapes(model, unknown, image_input.name, shape)
        shapes = static_shapes(model)
        check_tensor_sizes(shapes, producers)
    fold_shape_operands(model, feeding, image_input.name, shape)
    logits_shape = shapes.get(logits)
    task = _task(logits, logits_shape, task)
    kind = detection.layout(logits_shape) if task == "detect" else None
    num_classes = detection.class_count(logits_shape, kind) if kind else logits_shape[1]

    nchw_input = {image_input.name} if layout == "NCHW" else set()
    tensors = constants(graph)
    quantized = quantized_tensors(graph, tensors) if opset >= 10 else {}  # QuantizeLinear comes with opset 10
    found = layouts(graph, shapes, nchw_input, tensors)
    pooled = pooled_layouts(graph, shapes, tensors, found)
    found.update((t, p) for t, p in pooled.items() if not isinstance(p, TokenGrid))
    tokens = token_layers(graph, shapes, found, feeding, logits, tensors)
    tokens.update(_pooled_tokens(pooled, shapes, producers, found, tokens))
    layers = _candidate_layers(graph, shapes, feeding, found, _float_names(model), quantized, tokens)
    names = {layer.name for layer in layers}
    add_float_twins(model, {t: params for t, params in quantized.items() if twin(t) in names}, tensors)
    add_grid_twins(model, {t: g for t, g in tokens.items() if grid_name(t) in names}, opset)
    add_nchw_twins(model, {t: p for t, p in found.items() if nchw_name(t) in names})
    if not layers:
        raise ModelError(
            "no candidate target layer: no 4-D NCHW tensor with spatial size > 1 feeds the logits "
            f"'{logits}' (ops in the model: {', '.join(sorted({n.op_type for n in graph.node}))})"
        )
    head = "multilabel" if kind else _head_kind(num_classes, probability)  # a detector's scores: independent
    meta = metadata(model)
    labels, labels_source, notes = labels_from_metadata(meta, heads.class_count(head, num_classes))
    preset, preset_source = preset_from_metadata(meta)
    resize, resize_source = resize_from_metadata(meta)
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
        task=task,
        logits_shape=(None, *logits_shape[1:]),
        labels=labels,
        preprocess=preset,
        head=head,
        labels_source=labels_source,
        preprocess_source=preset_source,
        resize=resize,
        resize_source=resize_source,
        notes=notes,
        neck=neck_layers(graph, image_input.name, logits, producers, shapes, layers) if kind else [],
        attention=attention_maps(graph, shapes, layers[-1].tokens, feeding) if layers[-1].tokens else [],
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


def _drop_other_inputs(model, image: str, output: str) -> None:
    """Inputs besides the image cannot be fed: refuse them if the scores need them, else drop them together
    with the nodes and outputs that use them (ONNX Runtime demands every graph input, used or not)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    others = {i.name for i in graph.input if i.name not in initializers and i.name != image}
    if not others:
        return
    producers = {out: node for node in graph.node for out in node.output}
    needed = others & ancestors(output, producers)
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
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim
    ]


def _pin_input_shape(value_info, input_size):
    """Fix the input's spatial size (batch stays symbolic) and return (layout, shape). input_size: (height, width),
    or the 4-D shape of a ready input tensor, whose spatial axes give a dynamic size."""
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
    fixed = [raw[a] for a in spatial_axes if isinstance(raw[a], int) and raw[a] > 0]
    if input_size is not None and len(input_size) == 4:  # a ready tensor's shape: it fixes a dynamic size only
        input_size = None if len(fixed) == 2 else tuple(int(input_size[a]) for a in spatial_axes)
    if input_size is not None and len(fixed) == 2 and tuple(fixed) != tuple(input_size):
        raise ModelError(
            f"input '{value_info.name}' has the fixed spatial size {fixed[0]}x{fixed[1]}; --input-size "
            f"{input_size[0]} {input_size[1]} applies only to models whose size is dynamic"
        )
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
        raise ModelError(
            f"the model has {len(names)} outputs ({', '.join(names)}); choose the scores with --output NAME"
        )
    return names[0]


def _task(logits: str, shape, wanted: str | None) -> str:
    """The task the explained output's shape fits (the first in TASK_SHAPES), or `wanted` if the shape fits it;
    a user error naming the shape otherwise."""
    dims = list(shape[1:]) if shape and len(shape) >= 2 else None
    fits = [task for task, (test, _) in TASK_SHAPES.items() if dims and test(dims)]
    shape = "unknown" if shape is None else format_shape(shape)
    if wanted is None and fits:
        return fits[0]
    if wanted in fits:
        return wanted
    if wanted is None:
        expected = " or ".join(f"{form} ({task})" for task, (_, form) in TASK_SHAPES.items())
        raise ModelError(f"the logits tensor '{logits}' has shape {shape}; expected {expected} with known sizes")
    raise ModelError(
        f"--task {wanted} needs an output of shape {TASK_SHAPES[wanted][1]}; '{logits}' has shape {shape}"
        + (f" (a {fits[0]} output)" if fits else "")
    )


def _head_kind(num_classes: int, probability) -> str:
    """ "binary" for a single logit (its package applies the sigmoid), "multilabel" for a Sigmoid over several
    logits (independent yes/no per class), else "softmax" (exclusive classes)."""
    if num_classes == 1:
        return "binary"
    return "multilabel" if probability is not None and probability.op_type == "Sigmoid" else "softmax"


def _probability_node(output, producers):
    """Walking back from the output past reshapes, the Softmax-like node met, if any: its input holds the logits."""
    name = output
    while name in producers and producers[name].op_type in _PASS_THROUGH:
        name = producers[name].input[0]
    node = producers.get(name)
    return node if node is not None and node.op_type in _PROBABILITY_OPS else None


def _check_inferred_types(model, producers: dict, logits: str) -> None:
    """A standard op on the way to the scores whose inputs are typed but whose output is not failed shape
    inference (a bad attribute, mismatched shapes): say so now, not deep inside graph surgery. Custom-domain
    ops are not judged (ONNX cannot infer them; the finite-difference fallback still copes with them)."""
    graph = model.graph
    typed = {t.name for t in graph.initializer} | {
        vi.name for vi in [*graph.input, *graph.output, *graph.value_info] if vi.type.tensor_type.elem_type
    }
    for name in sorted(ancestors(logits, producers)):
        node = producers.get(name)
        if (
            node is None
            or node.domain not in ("", "ai.onnx")
            or name in typed
            or not all(i in typed for i in node.input if i)
            or node.op_type in ("If", "Loop", "Scan")
        ):
            continue
        try:
            onnx.infer_shapes(model, strict_mode=True)
            why = ""
        except Exception as exc:
            lines = [line.strip() for line in str(exc).splitlines() if f"node name: {node.name})" in line]
            why = f": {lines[0][lines[0].find('(op_type') :]}" if lines else ""
        raise ModelError(
            f"shape inference fails at {node.op_type} node '{node.name}' (its output '{name}' gets no type){why}; "
            "the model is corrupt"
        )


def _float_names(model) -> set:
    """Tensors of a floating type: only those carry activations worth explaining (not QDQ's uint8)."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    return {
        vi.name
        for vi in list(model.graph.value_info) + list(model.graph.output)
        if vi.type.tensor_type.elem_type in floats
    }


def _pooled_tokens(pooled, shapes, producers, found, tokens) -> dict:
    """The token layers found back from a global pooling (layout.pooled_layouts): tokens as wide as a grid
    [N, h, w, C] they are laid on, not the output of a Reshape (the same values as that grid)."""
    widths = {(shapes[t][1] * shapes[t][2], shapes[t][3]) for t, p in found.items() if p == NHWC}
    return {
        t: g
        for t, g in pooled.items()
        if isinstance(g, TokenGrid)
        and t not in tokens
        and (g.tokens, shapes[t][2]) in widths
        and producers[t].op_type not in REARRANGERS
    }


def _candidate_layers(graph, shapes, feeding, found, floats, quantized, tokens):
    """NCHW tensors with spatial size > 1 whose values reach the logits (`feeding`): float ones, the float
    twins of quantized ones, the grid twins of token layers and the NCHW twins of channels-last ones."""
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []
    for node in graph.node:
        out = node.output[0] if node.output else ""
        shape = shapes.get(out)
        if out in tokens and out in floats:
            g = tokens[out]
            layers.append(Layer(grid_name(out), node.op_type, node.name, (None, shape[2], g.height, g.width), g))
            continue
        p = found.get(out)
        if p is None or not (is_channels_last(p) or p == IDENTITY) or out not in feeding:
            continue
        nchw = tuple(shape[p.index(axis)] for axis in IDENTITY)
        if not (nchw[2] and nchw[3] and nchw[2] * nchw[3] > 1):
            continue
        if p != IDENTITY:
            if out in floats and is_new_layer(out, node, consumers.get(out, []), found):
                layers.append(Layer(nchw_name(out), node.op_type, node.name, nchw))
        elif out in floats:
            layers.append(Layer(out, node.op_type, node.name, shape))
        elif out in quantized:
            layers.append(Layer(twin(out), node.op_type, node.name, shape))
    return layers
