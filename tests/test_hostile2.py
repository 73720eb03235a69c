"""Hostile and careless inputs, round two (issue 14): one test per case the issue lists.

Each failed on main before the fix. Cases whose fix belongs to another part of onnxcam are marked
xfail(strict=True) with the owner in the reason: the fix flips them to a pass, and strict makes the marker
go then. References are independent of the code under test: plain ONNX Runtime sessions, brute-force pixel
counts, the file system's own view of modes and names.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import hostile_files as hf
from conftest import CHELSEA, DEMO, ROOT
from onnxcam import Explainer, cache, metrics, writer
from onnxcam.errors import ImageError, OnnxcamError, OutputError
from onnxcam.preprocess import load_image
from test_hostile import assert_refused, external_model, files_under, run, save

SMALL = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def owner(who: str):
    return pytest.mark.xfail(strict=True, reason=f"#14: {who} must fix it")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(hf.encode(".png", hf.picture()))
    return path


@pytest.fixture
def tiny_path(tmp_path):
    return save(hf.tiny(), tmp_path / "tiny.onnx")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A private cache folder and HMAC secret for this test."""
    monkeypatch.setenv("ONNXCAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "cache"


def plain_logits(model, x) -> np.ndarray:
    """The model's own output from a plain ONNX Runtime session: the independent reference."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def cli(*args, env=None, preexec_fn=None, timeout=240):
    """`python -m onnxcam ...` as a real process (signals, file descriptors, resource limits)."""
    environment = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "onnxcam", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        preexec_fn=preexec_fn,
    )


def patched_cli(patch: str, *args, env=None, timeout=240):
    """The CLI in a process where `patch` (Python source) ran first: to stop it at a chosen moment."""
    code = textwrap.dedent(patch) + "\nfrom onnxcam.cli import main\nmain(prog_name='onnxcam')\n"
    environment = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def temporaries(folder) -> list:
    return sorted(n for n in os.listdir(folder) if n.startswith(".onnxcam-")) if os.path.isdir(folder) else []


# == wrong answers with exit 0 ==============================================================================


def test_npy_with_two_rows_is_two_images(tmp_path, tiny_path):
    """Two .npy inputs, the first holding 2 images: each of the 3 images is reported with its own prediction."""
    model = hf.tiny()
    rows = np.random.default_rng(1).normal(0, 3, (3, 3, 7, 6)).astype(np.float32)
    top = plain_logits(model, rows).argmax(axis=1)
    assert len(set(top)) == 3  # a report under the wrong name shows
    np.save(tmp_path / "a.npy", rows[:2])
    np.save(tmp_path / "b.npy", rows[2:])
    result = run("run", tiny_path, tmp_path / "a.npy", tmp_path / "b.npy", "--json", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    reports = {}
    for name in os.listdir(tmp_path / "out"):
        if name.endswith(".json"):
            report = json.loads((tmp_path / "out" / name).read_text())
            reports[name] = report["predictions"][0]["class"]
    assert len(reports) == 3, reports  # one report per image, a.npy's two rows named apart
    (b_report,) = [c for name, c in reports.items() if name.startswith("b.")]
    assert b_report == top[2]
    assert [reports["a[0].gradcam.json"], reports["a[1].gradcam.json"]] == list(top[:2])  # row j: a[j]


def _external_tiny(folder, seed):
    """tiny(seed) saved with its weights in w.bin; returns (path, the model with the data in memory)."""
    folder.mkdir(exist_ok=True)
    model = hf.tiny(seed=seed)
    onnx.save_model(
        hf.copy(model),
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    return folder / "model.onnx", model


def _x():
    return np.random.default_rng(7).normal(0, 1, (2, 3, 7, 6)).astype(np.float32)


def test_cache_key_covers_external_data(tmp_path, fresh_cache):
    """New weights in model.onnx.data with model.onnx unchanged: a new entry, the new weights' scores."""
    path, _ = _external_tiny(tmp_path / "m", seed=0)
    onnx_bytes = path.read_bytes()
    Explainer(str(path), device="cpu").explain(_x())
    _, other = _external_tiny(tmp_path / "other", seed=1)
    os.replace(tmp_path / "other" / "w.bin", tmp_path / "m" / "w.bin")
    assert path.read_bytes() == onnx_bytes
    scores = Explainer(str(path), device="cpu").explain(_x()).scores
    np.testing.assert_allclose(scores, plain_logits(other, _x()), rtol=1e-5, atol=1e-5)


def test_model_replaced_while_it_is_read_cannot_poison_the_cache(tmp_path, fresh_cache, monkeypatch):
    """The model file is replaced right after onnxcam parsed it: the entry is keyed by what was parsed, so a
    later run on the new file gets the new model's scores."""
    import onnxcam.explainer

    first, second = hf.tiny(seed=0), hf.tiny(seed=1)
    path = save(first, tmp_path / "m.onnx")
    real = onnxcam.explainer.load_model

    def load_then_replace(p):
        proto = real(p)
        save(second, path)
        return proto

    monkeypatch.setattr(onnxcam.explainer, "load_model", load_then_replace)
    np.testing.assert_allclose(
        Explainer(str(path), device="cpu").explain(_x()).scores, plain_logits(first, _x()), rtol=1e-5, atol=1e-5
    )
    monkeypatch.setattr(onnxcam.explainer, "load_model", real)
    np.testing.assert_allclose(
        Explainer(str(path), device="cpu").explain(_x()).scores, plain_logits(second, _x()), rtol=1e-5, atol=1e-5
    )


def _tamper(kind, entry: str, other: str, model):
    data = bytearray(open(entry, "rb").read())
    if kind == "flipped bits":  # inside the MatMul weights: ONNX Runtime would load it without a complaint
        weights = numpy_helper.to_array(model.graph.initializer[2]).tobytes()
        at = bytes(data).find(weights[:64])
        assert at > 0
        data[at + 9] ^= 0x40
        open(entry, "wb").write(bytes(data))
    elif kind == "another method's entry":
        os.replace(other, entry)
    else:  # edited: a weight changed and the model saved again as a valid ONNX file
        start = bytes(data).find(b"onnxcam-hmac-1")
        proto = onnx.load_from_string(bytes(data[:start]) if start > 0 else bytes(data))
        for t in proto.graph.initializer:
            if list(t.dims) == [168, 10]:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 3, t.name))
        open(entry, "wb").write(proto.SerializeToString())


