"""Model randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", arXiv 1810.03292).

Re-initialize the model's weights from the logits downwards, block by block and cumulatively, and
compare each step's map (for the class the trained model explained) with the trained model's map
by Spearman's rank correlation. A method whose map barely changes while the model's weights are
destroyed is not explaining the model: it shows the input (edges, contrast) whatever the model is.

The weights are the float initializers of Conv, ConvTranspose, Gemm, MatMul and the learned
scale and bias of BatchNormalization, InstanceNormalization and LayerNormalization (running mean
and variance stay). Nodes that use them are taken in reverse topological order (the logits layer
first) and split into `steps` cumulative steps: step 1 re-initializes the last such node alone,
each later step adds the next block of nodes down to the first convolution. A re-initialized
tensor is drawn from a normal distribution with the original tensor's mean and standard deviation,
seeded by (seed, tensor name): the same tensor gets the same values at every step.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcam import chart, render
from onnxcam.errors import ModelError, OnnxcamError
from onnxcam.metrics import explanation_map, spearman
from onnxcam.writer import json_bytes, picture_bytes

PARAMETRIC = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
)
STATISTICS = {"BatchNormalization": (3, 4)}  # running mean and variance: statistics, not weights
STEPS = 10
PASS_BELOW = 0.5  # a method depends on the model when the final correlation falls below this
TOP_LAYER_WARN = 0.8  # ... but is hardly class-specific if re-initializing the logits layer leaves this much


@dataclass
class Step:
    nodes: list  # names (or op type#index) of the nodes re-initialized at this step (not cumulative)
    initializers: list  # their initializers' names
    ops: list  # the nodes' op types

    @property
    def label(self) -> str:
        """The node, or 'N layers down to <the last one>' (the one nearest the input)."""
        return self.nodes[0] if len(self.nodes) == 1 else f"{len(self.nodes)} layers down to {self.nodes[-1]}"


@dataclass
class SanityResult:
    method: str
    target: int
    steps: list  # [Step]: step k re-initializes steps[0..k-1]
    correlations: list  # [len(steps) + 1]: step 0 is the trained model itself
    maps: list = field(default_factory=list)  # [len(steps) + 1] maps [H, W]
    errors: dict = field(default_factory=dict)  # step -> why the map could not be computed

    @property
    def final(self) -> float:
        """The correlation once every step is applied (NaN, a flat map, counts as 0: no agreement left)."""
        value = self.correlations[-1]
        return 0.0 if value is None or np.isnan(value) else float(value)

    @property
    def passed(self) -> bool:
        return self.final < PASS_BELOW

    @property
    def after_logits_layer(self) -> float | None:
        """The correlation once only the logits layer (step 1) is re-initialized."""
        value = self.correlations[1] if len(self.correlations) > 1 else None
        return None if value is None or np.isnan(value) else float(value)

    def verdict(self) -> str:
        n = sum(len(s.nodes) for s in self.steps)
        if self.passed:
            text = (
                f"{self.method}: depends on the model: with all {n} layers re-initialized, the map's rank "
                f"correlation with the trained model's map falls to {self.final:.2f} (below {PASS_BELOW}: passes)"
            )
        else:
            text = (
                f"{self.method}: does NOT depend much on the model: with all {n} layers re-initialized, the map's "
                f"rank correlation with the trained model's map is still {self.final:.2f} (not below "
                f"{PASS_BELOW}: fails; the map shows the input more than what the model learned)"
            )
        top = self.after_logits_layer
        if top is not None and top >= TOP_LAYER_WARN and len(self.steps) > 1:
            text += (
                f"; but re-initializing the logits layer ({self.steps[0].nodes[0]}) alone leaves it at {top:.2f}: "
                "the map hardly depends on what the top layer learned"
            )
        return text


def parameter_groups(model: onnx.ModelProto) -> list:
    """[(node name, op type, [initializer names])] of the parametric nodes, logits end first; an
    initializer shared by several nodes belongs to the one nearest the logits."""
    floats = {
        t.name
        for t in model.graph.initializer
        if t.data_type
        in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    }
    seen, groups = set(), []
    for index, node in reversed(list(enumerate(model.graph.node))):
        if node.op_type not in PARAMETRIC:
            continue
        skip = STATISTICS.get(node.op_type, ())
        names = [n for i, n in enumerate(node.input) if n in floats and n not in seen and i not in skip]
        if names:
            seen.update(names)
            groups.append((node.name or f"{node.op_type}#{index}", node.op_type, names))
    return groups


def cascade(model: onnx.ModelProto, steps: int = STEPS) -> list:
    """[Step]: the logits layer alone, then the other parametric nodes in steps - 1 contiguous blocks."""
    groups = parameter_groups(model)
    if not groups:
        raise ModelError(
            "no weights to re-initialize: the model has no float initializers feeding "
            f"{', '.join(PARAMETRIC)} (quantized weights and Constant nodes are not handled)"
        )
    if steps < 1:
        raise OnnxcamError("the randomization test needs at least 1 step")
    if len(groups) <= steps:
        blocks = [[g] for g in groups]
    elif steps == 1:
        blocks = [groups]
    else:
        rest = np.array_split(np.arange(1, len(groups)), steps - 1)  # contiguous, sizes differ by at most 1
        blocks = [[groups[0]]] + [[groups[i] for i in chunk] for chunk in rest]
    return [
        Step(
            nodes=[n for n, _, _ in b], initializers=[i for _, _, names in b for i in names], ops=[op for _, op, _ in b]
        )
        for b in blocks
    ]


def randomized(model: onnx.ModelProto, names, seed: int = 0) -> onnx.ModelProto:
    """A copy of the model in which the named initializers are drawn anew: normal with the original
    tensor's mean and standard deviation, seeded by (seed, name); same shape and dtype."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    wanted = set(names)
    for i, tensor in enumerate(copy.graph.initializer):
        if tensor.name not in wanted:
            continue
        original = numpy_helper.to_array(tensor)
        values = original.astype(np.float64)
        rng = np.random.default_rng([seed, zlib.crc32(tensor.name.encode())])
        fresh = rng.normal(values.mean(), values.std(), original.shape) if values.size else values
        copy.graph.initializer[i].CopyFrom(numpy_helper.from_array(fresh.astype(original.dtype), tensor.name))
    return copy


