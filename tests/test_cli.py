"""The command line end to end: outputs, messages, exit codes, and nothing written on failure."""

import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CAT_CLASSES, CHELSEA, CHELSEA_CAT_BOX, DEMO, ROOT
from onnxcam.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_run_on_the_demo_writes_overlay_npy_json(tmp_path):
    result = run("run", DEMO, CHELSEA, "--out", tmp_path, "--npy", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    for line in (
        "provider  CPUExecutionProvider",
        "layer     /_head_act/Clip_output_0",
        "method    gradcam  gradients analytic",
        "Egyptian cat",
        "explain   285  Egyptian cat  [gradcam]",
    ):
        assert line in result.output
    assert sorted(os.listdir(tmp_path)) == ["chelsea.gradcam.json", "chelsea.gradcam.npy", "chelsea.gradcam.png"]

    image = cv2.imread(CHELSEA)
    overlay = cv2.imread(str(tmp_path / "chelsea.gradcam.png"))
    assert overlay.shape == image.shape

    summary = json.loads((tmp_path / "chelsea.gradcam.json").read_text())
    (entry,) = summary["explanations"]
    assert entry["target"]["class"] in CAT_CLASSES
    assert summary["predictions"][0]["class"] == entry["target"]["class"]
    assert len(summary["predictions"]) == 5
    assert entry["method"] == "gradcam" and entry["gradients"] == "analytic"
    assert summary["provider"] == "CPUExecutionProvider"
    assert summary["layers"] == ["/_head_act/Clip_output_0"] and summary["preprocess"] == "lite"
    assert summary["timings_s"]["image"] > 0

    heat = np.load(tmp_path / "chelsea.gradcam.npy")
    assert heat.shape == (224, 224) and heat.dtype == np.float32
    h, w = image.shape[:2]
    y, x = np.unravel_index(cv2.resize(heat, (w, h)).argmax(), (h, w))
    x0, y0, x1, y1 = CHELSEA_CAT_BOX
    assert x0 <= x <= x1 and y0 <= y <= y1


def test_files_go_next_to_the_image_by_default(tmp_path):
    image = tmp_path / "cat.png"
    shutil.copy(CHELSEA, image)
    result = run("run", DEMO, image, "--method", "cam", "--target", "tabby")
    assert result.exit_code == 0, result.output
    assert "explain   281  tabby  [cam]" in result.output
    assert (tmp_path / "cat.cam.png").is_file()


def test_npy_input_tensor(tmp_path, demo_explainer):
    tensor = tmp_path / "x.npy"
    np.save(tensor, demo_explainer.prepare(CHELSEA))
    result = run("run", DEMO, tensor, "--npy")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "x.gradcam.npy").shape == (224, 224)


def test_inspect_and_methods():
    result = run("inspect", DEMO)
    assert result.exit_code == 0, result.output
    assert "input       input  [N, 3, 224, 224]  NCHW  float32" in result.output
    assert "logits      logits  1000 classes" in result.output
    assert "automatic layer  /_head_act/Clip_output_0" in result.output
    result = run("methods")
    assert result.exit_code == 0 and "gradcam" in result.output and "cam" in result.output


def _bad_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    return {
        "missing model": (["run", tmp_path / "nope.onnx", CHELSEA], 3, "model file not found"),
        "missing image": (["run", DEMO, tmp_path / "nope.png"], 4, "image file not found"),
        "non-image": (["run", DEMO, text], 4, "not a readable image"),
        "empty image": (["run", DEMO, empty], 4, "empty image file"),
        "non-onnx": (["run", not_onnx, CHELSEA], 3, "not an ONNX model"),
        "unknown layer": (["run", DEMO, CHELSEA, "--layer", "/_head_act/Clip_out"], 3, "no target layer named"),
        "bad target": (["run", DEMO, CHELSEA, "--target", "5000"], 1, "out of range"),
        "unknown class": (["run", DEMO, CHELSEA, "--target", "unicorn"], 1, "unknown class name"),
        "unknown method": (["run", DEMO, CHELSEA, "--method", "magic"], 1, "unknown method"),
    }


