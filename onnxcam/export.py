"""`export`: a self-contained "explained" ONNX model whose single run also returns the heatmap.

For runtimes without Python (C++, C#, Java, Node): the augmented model of
surgery.augment, plus the method, ReLU, per-image min-max and bilinear resize
written as ONNX nodes, matching the Python path (pytorch-grad-cam's
post-processing) to float rounding. The class input is optional: left unfed,
the graph explains its own top-1 class.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxcam.errors import ModelError, OnnxcamError
from onnxcam.head import linear_head_weights
from onnxcam.model import ModelInfo
from onnxcam.surgery import CLASS_INPUT, TARGET_OUTPUT, grad_name
from onnxcam.surgery.graph import augmented_graph, finish
from onnxcam.surgery.builder import Builder

MAP_OUTPUT = "onnxcam/map"
MIN_OPSET = 11  # Resize with half_pixel coordinates


def _channel_weighted(b, weights, a):
    return b.op("Mul", weights, a)


def _gradcam(b, a, g, ctx):
    return _channel_weighted(b, b.reduce("ReduceMean", g, [2, 3]), a)


def _xgradcam(b, a, g, ctx):
    total = b.op("Add", b.reduce("ReduceSum", a, [2, 3]), b.const(1e-7))
    return _channel_weighted(b, b.op("Div", b.reduce("ReduceSum", b.op("Mul", g, a), [2, 3]), total), a)


def _gradcampp(b, a, g, ctx):
    g2 = b.op("Mul", g, g)
    g3 = b.op("Mul", g2, g)
    denominator = b.op("Add", b.op("Add", b.op("Mul", g2, b.const(2.0)),
                                   b.op("Mul", b.reduce("ReduceSum", a, [2, 3]), g3)), b.const(1e-6))
    alpha = b.op("Where", b.op("Equal", g, b.const(0.0)), b.const(0.0), b.op("Div", g2, denominator))
    return _channel_weighted(b, b.reduce("ReduceSum", b.op("Mul", b.op("Relu", g), alpha), [2, 3]), a)


def _layercam(b, a, g, ctx):
    return b.op("Mul", b.op("Relu", g), a)


def _hirescam(b, a, g, ctx):
    return b.op("Mul", g, a)


def _cam(b, a, g, ctx):
    weights = b.op("Gather", b.const(ctx["head"]), ctx["target"], axis=0)  # [N, K]
    return _channel_weighted(b, b.op("Reshape", weights, b.const(np.array([0, -1, 1, 1], np.int64))), a)


# method -> per-channel terms [N, K, h, w] in ONNX, as in onnxcam.methods
TERMS = {"cam": _cam, "gradcam": _gradcam, "gradcam++": _gradcampp, "xgradcam": _xgradcam,
         "layercam": _layercam, "hirescam": _hirescam}


def export(info: ModelInfo, layers: list, method: str = "gradcam", class_input: str = "optional") -> onnx.ModelProto:
    """The explained model. class_input "optional": an overridable initializer defaulting to -1 (top-1),
    which the C, C++, C#, Java and Python APIs can feed by name; "required": a plain input (feed -1 for
    top-1), for clients such as onnxruntime-node that only feed the graph's declared inputs."""
    if method not in TERMS:
        raise OnnxcamError(f"export supports {', '.join(TERMS)}; not '{method}'")
    if class_input not in ("optional", "required"):
        raise OnnxcamError(f"class_input is 'optional' or 'required', not '{class_input}'")
    if info.opset < MIN_OPSET:
        raise ModelError(f"export needs opset {MIN_OPSET} or newer (bilinear Resize); the model is opset {info.opset}")
    graph = augmented_graph(info, layers, gradients=True)
    b = Builder(graph, info.opset, prefix="onnxcam/map")
    h, w = info.size
    scaled = []
    for layer_map in layer_maps(b, graph.tensors(), info, layers, method):
        sizes = b.op("Concat", b.op("Slice", b.op("Shape", layer_map), b.const(np.array([0], np.int64)),
                                    b.const(np.array([2], np.int64))),
                     b.const(np.array([h, w], np.int64)), axis=0)
        scaled.append(b.op("Resize", _normalize(b, layer_map), b.const(np.zeros(0, np.float32)),
                           b.const(np.zeros(0, np.float32)), sizes, mode="linear",
                           coordinate_transformation_mode="half_pixel"))
    combined = scaled[0] if len(scaled) == 1 else b.op("Mean", *scaled)
    heat = b.op("Reshape", _normalize(b, b.op("Relu", combined)), b.const(np.array([0, h, w], np.int64)))
    out = gs.Variable(MAP_OUTPUT, dtype=np.float32, shape=["N", h, w])
    graph.nodes.append(gs.Node("Identity", b.name("Identity"), {}, [heat], [out]))
    original = {o.name for o in info.model.graph.output}
    graph.outputs = [o for o in graph.outputs if o.name in original] + [out, graph.tensors()[TARGET_OUTPUT]]
    exported = finish(graph, info, class_default=class_input == "optional")
    _describe(exported, info, layers, method, class_input)
    onnx.checker.check_model(exported)
    return exported


