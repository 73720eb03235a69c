"""Method-level facts that need no reference library: closed forms, finite differences, identities."""

import numpy as np
import pytest
from onnx import numpy_helper

from conftest import CHELSEA, DEMO
from onnxcam import Explainer, postprocess
from onnxcam.model import inspect_model
from onnxcam.surgery import CLASS_INPUT, augment, cut_head, grad_name
from tinymodels import IN_SHAPE, Net, classifier, session


def _tanh_model():
    net = Net(opset=13)
    return classifier(net, net.op("Tanh", "A"))


def _grad_and_head(model, **kwargs):
    info = inspect_model(model)
    aug = session(augment(info, ["A"], **kwargs))
    return aug, session(cut_head(info, "A"))


def _central(f, a, v, eps):
    return (f(a + eps * v) - f(a - eps * v)) / (2 * eps)


def test_probability_score_gradient_matches_finite_differences():
    aug, head = _grad_and_head(_tanh_model(), score="probability")
    x = np.random.default_rng(0).normal(size=(2, *IN_SHAPE)).astype(np.float32)
    classes = np.array([3, 8])
    a, g = aug.run(["A", grad_name("A")], {"x": x, CLASS_INPUT: classes})

    def prob(a_):
        z = head.run(None, {"A": a_.astype(np.float32)})[0].astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        return (p / p.sum(axis=1, keepdims=True))[[0, 1], classes].sum()

    v = g / np.linalg.norm(g) + (r := np.random.default_rng(1).normal(size=a.shape)) / np.linalg.norm(r)
    fd = _central(prob, a.astype(np.float64), v, 1e-2)
    assert abs(fd - float((g * v).sum())) < 1e-3 * abs(fd)


@pytest.mark.parametrize("unit", [("A", 2), ("A", 1, 3, 4)])
def test_unit_seed_is_the_unit_itself(unit):
    """Explaining feature map k (or neuron k, i, j) of A at A itself: G is the unit's indicator."""
    model = _tanh_model()
    aug = session(augment(inspect_model(model), ["A"], unit=unit))
    x = np.random.default_rng(0).normal(size=(2, *IN_SHAPE)).astype(np.float32)
    g = aug.run([grad_name("A")], {"x": x})[0]
    expected = np.zeros_like(g)
    if len(unit) == 2:
        expected[:, unit[1]] = 1
    else:
        expected[:, unit[1], unit[2], unit[3]] = 1
    assert np.array_equal(g, expected)


def test_unit_seed_through_a_later_layer_matches_finite_differences():
    """Score = sum of feature map 1 of tanh(A): dScore/dA = (1 - tanh^2) on that channel, 0 elsewhere."""
    net = Net(opset=13)
    later = net.op("Tanh", "A", name="squash")
    model = classifier(net, later)
    aug = session(augment(inspect_model(model), ["A"], unit=(later, 1)))
    x = np.random.default_rng(3).normal(size=(1, *IN_SHAPE)).astype(np.float32)
    a, g = aug.run(["A", grad_name("A")], {"x": x})
    expected = np.zeros_like(a)
    expected[:, 1] = 1 - np.tanh(a[:, 1]) ** 2
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)


def test_units_add_up_to_the_logit_on_a_linear_head():
    ex = Explainer(DEMO, device="cpu")
    targets, ranked = ex.units(CHELSEA, count=1280)
    res = ex.explain(CHELSEA, method="cam")
    bias = next(numpy_helper.to_array(t) for t in ex.info.model.graph.initializer if t.name.endswith("_fc.bias"))
    total = sum(c for _, c, _ in ranked[0])
    assert targets[0] == 285
    assert abs(total - (res.scores[0, 285] - bias[285])) < 1e-3
    contributions = [c for _, c, _ in ranked[0]]
    assert contributions == sorted(contributions, reverse=True)


def test_box_is_the_largest_region_above_the_threshold():
    heat = np.zeros((40, 60), np.float32)
    heat[5:10, 5:10] = 1.0  # small, strong
    heat[20:35, 30:55] = 0.5  # large, above 20% of the max
    heat[0, 59] = 0.1  # below the threshold
    assert postprocess.box(heat, 0.2) == (30, 20, 54, 34)
    assert postprocess.box(heat, 0.6) == (5, 5, 9, 9)
    assert postprocess.box(np.zeros((4, 4), np.float32)) is None


def test_upsample_align_corners_keeps_corners_and_linear_ramps():
    ramp = np.arange(4, dtype=np.float32)[None, None, None, :] * np.ones((1, 1, 3, 1), np.float32)
    up = postprocess.upsample_align_corners(ramp, (5, 7))
    np.testing.assert_allclose(up[0, 0], np.tile(np.linspace(0, 3, 7), (5, 1)), atol=1e-6)


def test_aug_smooth_of_a_flip_symmetric_input_is_symmetric(demo_explainer):
    x = demo_explainer.prepare(CHELSEA)
    x = (x + x[..., ::-1]) / 2
    res = demo_explainer.explain(x, aug_smooth=True)
    assert np.abs(res.maps[0] - res.maps[0][:, ::-1]).max() < 1e-4


def test_eigen_smooth_and_noise_free_smoothing():
    # A mid layer: at the last one G is the same for every input (GAP -> linear head), so noise cannot matter.
    ex = Explainer(DEMO, layer="/_blocks.10/Add_output_0", device="cpu")
    plain = ex.explain(CHELSEA, method="gradcam++")
    smooth = ex.explain(CHELSEA, method="smoothgradcam++", noise=0.0, samples=2)
    assert np.abs(plain.maps - smooth.maps).max() < 1e-6
    a = ex.explain(CHELSEA, method="smoothgradcam++", samples=3, seed=1)
    b = ex.explain(CHELSEA, method="smoothgradcam++", samples=3, seed=1)
    c = ex.explain(CHELSEA, method="smoothgradcam++", samples=3, seed=2)
    assert np.array_equal(a.maps, b.maps) and not np.array_equal(a.maps, c.maps)
    eigen = ex.explain(CHELSEA, method="gradcam", eigen_smooth=True)
    assert eigen.maps.shape == plain.maps.shape and eigen.maps.max() > 0.99


def test_scorecam_with_fewer_channels_scores_only_the_largest():
    """scorecam_channels=K: the K channels of largest activation mass are scored, the softmax runs over them,
    the other channels weigh 0; K = all is the method as published."""
    from onnxcam.methods import LayerData, scorecam

    rng = np.random.default_rng(0)
    a = rng.random((2, 6, 3, 4)).astype(np.float32)
    seen = []

    def masked_scores(acts):  # a stand-in for the model: the score grows with the mask's mass
        seen.append(acts.shape[1])
        return 0.3 * acts.sum(axis=(2, 3))

    full = scorecam(LayerData(activations=a, masked_scores=masked_scores))
    assert np.array_equal(full, scorecam(LayerData(activations=a, masked_scores=masked_scores, channels=6)))
    reduced = scorecam(LayerData(activations=a, masked_scores=masked_scores, channels=3))
    assert seen == [6, 6, 3]
    for n in range(2):
        mass = a[n].sum(axis=(1, 2))
        kept = np.argsort(-mass)[:3]
        s = 0.3 * mass[kept]
        w = np.zeros(6)
        w[kept] = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        np.testing.assert_allclose(reduced[n], w[:, None, None] * a[n], rtol=1e-5)
