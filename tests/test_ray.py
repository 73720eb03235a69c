"""onnxcam.ray and `run --ray` on a local Ray cluster (2 CPUs, started once for the module), against the plain
`onnxcam run --json --npy` on the same folder: the same records, the same maps, bad images as error rows, and
every image exactly once when an actor's process is killed in the middle of a job."""

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import CHELSEA, COFFEE, DEMO, ROOT

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'onnxcam[ray]'")
pq = pytest.importorskip("pyarrow.parquet", reason="needs the ray extra: pip install 'onnxcam[ray]'")

from onnxcam.cli import main  # noqa: E402
from onnxcam.outputs import RunOptions  # noqa: E402
from onnxcam.ray import Settings, _quantize, _tensor_column, explain_dataset  # noqa: E402

METHODS = ("gradcam", "eigencam")
BAD = {"truncated.png": None, "text.jpg": b"not a picture at all", "empty.png": b""}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Crops and resizes of the two example photos (RGB, grayscale, with alpha), and three unreadable files."""
    root = tmp_path_factory.mktemp("images")
    chelsea, coffee = cv2.imread(CHELSEA), cv2.imread(COFFEE)
    cv2.imwrite(str(root / "chelsea.png"), chelsea)
    cv2.imwrite(str(root / "coffee.jpg"), coffee)
    cv2.imwrite(str(root / "head.png"), chelsea[20:260, 80:360])
    cv2.imwrite(str(root / "cup.png"), cv2.resize(coffee[:, 100:500], (150, 120)))
    cv2.imwrite(str(root / "gray.png"), cv2.cvtColor(chelsea, cv2.COLOR_BGR2GRAY))
    small = coffee[::2, ::2]
    cv2.imwrite(str(root / "alpha.png"), np.dstack([small, np.full(small.shape[:2], 200, np.uint8)]))
    with open(CHELSEA, "rb") as f:
        BAD["truncated.png"] = f.read(300)
    for name, data in BAD.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def plain(folder, tmp_path_factory):
    """`onnxcam run --json --npy` on the folder: {image name: JSON record}, the output folder, its messages."""
    out = tmp_path_factory.mktemp("plain")
    result = CliRunner().invoke(
        main,
        [
            "run",
            DEMO,
            str(folder),
            "--methods",
            ",".join(METHODS),
            "--json",
            "--npy",
            "--pictures",
            "none",
            "--boxes",
            "all",
            "--out",
            str(out),
            "-b",
            "4",
        ],
    )
    assert result.exit_code == 1, result.output  # the three bad files
    records = {}
    for path in glob.glob(str(out / "*.grid.json")):
        with open(path) as f:
            record = json.load(f)
        records[os.path.basename(record["image"])] = record
    assert len(records) == 6
    return records, out, result.output


def _by_name(rows):
    return {(os.path.basename(r["path"]), r["method"]): r for r in rows}


def _same_record(row, record, method, boxes=False):
    """A row holds the record `run --json` wrote for its image and method (scores to float32 rounding)."""
    for key in ("model", "layers", "provider", "preprocess", "resize", "score", "units"):
        assert row[key] == record[key], key
    assert row["error"] is None
    explanation = next(e for e in record["explanations"] if e["method"] == method)
    for key in ("target", "gradients", "box", "flat"):
        assert row[key] == explanation[key], key
    if boxes:  # the row was made with --boxes all, as the record
        assert [b["box"] for b in row["boxes"]] == [b["box"] for b in explanation["boxes"]]
        for got, want in zip(row["boxes"], explanation["boxes"]):
            assert abs(got["peak"] - want["peak"]) < 1e-5 and abs(got["mean"] - want["mean"]) < 1e-5
    assert len(row["predictions"]) == len(record["predictions"])
    for got, want in zip(row["predictions"], record["predictions"]):
        assert abs(got["probability"] - want["probability"]) < 1e-5 and abs(got["logit"] - want["logit"]) < 1e-4
        # ranks may swap only between near-equal probabilities
        assert got["class"] == want["class"] or abs(got["probability"] - want["probability"]) < 1e-5
        assert got["label"] == next(
            p["label"] for p in record["predictions"] + row["predictions"] if p["class"] == got["class"]
        )


def test_cli_rows_equal_plain_run(cluster, folder, plain, tmp_path):
    records, plain_out, plain_output = plain
    out = tmp_path / "ray"
    assert {r["image"] for r in records.values()} <= set(glob.glob(str(folder / "*")))
    result = CliRunner().invoke(
        main,
        [
            "run",
            DEMO,
            str(folder),
            "--ray",
            "--methods",
            ",".join(METHODS),
            "--npy",
            "--pictures",
            "none",
            "--boxes",
            "all",
            "--out",
            str(out),
            "-b",
            "4",
            "--actors",
            "2",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "3 of 9 images failed" in result.output
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 9 * len(METHODS)
    by_name = _by_name(rows)
    assert len(by_name) == len(rows)  # each image and method once
    for name, record in records.items():
        for method in METHODS:
            row = by_name[name, method]
            _same_record(row, record, method, boxes=True)
            assert row["path"] == record["image"]
            stem = os.path.splitext(name)[0]
            assert row["outputs"] == [str(out / f"{stem}.{m}.npy") for m in METHODS]
            np.testing.assert_allclose(
                np.load(out / f"{stem}.{method}.npy"), np.load(plain_out / f"{stem}.{method}.npy"), rtol=0, atol=1e-6
            )
    for name in BAD:
        for method in METHODS:
            error = by_name[name, method]["error"]
            assert error and error in plain_output  # the message the plain run gives for that file
            assert by_name[name, method]["predictions"] is None


def test_maps_and_bytes_rows(cluster, folder, plain):
    """A dataset of file bytes (ray.data.read_binary_files) decoded in the actors; float32 maps in the rows equal
    the plain run's .npy maps within 1e-6."""
    records, plain_out, _ = plain
    ds = ray.data.read_binary_files(str(folder), include_paths=True, override_num_blocks=3)
    rows = explain_dataset(ds, DEMO, Settings(methods=METHODS, maps="float32"), batch_size=4).take_all()
    by_name = _by_name(rows)
    assert len(by_name) == len(rows) == 9 * len(METHODS)
    for name, record in records.items():
        for method in METHODS:
            row = by_name[name, method]
            _same_record(row, record, method)
            plain_map = np.load(plain_out / f"{os.path.splitext(name)[0]}.{method}.npy")
            np.testing.assert_allclose(row["map"], plain_map, rtol=0, atol=1e-6)
    assert by_name["empty.png", "gradcam"]["error"].startswith("empty image file")
    assert not by_name["text.jpg", "gradcam"]["map"].any()