def layer_map_name(layer: str) -> str:
    """Not under a Builder prefix ("onnxcam/map/relu_0" is also a name the Builder may make)."""
    return f"onnxcam/layer_map/{layer}"


def maps_model(info: ModelInfo, layers: list, method: str, score: str = "logit", unit=None) -> onnx.ModelProto:
    """The augmented model with each layer's map before scaling (`layer_map_name`, [N, 1, h, w]) as an
    output in place of A and dScore/dA, besides the logits and the target class: on a GPU the activations
    and gradients then stay on the device and only maps of h x w floats come back (Explainer's in-graph path)."""
    graph = augmented_graph(info, layers, gradients=True, score=score, unit=unit)
    tensors = graph.tensors()
    b = Builder(graph, info.opset, prefix="onnxcam/map")
    outputs = [tensors[info.logits_name], tensors[TARGET_OUTPUT]]
    for layer, layer_map in zip(layers, layer_maps(b, tensors, info, layers, method)):
        out = gs.Variable(layer_map_name(layer), dtype=np.float32, shape=["N", 1, None, None])
        graph.nodes.append(gs.Node("Identity", b.name("Identity"), {}, [layer_map], [out]))
        outputs.append(out)
    graph.outputs = outputs
    return finish(graph, info)


def layer_maps(b: Builder, tensors: dict, info: ModelInfo, layers: list, method: str) -> list:
    """Per layer, the method's map at layer resolution after ReLU, [N, 1, h, w], as nodes appended to an
    augmented graph (with gradients) whose tensors are `tensors`."""
    ctx = {"target": tensors[TARGET_OUTPUT]}
    maps = []
    for layer in layers:
        if method == "cam":
            ctx["head"] = linear_head_weights(info, layer)
        terms = TERMS[method](b, b.fwd(tensors[layer]), tensors[grad_name(layer)], ctx)
        maps.append(b.op("Relu", b.reduce("ReduceSum", terms, [1])))
    return maps


def _normalize(b, x):
    """Per-image min-max over [1, h, w], with pytorch-grad-cam's 1e-7."""
    shifted = b.op("Sub", x, b.reduce("ReduceMin", x, [1, 2, 3]))
    return b.op("Div", shifted, b.op("Add", b.reduce("ReduceMax", shifted, [1, 2, 3]), b.const(1e-7)))


def _describe(model: onnx.ModelProto, info: ModelInfo, layers: list, method: str, class_input: str) -> None:
    """Say what the extra input and outputs are, in the graph and in the metadata."""
    h, w = info.size
    unfed = "; unfed = the top-1 class" if class_input == "optional" else ""
    docs = {
        CLASS_INPUT: f"int64 [N], {class_input}: the class to explain per image; -1 = the top-1 class{unfed}",
        MAP_OUTPUT: f"float32 [N, {h}, {w}]: the {method} heatmap in [0, 1] at the input's resolution",
        TARGET_OUTPUT: "int64 [N]: the class each map explains",
    }
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in docs:
            value.doc_string = docs[value.name]
    meta = {"method": method, "layers": layers, "image_input": info.input_name, "layout": info.layout,
            "logits": info.logits_name, "inputs_and_outputs": docs}
    kept = [p for p in info.model.metadata_props if not p.key.startswith("onnxcam.export")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key="onnxcam.export", value=json.dumps(meta))


def ort_format(model: onnx.ModelProto) -> bytes:
    """`model` in ONNX Runtime's ORT format, the only one that mobile and minimal builds load (they know it by
    the .ort suffix). Optimized for the CPU provider as onnxruntime.tools.convert_onnx_models_to_ort does by
    default (every level but the x86-only NCHWc layout), then saved by the installed ONNX Runtime."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # not the warning that the optional class input is an overridable initializer
    options.add_session_config_entry("session.save_model_format", "ORT")
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = os.path.join(folder, "model.ort")
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=["NchwcTransformer"])
            with open(options.optimized_model_filepath, "rb") as saved:
                return saved.read()
        except Exception as exc:  # onnxruntime's own exception types, or no file where a build cannot save
            raise OnnxcamError(f"ONNX Runtime {ort.__version__} could not write the ORT format: {exc}") from None
