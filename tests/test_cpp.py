"""examples/cpp configured by CMake, built by the system compiler and run on the demo's exported models: the
C++ program's maps equal the Python API's. Skipped only where no C++ compiler or CMake exists."""

import glob
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import onnxruntime as ort
import pytest

import node_packages
from conftest import CHELSEA, COFFEE, DEMO, ROOT
from onnxcam import Explainer
from onnxcam.export import METHODS as EXPORTABLE
from onnxcam.preprocess import load_image
from onnxcam.render import overlay

EXAMPLE = os.path.join(ROOT, "examples", "cpp")
HEADERS = (1, 21)  # examples/cpp/third_party/onnxruntime: a library at least this new is needed
SHAPE = (2, 3, 224, 224)
NHWC = os.path.join(ROOT, "models", "zoo", "keras_nhwc.onnx")  # [N, 96, 96, 3], the inception preset
METHODS = sorted(EXPORTABLE)


@pytest.fixture(scope="module")
def say(request):
    """A line in the test run's own output, even under output capture: CI's log shows the build and the figures."""
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def write(line):
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.ensure_newline()
                reporter.write_line(f"test_cpp: {line}")

    return write


def _library():
    """libonnxruntime.so.1 and what it is: onnxruntime-node's (pinned by tests/node/package-lock.json; installed
    here if missing), else the one inside the installed onnxruntime wheel."""
    missing = node_packages.install()
    library = None if missing else node_packages.library()
    if library:
        with open(os.path.join(node_packages.ONNXRUNTIME_NODE, "package.json")) as f:
            return library, f"ONNX Runtime {json.load(f)['version']} (npm onnxruntime-node)"
    wheel = sorted(glob.glob(os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime.so*")))
    version = tuple(int(v) for v in ort.__version__.split(".")[:2])
    if not wheel or version < HEADERS:
        pytest.fail(
            f"no ONNX Runtime library >= {HEADERS[0]}.{HEADERS[1]} to link: onnxruntime-node is not there "
            f"({missing or 'no library for this machine'}) and the onnxruntime {ort.__version__} wheel "
            f"{'is too old' if wheel else 'ships none'}"
        )
    return wheel[0], f"ONNX Runtime {ort.__version__} (the PyPI wheel; onnxruntime-node: {missing})"


@pytest.fixture(scope="module")
def program(tmp_path_factory, say):
    """The built `explain` and whether it reads images (OpenCV found at configure time)."""
    cmake = shutil.which("cmake")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cmake is None or compiler is None:
        reason = f"no {'CMake' if cmake is None else 'C++ compiler'} on this machine: examples/cpp not built"
        say(reason)
        pytest.skip(reason)
    library, what = _library()
    # An install folder as ONNX Runtime's release archives lay it out, without headers: CMake then takes the
    # vendored ones (API 21).
    root = tmp_path_factory.mktemp("onnxruntime")
    os.makedirs(root / "lib")
    os.symlink(os.path.abspath(library), root / "lib" / "libonnxruntime.so.1")  # the library's soname
    os.symlink("libonnxruntime.so.1", root / "lib" / "libonnxruntime.so")
    build = tmp_path_factory.mktemp("build")
    steps = [
        [cmake, "-S", EXAMPLE, "-B", str(build), f"-DONNXRUNTIME_ROOT={root}", f"-DCMAKE_CXX_COMPILER={compiler}"],
        [cmake, "--build", str(build), "--parallel", "2"],
    ]
    log = ""
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600)
        log += done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(step)} failed:\n{log}"
    with_opencv = "images and PNG overlays" in log
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    say(
        f"built examples/cpp with {version}, against {what}, "
        f"{'with OpenCV' if with_opencv else 'without OpenCV (raw tensors only)'}"
    )
    for line in log.splitlines():
        if "warning" in line.lower():
            say(line)
    return str(build / "explain"), with_opencv


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The demo exported by `python -m onnxcam export` for every method, plus a --class-input required one,
    an ORT format one and an NHWC zoo model; all at once (a few seconds each)."""
    folder = tmp_path_factory.mktemp("exported")
    jobs = {m: [DEMO, "--method", m] for m in METHODS}
    jobs["required"] = [DEMO, "--method", "gradcam", "--class-input", "required"]
    jobs["ort"] = [DEMO, "--method", "layercam", "--format", "ort"]
    jobs["nhwc"] = [NHWC, "--method", "gradcam++"]
    paths = {name: str(folder / f"{name}.{'ort' if name == 'ort' else 'onnx'}") for name in jobs}
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", "onnxcam", "export", "-o", paths[name]] + args,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in jobs.items()
    }
    for name, job in running.items():
        output = job.communicate(timeout=600)[0]
        assert job.returncode == 0, f"onnxcam export {name}: {output}"
    return paths


@pytest.fixture(scope="module")
def batch(tmp_path_factory, demo_explainer):
    x = demo_explainer.prepare([CHELSEA, COFFEE])
    assert x.shape == SHAPE
    path = tmp_path_factory.mktemp("input") / "x.f32"
    x.astype("<f4").tofile(path)
    return x, str(path)


def _run(program, args, out, size=224):
    """Run `explain`; its maps [N, H, W] and the classes it printed."""
    done = subprocess.run([program] + args + ["--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    classes = [int(line.split()[3]) for line in done.stdout.splitlines() if line.startswith("image ")]
    maps = np.fromfile(f"{out}.f32", "<f4").reshape(len(classes), size, size)
    return maps, classes


@pytest.mark.parametrize("method", METHODS)
def test_cpp_map_equals_the_python_map(program, models, batch, demo_explainer, tmp_path, say, method):
    x, tensor = batch
    maps, classes = _run(program[0], [models[method], "--tensor", tensor, ",".join(map(str, SHAPE))], tmp_path / "m")
    ref = demo_explainer.explain(x, method=method)
    diff = float(np.abs(maps - ref.maps).max())
    say(
        f"{method:9s} batch of 2: C++ classes {classes}, Python {[int(t) for t in ref.targets]}, max |C++ - Python| = {diff:.1e}"
    )
    assert classes == list(ref.targets) == [285, 967]
    assert diff <= 1e-5


def test_cpp_feeds_a_chosen_class_to_a_required_class_input(program, models, batch, demo_explainer, tmp_path):
    x, tensor = batch
    args = [models["required"], "--tensor", tensor, ",".join(map(str, SHAPE)), "--class", "281"]
    maps, classes = _run(program[0], args, tmp_path / "m")
    assert classes == [281, 281]
    assert np.abs(maps - demo_explainer.explain(x, method="gradcam", target=281).maps).max() <= 1e-5
    maps, classes = _run(program[0], args[:-2], tmp_path / "top1")  # -1 fed: the top-1 classes
    assert classes == [285, 967]


def test_cpp_runs_the_ort_format(program, models, batch, demo_explainer, tmp_path, say):
    x, tensor = batch
    maps, classes = _run(program[0], [models["ort"], "--tensor", tensor, ",".join(map(str, SHAPE))], tmp_path / "m")
    diff = float(np.abs(maps - demo_explainer.explain(x, method="layercam").maps).max())
    say(f"layercam, ORT format, batch of 2: max |C++ - Python| = {diff:.1e}")
    assert classes == [285, 967] and diff <= 1e-5


def test_cpp_reads_images_and_draws_overlays(program, models, demo_explainer, tmp_path, say):
    if not program[1]:
        pytest.skip("examples/cpp was built without OpenCV (no opencv2/imgcodecs.hpp): no image input")
    maps, classes = _run(program[0], [models["gradcam"], CHELSEA, COFFEE], tmp_path / "m")
    ref = demo_explainer.explain([CHELSEA, COFFEE], method="gradcam")
    diff = float(np.abs(maps - ref.maps).max())
    say(f"gradcam from the images (C++ OpenCV preprocessing): max |C++ - Python| = {diff:.1e}")
    assert classes == [285, 967]
    # The same decode, resize and normalization as onnxcam's; another OpenCV build may round a resized pixel
    # differently, so the images' bound is looser than the tensors'.
    assert diff <= 1e-3
    for i, image in enumerate([CHELSEA, COFFEE]):
        picture = cv2.cvtColor(cv2.imread(str(tmp_path / f"m.{i}.png")), cv2.COLOR_BGR2RGB)
        rgb = load_image(image)
        expected = overlay(rgb, ref.maps[i])
        assert picture.shape == rgb.shape
        off = np.abs(picture.astype(int) - expected)
        assert off.max() <= 4 and (off > 0).mean() < 1e-3  # a resized map value may round to the next level


def test_cpp_reads_images_for_an_nhwc_model(program, models, tmp_path, say):
    if not program[1]:
        pytest.skip("examples/cpp was built without OpenCV (no opencv2/imgcodecs.hpp): no image input")
    maps, classes = _run(program[0], [models["nhwc"], CHELSEA, COFFEE], tmp_path / "m", size=96)
    ref = Explainer(NHWC, device="cpu").explain([CHELSEA, COFFEE], method="gradcam++")
    diff = float(np.abs(maps - ref.maps).max())
    say(f"gradcam++ from the images, NHWC model, inception preset: max |C++ - Python| = {diff:.1e}")
    assert classes == [int(t) for t in ref.targets] and diff <= 1e-3


def test_cpp_errors_are_one_line_and_write_nothing(program, models, batch, tmp_path):
    binary, _ = program
    x, tensor = batch
    out = tmp_path / "m"
    cases = [
        ([], 2, "no MODEL"),
        ([DEMO, "--tensor", tensor, "2,3,224,224"], 1, "is not an onnxcam export"),
        ([models["gradcam"], "--tensor", tensor, "1,3,224,224"], 1, "does not hold exactly 150528 float32 values"),
        ([models["gradcam"], "--tensor", tensor, "2,3,225,224"], 1, "does not fit the model's input ?,3,224,224"),
        ([models["gradcam"], "--tensor", tensor, "2,3,224,224", "--class", "1000"], 1, "out of range"),
        ([models["gradcam"], "--tensor", tensor, "2,x,224,224"], 2, "bad dimension 'x'"),
        ([str(tmp_path / "missing.onnx"), "--tensor", tensor, "2,3,224,224"], 1, "onnxruntime: Load model"),
    ]
    for args, status, message in cases:
        done = subprocess.run([binary] + args + ["--out", str(out)], capture_output=True, text=True, timeout=120)
        assert done.returncode == status, (args, done.stderr)
        assert done.stderr.startswith("error: ") and message in done.stderr.splitlines()[0], (args, done.stderr)
    assert os.listdir(tmp_path) == []