@pytest.mark.parametrize("kind", ["flipped bits", "another method's entry", "edited"])
def test_a_tampered_cache_entry_is_a_miss(tmp_path, fresh_cache, kind):
    """Entries are verified before ONNX Runtime loads them; a bad one is rebuilt and the answer is right."""
    model = hf.tiny()
    path = save(model, tmp_path / "m.onnx")
    reference = Explainer(model, device="cpu").explain(_x(), method="gradcam")  # in memory: never cached
    Explainer(str(path), device="cpu").explain(_x(), method="gradcam")
    before = set(os.listdir(fresh_cache))
    Explainer(str(path), device="cpu").explain(_x(), method="eigencam")
    (gradcam_entry,) = [fresh_cache / n for n in before if n.endswith(".onnx")]
    eigencam_entry = sorted(fresh_cache / n for n in set(os.listdir(fresh_cache)) - before if n.endswith(".onnx"))[0]
    _tamper(kind, str(gradcam_entry), str(eigencam_entry), model)
    again = Explainer(str(path), device="cpu").explain(_x(), method="gradcam")
    np.testing.assert_allclose(again.scores, plain_logits(model, _x()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again.maps, reference.maps, atol=1e-6)


def _integer_input(dtype, scale: float, zero: float) -> onnx.ModelProto:
    """tiny() behind x_q (dtype) -> Cast -> (x - zero) * scale, as TFLite-converted models take images."""
    m = hf.tiny()
    name = m.graph.input[0].name
    for node in m.graph.node:
        node.input[:] = ["x_real" if i == name else i for i in node.input]
    m.graph.initializer.extend(
        [numpy_helper.from_array(np.float32(scale), "q_scale"), numpy_helper.from_array(np.float32(zero), "q_zero")]
    )
    m.graph.node.insert(0, helper.make_node("Cast", [name], ["x_cast"], to=TensorProto.FLOAT))
    m.graph.node.insert(1, helper.make_node("Sub", ["x_cast", "q_zero"], ["x_shift"]))
    m.graph.node.insert(2, helper.make_node("Mul", ["x_shift", "q_scale"], ["x_real"]))
    m.graph.input[0].type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return m


@pytest.mark.parametrize("dtype, zero", [("uint8", 0.0), ("int8", -128.0)])
def test_integer_input_gets_the_pixels(dtype, zero):
    """uint8 inputs take the pixels 0..255, int8 ones pixel - 128: with scale 1/255 inside, the model sees
    pixel / 255, so scores and maps equal the float model's with the 'unit' preset (x / 255)."""
    rgb = hf.picture(seed=3)[..., ::-1].copy()
    quantized = Explainer(_integer_input(dtype, 1 / 255, zero), device="cpu")
    x = quantized.prepare(rgb)
    assert x.dtype == np.dtype(dtype) and len(np.unique(x)) > 20
    expected = Explainer(hf.tiny(), device="cpu", preprocess_preset="unit").explain(rgb)
    got = quantized.explain(rgb)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.maps, expected.maps, atol=1e-5)


