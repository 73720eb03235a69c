"""onnxcam.outputs: the one folder reader (run and eval read the same pictures), output names, the guards, and
the per-image record against the files actually written."""

import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import hostile_files as hf
from onnxcam import names, outputs
from onnxcam.cli import main
from onnxcam.errors import ImageError, OnnxcamError


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def folder(tmp_path):
    """Pictures in three formats, an input tensor, a text file and a sub-folder (not read: no recursion)."""
    pictures = tmp_path / "in"
    (pictures / "deeper").mkdir(parents=True)
    for name in ("a.png", "b.pnm", "c.PAM", "deeper/d.png"):
        (pictures / name).write_bytes(hf.encode(os.path.splitext(name)[1].lower(), hf.picture(seed=len(name))))
    np.save(pictures / "e.npy", np.zeros((1, 3, 7, 6), np.float32))
    (pictures / "notes.txt").write_text("not an image")
    return pictures


def test_one_reader_for_run_and_eval(folder):
    run_inputs = outputs.input_paths([str(folder)])
    eval_inputs = outputs.input_paths([str(folder)], tensors=False)
    assert [os.path.basename(p) for p in run_inputs] == ["a.png", "b.pnm", "c.PAM", "e.npy"]
    assert eval_inputs == [p for p in run_inputs if not p.endswith(".npy")]
    assert outputs.input_paths(["missing.png", str(folder / "a.png")]) == ["missing.png", str(folder / "a.png")]
    empty = folder / "deeper" / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match=r"no images in the folder .*\.png, \.jpg"):
        outputs.input_paths([str(empty)])


def test_run_and_eval_explain_the_same_pictures_of_a_folder(folder, tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(hf.tiny(), str(model))
    ran = run("run", model, folder, "--pictures", "none", "--json", "--out", tmp_path / "run", "--device", "cpu")
    assert ran.exit_code == 0, ran.output
    evaluated = run("eval", model, folder, "--steps", 2, "--out", tmp_path / "eval", "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    records = [json.loads((tmp_path / "run" / f).read_text()) for f in sorted(os.listdir(tmp_path / "run"))]
    judged = json.loads((tmp_path / "eval" / "eval.json").read_text())["images"]["gradcam"]
    assert [r["image"] for r in judged] == [r["image"] for r in records if not r["image"].endswith(".npy")]
    assert len(records) == 4 and len(judged) == 3


def test_output_names_and_guards(tmp_path):
    assert outputs.output_path("in/cat.png", "gradcam.png", None) == os.path.join("in", "cat.gradcam.png")
    assert outputs.output_path("cat.png", "sanity.json", None) == os.path.join(".", "cat.sanity.json")
    assert outputs.output_path("in/cat.v2.png", "grid.jpg", "out") == os.path.join("out", "cat.v2.grid.jpg")
    image = tmp_path / "x.png"
    with pytest.raises(OnnxcamError, match="refusing to overwrite the input .*x.png; choose another -o path"):
        outputs.refuse_inputs(
            [str(tmp_path / "y.png"), str(tmp_path / "sub" / ".." / "x.png")], [str(image)], "-o path"
        )
    outputs.check_distinct_outputs(["a/cat.png", "a/cat.png", "b/dog.png"], "out")  # the same image twice is fine
    with pytest.raises(OnnxcamError, match="would write the same output files"):
        outputs.check_distinct_outputs(["a/cat.png", "b/cat.jpg"], "out")
    written = outputs.write({str(tmp_path / "new" / "deep" / "f.txt"): b"data"}, [str(image)])
    assert written == [str(tmp_path / "new" / "deep" / "f.txt")]
    assert (tmp_path / "new" / "deep" / "f.txt").read_bytes() == b"data"


def test_the_record_lists_exactly_the_files_written(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(hf.tiny(), str(model))
    image = tmp_path / "img.png"
    image.write_bytes(hf.encode(".png", hf.picture()))
    result = run("run", model, image, "--target", "top-2", "--npy", "--json", "--out", tmp_path / "out", "--top", 3)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "img.gradcam.json").read_text())
    assert sorted(os.path.basename(p) for p in record["outputs"]) == sorted(os.listdir(tmp_path / "out"))
    assert [e["target"]["class"] for e in record["explanations"]] == [p["class"] for p in record["predictions"][:2]]
    assert len(record["predictions"]) == 3 and record["score"] == "logit" and record["units"] is None
    assert record["resize"] == "stretch"  # a model that says nothing of it: a plain resize
    probabilities = [p["probability"] for p in record["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert set(record) == {
        "image",
        "model",
        "layers",
        "provider",
        "preprocess",
        "resize",
        "score",
        "predictions",
        "explanations",
        "units",
        "timings_s",
        "outputs",
    }


def test_run_options_are_typed_and_carry_the_explain_keywords():
    opts = outputs.RunOptions(score="probability", unit=("A", 1), samples=3, scorecam_channels=8)
    assert opts.explain_args() == dict(
        score="probability",
        unit=("A", 1),
        aug_smooth=False,
        eigen_smooth=False,
        samples=3,
        noise=0.15,
        seed=0,
        scorecam_channels=8,
        conf=None,
        iou=None,
        max_det=None,
        detection_target=None,
        region=None,
    )
    assert opts.max_pixels == names.DEFAULT_MAX_PIXELS and opts.pictures in names.PICTURE_FORMATS
