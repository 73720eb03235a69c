"""Hostile and broken inputs (issue 8): every failure is one clear line with a documented exit code, and
nothing partial or corrupt is left on disk.

CLI cases run `onnxcam.cli.main` in-process with click's CliRunner on tiny models (tests/hostile_files.py)
so that each takes milliseconds; property-based tests (hypothesis) throw random and damaged bytes at the
image and model loaders, and random attributes at the Conv / pooling backward rules.
"""

from __future__ import annotations

import builtins
import functools
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import external_data_helper

import hostile_files as hf
from conftest import DEMO, ROOT
from onnxcam import Explainer
from onnxcam.cli import main
from onnxcam.errors import ImageError, ModelError, OnnxcamError
from onnxcam.model import inspect_model, load_model
from onnxcam.preprocess import load_image, load_tensor
from tinymodels import Net, classifier, computed_resize

BOUNDED = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def files_under(folder) -> set:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names}


def assert_refused(result, code: int, message: str):
    """Exit code, a single 'Error: ' line on stderr naming the problem, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def refused_writes_nothing(tmp_path, args, code, message):
    """Run, check the refusal, and check that no file appeared anywhere under tmp_path."""
    before = files_under(tmp_path)
    result = run(*args, "--out", tmp_path / "out")
    assert_refused(result, code, message)
    assert files_under(tmp_path) == before
    return result


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(hf.encode(".png", hf.picture()))
    return path


def save(model, path):
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_path(tmp_path):
    return save(hf.tiny(), tmp_path / "tiny.onnx")


# -- models: not ONNX, truncated, corrupt -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["random bytes", "demo cut in half", "empty protobuf text", "empty file", "png"])
def test_not_an_onnx_model(tmp_path, image, kind):
    path = tmp_path / "model.onnx"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "demo cut in half":
        with open(DEMO, "rb") as f:
            path.write_bytes(f.read(os.path.getsize(DEMO) // 2))
    elif kind == "empty protobuf text":
        path.write_text("((((((")  # '(' is field 5 (model_version) as a varint: a valid, empty ModelProto
        assert onnx.load(str(path), load_external_data=False).model_version == ord("(")
    elif kind == "empty file":
        path.write_bytes(b"")
    else:
        path.write_bytes(image.read_bytes())
    refused_writes_nothing(tmp_path, ["run", path, image], 3, "not an ONNX model")
    assert_refused(run("inspect", path), 3, "not an ONNX model")


def _corrupt(kind):
    model = hf.tiny()
    nodes = {n.op_type: n for n in model.graph.node}
    if kind == "unknown op":
        nodes["Flatten"].op_type = "Flatt:n"
    elif kind == "undefined input":
        nodes["MatMul"].input[1] = "nowhere"
    elif kind == "wrong arity":
        del nodes["MatMul"].input[1]
    elif kind == "wrong attribute type":
        attr = nodes["Flatten"].attribute[0]
        attr.type, attr.i = onnx.AttributeProto.INTS, 0
    elif kind == "inference fails":
        nodes["Flatten"].attribute[0].i = 93
    elif kind == "unknown element type":
        model.graph.output[0].type.tensor_type.elem_type = 88
    elif kind == "initializer without type":
        model.graph.initializer[1].data_type = 0
    return model


@pytest.mark.parametrize(
    "kind, message",
    [
        ("unknown op", "No Op registered for Flatt:n"),
        ("undefined input", "reads 'nowhere', which no node"),
        ("wrong arity", "has input size 1 not in range"),
        ("wrong attribute type", "mismatch in attribute axis"),
        ("inference fails", "shape inference fails at Flatten node"),
        ("unknown element type", "declares element type 88"),
        ("initializer without type", "has no valid element type"),
    ],
)
def test_corrupt_graphs(tmp_path, image, kind, message):
    path = save(_corrupt(kind), tmp_path / "m.onnx")
    refused_writes_nothing(tmp_path, ["run", path, image], 3, message)


def test_names_that_are_not_text_or_hold_newlines(tmp_path, image):
    data = hf.tiny().SerializeToString().replace(b"relu_0", b"rel\xff_0")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    refused_writes_nothing(tmp_path, ["run", path, image], 3, "is not UTF-8 text")
    model = hf.vector_input()
    model.graph.input[0].name = model.graph.node[0].input[0] = "x\nError: forged second line"
    result = refused_writes_nothing(tmp_path, ["run", save(model, path), image], 3, "no image-like (4-D) input")
    assert "x\\nError: forged" in result.stderr


def test_tensor_data_that_does_not_match_its_shape(tmp_path, image):
    model = hf.tiny()
    w = next(t for t in model.graph.initializer if t.name == "conv_w")
    w.dims[0] = 10**9  # raw_data still holds 4 x 3 x 3 x 3 floats
    refused_writes_nothing(tmp_path, ["run", save(model, tmp_path / "m.onnx"), image], 3, "declares shape")


# -- models: external data --------------------------------------------------------------------------


def external_model(folder, location="w.bin"):
    """tiny() with every initializer in one external file next to it; returns the model's path."""
    folder.mkdir(exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        hf.tiny(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def edit_external(path, tensor_index=-1, **entries):
    """Rewrite the external-data entries (location, offset, length) of one tensor of the saved model."""
    model = onnx.load(str(path), load_external_data=False)
    tensors = [t for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)]
    tensor = tensors[tensor_index]
    info = {e.key: e.value for e in tensor.external_data}
    info.update({k: str(v) for k, v in entries.items()})
    del tensor.external_data[:]
    for k, v in info.items():
        tensor.external_data.add(key=k, value=v)
    onnx.save(model, str(path))
    return tensor.name


def test_external_data_loads_when_it_is_inside(tmp_path, image):
    path = external_model(tmp_path / "m")
    result = run("run", path, image, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "symlinked folder"])