def test_other_integer_input_is_refused_naming_its_dtype(tmp_path, image):
    path = save(_integer_input("int32", 1.0, 0.0), tmp_path / "m.onnx")
    result = run("run", path, image, "--out", tmp_path / "out")
    assert_refused(result, 1, "the model's image input is int32")


def _energy_reference(box, h, w) -> float:
    """Share of an all-ones map inside a box, counting pixel centres one by one."""
    x0, y0, x1, y1 = box
    inside = sum(1 for i in range(h) for j in range(w) if x0 <= j + 0.5 < x1 and y0 <= i + 0.5 < y1)
    return inside / (h * w)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=4, max_size=4))
@example([-5.0, -5.0, -1.0, -1.0])  # wholly above-left of the image: 0, not a negative slice end's wrap
def test_energy_in_box_counts_pixel_centres_in_the_box(values):
    x0, x1 = sorted(values[0::2])
    y0, y1 = sorted(values[1::2])
    if not (x1 > x0 and y1 > y0):
        return
    energy = metrics.energy_in_box(np.ones((12, 9)), [(x0, y0, x1, y1)])
    assert energy == pytest.approx(_energy_reference((x0, y0, x1, y1), 12, 9))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.one_of(st.floats(), st.integers(-(10**30), 10**30)), min_size=4, max_size=4))
def test_check_box_accepts_exactly_finite_ordered_boxes(values):
    good = all(np.isfinite(float(v)) for v in values) and values[2] > values[0] and values[3] > values[1]
    if good:
        assert metrics.check_box(values) == tuple(float(v) for v in values)
    else:
        with pytest.raises(ValueError):
            metrics.check_box(values)


def _boxes_file(tmp_path, text: str):
    path = tmp_path / "boxes.json"
    path.write_text(text)
    return path


def test_eval_refuses_a_box_with_infinity_before_the_work(tmp_path, image, tiny_path):
    boxes = _boxes_file(tmp_path, '{"img.png": [[0, 0, Infinity, 10]]}')
    result = run("eval", tiny_path, image, "--boxes", boxes, "--out", tmp_path / "out")
    assert_refused(result, 1, "not a finite number")
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_200000_deep_json(tmp_path, image, tiny_path):
    boxes = _boxes_file(tmp_path, "[" * 200_000 + "]" * 200_000)
    assert_refused(
        run("eval", tiny_path, image, "--boxes", boxes, "--out", tmp_path / "out"), 1, "cannot read the boxes file"
    )


# == files destroyed or created where they must not be ======================================================


def test_eval_never_overwrites_its_boxes_file(tmp_path, image, tiny_path):
    """`eval MODEL . --boxes eval.json` (output folder: the same): refused before the work, eval.json kept."""
    boxes = tmp_path / "eval.json"
    boxes.write_text('{"img.png": [[0, 0, 20, 20]]}')
    before = boxes.read_bytes()
    result = run("eval", tiny_path, tmp_path, "--boxes", boxes, "--out", tmp_path)
    assert_refused(result, 1, "refusing to overwrite the input")
    assert boxes.read_bytes() == before
    assert not (tmp_path / "eval.csv").exists()


