"""What a classifier's scores mean, and the probabilities shown for them.

- "softmax" (the default): C mutually exclusive classes; probabilities = softmax of the logits.
- "binary": a single logit z ([N, 1]) whose package applies a sigmoid. Two outcomes: 1, the positive class,
  with probability sigmoid(z), and 0, the negative, with 1 - sigmoid(z) = sigmoid(-z). pytorch-grad-cam's
  BinaryClassifierOutputTarget explains z for outcome 1 and -z for outcome 0.
- "multilabel": a Sigmoid over C > 1 scores: independent yes/no per class; probabilities = per-class sigmoid.
"""

from __future__ import annotations

import numpy as np

SOFTMAX, BINARY, MULTILABEL = "softmax", "binary", "multilabel"
HEADS = (SOFTMAX, BINARY, MULTILABEL)


def head_kind(num_classes: int, probability_op: str | None) -> str:
    """The head, from the class count and the op (if any) that turns the logits into the model's output."""
    if num_classes == 1:
        return BINARY
    return MULTILABEL if probability_op == "Sigmoid" else SOFTMAX


def outcomes(head: str, num_classes: int) -> int:
    """How many outcomes the scores distinguish: the classes, or the two outcomes of a single logit."""
    return 2 if head == BINARY else num_classes


def probabilities(scores: np.ndarray, head: str) -> np.ndarray:
    """[N, outcomes] display probabilities of [N, C] logits (float64 arithmetic, float32 result)."""
    z = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if head == SOFTMAX:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    if head == MULTILABEL:
        return _sigmoid(z).astype(np.float32)
    if head == BINARY:
        return np.concatenate([_sigmoid(-z[:, :1]), _sigmoid(z[:, :1])], axis=1).astype(np.float32)
    raise ValueError(f"unknown head {head!r}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
