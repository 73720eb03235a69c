"""Images/s of `onnxcam run DIR` against the Ray path (onnxcam.ray.run_folder) with 1 and 2 actors, same images.

    python tools/bench_ray.py                 # 512 images, demo model, Grad-CAM, 3 interleaved rounds
    python tools/bench_ray.py --images 128 --rounds 1

The images are crops and resizes of examples/ (every one different). Both sides write records only: the plain
run its --json files (--pictures none), the Ray path its Parquet table. The local Ray cluster (as many CPUs as
the machine has) starts once, before timing; a Ray job still starts its actors (each builds its Explainer
from the session cache, filled by a warm-up round), which the job's rate includes. Each contender also runs
on the first quarter of the images: the marginal rate (images added / time added) is what a long job
approaches, with the fixed cost of a job (setup, actors starting) taken out. The per-image overhead is
1 / (Ray's marginal rate) - 1 / (the plain one). Prints medians over rounds; the contenders are interleaved
so that drifts in machine load hit them alike. Last, each command once in a fresh process, as a user runs it
(`--ray` starting its own local cluster): wall time, everything included.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from onnxcam.cli import main as cli  # noqa: E402

DEMO = os.path.join(ROOT, "models", "efficientnet_lite0.onnx")


def make_images(folder: str, count: int) -> list:
    """count different pictures: random crops (40-100% of each side) of the examples, resized to 160-480 px."""
    rng = np.random.default_rng(0)
    sources = [
        cv2.imread(os.path.join(ROOT, "examples", f))
        for f in sorted(os.listdir(os.path.join(ROOT, "examples")))
        if f.endswith(".png")
    ]
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 1)), int(w * rng.uniform(0.4, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        side = int(rng.integers(160, 481))
        crop = cv2.resize(src[y : y + ch, x : x + cw], (side, max(1, side * ch // cw)), interpolation=cv2.INTER_AREA)
        paths.append(os.path.join(folder, f"{i:05d}.png"))
        cv2.imwrite(paths[-1], crop)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import ray

    from onnxcam.outputs import RunOptions
    from onnxcam.ray import Settings, run_folder

    tmp = tempfile.mkdtemp(prefix="onnxcam-bench-ray-")
    os.environ.setdefault("ONNXCAM_CACHE_DIR", os.path.join(tmp, "cache"))  # actors inherit it
    try:
        folder = os.path.join(tmp, "images")
        os.makedirs(folder)
        paths = make_images(folder, args.images)
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # Ray's C++ core logs each actor start otherwise
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False

        def plain(files):
            folder_n = os.path.join(tmp, f"plain-input-{len(files)}")
            if not os.path.isdir(folder_n):  # the first len(files) images, linked into a folder of their own
                os.makedirs(folder_n)
                for f in files:
                    os.symlink(f, os.path.join(folder_n, os.path.basename(f)))
            t0 = time.perf_counter()
            cli.main(
                [
                    "run",
                    DEMO,
                    folder_n,
                    "-b",
                    str(args.batch_size),
                    "-o",
                    os.path.join(tmp, "plain"),
                    "--json",
                    "--pictures",
                    "none",
                    "--device",
                    "cpu",
                ],
                standalone_mode=False,
            )
            return time.perf_counter() - t0

        def on_ray(actors):
            def job(files):
                t0 = time.perf_counter()
                settings = Settings(options=RunOptions(out=os.path.join(tmp, f"ray{actors}"), pictures="none"))
                _, failures = run_folder(
                    DEMO, files, settings, explainer={"device": "cpu"}, batch_size=args.batch_size, actors=actors
                )
                assert not failures
                return time.perf_counter() - t0

            return job

        contenders = {"onnxcam run DIR": plain, "ray, 1 actor": on_ray(1), "ray, 2 actors": on_ray(2)}
        few = paths[: len(paths) // 4]
        times = {name: ([], []) for name in contenders}
        for round_ in range(args.rounds + 1):  # round 0 fills the session cache and is not counted
            for name, fn in contenders.items():
                with contextlib.redirect_stdout(io.StringIO()):
                    all_, some = fn(paths), fn(few)
                if round_:
                    times[name][0].append(all_)
                    times[name][1].append(some)
        ray.shutdown()
        fresh = {}  # the commands as a user runs them: a new process, --ray starting its own local cluster
        for name, extra in (("onnxcam run DIR", ["--json"]), ("onnxcam run DIR --ray", ["--ray", "--actors", "1"])):
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "onnxcam",
                    "run",
                    DEMO,
                    folder,
                    "-b",
                    str(args.batch_size),
                    "-o",
                    os.path.join(tmp, "fresh" + str(len(fresh))),
                    "--pictures",
                    "none",
                    "--device",
                    "cpu",
                    *extra,
                ],
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
            fresh[name] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n, k = len(paths), len(few)
    print(
        f"{n} images, demo model, gradcam, batch {args.batch_size}, records only; {os.cpu_count()} CPUs; "
        f"median of {args.rounds} rounds"
    )
    rates = {}
    for name, (all_, some) in times.items():
        t_all, t_some = statistics.median(all_), statistics.median(some)
        rates[name] = (n - k) / (t_all - t_some)  # the fixed cost of a job (setup, actors starting) cancels
        fixed = t_all - n / rates[name]
        print(
            f"  {name:16} {n / t_all:6.1f} images/s for the job ({t_all:5.1f} s), {rates[name]:6.1f} images/s "
            f"marginal, {fixed:4.1f} s fixed per job"
        )
    for name, seconds in fresh.items():
        print(f"  {name:22} in a fresh process: {n / seconds:6.1f} images/s ({seconds:.1f} s wall, all included)")
    plain_rate = rates["onnxcam run DIR"]
    for name in ("ray, 1 actor", "ray, 2 actors"):
        print(
            f"  {name}: {rates[name] / plain_rate:.0%} of the plain marginal rate, "
            f"{1000 * (1 / rates[name] - 1 / plain_rate):+.2f} ms per image"
        )


if __name__ == "__main__":
    main()