def test_eval_twice_in_a_folder_never_scores_its_own_chart(tmp_path, image, tiny_path):
    for _ in range(2):
        result = run("eval", tiny_path, tmp_path, "--out", tmp_path)
        assert result.exit_code == 0, result.output
        assert "images    1" in result.output, result.output


def test_run_twice_next_to_the_images_never_explains_its_own_overlays(tmp_path, image, tiny_path):
    for _ in range(2):
        result = run("run", tiny_path, tmp_path)
        assert result.exit_code == 0, result.output
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".png")) == ["img.gradcam.png", "img.png"]


def test_export_never_overwrites_the_models_external_data(tmp_path):
    path = external_model(tmp_path / "m")
    data = tmp_path / "m" / "w.bin"
    before = data.read_bytes()
    assert_refused(run("export", path, "-o", data), 1, "refusing to overwrite the input")
    assert data.read_bytes() == before
    link = tmp_path / "m" / "alias.onnx"
    os.link(path, link)  # the model under another name
    assert_refused(run("export", path, "-o", link), 1, "refusing to overwrite the input")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_outputs_are_never_special_files(tmp_path, tiny_path, image, kind):
    node = tmp_path / "null"
    if kind == "fifo":
        os.mkfifo(node)
    else:
        try:
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a copy of /dev/null
        except PermissionError:
            pytest.skip("making a device node needs root")
    assert_refused(run("export", tiny_path, "-o", node), 5, "not a regular file")
    mode = os.lstat(node).st_mode
    assert (stat.S_ISFIFO if kind == "fifo" else stat.S_ISCHR)(mode)
    with pytest.raises(OutputError, match="not a regular file"):
        writer.write_files({str(node): b"x"})


def test_a_symlink_at_an_output_name_lends_no_mode(tmp_path, tiny_path, image):
    """The new file gets the umask's mode; the link's target (setuid here) is untouched."""
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    os.chmod(target, 0o4755)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(target, out / "img.gradcam.png")
    result = run("run", tiny_path, image, "--out", out)
    assert result.exit_code == 0, result.output
    written = out / "img.gradcam.png"
    assert not written.is_symlink() and cv2.imread(str(written)) is not None
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask
    assert target.read_bytes() == b"keep" and stat.S_IMODE(target.stat().st_mode) == 0o4755


def test_a_failed_rename_leaves_none_of_the_images_files(tmp_path, tiny_path):
    """stem.gradcam.png has 255 bytes, stem.gradcam.json 256: the JSON's rename fails after the PNG's."""
    stem = "x" * (255 - len(".gradcam.png"))
    picture = tmp_path / f"{stem}.png"
    picture.write_bytes(hf.encode(".png", hf.picture()))
    out = tmp_path / "out"
    out.mkdir()
    old = out / f"{stem}.gradcam.png"
    old.write_bytes(b"the previous run's picture")
    result = run("run", tiny_path, picture, "--json", "--out", out)
    assert result.exit_code == 5, result.output
    assert os.listdir(out) == [old.name] and old.read_bytes() == b"the previous run's picture"


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_signal_while_staging_leaves_no_temporary_file(tmp_path, tiny_path, image, signame):
    patch = f"""
        import os, signal
        real, sent = os.chmod, []
        def chmod(path, mode, **kw):
            real(path, mode, **kw)
            if ".onnxcam-" in str(path) and not sent:
                sent.append(os.kill(os.getpid(), signal.{signame}))
        os.chmod = chmod
    """
    out = tmp_path / "out"
    done = patched_cli(patch, "run", tiny_path, image, "--out", out, "--json")
    assert done.returncode == 128 + getattr(signal, signame), (done.returncode, done.stderr)
    assert f"stopped by {signame}" in done.stderr
    assert temporaries(out) == []
    assert sorted(os.listdir(out)) in ([], ["img.gradcam.json", "img.gradcam.png"])  # the set, or none of it
    assert all(os.path.getsize(out / n) > 0 for n in os.listdir(out))
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("Error: ")


