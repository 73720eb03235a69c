"""The analytic dScore/dA of `augment` against finite differences of the cut-off head.

One function, `check_layer_gradient`, for any test that wants to prove the gradient
engine on a model: ONNX Runtime only (forward runs of the head), no training framework.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from onnxcam.surgery import CLASS_INPUT, TARGET_OUTPUT, augment, cut_head, grad_name


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# Steps, relative to the layer's mean |activation| per element (see check_layer_gradient).
STEPS = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


def check_layer_gradient(
    info,
    layer: str,
    x: np.ndarray,
    classes,
    steps=STEPS,
    directions: int = 3,
    seed: int = 0,
    float32_head: bool = False,
    points: int = 8,
) -> float:
    """Worst relative error |fd - <G, v>| / |<G, v>| over `directions` unit directions v.

    info: the ModelInfo of the model; layer: a candidate tensor name; x: the model's input
    tensor; classes: one class per row of x, or one for all (negative = top-1, as the augmented
    model picks it). G is the augmented model's `grad_name(layer)` output; the score is
    sum_n logits[n, class_n], evaluated by the cut-off head (fed the image too when a branch that
    skips the layer still needs it).

    Each direction is half along G and half random, so <G, v> is never ~0 (a purely random v
    in a large space is nearly orthogonal to G). The derivative along v is estimated at every
    step in `steps` (eps = step * mean|A| * sqrt(A.size), so an average element moves by
    step * mean|A|), each as a least-squares slope over `points` evenly spaced offsets up to eps
    (half the float32 rounding noise of a single difference), three ways: central
    ((f(t) - f(-t)) / 2), forward (f(t) - f(0)) and backward (f(0) - f(-t)), all in one batched
    run of the head. A direction's error is the best of these estimates: float32 rounding spoils
    the smallest steps; the kinks that a perturbation crosses inside the head (ReLU, Clip,
    HardSwish at +-3, MaxPool near-ties) spoil the larger ones, and a kink a hair's breadth from
    the point spoils central differences at every step but only one of the one-sided ones. A wrong
    rule is wrong for every estimate. (Measured on the zoo: a gradient scaled by 1.005 shows as
    3e-3 to 4e-3.) Limits: errors orthogonal to G (say one channel of G zeroed) hardly move <G, v>;
    and exact ties, such as all-zero MaxPool windows fed by the ReLU output being checked, have no
    derivative to check (differences see the window's max or min of v, the rule its first element).
    float32_head: difference a float32 copy of the head (for float16 models, whose own forward
    runs are too coarse to difference); the float16 G is then compared with the derivative of the
    same function computed in float32.
    Raises UnsupportedOpError (from augment) when a head op has no backward rule.
    """
    classes = np.broadcast_to(np.asarray(classes, np.int64).reshape(-1), (len(x),)).copy()
    aug = session(augment(info, [layer]))
    a, g, target = aug.run([layer, grad_name(layer), TARGET_OUTPUT], {info.input_name: x, CLASS_INPUT: classes})
    head = session(float32_copy(cut_head(info, layer)) if float32_head else cut_head(info, layer))
    needs_image = info.input_name in {i.name for i in head.get_inputs()}
    head_dtype = np.float32 if float32_head else a.dtype
    n = len(x)

    def scores(perturbed):  # [P, N, ...] -> [P]: the score of each perturbed batch
        feed = {layer: perturbed.reshape(-1, *a.shape[1:]).astype(head_dtype)}
        if needs_image:
            feed[info.input_name] = np.tile(x, (len(perturbed),) + (1,) * (x.ndim - 1)).astype(
                np.float32 if float32_head else x.dtype
            )
        logits = head.run([info.logits_name], feed)[0].reshape(len(perturbed), n, -1).astype(np.float64)
        return logits[:, np.arange(n), target].sum(axis=1)

    a, g = a.astype(np.float64), g.astype(np.float64)
    if not np.any(g):
        raise AssertionError(f"the gradient at '{layer}' is all zeros: nothing to check")
    rng = np.random.default_rng(seed)
    eps = np.asarray(steps) * float(np.abs(a).mean()) * np.sqrt(a.size)
    worst = 0.0
    for _ in range(directions):
        r = rng.standard_normal(a.shape)
        v = g / np.linalg.norm(g) + r / np.linalg.norm(r)
        v /= np.linalg.norm(v)
        t = (eps[:, None] * np.arange(1, points + 1) / points).ravel()
        s = scores(np.stack([a] + [a + e * v for e in t] + [a - e * v for e in t]))
        plus, minus = (s[1 : len(t) + 1] - s[0]), (s[0] - s[len(t) + 1 :])  # f(t) - f(0), f(0) - f(-t)
        fd = np.concatenate(
            [_slopes((plus + minus) / 2, t, len(eps)), _slopes(plus, t, len(eps)), _slopes(minus, t, len(eps))]
        )  # central, forward, backward; each per step
        analytic = float((g * v).sum())
        worst = max(worst, float(np.min(np.abs(fd - analytic))) / abs(analytic))
    return worst


def _slopes(d, t, steps):
    """Least-squares slopes through the origin of d over t, one per step (t holds `steps` runs)."""
    d, t = d.reshape(steps, -1), t.reshape(steps, -1)
    return (d * t).sum(axis=1) / (t * t).sum(axis=1)


def float32_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float32: float16 initializers, constants, types and Casts widened."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for t in graph.initializer:
        if t.data_type == TensorProto.FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
    return model