CASES = [
    "missing model",
    "missing image",
    "non-image",
    "empty image",
    "non-onnx",
    "unknown layer",
    "bad target",
    "unknown class",
    "unknown method",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    args, code, message = _bad_files(tmp_path)[case]
    out = tmp_path / "out"
    before = set(os.listdir(tmp_path))
    result = run(*args, "--out", out)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert set(os.listdir(tmp_path)) - before <= {"out"}
    assert not out.exists() or os.listdir(out) == []


def test_batch_goes_on_past_a_bad_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    result = run("run", DEMO, bad, CHELSEA, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert os.listdir(tmp_path / "out") == ["chelsea.gradcam.png"]
    assert "1 of 2 images failed" in result.stderr and "bad.png: not a readable image" in result.stderr


def test_a_failed_write_fails_that_image_only(tmp_path):
    """Outputs are written in the background while the next batch is explained: a write that fails
    there (the overlay's path is taken by a folder) is reported for its image, and the rest go on."""
    images = tmp_path / "in"
    images.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(CHELSEA, images / f"{name}.png")
    (tmp_path / "out" / "b.gradcam.png").mkdir(parents=True)
    result = run("run", DEMO, images, "--out", tmp_path / "out", "-b", "1")
    assert result.exit_code == 1, result.output
    assert sorted(os.listdir(tmp_path / "out")) == ["a.gradcam.png", "b.gradcam.png", "c.gradcam.png"]
    assert os.path.isdir(tmp_path / "out" / "b.gradcam.png")
    assert "1 of 3 images failed" in result.stderr and "b.png: " in result.stderr
    assert result.output.index("a.png") < result.output.index("c.png")  # reports keep their order


def test_readme_example_runs_as_a_console_script(tmp_path):
    """The README's first example, through the installed entry point: no traceback, files written."""
    cmd = [
        sys.executable,
        "-m",
        "onnxcam",
        "run",
        "models/efficientnet_lite0.onnx",
        "examples/chelsea.png",
        "--out",
        str(tmp_path),
        "--json",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # ORT's provider probing stays quiet
    assert "explain   285  Egyptian cat  [gradcam]" in done.stdout
    assert sorted(os.listdir(tmp_path)) == ["chelsea.gradcam.json", "chelsea.gradcam.png"]
    # the README shows this output: every line as printed, but the provider (the machine's), the box (a pixel at
    # the threshold may move with the CPU's rounding) and the output folder
    readme = (
        open(os.path.join(ROOT, "README.md")).read().split("## First example")[1].split("```")[3].strip().splitlines()
    )

    def stable(line):
        return re.sub(r"box \[.*\]", "box", line.replace(str(tmp_path), "out"))

    shown = [stable(line) for line in done.stdout.strip().splitlines() if not line.startswith("provider")]
    assert shown == [stable(line) for line in readme if not line.startswith("provider")]


def test_methods_grid_top_k_units_and_boxes(tmp_path):
    result = run(
        "run", DEMO, CHELSEA, "--out", tmp_path, "--methods", "gradcam,layercam,eigencam", "--units", "4", "--json"
    )
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["chelsea.grid.json", "chelsea.grid.png", "chelsea.units.png"]
    summary = json.loads((tmp_path / "chelsea.grid.json").read_text())
    assert [e["method"] for e in summary["explanations"]] == ["gradcam", "layercam", "eigencam"]
    x0, y0, x1, y1 = summary["explanations"][0]["box"]
    assert 0 <= x0 < x1 < 451 and 0 <= y0 < y1 < 300  # input-image pixels
    assert len(summary["units"]) == 4

    result = run("run", DEMO, CHELSEA, "--out", tmp_path / "k", "--target", "top-3", "--npy")
    assert result.exit_code == 0, result.output
    files = sorted(os.listdir(tmp_path / "k"))
    assert files == sorted(f"chelsea.gradcam.c{c}.{ext}" for c in (285, 282, 281) for ext in ("png", "npy"))
    assert not np.array_equal(np.load(tmp_path / "k" / files[0]), np.load(tmp_path / "k" / files[2]))


def test_unit_and_input_level_methods(tmp_path):
    result = run("run", DEMO, CHELSEA, "--out", tmp_path, "--unit", "/_head_act/Clip_output_0:7")
    assert result.exit_code == 0, result.output
    result = run("run", DEMO, CHELSEA, "--out", tmp_path, "-m", "guided-backprop")
    assert result.exit_code == 0, result.output
    assert {"chelsea.guided-backprop.png", "chelsea.guided-backprop.saliency.png"} <= set(os.listdir(tmp_path))
    result = run("run", DEMO, CHELSEA, "--out", tmp_path, "--unit", "nonsense")
    assert result.exit_code == 1 and "--unit takes LAYER:K" in result.stderr


def test_a_folder_in_batches_equals_images_one_by_one(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, src in (("a.png", CHELSEA), ("b.png", os.path.join(ROOT, "examples", "coffee.png")), ("c.png", CHELSEA)):
        shutil.copy(src, folder / name)
    (folder / "broken.jpg").write_text("not a picture")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    result = run("run", DEMO, folder, "--out", tmp_path / "batched", "--batch-size", "2", "--npy")
    assert result.exit_code == 1 and "1 of 4 images failed" in result.stderr and "broken.jpg" in result.stderr
    single = run("run", DEMO, folder / "b.png", "--out", tmp_path / "single", "--npy")
    assert single.exit_code == 0, single.output
    batched = np.load(tmp_path / "batched" / "b.gradcam.npy")
    assert np.abs(batched - np.load(tmp_path / "single" / "b.gradcam.npy")).max() < 1e-5
    assert sorted(f for f in os.listdir(tmp_path / "batched") if f.endswith(".png")) == [
        "a.gradcam.png",
        "b.gradcam.png",
        "c.gradcam.png",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("run", DEMO, empty)
    assert result.exit_code == 4 and "no images in the folder" in result.stderr


def test_progress_names_the_many_run_loop_on_a_terminal(tmp_path, monkeypatch):
    """On a terminal, even one image gets a bar once Score-CAM's masked-input runs start, and the bar
    counts them up to all K channels; off a terminal (this runner's default) nothing is drawn."""
    import onnxcam.cli.options as options_module

    model = os.path.join(ROOT, "models", "zoo", "resnet.onnx")
    quiet = run("run", model, CHELSEA, "-m", "scorecam", "-o", tmp_path / "a")
    assert quiet.exit_code == 0, quiet.output
    assert "masked inputs" not in quiet.stderr
    monkeypatch.setattr(options_module, "_is_terminal", lambda stream: True)
    shown = run("run", model, CHELSEA, "-m", "scorecam", "-o", tmp_path / "b")
    assert shown.exit_code == 0, shown.output
    from onnxcam.model import inspect_model, load_model

    channels = inspect_model(load_model(model)).auto_layer.shape[1]
    assert f"explaining [masked inputs {channels}/{channels}]" in shown.stderr


def test_explainer_reports_each_many_run_loop():
    from onnxcam import Explainer

    ex = Explainer(os.path.join(ROOT, "models", "zoo", "resnet.onnx"), device="cpu")
    calls = []
    ex.progress = lambda what, done, total: calls.append((what, done, total))
    ex.explain([CHELSEA, CHELSEA], "scorecam")
    ex.explain(CHELSEA, "ablationcam")
    ex.explain(CHELSEA, "smoothgrad", samples=3)
    Explainer(ex.info.model, device="cpu", gradients="fd").explain(CHELSEA, "gradcam")  # no callback set: silent
    ex.gradients = "fd"
    ex.explain(CHELSEA, "xgradcam")
    k = ex.info.auto_layer.shape[1]
    for what, total in (
        ("masked inputs", 2 * k),
        ("ablated channels", k),
        ("noisy samples", 3),
        ("finite differences", k),
    ):
        done = [d for w, d, t in calls if w == what]
        assert done == sorted(done) and done[-1] == total and {t for w, _, t in calls if w == what} == {total}, what


def test_pictures_none_writes_only_the_numbers_and_jpg_overlays(tmp_path):
    """For large folders: no pictures drawn (or JPEG ones), the maps and boxes are those of a normal run."""
    full = run("run", DEMO, CHELSEA, "--json", "--npy", "--out", tmp_path / "full")
    lean = run("run", DEMO, CHELSEA, "--json", "--npy", "--pictures", "none", "--out", tmp_path / "lean")
    assert full.exit_code == lean.exit_code == 0, lean.output
    assert sorted(os.listdir(tmp_path / "lean")) == ["chelsea.gradcam.json", "chelsea.gradcam.npy"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "full" / "chelsea.gradcam.npy"), np.load(tmp_path / "lean" / "chelsea.gradcam.npy")
    )
    boxes = [
        json.loads((tmp_path / d / "chelsea.gradcam.json").read_text())["explanations"][0]["box"]
        for d in ("full", "lean")
    ]
    assert boxes[0] == boxes[1] is not None
    refused = run("run", DEMO, CHELSEA, "--pictures", "none", "--out", tmp_path / "none")
    assert refused.exit_code == 2 and "--pictures none leaves nothing to write" in refused.stderr
    assert not (tmp_path / "none").exists()
    jpg = run(
        "run", DEMO, CHELSEA, "--pictures", "jpg", "--methods", "gradcam,guided-backprop", "--out", tmp_path / "jpg"
    )
    assert jpg.exit_code == 0, jpg.output
    assert sorted(os.listdir(tmp_path / "jpg")) == ["chelsea.grid.jpg", "chelsea.guided-backprop.saliency.jpg"]
    png = cv2.imread(str(tmp_path / "full" / "chelsea.gradcam.png"))
    grid = cv2.imread(str(tmp_path / "jpg" / "chelsea.grid.jpg"))
    assert grid is not None and grid.shape[0] == 224 + 22 and png.shape == (300, 451, 3)


@pytest.fixture
def tiny(tmp_path):
    """A 10-class model that records no preprocessing and no class names, and a picture for it."""
    import onnx

    import hostile_files as hf

    onnx.save(hf.tiny(), str(tmp_path / "tiny.onnx"))
    (tmp_path / "img.png").write_bytes(hf.encode(".png", hf.picture()))
    return tmp_path / "tiny.onnx", tmp_path / "img.png"


def test_the_banner_says_when_the_preprocessing_is_assumed(tmp_path, tiny):
    model, image = tiny
    assumed = run("run", model, image, "--out", tmp_path / "a")
    assert assumed.exit_code == 0, assumed.output
    lines = assumed.output.splitlines()
    assert lines[:3] == [f"model     {model}", "provider  CPUExecutionProvider", "layer     relu_0  [N, 4, 7, 6]"]
    assert lines[3].startswith("preprocess imagenet (assumed: the model records no preprocessing")
    assert lines[4].startswith("method    gradcam  gradients ")
    chosen = run("run", model, image, "--preprocess", "unit", "--out", tmp_path / "b")
    recorded = run("run", DEMO, CHELSEA, "--out", tmp_path / "c")
    assert chosen.exit_code == recorded.exit_code == 0
    assert "assumed" not in chosen.output and "assumed" not in recorded.output
    for command in (
        ["eval", model, image, "--steps", 2, "--out", tmp_path / "d"],
        ["sanity", model, image, "--steps", 1, "--out", tmp_path / "e"],
    ):
        result = run(*command)
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[:5] == lines[:5], command[0]  # one banner for every command


def test_numbers_that_are_class_names_target_those_classes(tmp_path, tiny):
    """Labels 9, 8, ..., 0: `--target 3` is the class named 3 (index 6); index:3 is the index."""
    model, image = tiny
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{9 - k}\n" for k in range(10)))
    named = run("run", model, image, "--labels", labels, "--target", "3", "--out", tmp_path / "o")
    assert named.exit_code == 0, named.output
    assert "explain   6  3  [gradcam]" in named.output
    indexed = run("run", model, image, "--labels", labels, "--target", "index:3", "--out", tmp_path / "o")
    assert "explain   3  6  [gradcam]" in indexed.output
    refused = run("run", model, image, "--labels", labels, "--target", "12", "--out", tmp_path / "o")
    assert refused.exit_code == 1 and "or index:12 for the class index 12" in refused.stderr
    plain = run("run", model, image, "--target", "3", "--out", tmp_path / "p")  # no names: 3 is the index
    assert plain.exit_code == 0 and "explain   3  class 3  [gradcam]" in plain.output


def test_one_method_grammar_in_every_command(tmp_path, tiny):
    model, image = tiny
    commas = run("run", model, image, "-m", "gradcam,layercam", "--out", tmp_path / "a")
    repeated = run("run", model, image, "-m", "gradcam", "-m", "layercam", "--out", tmp_path / "b")
    legacy = run("run", model, image, "--methods", "gradcam,layercam", "--out", tmp_path / "c")
    for result, folder in ((commas, "a"), (repeated, "b"), (legacy, "c")):
        assert result.exit_code == 0, result.output
        assert os.listdir(tmp_path / folder) == ["img.grid.png"]
    evaluated = run("eval", model, image, "-m", "gradcampp,xgradcam", "--steps", 2, "--out", tmp_path / "d")
    assert evaluated.exit_code == 0, evaluated.output
    assert list(json.loads((tmp_path / "d" / "eval.json").read_text())["summary"]) == ["gradcam++", "xgradcam"]
    exported = run("export", model, "-o", tmp_path / "m.onnx", "-m", "gradcampp")
    assert exported.exit_code == 0 and "method    gradcam++ at relu_0" in exported.output
    for bad in (["-m", "scorecam"], ["-m", "gradcam,cam"], ["-m", "magic"]):
        refused = run("export", model, "-o", tmp_path / "n.onnx", *bad)
        assert refused.exit_code == 1 and refused.stderr.startswith("Error: "), refused.output
    assert not (tmp_path / "n.onnx").exists()
    sanity = run("sanity", model, image, "--target", "top-2", "--out", tmp_path / "e")
    assert sanity.exit_code == 1 and "sanity explains one class" in sanity.stderr