def test_letterbox_rows_equal_plain_run(cluster, folder, tmp_path):
    """Explainer(resize=...) travels to the actors: letterboxed rows (boxes mapped back through the padding) equal
    `run --resize letterbox`'s records."""
    images = [str(folder / name) for name in ("cup.png", "head.png")]
    out = tmp_path / "plain"
    args = ["run", DEMO, *images, "--resize", "letterbox", "--json", "--pictures", "none", "--boxes", "all"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    ds = ray.data.from_items([{"path": p} for p in images])
    settings = Settings(options=RunOptions(pictures="none", boxes="all"))
    rows = explain_dataset(ds, DEMO, settings, explainer={"resize": "letterbox"}).take_all()
    assert len(rows) == 2
    for row in rows:
        record = json.loads((out / f"{os.path.splitext(os.path.basename(row['path']))[0]}.gradcam.json").read_text())
        assert row["resize"] == record["resize"] == "letterbox"
        _same_record(row, record, "gradcam", boxes=True)


@pytest.mark.parametrize("kind, step", [("float16", 2.0**-12), ("uint8", 0.5 / 255)])
def test_quantized_maps_round_trip_parquet(tmp_path, kind, step):
    """float16 and uint8 maps (rounded) come back from Parquet within half a step of the float32 map."""
    import pyarrow as pa

    maps = [np.random.default_rng(0).random((7, 5), np.float32), None]  # None: a failed row
    quantized = [None if m is None else _quantize(m, kind) for m in maps]
    pq.write_table(pa.table({"map": _tensor_column(quantized, (7, 5), kind)}), tmp_path / "t.parquet")
    column = pq.read_table(tmp_path / "t.parquet")["map"]
    back = column.chunk(0).to_numpy_ndarray().astype(np.float32)
    assert not back[1].any()
    back = back[0]
    np.testing.assert_allclose(back / 255 if kind == "uint8" else back, maps[0], rtol=0, atol=step * 1.0001)


def test_killed_actor_every_image_once(cluster, tmp_path):
    """The actor's process is killed once the first rows are back; Ray restarts it and reruns its batch."""
    image = cv2.imread(CHELSEA)
    paths = []
    for i in range(48):
        path = str(tmp_path / f"crop{i:02d}.png")
        cv2.imwrite(path, image[i * 2 : i * 2 + 160, i * 4 : i * 4 + 200])
        paths.append(path)
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=24)
    batches = iter(
        explain_dataset(ds, DEMO, batch_size=2, actors=1).iter_batches(batch_format="pyarrow", batch_size=None)
    )
    first = next(batches)
    seen, setups = first["path"].to_pylist(), {t["setup"] for t in first["timings_s"].to_pylist()}
    workers = _actor_processes()
    assert len(workers) == 1 and len(seen) < len(paths)
    os.kill(workers[0], signal.SIGKILL)
    later = set()
    for table in batches:
        assert table["error"].null_count == len(table)
        seen += table["path"].to_pylist()
        later |= {t["setup"] for t in table["timings_s"].to_pylist()}
    assert sorted(seen) == paths
    assert later - setups  # rows from an actor built after the kill (its own setup time): it was restarted


