"""CAM's own localization: postprocess.boxes / mask against maps whose regions are known in closed form, and
`run --boxes all --masks` end to end (boxes in image pixels, masks recomputed from the written .npy map)."""

import json
import os

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import hostile_files as hf
from conftest import CHELSEA, DEMO
from onnxcam import metrics, outputs, postprocess, report
from onnxcam.cli import main
from onnxcam.errors import OnnxcamError


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def blobs() -> np.ndarray:
    """A 100 x 120 map with four regions above 20% of its max (1.0), and one just under it."""
    heat = np.zeros((100, 120), np.float32)
    heat[10:30, 5:45] = 0.5  # 40 x 20 = 800 px, rows 10..29, columns 5..44
    heat[12, 20] = 1.0  # its peak
    heat[50:60, 60:75] = np.linspace(0.3, 0.9, 15)  # 15 x 10 = 150 px, mean 0.6, peak 0.9
    heat[80:84, 100:104] = 0.25  # 16 px
    heat[90:93, 10:13] = 0.4  # 9 px: under 0.1% of the 12000 pixels
    heat[70:80, 10:20] = 0.19  # under the threshold: no region
    return heat


def test_every_region_is_boxed_with_its_extent_area_peak_and_mean():
    found = postprocess.boxes(blobs(), 0.2)
    assert [r.box for r in found] == [(5, 10, 44, 29), (60, 50, 74, 59), (100, 80, 103, 83)]  # inclusive, x first
    assert [r.area for r in found] == [800, 150, 16]  # largest first
    assert [r.peak for r in found] == pytest.approx([1.0, 0.9, 0.25])
    assert [r.mean for r in found] == pytest.approx([(799 * 0.5 + 1.0) / 800, 0.6, 0.25], rel=1e-6)
    assert found[0].record() == {"box": [5, 10, 44, 29], "area": 800, "peak": found[0].peak, "mean": found[0].mean}


def test_the_largest_alone_is_cam_s_box_and_the_first_of_all():
    heat = blobs()
    assert [r.box for r in postprocess.boxes(heat, 0.2, every=False)] == [(5, 10, 44, 29)]
    assert postprocess.box(heat, 0.2) == (5, 10, 44, 29) == postprocess.boxes(heat, 0.2)[0].box
    assert metrics.cam_box(heat, 0.2) == (5, 10, 45, 30)  # the same box in pixel-edge coordinates
    # at 0.75 the ramp's columns 71..74 (0.77 .. 0.9) and the lone peak pixel remain: the pixel, not the
    # largest and under 0.1%, is dropped
    assert [r.box for r in postprocess.boxes(heat, 0.75)] == [(71, 50, 74, 59)]


def test_threshold_is_a_fraction_of_the_max_and_inclusive():
    heat = blobs()
    assert postprocess.boxes(heat, 0.25)[-1].box == (100, 80, 103, 83)  # 0.25 >= 0.25 * 1.0: in
    assert len(postprocess.boxes(heat, 0.26)) == 2  # and out just above
    found = postprocess.boxes(heat, 0.18)  # the 0.19 block joins (100 px: third); the 9 px block stays out
    assert [r.box for r in found] == [(5, 10, 44, 29), (60, 50, 74, 59), (10, 70, 19, 79), (100, 80, 103, 83)]
    assert [r.box for r in postprocess.boxes(heat * 7, 0.2)] == [r.box for r in postprocess.boxes(heat, 0.2)]
    assert postprocess.boxes(heat, 0.0)[0].box == (0, 0, 119, 99)  # every pixel: the whole map


def test_small_regions_are_dropped_but_the_largest_always_stays():
    heat = np.zeros((100, 100), np.float32)
    heat[5, 5] = 1.0  # the only region: 1 px, under MIN_REGION (10 px here), still CAM's box
    assert [r.box for r in postprocess.boxes(heat)] == [(5, 5, 5, 5)]
    heat[50:52, 50:55] = 1.0  # 10 px = exactly 0.1%: kept, and now the largest
    heat[90, 90:99] = 1.0  # 9 px: dropped
    assert [r.box for r in postprocess.boxes(heat)] == [(50, 50, 54, 51)]
    assert postprocess.MIN_REGION * heat.size == 10


def test_eight_connectivity_and_the_order_of_equal_areas():
    heat = np.zeros((20, 20), np.float32)
    heat[2:4, 2:4] = heat[4:6, 4:6] = 1.0  # touching at a corner: one region of 8 px
    heat[10:12, 15:17] = heat[10:12, 8:10] = heat[15:17, 0:2] = 1.0  # 4 px each: higher first, then more left
    assert [r.box for r in postprocess.boxes(heat)] == [(2, 2, 5, 5), (8, 10, 9, 11), (15, 10, 16, 11), (0, 15, 1, 16)]


@pytest.mark.parametrize(
    "heat",
    [np.zeros((9, 7), np.float32), -np.ones((9, 7), np.float32), np.full((9, 7), np.nan, np.float32)],
    ids=["zero", "negative", "nan"],
)
def test_a_map_without_a_positive_max_has_no_region(heat):
    assert postprocess.boxes(heat) == [] and postprocess.boxes(heat, every=False) == []
    assert postprocess.box(heat) is None
    on = postprocess.mask(heat)
    assert on.shape == (9, 7) and on.dtype == bool and not on.any()


