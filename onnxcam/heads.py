"""What a classifier's scores mean, and which score of a class is explained.

Three kinds of head (pytorch-grad-cam's targets in brackets):
- "softmax": C logits of exclusive classes; a class's score is its logit, its probability the softmax
  [ClassifierOutputTarget, ClassifierOutputSoftmaxTarget];
- "binary": one logit z of a sigmoid; class 1 (positive) is explained by z, class 0 (negative) by -z, and
  their probabilities are sigmoid(z) and 1 - sigmoid(z) [BinaryClassifierOutputTarget];
- "multilabel": C independent sigmoid logits; a class's probability is sigmoid of its logit.
The graph's seed (surgery.graph) differentiates the same scores.
"""

from __future__ import annotations

import numpy as np

from onnxcam.methods import softmax

KINDS = ("softmax", "binary", "multilabel")


def class_count(kind: str, logits: int) -> int:
    """How many classes can be explained: a binary head's one logit stands for two."""
    return 2 if kind == "binary" else logits


def top1(logits: np.ndarray, kind: str) -> np.ndarray:
    """[N] the class each row predicts."""
    if kind == "binary":
        return (logits[:, 0] > 0).astype(np.int64)
    return logits.argmax(axis=1)


def probabilities(logits: np.ndarray, kind: str) -> np.ndarray:
    """[N, classes] what the model's own package shows as confidences."""
    z = np.asarray(logits, np.float64)
    if kind == "binary":
        p = _sigmoid(z[:, :1])
        return np.concatenate([1 - p, p], axis=1)
    return _sigmoid(z) if kind == "multilabel" else softmax(z, axis=1)


def class_score(logits: np.ndarray, classes: np.ndarray, score: str, kind: str) -> np.ndarray:
    """[N] the explained score of each row's class: "logit" or "probability"."""
    rows = np.arange(len(logits))
    if kind == "binary":
        z = logits[:, 0] * (2 * np.asarray(classes) - 1)
        return np.float32(z if score == "logit" else _sigmoid(np.float64(z)))
    if score == "logit":
        return np.float32(logits[rows, classes])
    return np.float32(probabilities(logits, kind)[rows, classes])


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))
