"""The Python API: `Explainer(model).explain(x, method, target)`, and the algorithms that call the model.

An Explainer inspects the model once; for each method it makes a `Plan`: which
session runs it (sessions.py builds and runs them) and whether its gradients
come from backward rules or from finite differences of the head. The gradient
CAMs that can be written as ONNX (surgery/maps.py) are computed inside the
graph, so activations and gradients never leave ONNX Runtime (on CUDA: the
GPU) and only the small layer maps come back. Score-CAM's masked inputs,
Ablation-CAM's ablated heads, finite differences and noisy samples are loops
of batched runs, reported to `progress`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from onnxcam import cache, detection, finite_diff, heads, postprocess, preprocess, segmentation
from onnxcam.errors import ModelError, OnnxcamError
from onnxcam.linear_head import linear_head_weights
from onnxcam.methods import ELEMENTWISE, METHODS, SAMPLES, AttentionData, LayerData, method_named, projection
from onnxcam.model import inspect_model, load_model, read_labels
from onnxcam.names import DEFAULT_PRESET, DEFAULT_RESIZE, GRADIENT_MODES, MAP_OUTPUT, RESIZES, SEED_INPUT, check_choice
from onnxcam.runtime import providers_for
from onnxcam.sessions import Sessions, SessionSpec
from onnxcam.surgery import SCORES, TARGET_OUTPUT, grad_name
from onnxcam.surgery.maps import FORMULAS, layer_map_name

__all__ = ["Explainer", "Explanation", "method_named"]

# Test-time augmentation of pytorch-grad-cam's aug_smooth: horizontal flip x input scaled by these.
AUG_FACTORS = (0.9, 1.0, 1.1)
BATCH_ROWS = 32  # rows per run for Score-CAM's masked inputs and Ablation-CAM's ablated heads
# A normalized map whose maximum stays below this had a spread under the 1e-7 normalization floor: flat.
FLAT = 0.5
# Finite differences that would take longer than this per image are refused in "auto" mode (not silently run).
FD_LIMIT_S = 60.0
# How to go on when a backward rule is missing, in the words of the commands that explain (run, eval, sanity).
RULE_HINT = (
    "pick a later layer ('onnxcam inspect' lists them), or take the channel weights from finite "
    "differences (--gradients fd, gradients='fd') with a method such as gradcam"
)


@dataclass
class Explanation:
    maps: np.ndarray  # float32 [N, H_in, W_in] in [0, 1]
    raw: np.ndarray | None  # float32 [N, h, w]: first layer's map after ReLU, before normalization
    targets: np.ndarray  # int64 [N]: the class each map explains
    scores: np.ndarray  # [N, C] logits (segmentation: the fraction of pixels predicted as each class)
    method: str
    layers: list
    gradients: str | None = None  # "analytic", "finite differences", or None for gradient-free methods
    saliency: np.ndarray | None = None  # float32 [N, C, H_in, W_in]: input-level methods' dScore/dx (or product)
    timings: dict = field(default_factory=dict)  # seconds per stage
    # bool [N]: the map has no spread (all-zero gradients, or no positive evidence after ReLU): its range
    # fell below the 1e-7 normalization floor, so `maps` holds (finite) zeros rather than a picture
    flat: np.ndarray | None = None
    # detection: one map per explained target, not per image. images: int [M] the image of each map;
    # detections: per map, the onnxcam.detection.Detection(s) it explains (boxes in model-input pixels)
    images: np.ndarray | None = None
    detections: list | None = None
    region: np.ndarray | None = None  # segmentation: bool [N, h, w] the pixels of the output explained

    def item(self, i: int) -> Explanation:
        """The explanation of image i alone (arrays keep their batch axis: of length 1, or for a detector, the
        number of that image's maps)."""
        rows = slice(i, i + 1) if self.images is None else np.flatnonzero(self.images == i)

        def one(a):
            return None if a is None else a[rows]

        return replace(
            self,
            images=one(self.images),
            detections=None
            if self.detections is None
            else [self.detections[r] for r in np.arange(len(self.maps))[rows]],
            maps=one(self.maps),
            raw=one(self.raw),
            targets=one(self.targets),
            scores=one(self.scores),
            saliency=one(self.saliency),
            flat=one(self.flat),
            region=one(self.region),
        )

    def _repr_html_(self) -> str:
        """Jupyter shows the maps and each image's top-5 classes (onnxcam.report.explanation_html)."""
        from onnxcam.report import explanation_html

        return explanation_html(self)


@dataclass(frozen=True)
class Plan:
    """How one method runs on this model: the session that runs it, and where its gradients come from."""

    spec: SessionSpec
    analytic: bool  # gradients from backward rules (False: finite differences, or no gradient needed)
    in_graph: bool  # the maps come out of the graph (a MAPS session)


class Explainer:
    """Explain an ONNX image classifier.

    model: a path or an onnx.ModelProto. layer: a tensor or node name, a list of
    them, or None for the last conv-like layer. providers: ORT providers, or None
    to follow `device` ("auto" uses CUDA when it really starts, else CPU).
    gradients: "analytic" (backward rules), "fd" (central differences of the head;
    channel-weight methods only) or "auto" (analytic, falling back to fd when a
    head op has no rule; `missing_rule` then says which). maps_in_graph: compute the maps of the gradient
    methods in surgery.maps.FORMULAS inside the ONNX graph (the default), or in NumPy from A and dScore/dA.
    labels: class names (a list, or a file: text one a line, a JSON list, a JSON object {index: name}) in place
    of those in the model's metadata. resize: how images are fit to the input (names.RESIZES: "stretch" or
    "letterbox"), None for what the model's metadata says (ultralytics detectors: letterbox), else stretch.
    task: one of names.TASKS, None to choose it from the output's shape (a detector's maps explain its
    detections: `explain`'s conf, iou, max_det and detection_target, onnxcam.detection; a segmentation model's
    maps explain a class's scores summed over a region: onnxcam.segmentation).
    """

    def __init__(
        self,
        model,
        layer=None,
        providers=None,
        *,
        device="auto",
        input_name=None,
        output_name=None,
        input_size=None,
        preprocess_preset=None,
        resize=None,
        gradients="auto",
        maps_in_graph=True,
        labels=None,
        task=None,
    ):
        proto = load_model(model) if isinstance(model, str) else model
        self.info = inspect_model(
            proto, input_name=input_name, output_name=output_name, input_size=input_size, task=task
        )
        names = (
            layer if isinstance(layer, (list, tuple)) else [layer] if layer is not None else self.info.default_layers
        )
        self.layers = list(dict.fromkeys(self.info.resolve_layer(n).name for n in names))
        self.providers = list(providers) if providers else providers_for(device)
        self.preset = preprocess_preset or self.info.preprocess or DEFAULT_PRESET
        # where the preset came from: "option", "model" (its metadata) or "assumed" (nothing recorded)
        self.preset_source = "option" if preprocess_preset else "model" if self.info.preprocess else "assumed"
        check_choice("preprocessing preset", self.preset, preprocess.PRESETS)
        self.resize = resize or self.info.resize or DEFAULT_RESIZE
        check_choice("resize", self.resize, RESIZES)
        check_choice("gradients mode", gradients, GRADIENT_MODES)
        self.gradients = gradients
        self.maps_in_graph = maps_in_graph
        self.head = self.info.head
        self.num_classes = heads.class_count(self.head, self.info.num_classes)  # classes that can be explained
        if labels is not None:  # a file (text, JSON list or object) or a list: one name per class
            self.info.labels = (
                list(labels) if isinstance(labels, (list, tuple)) else read_labels(labels, self.num_classes)
            )
            self.info.labels_source = "option"
        self.missing_rule = None  # set when 'auto' fell back to finite differences: why
        self.fd_seconds = None  # estimated seconds per image of the finite differences, once they are planned
        # progress(what, done, total): called by the loops of many runs (Score-CAM's masked inputs,
        # Ablation-CAM's ablated heads, finite differences, noisy samples), e.g. to drive a progress bar.
        self.progress = None
        # Sessions are cached on disk by the loaded model's content (cache.py); models given in memory are not.
        cache_key = None
        if isinstance(model, str) and cache.folder() is not None:
            cache_key = {
                "model": cache.model_digest(proto),
                "layers": self.layers,
                "input": input_name,
                "output": output_name,
                "size": list(self.info.size),
            }
            if self.info.task != "classify":  # the graph's default class depends on the labels' background
                cache_key["task"] = [self.info.task, segmentation.has_background(self.info.labels, self.head)]
        self.sessions = Sessions(self.info, self.layers, self.providers, cache_key)
        self._head_weights = {}
        self._quantization_step = None  # the smallest useful finite-difference step (QDQ models), once known

    @property
    def provider(self) -> str:
        """The execution provider that runs (after the first session is built)."""
        return self.sessions.provider

    def prepare(self, x) -> np.ndarray:
        """The model's input tensor for x: image path(s), RGB uint8 array(s), or a ready float tensor."""
        info = self.info
        if isinstance(x, np.ndarray) and x.dtype != np.uint8:
            tensor = x[None] if x.ndim == 3 else x
            expected = tuple(d for d in info.input_shape[1:])
            if tensor.ndim != 4 or tuple(tensor.shape[1:]) != expected:
                raise OnnxcamError(
                    f"input tensor has shape {list(x.shape)}; the model takes [N, {', '.join(map(str, expected))}]"
                )
            return np.ascontiguousarray(tensor, dtype=info.input_dtype)
        items = x if isinstance(x, (list, tuple)) else [x]
        images = [preprocess.load_image(i) if isinstance(i, str) else _check_rgb(i) for i in items]
        channels = info.input_shape[1 if info.layout == "NCHW" else 3]
        return preprocess.to_tensor(
            images, info.size, info.layout, channels, self.preset, info.input_dtype, self.resize
        )

    def fit(self, image_size: tuple) -> preprocess.Fit:
        """Where an image of image_size (h, w) sits in the model's input (`prepare` fits it so): it maps boxes and
        maps in input pixels back onto the image."""
        return preprocess.fit(self.resize, self.info.size, image_size)

    def logits(self, x) -> np.ndarray:
        """[M, C] logits of the plain model for x (anything `prepare` takes), for any number of rows M."""
        tensor = self.prepare(x)
        return self.sessions.run_model(SessionSpec.forward(), tensor)[self.info.logits_name].reshape(len(tensor), -1)

    def gradient_source(self, method: str) -> str | None:
        """ "analytic" or "finite differences" for this method, None if it needs no gradient."""
        m = method_named(method)
        if m.gradients is None and not m.input_gradient:
            return None
        return "analytic" if self._plan(m).analytic else "finite differences"

    def explain(
        self,
        x,
        method: str = "gradcam",
        target=None,
        *,
        score: str = "logit",
        unit=None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        samples: int = 25,
        noise: float = 0.15,
        seed: int = 0,
        scorecam_channels: int | None = None,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        detection_target: str | None = None,
        region=None,
    ) -> Explanation:
        """Explain x for `target` (class index, one per image, or None for the top-1 class; for segmentation,
        the default class of onnxcam.segmentation).

        score: "logit" or "probability" of the class. unit: (tensor, channel[, i, j]) explains that
        feature map or neuron instead of a class. aug_smooth: average over flips and input scalings;
        eigen_smooth: first principal component of the weighted activations instead of their sum.
        samples, noise, seed: noisy copies for smoothgrad and smoothgradcam++ (noise as a fraction of
        the input's range, as in SmoothGrad). scorecam_channels: Score-CAM scores only this many channels,
        those of largest activation mass (an approximation; None: all, the method as published).
        Detectors: one map per detection above `conf` (default 0.25) after NMS at `iou` (0.45), at most `max_det`
        (300) an image, of class `target` only when given; detection_target (onnxcam.detection.TARGETS) says what
        each map explains (default: the detection's score).
        region (segmentation): a mask picture's path or an array [h, w] / [N, h, w], nonzero = inside, resized to
        the output's resolution; the class's scores are summed there (None: where the model predicts the class).
        """
        m = method_named(method)
        detect = dict(conf=conf, iou=iou, max_det=max_det, detection_target=detection_target)
        if self.info.task == "detect":
            given = dict(aug_smooth=aug_smooth, unit=unit, score=score != "logit", region=region is not None)
            return self._explain_detections(x, m, target, detect, given, eigen_smooth, scorecam_channels)
        if any(v is not None for v in detect.values()):
            raise OnnxcamError(
                f"conf, iou, max_det and detection_target apply to detectors; this is a {self.info.task} model"
            )
        check_choice("score", score, SCORES)
        segment = self.info.task == "segment"
        if segment and (score != "logit" or aug_smooth or m.attention):
            what = "--score probability" if score != "logit" else "--aug-smooth" if aug_smooth else m.name
            raise OnnxcamError(
                f"{what} does not apply to segmentation; its maps explain a class's scores summed over a region"
            )
        if region is not None and not segment:
            raise OnnxcamError(f"a region applies to segmentation models; this one is a {self.info.task} model")
        if region is not None and self.resize != "stretch":
            raise OnnxcamError("a region mask is fit to the output by a plain resize; use it with --resize stretch")
        if aug_smooth and m.map is None:
            raise OnnxcamError(f"--aug-smooth applies to CAM methods, not to {m.name}")
        t0 = time.perf_counter()
        tensor = self.prepare(x)
        classes = self._classes(target, len(tensor))
        unit = tuple(unit) if unit else None
        plan = self._plan(m, score, unit, eigen_smooth)
        if unit and not plan.analytic:
            raise OnnxcamError(f"explaining a unit needs a gradient method with backward rules, not {m.name}")
        if segment and not plan.analytic and (m.gradients is not None or m.input_gradient):
            raise OnnxcamError(f"method '{m.name}' on a segmentation model needs backward rules: {self.missing_rule}")
        if scorecam_channels is not None and scorecam_channels < 1:
            raise OnnxcamError(f"scorecam_channels must be at least 1, not {scorecam_channels}")
        options = dict(
            region=None if region is None else self._region(region, len(tensor)),
            score=score,
            unit=unit,
            eigen_smooth=eigen_smooth,
            samples=samples,
            noise=noise,
            seed=seed,
            channels=scorecam_channels,
        )
        t1 = time.perf_counter()
        if aug_smooth:
            res = self._augmented(tensor, classes, m, plan, options)
        else:
            res = self._explain(tensor, classes, m, plan, **options)
        res.timings = {"preprocess": t1 - t0, "explain": time.perf_counter() - t1}
        _check_finite(res.maps, "map")
        res.flat = _flat(res.maps)
        return res

    def units(self, x, target=None, count: int = 8):
        """Class-specific units (CAM paper, section 5): the `count` channels of the first layer that
        contribute most to each image's class score. Returns (targets [N], per image a list of
        (channel, contribution, activation map [h, w])).

        contribution_k = w_k^c * mean_ij A_kij, with w the linear head's class weights where the head
        is GAP -> linear (the contributions then add up to the logit minus its bias), else Grad-CAM's.
        """
        self.info.require_task("units", ("classify", "segment"))
        tensor = self.prepare(x)
        classes = self._classes(target, len(tensor))
        layer = self.layers[0]
        gradcam = METHODS["gradcam"]
        spec = SessionSpec.gradients(self._analytic(gradcam, SessionSpec.gradients(True)))
        outputs = self.sessions.run_model(spec, tensor, classes)
        logits = outputs[self.info.logits_name].reshape(len(tensor), -1)
        targets = self._targets(spec, outputs, classes, logits)
        a = outputs[layer].astype(np.float32)
        try:
            weights = self._linear_head(layer)[targets]
        except ModelError:
            g = outputs.get(grad_name(layer))
            directional = None if g is not None else self._finite_differences(layer, a, targets, tensor, "logit")
            weights = LayerData(activations=a, gradients=g, directional=directional).grad_dot(np.ones_like(a))
            weights = weights / (a.shape[2] * a.shape[3])
        contribution = weights * a.mean(axis=(2, 3))
        ranked = [
            [(int(k), float(contribution[n, k]), a[n, k]) for k in np.argsort(-contribution[n])[:count]]
            for n in range(len(tensor))
        ]
        return targets.astype(np.int64), ranked

    # -- planning ------------------------------------------------------------------------------------------

    def _plan(self, m, score="logit", unit=None, eigen_smooth=False) -> Plan:
        """The session that runs m, and whether its gradients come from rules; decided here only."""
        if self.info.task == "detect":  # its seeds come from the decoded detections (onnxcam.detection), fed
            spec = SessionSpec.seeded()
            return Plan(spec, m.gradients is not None and self.sessions.buildable(spec) is None, False)
        if m.attention:
            if not self.info.attention:
                raise OnnxcamError(
                    f"method '{m.name}' needs a vision transformer's attention (Softmax over its "
                    "tokens); this model has none"
                )
            spec = SessionSpec.attention(m.gradients is not None, score, unit)
            return Plan(spec, m.gradients is not None and self._analytic(m, spec), False)
        in_graph = (
            self.maps_in_graph
            and m.name in FORMULAS
            and m.gradients is not None
            and not eigen_smooth
            and self.gradients != "fd"
        )
        if in_graph:
            spec = SessionSpec.maps(m.name, score, unit)
            if self._analytic(m, spec):
                return Plan(spec, True, True)
        wants = m.gradients is not None or m.input_gradient is not None
        analytic = wants and self._analytic(
            m, SessionSpec.gradients(m.gradients is not None, m.input_gradient, score, unit)
        )
        layer_gradients = analytic and m.map is not None and m.gradients is not None
        return Plan(SessionSpec.gradients(layer_gradients, m.input_gradient, score, unit), analytic, False)

    def _analytic(self, m, spec: SessionSpec) -> bool:
        """Whether m's gradients come from backward rules in `spec`'s graph; else from finite differences."""
        needs_rules = m.gradients in (ELEMENTWISE, SAMPLES) or m.input_gradient is not None
        if self.gradients == "fd" or (self.gradients == "auto" and self.missing_rule is not None):
            if needs_rules:
                why = self.missing_rule or "--gradients fd gives channel sums only"
                raise OnnxcamError(f"method '{m.name}' needs gradients from backward rules: {why}")
            if self.fd_seconds is None:
                self._estimate_finite_differences()
            return False
        error = self.sessions.buildable(spec)
        if error is None:
            return True
        if self.gradients == "analytic" or needs_rules:
            raise error.with_hint(RULE_HINT)
        self.missing_rule = error.reason
        self._estimate_finite_differences()
        return False

    def _estimate_finite_differences(self) -> None:
        """Time one run of each layer's head to tell what the finite differences will cost (`fd_seconds`), and
        refuse in "auto" mode when they would take more than FD_LIMIT_S an image: never minutes in silence."""
        info, seconds = self.info, 0.0
        for layer in self.layers:
            spec, shape = SessionSpec.head(layer), next(lay.shape for lay in info.layers if lay.name == layer)
            rows = min(finite_diff.ROWS, 2 * shape[1])  # a central difference per channel, ROWS rows a run
            feeds = {layer: np.zeros((rows, *shape[1:]), self.sessions.input_dtype(spec, layer))}
            if self.sessions.takes(spec, info.input_name):
                feeds[info.input_name] = np.zeros((rows, *info.input_shape[1:]), info.input_dtype)
            t0 = time.perf_counter()
            self.sessions.run(spec, feeds, [info.logits_name])
            seconds += (time.perf_counter() - t0) * -(-2 * shape[1] // rows)
        self.fd_seconds = seconds
        if self.gradients == "auto" and seconds > FD_LIMIT_S:
            raise OnnxcamError(
                f"{self.missing_rule}, and finite differences instead would take about {seconds / 60:.0f} min an "
                f"image; {RULE_HINT.split(', or ')[0]}, or ask for them with --gradients fd (gradients='fd')"
            )

    # -- explaining ----------------------------------------------------------------------------------------

    def _augmented(self, tensor, classes, m, plan, options) -> Explanation:
        """pytorch-grad-cam's aug_smooth: the mean of the maps of flipped and scaled inputs, flipped back."""
        width_axis = 3 if self.info.layout == "NCHW" else 2
        results = []
        for flip in (False, True):
            for factor in AUG_FACTORS:
                x = np.flip(tensor, axis=width_axis) if flip else tensor
                res = self._explain(np.ascontiguousarray(x * factor, dtype=tensor.dtype), classes, m, plan, **options)
                results.append((res, np.flip(res.maps, axis=2) if flip else res.maps))
        first = next(r for r, _ in results)
        first.maps = np.mean(np.float32([maps for _, maps in results]), axis=0)
        return first

    def _explain(
        self, tensor, classes, m, plan, *, region, score, unit, eigen_smooth, samples, noise, seed, channels
    ) -> Explanation:
        if plan.in_graph:
            res = self._explain_in_graph(tensor, classes, m, plan.spec, region)
            if res is not None:  # None: a map with NaN or Inf, which the NumPy path below traces to A or dScore/dA
                return res
            plan = Plan(SessionSpec.gradients(m.map is not None, m.input_gradient, score, unit), True, False)
        spec = plan.spec
        outputs = self.sessions.run_model(spec, tensor, classes, region)
        scores = outputs[self.info.logits_name].reshape(len(tensor), -1).astype(np.float32)
        _check_finite(scores, "class scores")
        targets = self._targets(spec, outputs, classes, scores)
        inside = self._inside(scores, targets, region)
        if m.attention:
            return self._explain_attention(m, plan, outputs, scores, targets)
        noisy = self._noisy_runs(spec, tensor, targets, samples, noise, seed) if m.gradients == SAMPLES else []

        maps = raw = None
        if m.map is not None:
            scaled = []
            for layer in self.layers:
                layer_map = self._layer_map(
                    m, layer, outputs, noisy, tensor, targets, scores, score, eigen_smooth, channels, inside
                )
                raw = layer_map if raw is None else raw
                scaled.append(postprocess.normalize_and_resize(layer_map, self.info.size))
            maps = postprocess.combine(scaled)
        saliency = None
        if m.input_gradient:
            runs = noisy or [outputs]
            saliency = np.mean([self._nchw(r[grad_name(self.info.input_name)]) for r in runs], axis=0)
            _check_finite(saliency, "input gradients")
            if maps is not None:  # guided Grad-CAM: the guided gradient inside the class map
                saliency = saliency * maps[:, None]
            else:
                maps = postprocess.saliency_map(saliency)
        return Explanation(
            maps=maps,
            raw=raw,
            targets=targets.astype(np.int64),
            scores=self._shown_scores(scores),
            method=m.name,
            layers=self.layers,
            gradients=_source(m, plan.analytic),
            saliency=None if saliency is None else np.float32(saliency),
            region=inside,
        )

    def _explain_detections(self, x, m, target, detect, given, eigen_smooth, channels) -> Explanation:
        """One map per detection target (onnxcam.detection): decoded from a forward run; the gradient methods
        take dScore/dA from one run whose rows are the targets' images, each with its own seed dScore/doutput."""
        t0 = time.perf_counter()
        unsupported = [k for k, v in given.items() if v]
        if unsupported or m.attention or m.needs_linear_head or m.gradients == SAMPLES or m.input_gradient:
            what = f"--{unsupported[0].replace('_', '-')}" if unsupported else f"method '{m.name}'"
            raise OnnxcamError(f"{what} does not apply to detectors; their maps explain one detection's score")
        kind = detection.layout(self.info.logits_shape)
        conf, iou = (
            (0.25 if detect["conf"] is None else detect["conf"]),
            (0.45 if detect["iou"] is None else detect["iou"]),
        )
        max_det = detection.MAX_DETECTIONS if detect["max_det"] is None else detect["max_det"]
        cls = None if target is None else int(self._classes(target, 1)[0])
        tensor = self.prepare(x)
        t1 = time.perf_counter()
        outputs = self.sessions.run_model(SessionSpec.forward(), tensor)
        raw = outputs[self.info.logits_name].astype(np.float32)
        _check_finite(raw, "detection outputs")
        found = detection.decode(raw, kind, conf, iou, max_det)
        chosen = detection.targets(found, detect["detection_target"] or "score", cls)
        rows = np.int64([t.image for t in chosen])
        if m.gradients is not None:
            spec = SessionSpec.seeded()
            why = "--gradients fd" if self.gradients == "fd" else self.sessions.buildable(spec)
            if why is not None:
                raise OnnxcamError(f"method '{m.name}' on a detector needs gradients from backward rules: {why}")
            if chosen:
                seeds = np.stack([detection.seed(raw[t.image], t, kind) for t in chosen])
                outputs = self.sessions.run(spec, {self.info.input_name: tensor[rows], SEED_INPUT: seeds})
        else:
            outputs = {layer: outputs[layer][rows] for layer in self.layers}

        def score_rows(z, i):
            return detection.score(z, chosen[i], kind)

        maps, raw_map = np.zeros((0, *self.info.size), np.float32), np.zeros((0, 1, 1), np.float32)
        if chosen:
            scaled = []
            for layer in self.layers:
                a = outputs[layer].astype(np.float32)
                grads = outputs.get(grad_name(layer))
                data = LayerData(
                    activations=a,
                    gradients=None if grads is None else grads.astype(np.float32),
                    masked_scores=lambda acts: self._masked_scores(tensor[rows], acts, score_rows),
                    ablated_scores=lambda layer=layer, a=a: self._ablated_scores(layer, a, tensor[rows], score_rows),
                    scores=np.float32([score_rows(raw[t.image : t.image + 1], i)[0] for i, t in enumerate(chosen)]),
                    channels=channels,
                )
                layer_map = _layer_terms(m, data, eigen_smooth)
                raw_map = layer_map if not scaled else raw_map
                scaled.append(postprocess.normalize_and_resize(layer_map, self.info.size))
            maps = postprocess.combine(scaled)
        _check_finite(maps, "map")
        by_anchor = {(d.image, d.anchor): d for d in found}
        scores = np.float32([detection.class_scores(raw[t.image], t.anchors[0], kind) for t in chosen])
        return Explanation(
            maps=maps,
            raw=raw_map,
            targets=np.int64([t.cls for t in chosen]),
            scores=scores.reshape(len(chosen), self.num_classes),
            method=m.name,
            layers=self.layers,
            gradients=_source(m, True),
            timings={"preprocess": t1 - t0, "explain": time.perf_counter() - t1},
            flat=_flat(maps),
            images=rows,
            detections=[[by_anchor[(t.image, a)] for a in t.anchors] for t in chosen],
        )

    def _explain_attention(self, m, plan, outputs, scores, targets) -> Explanation:
        """Rollout methods: one map on the patch grid from every block's attention (and its gradients)."""
        names, grid = self.info.attention, self.info.auto_layer.tokens
        data = AttentionData(
            [outputs[a] for a in names],
            [outputs[grad_name(a)] for a in names] if plan.spec.layer_gradients else None,
            grid.prefix,
            grid.height,
            grid.width,
        )
        raw = np.maximum(m.map(data), 0)
        maps = postprocess.combine([postprocess.normalize_and_resize(raw, self.info.size)])
        return Explanation(
            maps=maps,
            raw=raw,
            targets=targets.astype(np.int64),
            scores=scores,
            method=m.name,
            layers=list(names),
            gradients=_source(m, plan.analytic),
        )

    def _explain_in_graph(self, tensor, classes, m, spec, region) -> Explanation | None:
        """The maps of one run of the in-graph map model: only logits, targets, the [N, h, w] layer maps and the
        finished [N, H, W] heatmaps come back."""
        outputs = self.sessions.run_model(spec, tensor, classes, region)
        scores = outputs[self.info.logits_name].reshape(len(tensor), -1).astype(np.float32)
        _check_finite(scores, "class scores")
        raw = [outputs[layer_map_name(layer)][:, 0] for layer in self.layers]
        if not all(np.isfinite(r).all() for r in raw):
            return None
        targets = outputs[TARGET_OUTPUT].astype(np.int64)
        return Explanation(
            maps=outputs[MAP_OUTPUT],
            raw=raw[0],
            targets=targets,
            scores=self._shown_scores(scores),
            method=m.name,
            layers=self.layers,
            gradients="analytic",
            region=self._inside(scores, targets, region),
        )

    def _layer_map(self, m, layer, outputs, noisy, tensor, targets, scores, score, eigen_smooth, channels, inside):
        """One layer's map at layer resolution, after ReLU."""

        def score_rows(logits, i):
            n = len(logits)
            return self._score_of(logits.reshape(n, -1), np.full(n, targets[i]), score, _rows(inside, i, n))

        a = outputs[layer].astype(np.float32)
        _check_finite(a, f"activations at '{layer}'")
        grads = outputs.get(grad_name(layer))
        if grads is not None:
            _check_finite(grads, f"gradients at '{layer}'")
        data = LayerData(
            activations=a,
            gradients=None if grads is None else grads.astype(np.float32),
            gradient_samples=[r[grad_name(layer)].astype(np.float32) for r in noisy] or None,
            class_weights=self._linear_head(layer)[targets] if m.needs_linear_head else None,
            directional=self._finite_differences(layer, a, targets, tensor, score) if grads is None else None,
            masked_scores=lambda acts: self._masked_scores(tensor, acts, score_rows),
            ablated_scores=lambda: self._ablated_scores(layer, a, tensor, score_rows),
            scores=self._score_of(scores, targets, score, inside),
            channels=channels,
        )
        return _layer_terms(m, data, eigen_smooth)

    # -- the loops of many runs ----------------------------------------------------------------------------

    def _noisy_runs(self, spec, tensor, targets, samples, noise, seed) -> list:
        """Outputs for `samples` copies of the input with Gaussian noise of std noise * (max - min)."""
        if samples < 1:
            raise OnnxcamError("--samples must be at least 1")
        rng = np.random.default_rng(seed)
        spread = noise * (tensor.max(axis=(1, 2, 3), keepdims=True) - tensor.min(axis=(1, 2, 3), keepdims=True))
        runs = []
        for i in range(samples):
            noisy = (tensor + rng.standard_normal(tensor.shape) * spread).astype(tensor.dtype)
            runs.append(self.sessions.run_model(spec, noisy, targets))
            self._report("noisy samples", i + 1, samples)
        return runs

    def _finite_differences(self, layer, activations, targets, tensor, score):
        run_head, extra = self._head(layer, tensor)
        if self._quantization_step is None:
            self._quantization_step = 2 * finite_diff.quantization_step(self.info.model)
        floor = self._quantization_step
        return lambda pattern: finite_diff.channel_derivatives(
            run_head,
            layer,
            activations,
            pattern,
            targets,
            extra,
            score_of=lambda z, c: self._score_of(z, c, score),
            min_step=floor,
            progress=lambda done, total: self._report("finite differences", done, total),
        )

    def _masked_scores(self, tensor, activations, score_rows) -> np.ndarray:
        """Score-CAM: [N, K] scores of the model on x * (min-max normalized, upsampled A_k); score_rows(outputs,
        i) scores model outputs for row i's target. Masks are made BATCH_ROWS channels at a time: all K at the
        input's size would take K * H * W floats per image."""
        n, k = activations.shape[:2]
        out = np.zeros((n, k), np.float32)
        forward = SessionSpec.forward()
        for i in range(n):
            for start in range(0, k, BATCH_ROWS):
                m = postprocess.upsample_align_corners(
                    activations[i : i + 1, start : start + BATCH_ROWS], self.info.size
                )[0]
                lo = m.min(axis=(1, 2), keepdims=True)
                m = (m - lo) / (m.max(axis=(1, 2), keepdims=True) - lo + 1e-8)
                rows = tensor[i : i + 1] * (m[:, None] if self.info.layout == "NCHW" else m[:, :, :, None])
                logits = self.sessions.run_model(forward, rows.astype(tensor.dtype))[self.info.logits_name]
                out[i, start : start + len(m)] = score_rows(logits, i)
                self._report("masked inputs", i * k + start + len(m), n * k)
        return out

    def _ablated_scores(self, layer, activations, tensor, score_rows) -> np.ndarray:
        """Ablation-CAM: [N, K] head scores with channel k set to 0 (or to min(A) - 1e7 where min(A) != 0)."""
        run_head, extra = self._head(layer, tensor)
        dtype = self.sessions.input_dtype(SessionSpec.head(layer), layer)
        n, k = activations.shape[:2]
        out = np.zeros((n, k), np.float32)
        for i in range(n):
            a = activations[i]
            value = 0.0 if a.min() == 0 else a.min() - 1e7
            for start in range(0, k, BATCH_ROWS):
                channels = np.arange(start, min(start + BATCH_ROWS, k))
                rows = np.repeat(a[None], len(channels), axis=0)
                rows[np.arange(len(channels)), channels] = value
                feeds = {layer: rows.astype(dtype)}
                feeds.update(
                    {name: np.repeat(v[i : i + 1], len(channels), axis=0) for name, v in (extra or {}).items()}
                )
                out[i, channels] = score_rows(run_head(feeds), i)
                self._report("ablated channels", i * k + channels[-1] + 1, n * k)
        return out

    def _head(self, layer, tensor):
        """(feeds -> logits of the head cut off at `layer`, the image feed if the head still needs it)."""
        spec = SessionSpec.head(layer)
        logits = self.info.logits_name

        def run_head(feeds):
            return self.sessions.run(spec, feeds, [logits])[logits]

        return run_head, ({self.info.input_name: tensor} if self.sessions.takes(spec, self.info.input_name) else None)

    def _report(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)

    # -- small helpers -------------------------------------------------------------------------------------

    def _targets(self, spec, outputs, classes, scores) -> np.ndarray:
        """The class each row explains: chosen in the graph where the session takes a class, else here."""
        if spec.takes_class:
            return outputs[TARGET_OUTPUT]
        if self.info.task == "segment":
            background = segmentation.has_background(self.info.labels, self.head)
            top = segmentation.default_class(self._segment_logits(scores), self.head, background)
        else:
            top = heads.top1(scores, self.head)
        return np.where(classes < 0, top, classes)

    def _score_of(self, logits, classes, score, inside=None) -> np.ndarray:
        """[rows] each row's explained score (segmentation: summed over `inside`, bool [rows, h, w])."""
        if self.info.task == "segment":
            return segmentation.region_score(self._segment_logits(logits), self.head, classes, inside)
        return heads.class_score(logits, classes, score, self.head)

    def _segment_logits(self, scores) -> np.ndarray:
        return scores.reshape(len(scores), *self.info.logits_shape[1:])

    def _inside(self, scores, targets, region) -> np.ndarray | None:
        """Segmentation: bool [N, h, w] the region each image's class is explained over (None for other tasks)."""
        if self.info.task != "segment":
            return None
        return segmentation.regions(self._segment_logits(scores), self.head, targets, region)

    def _shown_scores(self, scores) -> np.ndarray:
        """What an Explanation reports as scores: the logits, or a segmentation's pixel fraction per class."""
        if self.info.task == "segment":
            return segmentation.pixel_fractions(self._segment_logits(scores), self.head)
        return scores

    def _region(self, region, n: int) -> np.ndarray:
        """float32 [N, h, w] at the output's resolution: one mask for every image, or one each."""
        masks = segmentation.read_region(region, self.info.logits_shape[2:])
        if len(masks) not in (1, n):
            raise OnnxcamError(f"got {len(masks)} region masks for {n} images; give one mask or one per image")
        return np.ascontiguousarray(np.broadcast_to(masks, (n, *masks.shape[1:])))

    def _nchw(self, x):
        return x if self.info.layout == "NCHW" else x.transpose(0, 3, 1, 2)

    def _classes(self, target, n: int) -> np.ndarray:
        """One class per image; -1 means 'the top-1 class', decided inside the graph."""
        if target is None:
            return np.full(n, -1, np.int64)
        classes = np.asarray(target, np.int64).reshape(-1)
        if len(classes) == 1:
            classes = np.repeat(classes, n)
        if len(classes) != n:
            raise OnnxcamError(f"got {len(classes)} targets for {n} images; give one target or one per image")
        bad = [int(c) for c in classes if not 0 <= c < self.num_classes]
        if bad:
            raise OnnxcamError(f"target class {bad[0]} is out of range; the model has {self.num_classes} classes")
        return classes

    def _linear_head(self, layer: str) -> np.ndarray:
        if layer not in self._head_weights:
            self._head_weights[layer] = linear_head_weights(self.info, layer)
        return self._head_weights[layer]


def _layer_terms(m, data: LayerData, eigen_smooth: bool) -> np.ndarray:
    """A method's map of one layer from its data, at layer resolution, after ReLU."""
    terms = m.map(data)
    if m.terms:
        terms = projection(terms) if eigen_smooth else terms.sum(axis=1)
    return np.maximum(terms, 0).astype(np.float32)


def _rows(inside, i: int, count: int):
    """Image i's region repeated for `count` rows of one run (None stays None)."""
    return None if inside is None else np.repeat(inside[i : i + 1], count, axis=0)


def _source(m, analytic: bool) -> str | None:
    """Where m's gradients came from, as gradient_source says it."""
    if m.gradients is None and not m.input_gradient:
        return None
    return "analytic" if analytic else "finite differences"


def _check_rgb(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise OnnxcamError(
            "an image array must be HxWx3 uint8 RGB (or pass a float tensor in the model's input layout)"
        )
    return image


def _flat(maps: np.ndarray) -> np.ndarray:
    """Per map [N, H, W], whether it is all (near) zero: nothing to show. An empty batch (a detector that found
    nothing) has no maps."""
    return maps.max(axis=(1, 2), initial=0) < FLAT


def _check_finite(array, what: str) -> None:
    """A user error that says what holds NaN or Inf, and how much of it, instead of a map of garbage."""
    finite = np.isfinite(array)
    if finite.all():
        return
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    kinds = " and ".join(k for k, count in (("NaN", nan), ("Inf", inf)) if count)
    rows = np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1)) if array.ndim else []
    images = f" of image {', '.join(str(int(r) + 1) for r in rows[:5])}" if array.ndim and len(array) > 1 else ""
    raise OnnxcamError(
        f"the model produced {kinds} in the {what}{images} ({nan + inf} of {array.size} values); check the input "
        "and preprocessing, and ops such as Log, Div, Sqrt or Pow in the model that overflow or leave their domain"
    )