def test_temporary_files_of_killed_runs_are_cleaned_by_the_next(tmp_path, tiny_path, image):
    """SIGKILL cannot be caught: the next run in that folder removes what the dead process left."""
    kill = """
        import os, signal
        real = os.chmod
        def chmod(path, mode, **kw):
            real(path, mode, **kw)
            if ".onnxcam-" in str(path):
                os.kill(os.getpid(), signal.SIGKILL)
        os.chmod = chmod
    """
    out = tmp_path / "out"
    assert patched_cli(kill, "run", tiny_path, image, "--out", out).returncode == -signal.SIGKILL
    assert len(temporaries(out)) == 1
    mine = writer.temp_file(str(out))  # a live process's (this one's) temporary file must stay
    result = run("run", tiny_path, image, "--out", out)
    assert result.exit_code == 0, result.output
    assert temporaries(out) == [os.path.basename(mine)]


def test_a_run_killed_while_building_its_first_session_leaves_no_hidden_file(tmp_path, fresh_cache):
    """Ctrl-C (or SIGKILL, or an abort) while ONNX Runtime writes the first cache entry: the interrupted run
    removes its temporary file, and a killed one's is removed by the next run."""
    interrupt = """
        import os, signal
        import onnxruntime as ort
        real = ort.InferenceSession.__init__
        def init(self, *args, **kwargs):
            if len(args) > 1 and getattr(args[1], "optimized_model_filepath", ""):
                os.kill(os.getpid(), signal.{})
            return real(self, *args, **kwargs)
        ort.InferenceSession.__init__ = init
    """
    env = {"ONNXCAM_CACHE_DIR": str(fresh_cache), "XDG_STATE_HOME": os.environ["XDG_STATE_HOME"]}
    out = tmp_path / "out"
    done = patched_cli(interrupt.format("SIGINT"), "run", DEMO, CHELSEA, "--out", out, env=env)
    assert done.returncode == 130, done.stderr
    assert temporaries(fresh_cache) == []
    done = patched_cli(interrupt.format("SIGKILL"), "run", DEMO, CHELSEA, "--out", out, env=env)
    assert done.returncode == -signal.SIGKILL
    assert len(temporaries(fresh_cache)) == 1
    done = cli("run", DEMO, CHELSEA, "--out", out, env=env)
    assert done.returncode == 0, done.stderr
    assert temporaries(fresh_cache) == []


# == tracebacks and wrong exit codes where the README promises one line =====================================


def _with_cycle():
    m = hf.tiny()
    relu, flatten = m.graph.node[1], m.graph.node[2]
    relu.op_type = "Add"
    relu.input.append(flatten.output[0])  # Add(A, flatten) -> Flatten -> back into Add
    return m


@pytest.mark.parametrize("command", ["run", "inspect"])
def test_a_graph_with_a_cycle_is_one_line(tmp_path, image, command):
    path = save(_with_cycle(), tmp_path / "m.onnx")
    args = [command, path] + ([image, "--out", tmp_path / "out"] if command == "run" else [])
    assert_refused(run(*args), 3, "the graph is not acyclic")


def _head_with(kind):
    """tiny() with a Loop (trip count 1, identity body) or a com.microsoft Gelu between Flatten and MatMul."""
    m = hf.tiny()
    flatten, matmul = m.graph.node[2], m.graph.node[3]
    if kind == "Loop":
        body = helper.make_graph(
            [
                helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                helper.make_node("Identity", ["v_in"], ["v_out"]),
            ],
            "body",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
            ],
        )
        m.graph.initializer.extend(
            [numpy_helper.from_array(np.array(1, np.int64), "trips"), numpy_helper.from_array(np.array(True), "cond")]
        )
        node = helper.make_node("Loop", ["trips", "cond", flatten.output[0]], ["looped"], body=body, name="loop")
    else:
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        node = helper.make_node("Gelu", [flatten.output[0]], ["looped"], domain="com.microsoft", name="ms_gelu")
    m.graph.node.insert(3, node)
    matmul.input[0] = "looped"
    return m


@pytest.mark.parametrize("kind", ["Loop", "com.microsoft Gelu"])
def test_an_op_without_rule_or_shape_in_the_head_is_explained_or_one_line(tmp_path, image, kind):
    """Explained (a rule, or finite differences), or refused in one line with exit 3: never a TypeError."""
    path = save(_head_with(kind), tmp_path / "m.onnx")
    result = run("run", path, image, "--out", tmp_path / "out")
    if result.exit_code != 0:
        assert_refused(result, 3, "")


