"""Each metric of onnxcam.metrics against a closed form on tiny synthetic cases."""

import numpy as np
import pytest

from onnxcam import metrics
from onnxcam.methods import softmax


def test_average_drop_and_increase_in_confidence():
    y = np.array([0.8, 0.5, 0.2, 0.4])
    o = np.array([0.4, 0.5, 0.3, 0.1])
    # drops: 0.4/0.8, 0, 0 (O > Y), 0.3/0.4 -> mean of 0.5, 0, 0, 0.75
    assert metrics.average_drop(y, o) == pytest.approx(100 * (0.5 + 0.75) / 4)
    assert metrics.increase_in_confidence(y, o) == pytest.approx(25.0)  # only the third: O > Y strictly
    assert metrics.average_drop(y, y) == 0 and metrics.increase_in_confidence(y, y) == 0


def test_softmax_and_masked_input():
    p = softmax(np.array([[0.0, np.log(3.0)]]))
    assert p == pytest.approx(np.array([[0.25, 0.75]]))
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    m = np.array([[[1, 0], [0.5, 0]], [[0, 0], [0, 2]]], np.float32)
    out = metrics.masked_input(x, m, "NCHW")
    assert out[0, 2].tolist() == [[8, 0], [5, 0]] and out[1, 1].tolist() == [[0, 0], [0, 38]]
    nhwc = metrics.masked_input(x.transpose(0, 2, 3, 1), m, "NHWC")
    assert np.array_equal(nhwc, out.transpose(0, 2, 3, 1))


def test_auc_is_the_trapezoid_rule():
    assert metrics.auc([1, 1, 1]) == pytest.approx(1.0)
    assert metrics.auc([1, 0]) == pytest.approx(0.5)
    assert metrics.auc(np.linspace(1, 0, 33)) == pytest.approx(0.5)
    assert metrics.auc([0, 1, 0, 1, 0]) == pytest.approx((2 - 0 - 0) / 4)
    # a step curve that drops to 0 after the first point: only the first trapezoid (1 + 0) / 2 / (n - 1)
    assert metrics.auc([1, 0, 0, 0, 0]) == pytest.approx(0.5 / 4)


def test_ranking_and_step_counts():
    heat = np.array([[0.1, 0.9], [0.5, 0.9]])
    assert metrics.ranking(heat).tolist() == [1, 3, 2, 0]  # ties in row-major order
    assert metrics.step_counts(4, 4).tolist() == [0, 1, 2, 3, 4]
    assert metrics.step_counts(10, 4).tolist() == [0, 2, 5, 8, 10]  # round half to even: 2.5 -> 2, 7.5 -> 8


def test_deletion_of_a_linear_model_has_a_closed_form():
    """A 'model' whose probability is the mean of the input: deleting pixels in the order of their value
    (the map is the input itself) gives a curve whose AUC is known exactly."""
    h, w, steps = 4, 4, 16
    values = np.arange(1, h * w + 1, dtype=np.float64)[::-1]  # 16 .. 1
    x = values.reshape(1, h, w).astype(np.float32)  # one channel, CHW
    rows = metrics.deletion_inputs(x, x[0], steps=steps, layout="CHW")
    assert rows.shape == (steps + 1, 1, h, w)
    assert np.array_equal(rows[0], x) and not rows[-1].any()

    def probability(batch):
        return batch.reshape(len(batch), -1).mean(axis=1, keepdims=True) / values.mean()

    curve = metrics.curve(probability, rows, 0, rows=5)
    # after k deletions the largest k values are gone: remaining sum = sum of the 16 - k smallest
    remaining = np.array([values[k:].sum() for k in range(steps + 1)]) / values.sum()
    assert curve == pytest.approx(remaining)
    assert metrics.auc(curve) == pytest.approx((remaining.sum() - 0.5 - 0) / steps)
    # the best possible order for deletion beats the worst
    worst = metrics.curve(probability, metrics.deletion_inputs(x, -x[0], steps, "CHW"), 0)
    assert metrics.auc(curve) < metrics.auc(worst)


def test_insertion_starts_blurred_and_ends_at_the_input():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 3)).astype(np.float32)  # HWC
    heat = rng.random((8, 8))
    rows = metrics.insertion_inputs(x, heat, steps=4, layout="HWC", sigma=2.0)
    assert rows.shape == (5, 8, 8, 3)
    assert np.allclose(rows[0], metrics.blurred(x, 2.0, "HWC")) and np.array_equal(rows[-1], x)
    # row 1 holds exactly the top quarter of the pixels from x
    top = np.zeros(64, bool)
    top[metrics.ranking(heat)[:16]] = True
    top = top.reshape(8, 8)
    assert np.array_equal(rows[1][top], x[top]) and np.array_equal(rows[1][~top], rows[0][~top])
    # a constant image is unchanged by the blur: the curve of any model is flat
    flat = np.full((3, 8, 8), 0.5, np.float32)
    assert np.allclose(metrics.blurred(flat, 3.0, "CHW"), 0.5)


def test_box_mask_uses_pixel_centres():
    mask = metrics.box_mask([(1, 0, 3, 2)], (4, 5))
    assert mask.sum() == 4 and mask[0:2, 1:3].all()
    half = metrics.box_mask([(0.6, 0.6, 2.4, 2.4)], (4, 4))  # of the centres 0.5, 1.5, 2.5 only 1.5 is inside
    assert np.argwhere(half).tolist() == [[1, 1]]


