"""ModelInfo.head: what the scores mean, told from the graph; heads.probabilities of the logits must then equal
what the model itself outputs (plain ONNX Runtime) where it ends in its own Softmax or Sigmoid."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxcam import heads
from onnxcam.model import inspect_model
from tinymodels import IN_SHAPE, gap_linear, session


def _head_model(classes: int, tail: str | None):
    return gap_linear(classes, tail, seed=classes, head_scale=3.0, bias_scale=1.0)


@pytest.mark.parametrize(
    "classes, tail, kind",
    [
        (5, "Softmax", "softmax"),
        (5, None, "softmax"),
        (1, "Sigmoid", "binary"),
        (1, None, "binary"),
        (5, "Sigmoid", "multilabel"),
    ],
)
def test_head_kind_and_its_probabilities(classes, tail, kind):
    model, logits = _head_model(classes, tail)
    info = inspect_model(model)
    assert info.head == kind and info.logits_name == logits and info.num_classes == classes
    if tail is None:
        return
    x = np.random.default_rng(0).normal(size=(6, *IN_SHAPE)).astype(np.float32)
    probe = type(model).FromString(model.SerializeToString())
    probe.graph.output.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, None))
    own, z = session(probe).run(None, {"x": x})
    p = heads.probabilities(z, info.head)
    if kind == "binary":  # outcome 1 is the package's sigmoid(z), outcome 0 the rest
        np.testing.assert_allclose(p[:, 1], own[:, 0], rtol=1e-5)
        np.testing.assert_allclose(p[:, 0], 1 - own[:, 0], atol=1e-6)
    else:
        np.testing.assert_allclose(p, own, rtol=1e-5, atol=1e-7)
