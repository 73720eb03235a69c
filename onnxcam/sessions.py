"""The ONNX Runtime sessions an Explainer needs: which graph each computes, built once, run on any rows.

A `SessionSpec` names one augmented model (what it outputs besides the logits);
`Sessions` does the graph surgery for a spec (once, and only if the disk cache
has no ready session for it), builds the session, and runs it on any number of
rows: a model pinned to a fixed batch gets its rows in chunks of that size, the
last one padded and the padding dropped, so every caller (gradients, finite
differences, Score-CAM's masked inputs, Ablation-CAM's heads, in-graph maps)
may pass as many rows as it likes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcam import cache
from onnxcam.errors import ModelError, UnsupportedOpError
from onnxcam.linear_head import linear_head_weights
from onnxcam.names import REGION_INPUT
from onnxcam.runtime import ort_error_text
from onnxcam.surgery import CLASS_INPUT, augment, cut_head
from onnxcam.surgery.maps import maps_model

FORWARD = "forward"  # logits and the target layers' activations
GRADIENTS = "gradients"  # ... and the target class, dScore/dA and/or dScore/dx
MAPS = "maps"  # logits, the target class and each layer's map (the in-graph methods)
HEAD = "head"  # the cut-off head: from one layer (an input) to the logits
ATTENTION = "attention"  # logits and a transformer's attention probabilities (and with gradients, theirs)


@dataclass(frozen=True)
class SessionSpec:
    """One augmented model. Equal specs share a session; the fields that do not apply to a kind stay default."""

    kind: str
    layer_gradients: bool = False  # GRADIENTS: dScore/dA of the target layers
    input_gradient: str | None = None  # GRADIENTS: None, "plain" or "guided" dScore/dx
    method: str | None = None  # MAPS: the method whose maps the graph computes
    score: str = "logit"  # GRADIENTS, MAPS: what is differentiated
    unit: tuple | None = None  # GRADIENTS, MAPS: a feature map or neuron instead of a class score
    layer: str | None = None  # HEAD: where the head is cut off
    fed_seed: bool = False  # GRADIENTS: dScore/dlogits is an input (detection), not a class's seed in the graph

    @property
    def takes_class(self) -> bool:
        """Whether the session has the class input (the augmented models that differentiate a class score)."""
        if self.fed_seed:
            return False
        return self.kind in (GRADIENTS, MAPS) or (self.kind == ATTENTION and self.layer_gradients)

    @staticmethod
    def forward() -> SessionSpec:
        return SessionSpec(FORWARD)

    @staticmethod
    def gradients(layer_gradients: bool, input_gradient=None, score="logit", unit=None) -> SessionSpec:
        """Without any gradient, score and unit do not matter: the plain forward session."""
        if not layer_gradients and not input_gradient:
            return SessionSpec.forward()
        return SessionSpec(GRADIENTS, layer_gradients, input_gradient, score=score, unit=unit)

    @staticmethod
    def seeded(input_gradient=None) -> SessionSpec:
        """dScore/dA of the target layers (and dScore/dx) for a seed fed at run time (SEED_INPUT)."""
        return SessionSpec(GRADIENTS, True, input_gradient, fed_seed=True)

    @staticmethod
    def maps(method: str, score="logit", unit=None) -> SessionSpec:
        return SessionSpec(MAPS, method=method, score=score, unit=unit)

    @staticmethod
    def attention(gradients: bool, score="logit", unit=None) -> SessionSpec:
        return SessionSpec(
            ATTENTION, gradients, score=score if gradients else "logit", unit=unit if gradients else None
        )

    @staticmethod
    def head(layer: str) -> SessionSpec:
        return SessionSpec(HEAD, layer=layer)


class Sessions:
    """The sessions of one model, its target layers and providers. cache_key: what identifies the model on disk
    (None: a model given in memory, never cached)."""

    def __init__(self, info, layers: list, providers: list, cache_key: dict | None):
        self.info, self.layers, self.providers, self.cache_key = info, layers, providers, cache_key
        self.batch = info.input_shape[0]  # a fixed batch size, or None
        self._sessions = {}
        self._models = {}  # spec -> the augmented ONNX model, while its session is not built yet

    @property
    def provider(self) -> str:
        """The execution provider that runs (after the first session is built)."""
        session = next(iter(self._sessions.values()), None)
        return session.get_providers()[0] if session else self.providers[0]

    def buildable(self, spec: SessionSpec) -> UnsupportedOpError | None:
        """Why spec's graph cannot be built (an op without a backward rule), or None. A spec whose session is
        built or cached needs no surgery to tell."""
        if spec in self._sessions or spec in self._models or self._cached(spec):
            return None
        try:
            self._models[spec] = self._surgery(spec)
        except UnsupportedOpError as error:
            return error
        return None

    def get(self, spec: SessionSpec):
        if spec not in self._sessions:
            model = self._models.pop(spec, None)
            key = None if self.cache_key is None else {**self.cache_key, "session": repr(spec)}
            self._sessions[spec] = cache.cached_session(
                key, self.providers, lambda: model if model is not None else self._surgery(spec)
            )
        return self._sessions[spec]

    def run(self, spec: SessionSpec, feeds: dict, names: list | None = None) -> dict:
        """Run spec's session on feeds (arrays sharing their first axis, any length); name -> output array."""
        session = self.get(spec)
        names = names or [o.name for o in session.get_outputs()]
        rows = len(next(iter(feeds.values())))
        step = self.batch or max(rows, 1)
        chunks = []
        for start in range(0, rows, step):
            part = {name: value[start : start + step] for name, value in feeds.items()}
            count = len(next(iter(part.values())))
            if count < step:  # a fixed batch: pad with copies of the last row, dropped below
                part = {name: np.concatenate([v, np.repeat(v[-1:], step - count, axis=0)]) for name, v in part.items()}
            chunks.append([out[:count] for out in _run_session(session, names, part)])
        if len(chunks) == 1:  # no copy of the whole output (a batch of heatmaps is N * H * W floats)
            return dict(zip(names, chunks[0]))
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(names)}

    def run_model(self, spec: SessionSpec, tensor: np.ndarray, classes: np.ndarray | None = None, region=None) -> dict:
        """Run a whole-model spec on input tensors; classes (-1: top-1) go to the sessions that take a class, and
        so does a segmentation's region (float [N, h, w]; left unfed: the predicted region)."""
        feeds = {self.info.input_name: tensor}
        if spec.takes_class and classes is not None:
            feeds[CLASS_INPUT] = classes
        if spec.takes_class and region is not None:
            feeds[REGION_INPUT] = region
        return self.run(spec, feeds)

    def input_dtype(self, spec: SessionSpec, name: str):
        kind = next(i.type for i in self.get(spec).get_inputs() if i.name == name)
        return np.float16 if kind == "tensor(float16)" else np.float32

    def takes(self, spec: SessionSpec, name: str) -> bool:
        return name in {i.name for i in self.get(spec).get_inputs()}

    def _cached(self, spec) -> bool:
        return self.cache_key is not None and cache.has_entry({**self.cache_key, "session": repr(spec)}, self.providers)

    def _surgery(self, spec: SessionSpec):
        info = self.info
        if spec.kind == HEAD:
            return cut_head(info, spec.layer)
        if spec.kind == MAPS:
            heads = {layer: linear_head_weights(info, layer) for layer in self.layers} if spec.method == "cam" else None
            return maps_model(info, self.layers, spec.method, spec.score, spec.unit, heads)
        tensors = list(info.attention) if spec.kind == ATTENTION else self.layers
        return augment(
            info,
            tensors,
            gradients=spec.layer_gradients,
            input_gradient=spec.input_gradient,
            score=spec.score,
            unit=spec.unit,
            fed_seed=spec.fed_seed,
        )


def _run_session(session, names, feed) -> list:
    """session.run, with ONNX Runtime's own failures (a shape the model rejects, memory) as a one-line ModelError."""
    try:
        return session.run(names, feed)
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise ModelError(f"ONNX Runtime failed to run the model: {ort_error_text(exc)}") from None