def test_external_data_outside_the_folder_is_refused_before_reading(tmp_path, image, monkeypatch, how):
    path = external_model(tmp_path / "m")
    outside = tmp_path / "outside.bin"
    outside.write_bytes((tmp_path / "m" / "w.bin").read_bytes())
    if how == "absolute":
        location = str(outside)
    elif how == "dotdot":
        location = "../outside.bin"
    elif how == "symlink":
        os.symlink(outside, tmp_path / "m" / "link.bin")
        location = "link.bin"
    else:
        (tmp_path / "elsewhere").mkdir()
        os.symlink(tmp_path / "elsewhere", tmp_path / "m" / "sub")
        os.replace(outside, tmp_path / "elsewhere" / "outside.bin")
        outside = tmp_path / "elsewhere" / "outside.bin"
        location = "sub/outside.bin"
    edit_external(path, tensor_index=-1, location=location)  # the last tensor: the others are checked first

    opened, loaded = [], []
    real_open, real_os_open = builtins.open, os.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(os.fspath(f)) or real_open(f, *a, **k))
    monkeypatch.setattr(os, "open", lambda f, *a, **k: opened.append(os.fspath(f)) or real_os_open(f, *a, **k))
    monkeypatch.setattr(external_data_helper, "load_external_data_for_tensor", lambda *a: loaded.append(a))
    with pytest.raises(ModelError, match="points outside the model's folder"):
        load_model(str(path))
    assert loaded == []  # not even the tensors whose data is inside were read
    assert not any(os.path.realpath(f) == os.path.realpath(outside) for f in opened), opened
    monkeypatch.undo()
    refused_writes_nothing(tmp_path, ["run", path, image], 3, "points outside the model's folder")


@pytest.mark.parametrize(
    "edit, message",
    [
        ("missing", "is missing"),
        ("length beyond the file", "the file is truncated"),
        ("offset beyond the file", "the file is truncated"),
        ("huge dims", "declares shape"),
        ("bad offset", "non-integer offset"),
        ("a folder", "not a regular file"),
    ],
)
def test_external_data_broken(tmp_path, image, edit, message):
    path = external_model(tmp_path / "m")
    data = tmp_path / "m" / "w.bin"
    size = os.path.getsize(data)
    if edit == "missing":
        data.unlink()
    elif edit == "length beyond the file":
        edit_external(path, offset=0, length=size + 1)
    elif edit == "offset beyond the file":
        edit_external(path, offset=size + 100, length=4)
    elif edit == "bad offset":
        edit_external(path, offset="4x")
    elif edit == "a folder":
        (tmp_path / "m" / "d").mkdir()
        edit_external(path, location="d")
    else:  # initializer dims of 10^12 elements, data file untouched: refused before reading
        model = onnx.load(str(path), load_external_data=False)
        model.graph.initializer[0].dims[:] = [10**6, 10**6]
        onnx.save(model, str(path))
    refused_writes_nothing(tmp_path, ["run", path, image], 3, message)


# -- models: sizes that would exhaust memory ----------------------------------------------------------


@pytest.mark.parametrize("dims", [["N", 3, 10**9, 10**9], [10**9, 3, 7, 6], [2**40, 3, 7, 6]])
def test_huge_declared_input_is_refused(tmp_path, image, dims):
    path = save(hf.with_input_dims(hf.tiny(), dims), tmp_path / "m.onnx")
    refused_writes_nothing(tmp_path, ["run", path, image], 3, "more than onnxcam allows")


def test_huge_input_size_option_is_refused(tmp_path, image):
    path = save(hf.fully_convolutional(), tmp_path / "fcn.onnx")
    refused_writes_nothing(tmp_path, ["run", path, image, "--input-size", 16384, 16384], 3, "more than onnxcam allows")


def test_huge_intermediate_tensor_is_refused_before_onnx_runtime(tmp_path, image, monkeypatch):
    """ConstantOfShape([1e5, 1e5]): 40 GB if ONNX Runtime's constant folding ran; refused from shape inference."""
    import onnxcam.runtime

    def no_session(*args):
        raise AssertionError("an ORT session was built for a model that should have been refused")

    monkeypatch.setattr(onnxcam.runtime, "make_session", no_session)
    monkeypatch.setattr("onnxcam.cache.make_session", no_session)
    path = save(hf.with_huge_constant(hf.tiny()), tmp_path / "m.onnx")
    refused_writes_nothing(tmp_path, ["run", path, image], 3, "tensor 'huge' (output of ConstantOfShape")


