"""The Python API: `Explainer(model).explain(x, method, target)`.

An Explainer inspects the model once, then builds (lazily, once each) the
ONNX Runtime sessions its methods need: the augmented model with gradients,
or the model with only the target layers exposed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcam import postprocess, preprocess
from onnxcam.errors import OnnxcamError, UnsupportedOpError
from onnxcam.finite_diff import channel_derivatives
from onnxcam.head import linear_head_weights
from onnxcam.methods import ELEMENTWISE, METHODS, LayerData
from onnxcam.model import inspect_model, load_model
from onnxcam.runtime import make_session, providers_for
from onnxcam.surgery import CLASS_INPUT, TARGET_OUTPUT, augment, cut_head, grad_name

GRADIENT_MODES = ("auto", "analytic", "fd")


@dataclass
class Explanation:
    maps: np.ndarray  # float32 [N, H_in, W_in] in [0, 1]
    raw: np.ndarray  # float32 [N, h, w]: first layer's map after ReLU, before normalization
    targets: np.ndarray  # int64 [N]: the class each map explains
    scores: np.ndarray  # [N, C] logits
    method: str
    layers: list
    gradients: str | None = None  # "analytic", "finite differences", or None for gradient-free methods
    timings: dict = field(default_factory=dict)  # seconds per stage


class Explainer:
    """Explain an ONNX image classifier.

    model: a path or an onnx.ModelProto. layer: a tensor or node name, a list of
    them, or None for the last conv-like layer. providers: ORT providers, or None
    to follow `device` ("auto" uses CUDA when it really starts, else CPU).
    gradients: "analytic" (backward rules), "fd" (central differences of the head;
    channel-weight methods only) or "auto" (analytic, falling back to fd when a
    head op has no rule; `missing_rule` then says which).
    """

    def __init__(self, model, layer=None, providers=None, *, device="auto", input_name=None, output_name=None,
                 input_size=None, preprocess_preset=None, gradients="auto"):
        proto = load_model(model) if isinstance(model, str) else model
        self.info = inspect_model(proto, input_name=input_name, output_name=output_name, input_size=input_size)
        names = layer if isinstance(layer, (list, tuple)) else [layer]
        self.layers = list(dict.fromkeys(self.info.resolve_layer(n).name for n in names))
        self.providers = list(providers) if providers else providers_for(device)
        self.preset = preprocess_preset or self.info.preprocess or preprocess.DEFAULT_PRESET
        if self.preset not in preprocess.PRESETS:
            raise OnnxcamError(f"unknown preprocessing preset '{self.preset}'; choose one of {', '.join(preprocess.PRESETS)}")
        if gradients not in GRADIENT_MODES:
            raise OnnxcamError(f"unknown gradients mode '{gradients}'; choose one of {', '.join(GRADIENT_MODES)}")
        self.gradients = gradients
        self.missing_rule = None  # set when 'auto' fell back to finite differences: why
        self._sessions = {}
        self._head_weights = {}

    @property
    def provider(self) -> str:
        """The execution provider that runs (after the first session is built)."""
        session = next(iter(self._sessions.values()), None)
        return session.get_providers()[0] if session else self.providers[0]

    def prepare(self, x) -> np.ndarray:
        """The model's input tensor for x: image path(s), RGB uint8 array(s), or a ready float tensor."""
        info = self.info
        if isinstance(x, np.ndarray) and x.dtype != np.uint8:
            tensor = x[None] if x.ndim == 3 else x
            expected = tuple(d for d in info.input_shape[1:])
            if tensor.ndim != 4 or tuple(tensor.shape[1:]) != expected:
                raise OnnxcamError(f"input tensor has shape {list(x.shape)}; the model takes [N, {', '.join(map(str, expected))}]")
            return np.ascontiguousarray(tensor, dtype=info.input_dtype)
        items = x if isinstance(x, (list, tuple)) else [x]
        images = [preprocess.load_image(i) if isinstance(i, str) else _check_rgb(i) for i in items]
        channels = info.input_shape[1 if info.layout == "NCHW" else 3]
        return preprocess.to_tensor(images, info.size, info.layout, channels, self.preset, info.input_dtype)

    def gradient_source(self, method: str) -> str | None:
        """"analytic" or "finite differences" for this method, None if it needs no gradient."""
        m = _method(method)
        if m.gradients is None:
            return None
        return "analytic" if self._analytic(m) else "finite differences"

    def explain(self, x, method: str = "gradcam", target=None) -> Explanation:
        m = _method(method)
        t0 = time.perf_counter()
        tensor = self.prepare(x)
        classes = self._classes(target, len(tensor))
        t1 = time.perf_counter()
        analytic = m.gradients is not None and self._analytic(m)
        outputs = self._run(tensor, classes, analytic)
        t2 = time.perf_counter()
        scores = outputs[self.info.logits_name].reshape(len(tensor), -1)
        _check_finite(scores, "class scores")
        targets = outputs[TARGET_OUTPUT] if analytic else np.where(classes < 0, scores.argmax(axis=1), classes)
        scaled, raw = [], None
        for layer in self.layers:
            a = outputs[layer].astype(np.float32)
            data = LayerData(
                activations=a,
                gradients=outputs[grad_name(layer)].astype(np.float32) if analytic else None,
                class_weights=self._linear_head(layer)[targets] if m.needs_linear_head else None,
                directional=self._finite_differences(layer, a, targets, tensor) if m.gradients and not analytic else None,
            )
            if data.gradients is not None:
                _check_finite(data.gradients, f"gradients at '{layer}'")
            layer_map = np.maximum(m.map(data), 0).astype(np.float32)
            raw = layer_map if raw is None else raw
            scaled.append(postprocess.scale_to(layer_map, self.info.size))
        maps = postprocess.combine(scaled)
        t3 = time.perf_counter()
        return Explanation(
            maps=maps, raw=raw, targets=targets.astype(np.int64), scores=scores, method=method, layers=self.layers,
            gradients=self.gradient_source(method), timings={"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2},
        )

    def _analytic(self, m) -> bool:
        """Whether this method's gradients come from backward rules; else from finite differences."""
        if self.gradients == "fd" or (self.gradients == "auto" and self.missing_rule is not None):
            if m.gradients == ELEMENTWISE:
                why = self.missing_rule or "--gradients fd gives channel sums only"
                raise OnnxcamError(f"method '{m.name}' needs elementwise gradients: {why}")
            return False
        try:
            self._session(True)
        except UnsupportedOpError as error:
            if self.gradients == "analytic" or m.gradients == ELEMENTWISE:
                raise
            self.missing_rule = f"no backward rule for {error.op} (node '{error.node}')"
            return False
        return True

    def _finite_differences(self, layer, activations, targets, tensor):
        key = ("head", layer)
        if key not in self._sessions:
            self._sessions[key] = make_session(cut_head(self.info, layer), self.providers)
        head = self._sessions[key]
        extra = {self.info.input_name: tensor} if self.info.input_name in {i.name for i in head.get_inputs()} else None
        return lambda pattern: channel_derivatives(head, layer, activations, pattern, targets, extra)

    def _classes(self, target, n: int) -> np.ndarray:
        """One class per image; -1 means 'the top-1 class', decided inside the graph."""
        if target is None:
            return np.full(n, -1, np.int64)
        classes = np.asarray(target, np.int64).reshape(-1)
        if len(classes) == 1:
            classes = np.repeat(classes, n)
        if len(classes) != n:
            raise OnnxcamError(f"got {len(classes)} targets for {n} images; give one target or one per image")
        bad = [int(c) for c in classes if not 0 <= c < self.info.num_classes]
        if bad:
            raise OnnxcamError(f"target class {bad[0]} is out of range; the model has {self.info.num_classes} classes")
        return classes

    def _run(self, tensor, classes, gradients: bool) -> dict:
        session = self._session(gradients)
        names = [o.name for o in session.get_outputs()]
        batch = self.info.input_shape[0] or len(tensor)  # a fixed batch size runs in chunks of it
        chunks = []
        for start in range(0, len(tensor), batch):
            feed = {self.info.input_name: tensor[start:start + batch]}
            if gradients:
                feed[CLASS_INPUT] = classes[start:start + batch]
            chunks.append(session.run(names, feed))
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(names)}

    def _session(self, gradients: bool):
        if gradients not in self._sessions:
            model = augment(self.info, self.layers, gradients=gradients)
            self._sessions[gradients] = make_session(model, self.providers)
        return self._sessions[gradients]

    def _linear_head(self, layer: str) -> np.ndarray:
        if layer not in self._head_weights:
            self._head_weights[layer] = linear_head_weights(self.info, layer)
        return self._head_weights[layer]


def _method(name: str):
    if name not in METHODS:
        raise OnnxcamError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def _check_rgb(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise OnnxcamError("an image array must be HxWx3 uint8 RGB (or pass a float tensor in the model's input layout)")
    return image


def _check_finite(array, what: str) -> None:
    if not np.isfinite(array).all():
        raise OnnxcamError(f"the model produced NaN or Inf {what}; check the input and preprocessing")
