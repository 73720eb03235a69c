"""CAM maps as ONNX nodes: the gradient methods' formulas of `onnxcam.methods`, written into the graph.

Appended to an augmented graph (activations A and gradients G = dScore/dA as
tensors), they give each layer's map at layer resolution after ReLU, and `heatmap`
finishes them as `postprocess` does in NumPy (normalize, resize to the input,
mean over layers). The explainer's in-graph path returns those maps instead of
A and G (on a GPU the activations and gradients never leave the device), and
`export` writes the same nodes. Every node is valid from opset 7 on.
"""

from __future__ import annotations

import numpy as np

from onnxcam import postprocess
from onnxcam.names import MAP_OUTPUT
from onnxcam.surgery.builder import Builder
from onnxcam.surgery.graph import TARGET_OUTPUT, augmented_graph, finish, grad_name


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
    denominator = b.op(
        "Add",
        b.op("Add", b.op("Mul", g2, b.const(2.0)), b.op("Mul", b.reduce("ReduceSum", a, [2, 3]), g3)),
        b.const(1e-6),
    )
    nonzero = b.op("Greater", b.op("Abs", g), b.const(0.0))  # g != 0 (float Equal needs opset 11)
    alpha = b.where(nonzero, b.op("Div", g2, denominator), b.const(0.0))
    return _channel_weighted(b, b.reduce("ReduceSum", b.op("Mul", b.op("Relu", g), alpha), [2, 3]), a)


def _layercam(b, a, g, ctx):
    return b.op("Mul", b.op("Relu", g), a)


def _hirescam(b, a, g, ctx):
    return b.op("Mul", g, a)


def _cam(b, a, g, ctx):
    weights = b.op("Gather", b.const(ctx["head"]), ctx["target"], axis=0)  # [N, K]
    return _channel_weighted(b, b.op("Reshape", weights, b.const(np.array([0, -1, 1, 1], np.int64))), a)


# method -> its per-channel terms [N, K, h, w] as ONNX nodes (the NumPy twins: onnxcam.methods)
FORMULAS = {
    "cam": _cam,
    "gradcam": _gradcam,
    "gradcam++": _gradcampp,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
    "hirescam": _hirescam,
}


def layer_map_name(layer: str) -> str:
    """Not under a Builder prefix ("onnxcam/map/relu_0" is also a name the Builder may make)."""
    return f"onnxcam/layer_map/{layer}"


def maps_model(info, layers: list, method: str, score: str = "logit", unit=None, head_weights=None):
    """The augmented model with, in place of A and dScore/dA, each layer's map before scaling
    (`layer_map_name`, [N, 1, h, w]) and the finished heatmap (MAP_OUTPUT, [N, H, W], as `heatmap` makes it),
    besides the logits and the target class: no post-processing is left for the caller."""
    graph = augmented_graph(info, layers, gradients=True, score=score, unit=unit)
    tensors = graph.tensors()
    b = Builder(graph, info.opset, prefix="onnxcam/map")
    outputs = [tensors[info.logits_name], tensors[TARGET_OUTPUT]]
    maps = layer_maps(b, tensors, layers, method, head_weights)
    for layer, layer_map in zip(layers, maps):
        outputs.append(b.named(layer_map, layer_map_name(layer), np.float32, ["N", 1, None, None]))
    outputs.append(b.named(heatmap(b, maps, info, layers), MAP_OUTPUT, np.float32, ["N", *info.size]))
    graph.outputs = outputs
    return finish(graph, info)


def layer_maps(b: Builder, tensors: dict, layers: list, method: str, head_weights=None) -> list:
    """Per layer, the method's map at layer resolution after ReLU, [N, 1, h, w], appended to an augmented graph
    (with gradients) whose tensors are `tensors`. head_weights: layer -> the linear head's [C, K] (CAM only)."""
    ctx = {"target": tensors[TARGET_OUTPUT]}
    maps = []
    for layer in layers:
        if method == "cam":
            ctx["head"] = head_weights[layer]
        terms = FORMULAS[method](b, b.fwd(tensors[layer]), tensors[grad_name(layer)], ctx)
        maps.append(b.op("Relu", b.reduce("ReduceSum", terms, [1])))
    return maps


def heatmap(b: Builder, layer_maps: list, info, layers: list):
    """[N, H, W]: each layer's map min-max normalized and resized to the input's size (cv2.resize's bilinear, as
    two MatMuls with constant interpolation matrices), then ReLU, mean over layers, min-max again: what
    `postprocess.normalize_and_resize` and `postprocess.combine` do in NumPy. The maps lose their channel axis
    while small: a Reshape of the finished [N, 1, H, W] would copy it."""
    shapes = [next(lay.shape[2:] for lay in info.layers if lay.name == layer) for layer in layers]
    h, w = info.size
    scaled = []
    for layer_map, (mh, mw) in zip(layer_maps, shapes):
        rows = b.const(postprocess.interpolation(mh, h))  # [H, h]
        cols = b.const(postprocess.interpolation(mw, w).T)  # [w, W]
        flat = b.op("Reshape", layer_map, b.const(np.array([0, mh, mw], np.int64)))
        scaled.append(b.op("MatMul", b.op("MatMul", rows, _normalize(b, flat)), cols))
    combined = scaled[0] if len(scaled) == 1 else b.op("Mean", *scaled)
    return _normalize(b, b.op("Relu", combined))


def _normalize(b, x):
    """Per-image min-max over [h, w], with pytorch-grad-cam's 1e-7."""
    shifted = b.op("Sub", x, b.reduce("ReduceMin", x, [1, 2]))
    return b.op("Div", shifted, b.op("Add", b.reduce("ReduceMax", shifted, [1, 2]), b.const(1e-7)))