# -- models: inputs, outputs, layers --------------------------------------------------------------------


def test_several_inputs(tmp_path, image):
    path = save(hf.with_second_input(hf.tiny(), feeds_scores=False), tmp_path / "two.onnx")
    refused_writes_nothing(tmp_path, ["run", path, image], 3, "choose the image one with --input NAME")
    result = run(
        "run",
        path,
        image,
        "--input",
        "x",
        "--output",
        hf.tiny().graph.output[0].name,
        "--out",
        tmp_path / "out",
        "--npy",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "img.gradcam.npy").is_file()
    refused_writes_nothing(tmp_path, ["run", path, image, "--input", "nope"], 3, "no model input named 'nope'")

    feeding = save(hf.with_second_input(hf.tiny(), feeds_scores=True), tmp_path / "feeding.onnx")
    refused_writes_nothing(tmp_path, ["run", feeding, image, "--input", "x"], 3, "also depend on input(s) y")


def test_several_outputs(tmp_path, image):
    model = hf.tiny()
    path = save(hf.with_feature_output(model), tmp_path / "two.onnx")
    refused_writes_nothing(tmp_path, ["run", path, image], 3, "choose the scores with --output NAME")
    refused_writes_nothing(tmp_path, ["run", path, image, "--output", "nope"], 3, "no model output named 'nope'")
    result = run("run", path, image, "--output", model.graph.output[0].name, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output


def test_dynamic_spatial_size_asks_for_input_size(tmp_path, image):
    path = save(hf.fully_convolutional(), tmp_path / "fcn.onnx")
    refused_writes_nothing(tmp_path, ["run", path, image], 3, "give one with --input-size HEIGHT WIDTH")
    result = run("run", path, image, "--input-size", 9, 11, "--npy", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "out" / "img.gradcam.npy").shape == (9, 11)


@pytest.mark.parametrize(
    "model, message",
    [
        (hf.vector_input, "no image-like (4-D) input; inputs: x ['N', 12]"),
        (lambda: hf.no_spatial_layer(pool_first=False), "no candidate target layer"),
        (lambda: hf.no_spatial_layer(pool_first=True), "(ops in the model: Conv, Flatten, GlobalAveragePool, MatMul)"),
    ],
)
def test_nothing_to_explain(tmp_path, image, model, message):
    path = save(model(), tmp_path / "m.onnx")
    refused_writes_nothing(tmp_path, ["run", path, image], 3, message)
    assert_refused(run("inspect", path), 3, message)


def test_resize_to_computed_sizes(tmp_path, image):
    """Sizes from Shape ops at a dynamic batch are known to inspect (data propagation), sizes from the data by
    running the model once: analytic gradients work for both."""
    for name, data_dependent in (("shape.onnx", False), ("data.onnx", True)):
        path = save(computed_resize(data_dependent=data_dependent), tmp_path / name)
        result = run("run", path, image, "--gradients", "analytic", "--out", tmp_path / "out")
        assert result.exit_code == 0 and "gradients analytic" in result.output, result.output


def test_unknown_layer_suggests_close_names(tmp_path, image, tiny_path):
    result = refused_writes_nothing(
        tmp_path, ["run", tiny_path, image, "--layer", "relu_00"], 3, "no target layer named"
    )
    assert "Did you mean: relu_0" in result.stderr


@pytest.mark.parametrize("tail, attrs", [("Softmax", {"axis": 1}), ("Sigmoid", {}), ("LogSoftmax", {"axis": 1})])
def test_probability_output_is_explained_at_the_logits(tmp_path, image, tail, attrs):
    """The gradient is seeded before the Softmax/Sigmoid: the maps equal those of the model without it."""
    plain = hf.tiny()
    with_probs = hf.with_tail(plain, tail, **attrs)
    for method in ("gradcam", "layercam", "gradcam++"):
        a = Explainer(plain, device="cpu").explain(str(image), method=method)
        b = Explainer(with_probs, device="cpu").explain(str(image), method=method)
        np.testing.assert_array_equal(a.targets, b.targets)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        np.testing.assert_allclose(a.maps, b.maps, atol=1e-6)
    path = save(with_probs, tmp_path / "probs.onnx")
    result = run("run", path, image, "--npy", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(
        np.load(tmp_path / "out" / "img.gradcam.npy"),
        Explainer(plain, device="cpu").explain(str(image)).maps[0],
        atol=1e-6,
    )
    assert "(before the output's softmax)" in run("inspect", path).output


# -- models: NaN, Inf, flat maps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, what",
    [
        (lambda n: n.op("Log", n.op("Sub", n.op("Neg", n.op("Relu", "A")), n.const(1.0))), "NaN in the class scores"),
        (lambda n: n.op("Div", "A", n.const(0.0)), "in the class scores"),
        (lambda n: n.op("Sqrt", n.op("Mul", "A", n.const(0.0))), "Inf in the gradients at 'mul_"),
    ],
)
def test_nan_or_inf_is_named(tmp_path, image, body, what):
    path = save(hf.tiny(body), tmp_path / "m.onnx")
    refused_writes_nothing(tmp_path, ["run", path, image], 1, what)


@pytest.mark.parametrize("layer", ["A", None])  # all-zero gradients at A; an all-zero map at A * 0
def test_flat_map_is_a_warning_and_finite_zeros(tmp_path, image, layer):
    model = hf.tiny(lambda n: n.op("Mul", "A", n.const(0.0)))
    res = Explainer(model, layer=layer, device="cpu").explain(str(image))
    assert res.flat.tolist() == [True]
    assert np.isfinite(res.maps).all() and not res.maps.any()
    path = save(model, tmp_path / "flat.onnx")
    args = ["run", path, image, "--out", tmp_path / "out", "--json", "--npy"] + (["--layer", layer] if layer else [])
    result = run(*args)
    assert result.exit_code == 0, result.output
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("Warning: flat map: "), result.stderr
    summary = json.loads((tmp_path / "out" / "img.gradcam.json").read_text())
    assert summary["explanations"][0]["flat"] is True and summary["explanations"][0]["box"] is None
    heat = np.load(tmp_path / "out" / "img.gradcam.npy")
    assert np.isfinite(heat).all() and not heat.any()


def test_a_normal_map_is_not_flat(tmp_path, image, tiny_path):
    assert Explainer(str(tiny_path), device="cpu").explain(str(image)).flat.tolist() == [False]
    result = run("run", tiny_path, image, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0 and "flat map" not in result.stderr
    assert json.loads((tmp_path / "out" / "img.gradcam.json").read_text())["explanations"][0]["flat"] is False


# -- images -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("text.jpg", b"this is not a picture", "not a readable image"),
        ("random.png", np.random.default_rng(1).bytes(3000), "not a readable image"),
        ("empty.png", b"", "empty image file"),
        ("truncated.png", hf.encode(".png", hf.picture())[:500], "a damaged or truncated PNG file"),
        ("truncated.jpg", hf.encode(".jpg", hf.picture())[:300], "a damaged or truncated JPEG file"),
        ("short-data.png", hf.bomb("png", 200, 200), "libpng error: Not enough image data"),
        (
            "radiance.hdr",
            b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 2\n" + b"\x00" * 16,
            "Radiance HDR images are not",
        ),
        ("zero.jpg", hf.bomb("jpg", 0, 20), "declares 0x20 pixels"),
    ],
)
def test_bad_image_files(tmp_path, tiny_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    refused_writes_nothing(tmp_path, ["run", tiny_path, path], 4, message)


def test_missing_image_and_bad_npy(tmp_path, tiny_path):
    refused_writes_nothing(tmp_path, ["run", tiny_path, tmp_path / "nope.png"], 4, "image file not found")
    bad = tmp_path / "x.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    refused_writes_nothing(tmp_path, ["run", tiny_path, bad], 4, "not a readable .npy tensor")
    np.save(tmp_path / "ints.npy", np.zeros((1, 3, 7, 6), np.int32))
    refused_writes_nothing(tmp_path, ["run", tiny_path, tmp_path / "ints.npy"], 4, "must be floating point")
    np.save(tmp_path / "objects.npy", np.array([{}, None]), allow_pickle=True)
    refused_writes_nothing(tmp_path, ["run", tiny_path, tmp_path / "objects.npy"], 4, "not a readable .npy tensor")


@pytest.mark.parametrize("kind", hf.BOMB_KINDS)
def test_decompression_bomb_is_refused_from_the_header(tmp_path, tiny_path, monkeypatch, kind):
    """50000 x 50000 declared in a few bytes: refused before OpenCV decodes (or allocates) anything."""
    import onnxcam.preprocess

    def no_decoding(*args):
        raise AssertionError("the image was handed to the decoder")

    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(hf.bomb(kind))
    assert os.path.getsize(path) < 1000
    monkeypatch.setattr(onnxcam.preprocess.cv2, "imdecode", no_decoding)
    with pytest.raises(ImageError, match="declares 50000x50000 pixels"):
        load_image(str(path))
    refused_writes_nothing(tmp_path, ["run", tiny_path, path], 4, "raise it with --max-pixels")


def test_opencv_keeps_its_own_limit_behind_ours(tmp_path, tiny_path):
    """With --max-pixels raised past it, OpenCV's OPENCV_IO_MAX_IMAGE_PIXELS (2^30 unless set before cv2 is
    imported) still refuses the bomb from its header, and the message says which knob to turn."""
    path = tmp_path / "bomb.png"
    path.write_bytes(hf.bomb("png"))
    refused_writes_nothing(
        tmp_path,
        ["run", tiny_path, path, "--max-pixels", 3 * 10**9],
        4,
        "set the environment variable OPENCV_IO_MAX_IMAGE_PIXELS",
    )


def test_a_file_too_big_for_the_pixel_limit_is_not_read(tmp_path, tiny_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.write(hf.encode(".png", hf.picture()))
        f.truncate(65 << 20)  # sparse: 65 MiB on paper, nothing on disk
    refused_writes_nothing(tmp_path, ["run", tiny_path, path, "--max-pixels", 1000], 4, "too large for an image")


def test_max_pixels_option(tmp_path, tiny_path, image):
    refused_writes_nothing(
        tmp_path, ["run", tiny_path, image, "--max-pixels", 1000], 4, "(1200), more than the limit of 1000"
    )
    result = run("run", tiny_path, image, "--max-pixels", 1200, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output


def test_grayscale_16_bit_palette_rgba_all_load(tmp_path, tiny_path):
    bgr = hf.picture()
    gray = bgr[..., 0]
    cases = {
        "gray.png": (hf.encode(".png", gray), np.dstack([gray] * 3)),
        "gray16.png": (hf.encode(".png", gray.astype(np.uint16) * 257), np.dstack([gray] * 3)),
        "rgb16.png": (hf.encode(".png", bgr.astype(np.uint16) * 257), bgr[..., ::-1]),
        "palette.png": (hf.palette_png(transparent=False), np.tile([[255, 0, 0], [0, 255, 0]], (3, 2, 1))),
        # red is transparent: composited over white; green stays
        "palette-trns.png": (hf.palette_png(transparent=True), np.tile([[255, 255, 255], [0, 255, 0]], (3, 2, 1))),
        "rgba.png": (hf.encode(".png", np.dstack([bgr, np.full(gray.shape, 255, np.uint8)])), bgr[..., ::-1]),
        "gray.jpg": (hf.encode(".jpg", gray), None),
        "rgba.webp": (hf.encode(".webp", np.dstack([bgr, np.full(gray.shape, 255, np.uint8)])), None),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        rgb = load_image(str(path))
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        if expected is not None:
            np.testing.assert_array_equal(rgb, np.uint8(expected), err_msg=name)
    result = run("run", tiny_path, *sorted(tmp_path.glob("*.png")), "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output


def test_rgba_is_composited_over_white(tmp_path):
    bgra = np.zeros((4, 6, 4), np.uint8)
    bgra[..., :3] = (0, 0, 200)  # red
    bgra[:, :2, 3] = 255  # opaque
    bgra[:, 2:4, 3] = 0  # transparent
    bgra[:, 4:, 3] = 128  # half
    path = tmp_path / "rgba.png"
    path.write_bytes(hf.encode(".png", bgra))
    rgb = load_image(str(path)).astype(int)
    assert (rgb[:, :2] == (200, 0, 0)).all()
    assert (rgb[:, 2:4] == 255).all()
    np.testing.assert_allclose(rgb[:, 4:], np.broadcast_to([227, 127, 127], (4, 2, 3)), atol=1)


@pytest.mark.parametrize(
    "orientation, turn",
    [(1, lambda a: a), (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))],
)
def test_exif_orientation_is_honoured(tmp_path, tiny_path, orientation, turn):
    """cv2.imdecode (IMREAD_COLOR) applies the EXIF Orientation tag, as cv2.imread does."""
    bgr = np.zeros((40, 60, 3), np.uint8)
    bgr[:10, :20] = 255  # a white block in the top-left corner
    path = tmp_path / "photo.jpg"
    path.write_bytes(hf.exif_jpeg(bgr, orientation))
    rgb = load_image(str(path))
    expected = turn(bgr[..., 0])
    assert rgb.shape[:2] == expected.shape
    assert np.abs(rgb[..., 0].astype(int) - expected).mean() < 8  # JPEG noise
    assert rgb.shape[:2] == cv2.imread(str(path)).shape[:2]
    result = run("run", tiny_path, path, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(tmp_path / "out" / "photo.gradcam.png")).shape[:2] == expected.shape


def test_rgba_with_exif_orientation_keeps_alpha_aligned(tmp_path):
    """IMREAD_UNCHANGED (for alpha) ignores EXIF orientation: the alpha is turned the way the colours were."""
    bgra = np.zeros((40, 60, 4), np.uint8)
    bgra[:10, :20] = (1, 0, 0, 255)  # an opaque (near-)black block top-left; the rest is transparent
    tiff = (
        b"MM\x00\x2a\x00\x00\x00\x08"
        + b"\x00\x01"
        + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
        + b"\x00\x00\x00\x00"
    )
    png = hf.encode(".png", bgra)
    path = tmp_path / "rotated.png"
    path.write_bytes(png[:33] + hf.png_chunk(b"eXIf", tiff) + png[33:])
    rgb = load_image(str(path))
    assert rgb.shape == (60, 40, 3)
    dark = rgb[..., 1] < 128
    assert dark[:20, 30:].all() and dark.sum() == 200  # the block went to the top right, and only it is opaque


# -- outputs ------------------------------------------------------------------------------------------


def test_new_outputs_get_normal_permissions(tmp_path, tiny_path, image):
    assert run("run", tiny_path, image, "--out", tmp_path / "out").exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "out" / "img.gradcam.png").st_mode & 0o777 == 0o666 & ~umask


def test_a_failing_encoder_leaves_the_old_file_intact(tmp_path, tiny_path, image, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    old = out / "img.gradcam.png"
    old.write_bytes(b"the old overlay")
    monkeypatch.setattr("cv2.imencode", lambda *a: (False, None))
    assert_refused(run("run", tiny_path, image, "--out", out, "--json"), 5, "could not encode")
    assert old.read_bytes() == b"the old overlay" and os.listdir(out) == ["img.gradcam.png"]


def test_a_write_failing_half_way_leaves_the_old_file_intact(tmp_path, tiny_path, image, monkeypatch):
    """The disk fills up after half of the PNG: the old PNG stays whole, no temp file, no JSON/npy either."""
    import onnxcam.writer

    out = tmp_path / "out"
    out.mkdir()
    old = out / "img.gradcam.png"
    old.write_bytes(b"the old overlay")
    real_open = open

    class HalfFull:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(onnxcam.writer, "open", lambda path, mode="r": HalfFull(real_open(path, mode)), raising=False)
    result = run("run", tiny_path, image, "--out", out, "--json", "--npy")
    assert_refused(result, 5, "cannot write")
    assert "No space left on device" in result.stderr
    assert old.read_bytes() == b"the old overlay" and os.listdir(out) == ["img.gradcam.png"]


def test_outputs_never_replace_an_input(tmp_path, tiny_path):
    """x.png's overlay would be x.gradcam.png: here that is another input of the batch, so x.png is refused."""
    first, second = tmp_path / "x.png", tmp_path / "x.gradcam.png"
    first.write_bytes(hf.encode(".png", hf.picture(seed=1)))
    second.write_bytes(hf.encode(".png", hf.picture(seed=2)))
    original = second.read_bytes()
    result = run("run", tiny_path, first, second)
    assert result.exit_code == 1
    assert second.read_bytes() == original
    assert "refusing to overwrite the input" in result.stderr.strip().splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == ["tiny.onnx", "x.gradcam.gradcam.png", "x.gradcam.png", "x.png"]


def test_inputs_that_would_write_the_same_outputs_are_refused_up_front(tmp_path, tiny_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "cat.png").write_bytes(hf.encode(".png", hf.picture()))
    refused_writes_nothing(
        tmp_path,
        ["run", tiny_path, tmp_path / "a" / "cat.png", tmp_path / "b" / "cat.png"],
        1,
        "would write the same output files",
    )


def test_an_unwritable_output_folder(tmp_path, tiny_path, image):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder's parent should be")
    before = files_under(tmp_path)
    assert_refused(run("run", tiny_path, image, "--out", blocker / "out"), 5, "cannot create the output folder")
    assert files_under(tmp_path) == before


# -- batches ------------------------------------------------------------------------------------------


def test_batch_reports_every_failure_and_exits_non_zero(tmp_path, tiny_path, image):
    bad = {
        "text.png": b"not a picture",
        "empty.jpg": b"",
        "bomb.png": hf.bomb("png"),
        "truncated.png": hf.encode(".png", hf.picture())[:200],
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    args = [tmp_path / "missing.png", *[tmp_path / n for n in bad], image]
    result = run("run", tiny_path, *args, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: 5 of 6 images failed: ")
    for name, why in [
        ("missing.png", "image file not found"),
        ("text.png", "not a readable image"),
        ("empty.jpg", "empty image file"),
        ("bomb.png", "--max-pixels"),
        ("truncated.png", "damaged or truncated PNG"),
    ]:
        assert f"{name}: " in last and why in last.split(f"{name}: ", 1)[1], (name, last)
    assert sorted(os.listdir(tmp_path / "out")) == ["img.gradcam.json", "img.gradcam.png"]


def _complete(folder):
    """Every file under folder is whole (decodes), and none is a temporary file."""
    for name in os.listdir(folder):
        assert not name.startswith(".onnxcam-"), name
        path = os.path.join(folder, name)
        if name.endswith(".png"):
            assert cv2.imread(path) is not None, name
        elif name.endswith(".npy"):
            np.load(path)
        elif name.endswith(".json"):
            json.loads(open(path).read())


def test_ctrl_c_in_a_batch_leaves_complete_files_and_exits_130(tmp_path, tiny_path, monkeypatch):
    images = []
    for i in range(3):
        images.append(tmp_path / f"img{i}.png")
        images[-1].write_bytes(hf.encode(".png", hf.picture(seed=i)))
    real = Explainer.explain
    calls = []

    def explain(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Explainer, "explain", explain)
    out = tmp_path / "out"
    result = run("run", tiny_path, *images, "--out", out, "--npy", "--json", "--batch-size", "1")
    assert_refused(result, 130, "interrupted (Ctrl-C) at image 2 of 3")
    assert sorted(os.listdir(out)) == ["img0.gradcam.json", "img0.gradcam.npy", "img0.gradcam.png"]
    _complete(out)


def test_ctrl_c_while_renaming_leaves_no_temporary_file(tmp_path, tiny_path, image, monkeypatch):
    import onnxcam.writer

    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(onnxcam.writer.os, "replace", replace)
    out = tmp_path / "out"
    result = run("run", tiny_path, image, "--out", out, "--npy", "--json")
    assert_refused(result, 130, "interrupted")
    assert os.listdir(out) == []  # all of the image's files or none: the one renamed is rolled back


def test_the_console_script_keeps_decoder_noise_off_the_terminal(tmp_path, tiny_path, image):
    """libpng writes its errors straight to file descriptor 2; a real process must still show one Error line."""
    (tmp_path / "short.png").write_bytes(hf.bomb("png", 300, 300))
    (tmp_path / "cut.tif").write_bytes(hf.encode(".tiff", hf.picture())[:100])
    (tmp_path / "bomb.gif").write_bytes(hf.bomb("gif"))
    cmd = [
        sys.executable,
        "-m",
        "onnxcam",
        "run",
        str(tiny_path),
        str(tmp_path / "short.png"),
        str(tmp_path / "cut.tif"),
        str(tmp_path / "bomb.gif"),
        str(image),
        "--out",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "libpng" not in done.stderr.replace("libpng error: Not enough image data)", "")  # only inside our line
    assert "WARN" not in done.stderr and "ERROR:" not in done.stderr and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith("Error: 3 of 4 images failed"), done.stderr
    assert os.listdir(tmp_path / "out") == ["img.gradcam.png"]


# -- property-based: loaders ---------------------------------------------------------------------------

_REAL = {ext: hf.encode(ext, hf.picture(12, 10)) for ext in (".png", ".jpg", ".webp", ".bmp", ".tiff", ".gif")}
_REAL[".png16"] = hf.encode(".png", hf.picture(12, 10).astype(np.uint16) * 257)
_REAL[".rgba"] = hf.encode(".png", np.dstack([hf.picture(12, 10), hf.picture(12, 10)[..., 0]]))
_REAL[".exif"] = hf.exif_jpeg(hf.picture(12, 10), 6)


def _try_image(tmp, data: bytes):
    path = os.path.join(tmp, "x.png")
    with open(path, "wb") as f:
        f.write(data)
    try:
        rgb = load_image(path, max_pixels=200_000)
    except ImageError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size > 0


@BOUNDED
@given(
    data=st.binary(max_size=3000),
    prefix=st.sampled_from(
        [
            b"",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            b"\xff\xd8",
            b"GIF89a",
            b"BM",
            b"RIFF\x00\x00\x00\x00WEBP",
            b"II*\x00",
            b"MM\x00*",
            b"P6\n",
            b"P7\n",
        ]
    ),
)
def test_image_loader_random_bytes_only_image_errors(tmp_path_factory, data, prefix):
    _try_image(tmp_path_factory.mktemp("fuzz"), prefix + data)


@BOUNDED
@given(
    kind=st.sampled_from(sorted(_REAL)),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
)
def test_image_loader_damaged_real_images_only_image_errors(tmp_path_factory, kind, cut, flips):
    data = bytearray(_REAL[kind])
    for where, value in flips:
        data[int(where * len(data))] = value
    _try_image(tmp_path_factory.mktemp("fuzz"), bytes(data[: max(1, int(cut * len(data)))]))


@BOUNDED
@given(data=st.binary(max_size=500))
def test_tensor_loader_random_bytes_only_image_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "x.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + data if data[:1] == b"\x00" else data)
    try:
        x = load_tensor(str(path))
    except ImageError:
        return
    assert x.dtype.kind == "f"


def _try_model(tmp, data: bytes, explain: bool = False):
    """load + inspect raise only ModelError; with `explain`, a whole Grad-CAM run raises only OnnxcamError."""
    path = os.path.join(tmp, "m.onnx")
    with open(path, "wb") as f:
        f.write(data)
    try:
        info = inspect_model(load_model(path))
    except ModelError:
        return
    if explain:
        try:
            Explainer(info.model, device="cpu").explain(np.zeros((7, 6, 3), np.uint8) + 99)
        except OnnxcamError:
            pass


@BOUNDED
@given(data=st.binary(max_size=2000))
def test_model_loader_random_bytes_only_model_errors(tmp_path_factory, data):
    _try_model(tmp_path_factory.mktemp("fuzz"), data)


_TINY = hf.tiny().SerializeToString()
_TINY_PROBS = hf.with_tail(hf.with_feature_output(hf.tiny()), "Softmax", axis=1).SerializeToString()


@BOUNDED
@given(
    source=st.sampled_from([_TINY, _TINY_PROBS]),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_models_only_onnxcam_errors_up_to_the_map(tmp_path_factory, source, cut, flips):
    """A few bytes changed (and, 1 time in 6, the file cut short): refused as ModelError, or explained."""
    data = bytearray(source)
    for where, value in flips:
        data[int(where * len(data))] = value
    _try_model(tmp_path_factory.mktemp("fuzz"), bytes(data[: max(1, int(cut * len(data) * 6))]), explain=True)


@pytest.fixture(scope="module")
def demo_bytes():
    with open(DEMO, "rb") as f:
        return f.read()


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    length=st.integers(1, 300_000),
    tail=st.booleans(),
    flips=st.lists(st.tuples(st.integers(0, 60_000), st.integers(0, 255)), max_size=4),
)
def test_model_loader_mutated_demo_prefixes_only_model_errors(tmp_path_factory, demo_bytes, length, tail, flips):
    """Prefixes of the real model (and, with `tail`, all of it) with a few bytes changed in its node section."""
    data = bytearray(demo_bytes if tail else demo_bytes[:length])
    for where, value in flips:
        if where < len(data):
            data[where] = value
    _try_model(tmp_path_factory.mktemp("fuzz"), bytes(data))


# -- property-based: backward rules with random attributes ----------------------------------------------


@functools.cache
def vjp_helpers():
    """check_gradients and the pooling kink helper of tests/surgery/test_vjp.py (not a package: load by path;
    loaded on first use, so that only these tests notice if that file is broken)."""
    spec = importlib.util.spec_from_file_location(
        "_vjp_for_hostile", os.path.join(ROOT, "tests", "surgery", "test_vjp.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C, H, W = 4, 7, 6  # the target layer 'A' of tinymodels


def _out_size(size, k, s, d, pb, pe, ceil=False):
    span = (k - 1) * d + 1
    return (-(-(size + pb + pe - span) // s) if ceil else (size + pb + pe - span) // s) + 1


def _every_axis_reads_input(size, k, s, d, pads, ceil=False) -> bool:
    """Some window of the op reads a real (not padding) entry along each axis: else the gradient is zero."""
    for i, n in enumerate(size):
        outputs = range(_out_size(n, k[i], s[i], d[i], pads[i], pads[i + 2], ceil))
        if not any(0 <= o * s[i] - pads[i] + j * d[i] < n for o in outputs for j in range(k[i])):
            return False
    return True


def _cropped(data, net):
    """'A' cut to a random top-left h x w (Slice, which has its own rule): random input shapes for the op."""
    h, w = data.draw(st.integers(1, H), "height"), data.draw(st.integers(1, W), "width")
    if (h, w) == (H, W):
        return "A", (h, w)
    return net.op("Slice", "A", net.ints([0, 0]), net.ints([h, w]), net.ints([2, 3])), (h, w)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_conv_rule_with_random_attributes(data):
    group = data.draw(st.sampled_from([1, 2, 4]), "group")
    per_group = data.draw(st.integers(1, 2), "out channels per group")
    k = [data.draw(st.integers(1, 3), f"k{i}") for i in range(2)]
    s = [data.draw(st.integers(1, 3), f"s{i}") for i in range(2)]
    d = [data.draw(st.integers(1, 2), f"d{i}") for i in range(2)]
    pads = [data.draw(st.integers(0, (k[i % 2] - 1) * d[i % 2] + 2), f"p{i}") for i in range(4)]  # even past the kernel
    bias = data.draw(st.booleans(), "bias")
    opset = data.draw(st.sampled_from([11, 13, 18]), "opset")
    net = Net(opset)
    x, size = _cropped(data, net)
    assume(all(_out_size(n, k[i], s[i], d[i], pads[i], pads[i + 2]) >= 1 for i, n in enumerate(size)))
    assume(_every_axis_reads_input(size, k, s, d, pads))

    out = group * per_group
    inputs = [x, net.randn(out, C // group, *k, scale=(C // group * k[0] * k[1]) ** -0.5)]
    if bias:
        inputs.append(net.randn(out, scale=0.1))
    feature = net.op("Conv", *inputs, kernel_shape=k, strides=s, dilations=d, pads=pads, group=group)
    vjp_helpers().check_gradients(classifier(net, feature))


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_pool_rules_with_random_attributes(data):
    op = data.draw(st.sampled_from(["AveragePool", "MaxPool"]), "op")
    opset = data.draw(st.sampled_from([11, 13, 19] if op == "AveragePool" else [11, 13, 16, 19]), "opset")
    k = [data.draw(st.integers(1, 3), f"k{i}") for i in range(2)]
    assume(k != [1, 1] or op == "AveragePool")
    s = [data.draw(st.integers(1, 3), f"s{i}") for i in range(2)]
    d = (
        [data.draw(st.integers(1, 2), f"d{i}") for i in range(2)]
        if opset >= (19 if op == "AveragePool" else 10)
        else [1, 1]
    )
    pads = [data.draw(st.integers(0, k[i % 2] - 1), f"p{i}") for i in range(4)]  # ORT: pads smaller than the kernel
    ceil = data.draw(st.booleans(), "ceil_mode")
    attrs = dict(kernel_shape=k, strides=s, pads=pads, ceil_mode=int(ceil))
    if d != [1, 1]:
        attrs["dilations"] = d
    if op == "AveragePool":
        attrs["count_include_pad"] = data.draw(st.integers(0, 1), "count_include_pad")
    net = Net(opset)
    x, size = _cropped(data, net)
    sizes = [_out_size(n, k[i], s[i], d[i], pads[i], pads[i + 2], ceil) for i, n in enumerate(size)]
    assume(all(o >= 1 for o in sizes))
    # ceil_mode: a last window that starts inside the right/bottom padding is dropped by ORT; keep clear of it
    assume(all((o - 1) * s[i] < size[i] + pads[i] for i, o in enumerate(sizes)))
    assume(_every_axis_reads_input(size, k, s, d, pads, ceil))

    feature = net.op(op, x, **attrs)
    kinks = []
    if op == "MaxPool":  # near-ties inside the crop's windows stay put (outside the crop nothing matters)
        ties = vjp_helpers()._pool_ties(attrs)
        h, w = size
        kinks = [lambda a, margin: np.pad(ties(a[:, :, :h, :w], margin), [(0, 0), (0, 0), (0, H - h), (0, W - w)])]
    vjp_helpers().check_gradients(classifier(net, feature), kinks=kinks)