def randomization_test(
    model, x, methods, steps: int = STEPS, seed: int = 0, layer=None, target=None, progress=None, **explainer_options
) -> list:
    """[SanityResult] per method for one input x (an image path, RGB array or input tensor).

    model: a path or ModelProto; layer: as for Explainer (None: the automatic layer, kept for every
    step); explainer_options: Explainer keywords (device, providers, preprocess_preset, input_name, ...).
    progress(step, total): called after each step's maps."""
    from onnxcam import Explainer
    from onnxcam.model import load_model

    proto = load_model(model) if isinstance(model, str) else model
    ex = Explainer(proto, layer=layer, **explainer_options)
    ex.info.require_task("sanity", ("classify", "segment"))  # one map per image, compared step by step
    options = dict(explainer_options, preprocess_preset=ex.preset)
    tensor = ex.prepare(x)[:1]
    plan = cascade(proto, steps)
    results = []
    for method in methods:
        res = ex.explain(tensor, method=method, target=target)
        heat = explanation_map(res.maps, res.saliency)[0]
        results.append(
            SanityResult(
                method=res.method,
                target=int(res.targets[0]),
                steps=plan,
                correlations=[spearman(heat, heat)],
                maps=[heat],
            )
        )
    done = []
    for k, step in enumerate(plan, start=1):
        done += step.initializers
        step_ex = Explainer(randomized(proto, done, seed), layer=ex.layers, **options)
        for r in results:
            try:
                res = step_ex.explain(tensor, method=r.method, target=r.target)
                m = explanation_map(res.maps, res.saliency)[0]
            except OnnxcamError as error:  # e.g. the randomized model overflows to Inf
                r.errors[k] = str(error)
                r.correlations.append(float("nan"))
                r.maps.append(np.zeros_like(r.maps[0]))
                continue
            r.correlations.append(spearman(r.maps[0], m))
            r.maps.append(m)
        if progress:
            progress(k, len(plan))
    return results


def report_files(results: list, model: str, image: str, rgb: np.ndarray, seed: int, label: str) -> dict:
    """What the sanity command writes for one image, {name suffix: bytes}: "sanity.png" (the curves),
    "sanity.maps.png" (the map at every step over `rgb`) and "sanity.json" (every correlation, the verdicts)."""
    steps = results[0].steps
    record = {
        "model": model,
        "image": image,
        "seed": seed,
        "class": results[0].target,
        "label": label,
        "pass_below": PASS_BELOW,
        "steps": [{"step": k, "nodes": s.nodes, "initializers": s.initializers} for k, s in enumerate(steps, 1)],
        "methods": {
            r.method: {
                "spearman": [None if c != c else round(c, 6) for c in r.correlations],
                "final": r.final,
                "passed": r.passed,
                "verdict": r.verdict(),
                "errors": {str(k): v for k, v in r.errors.items()},
            }
            for r in results
        },
    }
    return {
        "sanity.png": picture_bytes(curves_image(results, len(steps))),
        "sanity.maps.png": picture_bytes(maps_image(results, rgb)),
        "sanity.json": json_bytes(record),
    }


def curves_image(results: list, steps: int) -> np.ndarray:
    """Each method's rank correlation with the trained model's map, step by step."""
    xs = np.arange(steps + 1)
    lowest = min([0.0] + [c for r in results for c in r.correlations if c == c])
    series = [(r.method, xs, r.correlations) for r in results]
    ticks = [(k, str(k)) for k in range(0, steps + 1, max(1, steps // 10))]
    low = min(-0.25, np.floor(lowest * 4) / 4)
    plot = chart.line_chart(
        series,
        "model randomization: rank correlation with the trained model's map",
        "cumulative re-initialization step (0: trained, 1: logits layer, ...)",
        "Spearman",
        ylim=(low, 1.0),
        size=(380, 640),
        xticks=ticks,
        markers=True,
        yticks=int(round((1.0 - low) / 0.25)) + 1,
    )
    return chart.side_by_side([plot, chart.legend([r.method for r in results], plot.shape[0], width=180)])


def maps_image(results: list, rgb: np.ndarray) -> np.ndarray:
    """One row per method: the overlay at each step."""
    rows = []
    for r in results:
        tiles = [render.overlay(rgb, m) for m in r.maps]
        labels = [
            f"{r.method}: trained" if k == 0 else f"step {k}: {correlation_text(c)}"
            for k, c in enumerate(r.correlations)
        ]
        rows.append(render.grid(tiles, labels, height=128))
    width = max(row.shape[1] for row in rows)
    return np.vstack([np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows])


def correlation_text(value) -> str:
    """A correlation as printed: 3 decimals, or "flat" where the map had no ranking (NaN)."""
    return "flat" if value is None or value != value else f"{value:.3f}"