@pytest.mark.skipif(
    os.environ.get("ONNXCAM_LARGE_TESTS") != "1",
    reason="writes a 2.24 GB file and needs about 8 GB of memory: set ONNXCAM_LARGE_TESTS=1",
)
def test_a_model_with_more_than_2_gb_of_external_data(tmp_path, image):
    """A valid model whose 2.24 GB initializer (zeros, a sparse file) is summed into the scores."""
    m = hf.tiny()
    logits = m.graph.output[0].name
    big = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[560_000_000])
    big.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "big.bin"), ("offset", "0"), ("length", str(560_000_000 * 4))):
        big.external_data.add(key=k, value=v)
    m.graph.initializer.append(big)
    m.graph.node.extend(
        [
            helper.make_node("ReduceSum", ["big"], ["big_sum"], keepdims=0),
            helper.make_node("Add", [logits, "big_sum"], ["scores"]),
        ]
    )
    m.graph.output[0].name = "scores"
    (tmp_path / "m").mkdir()
    onnx.save(m, str(tmp_path / "m" / "model.onnx"))
    with open(tmp_path / "m" / "big.bin", "wb") as f:
        f.truncate(560_000_000 * 4)
    assert run("inspect", tmp_path / "m" / "model.onnx").exit_code == 0
    result = run("run", tmp_path / "m" / "model.onnx", image, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output


def test_a_sparse_initializer(tmp_path, image):
    """The Conv weights as a sparse initializer (COO): static shape inference cannot see through it, yet the
    model is valid; it is explained like the dense one."""
    m = hf.fully_convolutional()
    dense = m.graph.initializer.pop(0)
    w = numpy_helper.to_array(dense)
    flat = np.flatnonzero(w)
    sparse = onnx.SparseTensorProto(
        values=numpy_helper.from_array(w.reshape(-1)[flat], dense.name),
        indices=numpy_helper.from_array(flat.astype(np.int64), "idx"),
        dims=w.shape,
    )
    m.graph.sparse_initializer.append(sparse)
    path = save(m, tmp_path / "m.onnx")
    result = run("run", path, image, "--npy", "--input-size", 9, 11, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    expected = Explainer(hf.fully_convolutional(), device="cpu", input_size=(9, 11)).explain(str(image)).maps[0]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "img.gradcam.npy"), expected, atol=1e-6)


def _one_line_or_success(result):
    if result.exit_code == 0:
        return
    assert result.exit_code in (1, 2), (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.strip().splitlines()[-1].startswith("Error: "), result.stderr


@SMALL
@given(target=st.text(min_size=1, max_size=6).filter(lambda t: not t.startswith("-")))
@example(target="²")
@example(target="top-²")
@example(target="٣")
def test_any_target_text_is_a_class_or_one_line(tmp_path, image, tiny_path, target):
    _one_line_or_success(run("run", tiny_path, image, "--target", target, "--out", tmp_path / "out"))


@pytest.mark.parametrize("target", ["99999999999999999999", "-99999999999999999999"])
def test_a_huge_target_is_one_line(tmp_path, image, tiny_path, target):
    _one_line_or_success(run("run", tiny_path, image, f"--target={target}", "--out", tmp_path / "out"))


@SMALL
@given(unit=st.text(min_size=1, max_size=4))
@example(unit="²")
def test_any_unit_index_is_a_unit_or_one_line(tmp_path, image, tiny_path, unit):
    _one_line_or_success(run("run", tiny_path, image, f"--unit=A:{unit}", "--out", tmp_path / "out"))


@pytest.mark.parametrize("command", ["run", "sanity"])
def test_a_negative_seed_is_one_line(tmp_path, image, tiny_path, command):
    method = "smoothgrad" if command == "run" else "gradcam"
    args = ["--steps", "2"] if command == "sanity" else ["--samples", "2"]
    _one_line_or_success(
        run(command, tiny_path, image, "--method", method, "--seed", "-1", *args, "--out", tmp_path / "out")
    )


@pytest.mark.parametrize("count", [1, 3])
def test_a_fixed_batch_of_two(tmp_path, count):
    path = save(hf.with_input_dims(hf.tiny(), [2, 3, 7, 6]), tmp_path / "m.onnx")
    images = []
    for i in range(count):
        images.append(tmp_path / f"img{i}.png")
        images[-1].write_bytes(hf.encode(".png", hf.picture(seed=i)))
    result = run("run", path, *images, "--out", tmp_path / "out", "--npy")
    assert result.exit_code == 0, result.output
    for i, picture in enumerate(images):
        expected = Explainer(hf.tiny(), device="cpu").explain(str(picture)).maps[0]
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"img{i}.gradcam.npy"), expected, atol=1e-6)