def test_the_mask_is_every_pixel_at_or_above_the_threshold():
    heat = blobs()
    on = postprocess.mask(heat, 0.2)
    expected = np.zeros(heat.shape, bool)
    for y0, y1, x0, x1 in [(10, 30, 5, 45), (50, 60, 60, 75), (80, 84, 100, 104), (90, 93, 10, 13)]:
        expected[y0:y1, x0:x1] = True  # the small region too: a mask keeps every thresholded pixel
    assert np.array_equal(on, expected)


def test_box_modes_are_checked():
    with pytest.raises(OnnxcamError, match="unknown box mode 'every'; choose one of largest, all"):
        outputs.RunOptions(boxes="every")
    assert outputs.is_own_output("cat.gradcam.mask.png") and outputs.is_own_output("cat.cam.c3.mask.png")


# -- run end to end ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_cats(tmp_path_factory):
    """Chelsea twice, a grey gap between: the demo model's Grad-CAM has one region per cat above half its max
    (the gap's column maxima stay under 0.42 for the cat classes)."""
    cat = cv2.resize(cv2.imread(CHELSEA), (224, 150))
    path = tmp_path_factory.mktemp("two") / "two.png"
    cv2.imwrite(str(path), np.hstack([cat, np.full((150, 120, 3), 127, np.uint8), cat]))
    return path


def test_run_boxes_every_cat_and_writes_masks(tmp_path, two_cats):
    out = tmp_path / "out"
    args = ["run", DEMO, two_cats, "--out", out, "--target", 285, "--box-threshold", 0.5, "--device", "cpu"]
    result = run(*args, "--boxes", "all", "--masks", "--json", "--npy")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == [f"two.gradcam.{x}" for x in ("json", "mask.png", "npy", "png")]
    record = json.loads((out / "two.gradcam.json").read_text())
    (entry,) = record["explanations"]
    assert entry["mask"] == str(out / "two.gradcam.mask.png") and entry["mask"] in record["outputs"]
    left, right = entry["boxes"]
    assert entry["box"] == left["box"]
    assert left["box"][2] < 284 <= right["box"][0] and right["box"][2] < 568  # one per cat, image pixels
    assert left["area"] >= right["area"] and all(r["peak"] >= r["mean"] >= 0.5 for r in entry["boxes"])
    lines = [line for line in result.output.splitlines() if line.strip().startswith("box ")]
    assert len(lines) == 2 and f"box {left['box']}  area {left['area']}" in lines[0]

    # the mask is the written map, resized to the image, at >= half its max (recomputed here from the .npy)
    mask = cv2.imread(str(out / "two.gradcam.mask.png"), cv2.IMREAD_UNCHANGED)
    heat = cv2.resize(np.load(out / "two.gradcam.npy"), (568, 150))
    assert mask.shape == (150, 568) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask == 255, heat >= 0.5 * heat.max())
    for r in entry["boxes"]:
        x0, y0, x1, y1 = r["box"]
        assert (mask[y0 : y1 + 1, x0 : x1 + 1] == 255).sum() >= r["area"]

    # the report (run --report) shows every box
    item = report.run_item(str(out), "two.gradcam.json", record, set(os.listdir(out)))
    assert item["problems"] == [] and item["explanations"][0]["boxes"] == [left["box"], right["box"]]

    # the default: CAM's one box, no list; the same largest box
    result = run(*args, "--json", "--pictures", "none")
    (default,) = json.loads((out / "two.gradcam.json").read_text())["explanations"]
    assert result.exit_code == 0 and "boxes" not in default and "mask" not in default
    assert default["box"] == left["box"]


def test_masks_alone_are_enough_to_write(tmp_path, two_cats):
    result = run("run", DEMO, two_cats, "--out", tmp_path, "--pictures", "none", "--masks", "--target", "top-2")
    assert result.exit_code == 0, result.output
    assert len(os.listdir(tmp_path)) == 2 and all(f.endswith(".mask.png") for f in os.listdir(tmp_path))


def test_a_flat_map_has_no_boxes_and_an_empty_mask(tmp_path):
    model = tmp_path / "flat.onnx"
    onnx.save(hf.tiny(lambda n: n.op("Mul", "A", n.const(0.0))), str(model))
    image = tmp_path / "img.png"
    image.write_bytes(hf.encode(".png", hf.picture()))
    result = run("run", model, image, "--out", tmp_path / "out", "--boxes", "all", "--masks", "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "out" / "img.gradcam.json").read_text())["explanations"]
    assert entry["flat"] is True and entry["box"] is None and entry["boxes"] == []
    mask = cv2.imread(str(tmp_path / "out" / "img.gradcam.mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (30, 40) and not mask.any()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--boxes", "every"], "Invalid value for '--boxes': 'every' is not one of 'largest', 'all'."),
        (["--box-threshold", "1.5"], "Invalid value for '--box-threshold'"),
        (["--box-threshold", "-0.1"], "Invalid value for '--box-threshold'"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, two_cats, option, message):
    result = run("run", DEMO, two_cats, "--out", tmp_path / "out", *option)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ") and message in result.stderr
    assert not (tmp_path / "out").exists()
