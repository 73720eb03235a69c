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
import onnxruntime as ort

from onnxcam.errors import OnnxcamError, UnsupportedOpError
from onnxcam.linear_head import linear_head_weights
from onnxcam.model import ModelInfo
from onnxcam.names import MAP_OUTPUT, REGION_INPUT
from onnxcam.surgery import CLASS_INPUT, TARGET_OUTPUT
from onnxcam.surgery.builder import Builder
from onnxcam.surgery.graph import augmented_graph, finish
from onnxcam.surgery.maps import FORMULAS, heatmap, layer_maps

METHODS = tuple(FORMULAS)


def export(info: ModelInfo, layers: list, method: str = "gradcam", class_input: str = "optional") -> onnx.ModelProto:
    """The explained model. class_input "optional": an overridable initializer defaulting to -1 (top-1),
    which the C, C++, C#, Java and Python APIs can feed by name; "required": a plain input (feed -1 for
    top-1), for clients such as onnxruntime-node that only feed the graph's declared inputs."""
    info.require_task("export", ("classify", "segment"))
    if method not in FORMULAS:
        raise OnnxcamError(f"export supports {', '.join(FORMULAS)}; not '{method}'")
    if class_input not in ("optional", "required"):
        raise OnnxcamError(f"class_input is 'optional' or 'required', not '{class_input}'")
    try:
        graph = augmented_graph(info, layers, gradients=True)
    except UnsupportedOpError as error:
        raise error.with_hint(
            "an explained model needs a backward rule for every op between the layer and the "
            "scores: choose a later --layer ('onnxcam inspect' lists them)"
        ) from None
    b = Builder(graph, info.opset, prefix="onnxcam/map")
    heads = {layer: linear_head_weights(info, layer) for layer in layers} if method == "cam" else None
    heat = heatmap(b, layer_maps(b, graph.tensors(), layers, method, heads), info, layers)
    out = b.named(heat, MAP_OUTPUT, np.float32, ["N", *info.size])
    original = {o.name for o in info.model.graph.output}
    graph.outputs = [o for o in graph.outputs if o.name in original] + [out, graph.tensors()[TARGET_OUTPUT]]
    exported = finish(graph, info, class_default=class_input == "optional")
    _describe(exported, info, layers, method, class_input)
    onnx.checker.check_model(exported)
    return exported


def _describe(model: onnx.ModelProto, info: ModelInfo, layers: list, method: str, class_input: str) -> None:
    """Say what the extra input and outputs are, in the graph and in the metadata."""
    h, w = info.size
    top = "the default class (the one predicted on the most pixels)" if info.task == "segment" else "the top-1 class"
    unfed = f"; unfed = {top}" if class_input == "optional" else ""
    docs = {
        CLASS_INPUT: f"int64 [N], {class_input}: the class to explain per image; -1 = {top}{unfed}",
        MAP_OUTPUT: f"float32 [N, {h}, {w}]: the {method} heatmap in [0, 1] at the input's resolution",
        TARGET_OUTPUT: "int64 [N]: the class each map explains",
    }
    if info.task == "segment":
        oh, ow = info.logits_shape[2:]
        docs[REGION_INPUT] = (
            f"float32 [N, {oh}, {ow}], {class_input}: the pixels of the output whose class scores are summed "
            f"(1 inside, 0 outside); -1 = those predicted as the class{'; unfed = -1 everywhere' if unfed else ''}"
        )
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in docs:
            value.doc_string = docs[value.name]
    meta = {
        "method": method,
        "layers": layers,
        "image_input": info.input_name,
        "layout": info.layout,
        "logits": info.logits_name,
        "task": info.task,
        "inputs_and_outputs": docs,
    }
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
            ort.InferenceSession(
                model.SerializeToString(),
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=["NchwcTransformer"],
            )
            with open(options.optimized_model_filepath, "rb") as saved:
                return saved.read()
        except Exception as exc:  # onnxruntime's own exception types, or no file where a build cannot save
            raise OnnxcamError(f"ONNX Runtime {ort.__version__} could not write the ORT format: {exc}") from None