def test_out_pointing_at_a_file_exits_5(tmp_path, image, tiny_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_refused(run("run", tiny_path, image, "--out", blocker), 5, str(blocker))


def test_one_unreadable_image_does_not_abort_eval(tmp_path, image, tiny_path):
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    result = run("eval", tiny_path, tmp_path / "bad.png", image, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "bad.png" in result.stderr.strip().splitlines()[-1]
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["summary"]["gradcam"]["images"] == 1


# == resources and terminal ==================================================================================


def _tiled_tiff(width: int, height: int, tile: int) -> bytes:
    """A grayscale, Deflate-compressed, tiled TIFF: width x height pixels in tile x tile tiles (one given)."""
    import struct
    import zlib

    data = zlib.compress(b"\x00" * (1 << 16), 9)
    tags = {
        256: (3, width),
        257: (3, height),
        258: (3, 8),
        259: (3, 8),
        262: (3, 1),
        277: (3, 1),
        322: (4, tile),
        323: (4, tile),
        324: (4, None),
        325: (4, len(data)),
    }
    at = 8 + 2 + 12 * len(tags) + 4
    entries = b"".join(
        struct.pack("<HHI", tag, kind, 1)
        + (struct.pack("<HH", v, 0) if kind == 3 else struct.pack("<I", at if v is None else v))
        for tag, (kind, v) in sorted(tags.items())
    )
    return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + struct.pack("<I", 0) + data


def test_a_tiff_with_huge_tiles_is_refused_before_decoding(tmp_path, monkeypatch):
    """64x64 pixels in 12288x12288 tiles: OpenCV would allocate 600 MB; refused from the header."""
    path = tmp_path / "tiles.tif"
    path.write_bytes(_tiled_tiff(64, 64, 12288))
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded although the header is hostile"))
    with pytest.raises(ImageError, match="refused before decoding: .*12288x12288 pixel tiles"):
        load_image(str(path), max_pixels=5000)


def test_a_tiff_with_ordinary_tiles_still_loads(tmp_path):
    path = tmp_path / "tiles.tif"
    path.write_bytes(_tiled_tiff(64, 64, 256))
    assert load_image(str(path)).shape == (64, 64, 3)


def _full_disk(limit: int):
    """A process in which no file may grow past `limit` bytes (writes fail with EFBIG, as on a full disk)."""

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files


def test_a_full_cache_disk_never_fails_a_run(tmp_path, fresh_cache):
    env = {"ONNXCAM_CACHE_DIR": str(fresh_cache), "XDG_STATE_HOME": os.environ["XDG_STATE_HOME"]}
    done = cli(
        "run", DEMO, CHELSEA, "--out", tmp_path / "out", "--pictures", "jpg", env=env, preexec_fn=_full_disk(1 << 20)
    )
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path / "out") == ["chelsea.gradcam.jpg"]
    assert temporaries(fresh_cache) == []


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(name=st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=12))
@example(name="a\x1b[2Kb")
@example(name="\x1b[1A\x0b")
def test_names_are_printed_escaped(tmp_path, tiny_path, name):
    """A (missing) image named with escape sequences: the Error line holds no control character."""
    result = run("run", tiny_path, tmp_path / f"{name}.png", "--out", tmp_path / "out")
    assert result.exit_code == 4
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in result.stderr.rstrip("\n")), repr(result.stderr)


def test_opencv_never_prints_its_own_error_lines(tmp_path, tiny_path):
    """An image wider than JPEG allows, with --pictures jpg: one Error line, no '[ERROR:...]' of OpenCV's."""
    wide = tmp_path / "wide.png"
    wide.write_bytes(hf.encode(".png", np.zeros((1, 70_000, 3), np.uint8)))
    done = cli("run", tiny_path, wide, "--out", tmp_path / "out", "--pictures", "jpg", env={"ONNXCAM_CACHE_DIR": "off"})
    assert done.returncode == 5, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "[ERROR" not in done.stderr, done.stderr
    assert "at most 65500 pixels a side" in done.stderr