def test_pointing_game_with_boxes_masks_and_tolerance():
    heat = np.zeros((40, 40))
    heat[10, 30] = 1.0  # peak at the centre of pixel (row 10, column 30): point (30.5, 10.5)
    assert metrics.peak(heat) == (30.5, 10.5)
    assert metrics.pointing_game(heat, [(25, 5, 35, 15)], tolerance=0)
    assert not metrics.pointing_game(heat, [(0, 0, 20, 20)], tolerance=0)
    # distance from (30.5, 10.5) to the box (0, 0, 20, 20) is 10.5: a hit within 15 px, not within 10
    assert metrics.pointing_game(heat, [(0, 0, 20, 20)], tolerance=15)
    assert not metrics.pointing_game(heat, [(0, 0, 20, 20)], tolerance=10)
    # a diagonal distance: the box (0, 20, 24, 40) is below-left; its nearest corner (24, 20) is (6.5, 9.5) away
    assert metrics.point_in_boxes((30.5, 10.5), [(0, 20, 24, 40)], tolerance=np.hypot(6.5, 9.5) + 1e-9)
    assert not metrics.point_in_boxes((30.5, 10.5), [(0, 20, 24, 40)], tolerance=np.hypot(6.5, 9.5) - 1e-6)
    mask = np.zeros((40, 40), bool)
    mask[10, 36] = True  # centre (36.5, 10.5): 6 px away
    assert metrics.pointing_game(heat, mask=mask, tolerance=6)
    assert not metrics.pointing_game(heat, mask=mask, tolerance=5)
    assert not metrics.pointing_game(heat, mask=np.zeros_like(mask))


def test_iou_and_cam_localization():
    assert metrics.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert metrics.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert metrics.iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    heat = np.zeros((32, 32), np.float32)
    heat[4:12, 6:16] = 1.0  # a block: pixels 6..15 x 4..11
    heat[20:22, 20:22] = 0.5  # a smaller region, also above 20% of the max
    assert metrics.cam_box(heat) == (6, 4, 16, 12)  # the largest region, pixel-edge coordinates
    assert metrics.localization_hit(heat, [(6, 4, 16, 12)])
    # IoU of (6, 4, 16, 12) [80 px] with (6, 4, 16, 20) [160 px] is 0.5: a hit at 0.5, not above it
    assert metrics.localization_hit(heat, [(6, 4, 16, 20)], iou_threshold=0.5)
    assert not metrics.localization_hit(heat, [(6, 4, 16, 21)], iou_threshold=0.5)
    assert metrics.localization_hit(heat, [(100, 100, 110, 110), (6, 4, 16, 12)])  # any true box
    assert not metrics.localization_hit(np.zeros((8, 8), np.float32), [(0, 0, 8, 8)])
    # with a higher threshold the 0.5 region drops out; with 0.6 only the block stays either way
    assert metrics.cam_box(heat, threshold=0.6) == (6, 4, 16, 12)


def test_energy_in_box():
    heat = np.zeros((10, 10))
    heat[2:4, 2:4] = 1.0  # 4 units inside
    heat[8, 8] = 4.0  # 4 units outside
    assert metrics.energy_in_box(heat, [(2, 2, 4, 4)]) == pytest.approx(0.5)
    assert metrics.energy_in_box(heat, [(2, 2, 4, 4), (8, 8, 9, 9)]) == pytest.approx(1.0)
    assert metrics.energy_in_box(heat, [(2, 2, 4, 4), (2, 2, 4, 4)]) == pytest.approx(0.5)  # a union, not a sum
    mask = np.zeros((10, 10), bool)
    mask[2, 2] = True
    assert metrics.energy_in_box(heat, mask=mask) == pytest.approx(1 / 8)
    assert metrics.energy_in_box(np.zeros((4, 4)), [(0, 0, 2, 2)]) == 0.0


def test_scale_boxes_follows_a_straight_resize():
    # a 200 x 100 (W x H) image resized to 50 x 50: x / 4, y / 2
    assert metrics.scale_boxes([(20, 10, 100, 60)], (100, 200), (50, 50)) == [(5, 5, 25, 30)]


def test_spearman_and_ranks():
    assert metrics.rankdata([10, 20, 20, 5]).tolist() == [2, 3.5, 3.5, 1]
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert metrics.spearman(a, a**3) == pytest.approx(1.0)  # monotone: 1 whatever the values
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)
    # the textbook formula without ties: 1 - 6 sum d^2 / (n (n^2 - 1))
    b = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    assert metrics.spearman(a, b) == pytest.approx(1 - 6 * 4 / (5 * 24))
    assert np.isnan(metrics.spearman(a, np.ones(5)))
    # with ties: Pearson of average ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4.0])
    expected = np.corrcoef(ra, rb)[0, 1]
    assert metrics.spearman([0, 1, 1, 2], [0, 1, 2, 3]) == pytest.approx(expected)
    heat = np.random.default_rng(1).random((6, 7))
    assert metrics.spearman(heat, heat) == pytest.approx(1.0)