def _actor_processes() -> list:
    """Process ids of onnxcam.ray's actors on this machine (Ray titles them after the class)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::MapWorker(MapBatches(_Worker))"):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_gpu_fraction_caps_cuda_memory(monkeypatch):
    """num_gpus=0.25: the actor's CUDA provider gets a quarter of its GPU's memory; whole GPUs are not capped."""
    import onnxcam.ray as on_ray

    monkeypatch.setattr(on_ray, "cuda_available", lambda: True)
    monkeypatch.setattr(on_ray, "_gpu_memory", lambda: 80 << 30)
    (name, options), cpu = on_ray._providers(0.25)
    assert (name, cpu, options["device_id"], options["gpu_mem_limit"]) == (
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
        0,
        20 << 30,
    )
    assert "gpu_mem_limit" not in on_ray._providers(1)[0][1]
    assert on_ray._providers(0) is None  # CPU actors: the explainer's device option decides


def test_ray_needs_out(folder):
    result = CliRunner().invoke(main, ["run", DEMO, str(folder), "--ray"])
    assert result.exit_code == 2 and "--ray needs --out" in result.output, result.output


def test_outputs_never_replace_inputs(cluster, folder, tmp_path):
    """An input in the output folder named like another input's output is refused before anything runs. (Found in
    a folder, such a file is taken for an earlier run's output and not read; given by name, it is an input.)"""
    shutil.copytree(folder, tmp_path / "in")
    shutil.copy(tmp_path / "in" / "chelsea.png", tmp_path / "in" / "chelsea.gradcam.png")
    result = CliRunner().invoke(
        main,
        [
            "run",
            DEMO,
            str(tmp_path / "in"),
            str(tmp_path / "in" / "chelsea.gradcam.png"),
            "--ray",
            "--out",
            str(tmp_path / "in"),
        ],
    )
    assert result.exit_code == 5 and "chelsea.gradcam.png lies in the output folder" in result.output, result.output


def test_import_onnxcam_without_ray():
    """Only onnxcam.ray imports ray: the library and the CLI load without it."""
    code = (
        "import sys, onnxcam, onnxcam.cli, onnxcam.cli.run\n"
        "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