def test_no_warning_is_lost_while_images_are_decoded(tmp_path):
    """40 flat maps in batches of 4: the writer thread prints while the next batch is decoded; all 40 show."""
    path = save(hf.tiny(lambda n: n.op("Mul", "A", n.const(0.0))), tmp_path / "flat.onnx")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        (folder / f"img{i:02d}.png").write_bytes(hf.encode(".png", hf.picture(600, 800, seed=i)))
    done = cli(
        "run",
        path,
        folder,
        "--out",
        tmp_path / "out",
        "--batch-size",
        "4",
        "--pictures",
        "none",
        "--json",
        env={"ONNXCAM_CACHE_DIR": "off"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("Warning: flat map") == 40, done.stderr


# == the library's own contracts behind the cases above ====================================================


def test_onnx_runtime_messages_keep_their_telling_line(tmp_path):
    from onnxcam.runtime import ort_error_text

    fixed = hf.with_input_dims(hf.tiny(), [16, 3, 7, 6])
    session = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception) as caught:
        session.run(None, {"x": np.zeros((1, 3, 7, 6), np.float32)})
    message = ort_error_text(caught.value)
    assert "index: 0 Got: 1 Expected: 16" in message and "\n" not in message


def test_model_digest_covers_every_tensor_byte_and_field():
    model = hf.tiny()
    digest = cache.model_digest(model)
    assert digest == cache.model_digest(hf.copy(model))
    changed = hf.copy(model)
    w = changed.graph.initializer[2]
    w.raw_data = w.raw_data[:-1] + bytes([w.raw_data[-1] ^ 1])
    assert cache.model_digest(changed) != digest
    renamed = hf.copy(model)
    renamed.graph.node[1].name = "other"
    assert cache.model_digest(renamed) != digest


def test_check_target_refuses_inputs_under_any_name(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights")
    os.symlink(model, tmp_path / "link.onnx")
    os.link(model, tmp_path / "hard.onnx")
    for name in ("model.onnx", "link.onnx", "hard.onnx"):
        with pytest.raises(OnnxcamError, match="refusing to overwrite the input"):
            writer.check_target(str(tmp_path / name), [str(model)])
    writer.check_target(str(tmp_path / "new.onnx"), [str(model)])
    with pytest.raises(OutputError, match="a folder"):
        writer.write_files({str(tmp_path): b"x"})
    assert files_under(tmp_path) == {"model.onnx", "link.onnx", "hard.onnx"}


def test_a_set_is_rolled_back_when_a_rename_fails(tmp_path, monkeypatch):
    (tmp_path / "a").write_bytes(b"old a")
    real = os.replace
    monkeypatch.setattr(
        writer.os,
        "replace",
        lambda src, dst: (
            (_ for _ in ()).throw(OSError(36, "File name too long")) if str(dst).endswith("c") else real(src, dst)
        ),
    )
    with pytest.raises(OutputError, match="File name too long"):
        writer.write_files({str(tmp_path / "a"): b"new a", str(tmp_path / "b"): b"new b", str(tmp_path / "c"): b"c"})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["a"] and (tmp_path / "a").read_bytes() == b"old a"


def test_a_model_over_protobufs_limit_gets_a_session(monkeypatch):
    """runtime.make_session hands ORT the large initializers as OrtValues when the model cannot be serialized
    (here the limit is lowered so that the tiny model crosses it): the same outputs as a plain session."""
    from onnxcam import runtime

    model = hf.tiny()
    monkeypatch.setattr(runtime, "PROTOBUF_LIMIT", model.ByteSize() - 1)
    monkeypatch.setattr(runtime, "LARGE_INITIALIZER", 256)
    data, kept = runtime._within_limit(model, runtime.session_options())
    assert len(data) < model.ByteSize() // 2 and kept
    session = runtime.make_session(model, ["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": _x()})[0], plain_logits(model, _x()), rtol=1e-6, atol=1e-6)
