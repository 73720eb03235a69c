"""Ctrl-C trials: real `onnxcam` processes sent 2-3 SIGINTs at random moments, to find the runs that end
otherwise than as README promises (exit 130, one `Error:` line, no temporary file left behind): a SIGABRT
("terminate called without an active exception"), a traceback, another exit status, a leftover file.

    python tools/sigint_trials.py [--trials 200] [--jobs 3] [--resnet models/large/resnet50.onnx] [--seed 0]

Each trial picks a scenario (the commands below, with a cold or a warm session cache), the moment of the
first SIGINT (a random fraction of that scenario's uninterrupted duration, measured first) and how the
others follow: 1-2 more at random gaps of 1-300 ms, or one as soon as the first one's message appears on
stderr. It prints one line per trial that did not end as promised, then counts per scenario and outcome.
The ResNet-50 scenarios need the model (`python tools/resnet50.py`); without it they are left out.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = ROOT  # the onnxcam package under test: --source, e.g. an older commit's `git archive`
DEMO = os.path.join(ROOT, "models", "efficientnet_lite0.onnx")
CHELSEA = os.path.join(ROOT, "examples", "chelsea.png")
COFFEE = os.path.join(ROOT, "examples", "coffee.png")
TEMP_PREFIX = ".onnxcam-"


def scenarios(work: str, resnet: str | None) -> dict:
    """name -> (argv after `python -m onnxcam`, warm cache?). Outputs go to {out}, filled in per trial."""
    folder, few = os.path.join(work, "folder"), os.path.join(work, "few")
    table = {
        "run-demo-cold": (["run", DEMO, CHELSEA], False),
        "run-demo-warm": (["run", DEMO, CHELSEA], True),
        "run-folder-writer-busy": (["run", DEMO, folder, "--batch-size", "2", "--json", "--npy"], True),
        "run-scorecam": (["run", DEMO, CHELSEA, "--method", "scorecam", "--scorecam-channels", "256"], True),
        "eval": (["eval", DEMO, few, "--steps", "8"], True),
        "sanity": (["sanity", DEMO, CHELSEA, "--steps", "4"], True),
    }
    if resnet:
        table["run-resnet50-cold"] = (["run", resnet, CHELSEA, "-m", "gradcam", "-m", "gradcam++"], False)
        table["run-resnet50-warm"] = (["run", resnet, COFFEE, "-m", "gradcam", "-m", "gradcam++"], True)
    return table


def make_inputs(work: str) -> None:
    """A folder of 24 large pictures (so the background writer has work: resizing and PNG encoding) and one
    of 4 for eval."""
    big = cv2.resize(cv2.imread(CHELSEA), (1800, 1200))
    for name, count in (("folder", 24), ("few", 4)):
        os.makedirs(os.path.join(work, name))
        for i in range(count):
            cv2.imwrite(os.path.join(work, name, f"img{i:02d}.png"), big if name == "folder" else cv2.imread(CHELSEA))


def environment(work: str, cache: str) -> dict:
    return dict(os.environ, ONNXCAM_CACHE_DIR=cache, XDG_STATE_HOME=os.path.join(work, "state"), PYTHONPATH=SOURCE)


def launch(argv: list, out: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "onnxcam", *argv, "--out", out],
        cwd=SOURCE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_from_a_terminal,
    )


def _as_from_a_terminal() -> None:
    """SIGINT as a shell's foreground command gets it: a job started with `&` inherits SIGINT ignored, and
    onnxcam (as Python) leaves an ignored SIGINT ignored, which would make every trial finish."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def trial(work: str, index: int, name: str, argv: list, warm: bool, duration: float, rng: random.Random) -> dict:
    own = os.path.join(work, f"trial{index:04d}")
    out, cache = os.path.join(own, "out"), os.path.join(own, "cache")
    if warm:
        shutil.copytree(os.path.join(work, "warm-cache"), cache, copy_function=os.link)
    first = rng.uniform(0.05, 1.0) * duration
    after_message = rng.random() < 0.3
    gaps = [rng.uniform(0.001, 0.3) for _ in range(rng.choice((1, 2)))]
    proc = launch(argv, out, environment(work, cache))
    lines, said = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            said.set()

    reader = threading.Thread(target=read)
    reader.start()
    sent = 0
    time.sleep(first)
    for gap in [0.0] if after_message else [0.0, *gaps]:
        time.sleep(gap)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        sent += 1
    if after_message and proc.poll() is None:
        said.wait(30)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            sent += 1
    try:
        code = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "hung"
    reader.join()
    stderr = "".join(lines)
    left = [os.path.join(d, n) for d in (out, cache) if os.path.isdir(d) for n in os.listdir(d)]
    left = [p for p in left if os.path.basename(p).startswith(TEMP_PREFIX)]
    shutil.rmtree(own, ignore_errors=True)
    return {
        "scenario": name,
        "code": code,
        "sent": sent,
        "first_s": round(first, 3),
        "mode": "after-message" if after_message else "gaps " + ",".join(f"{g * 1000:.0f}ms" for g in gaps),
        "outcome": outcome(code, stderr, left, sent),
        "stderr": stderr,
        "left": left,
    }


def outcome(code, stderr: str, left: list, sent: int) -> str:
    """What the trial shows, worst first."""
    if code == "hung":
        return "hung"
    if code in (-signal.SIGABRT, 134) or "terminate called" in stderr:
        return "abort"
    if "Traceback" in stderr or "Exception ignored" in stderr:
        return "traceback"
    if left:
        return "temporary file left"
    if code == 0:
        return "finished first" if sent == 0 else "finished (signal too late)"
    if code != 130:
        return f"exit {code}"
    if len([line for line in stderr.splitlines() if line.strip()]) != 1 or not stderr.startswith("Error: "):
        return "not one line"
    return "ok"


def measure(work: str, table: dict) -> dict:
    """Each scenario's uninterrupted duration (a warm one first fills the shared warm cache)."""
    durations = {}
    warm_cache = os.path.join(work, "warm-cache")
    for name, (argv, warm) in table.items():
        cache = warm_cache if warm else tempfile.mkdtemp(dir=work)
        if warm:  # fill the warm cache first
            subprocess.run(
                [sys.executable, "-m", "onnxcam", *argv, "--out", os.path.join(work, "o")],
                cwd=SOURCE,
                env=environment(work, cache),
                capture_output=True,
                check=True,
            )
            cache = warm_cache
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "onnxcam", *argv, "--out", os.path.join(work, "o")],
            cwd=SOURCE,
            env=environment(work, cache),
            capture_output=True,
            text=True,
        )
        durations[name] = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"{name} fails without a signal: {done.stderr.strip()[-500:]}")
        print(f"{name:26} {durations[name]:5.1f} s uninterrupted", flush=True)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2 + 1))
    parser.add_argument("--resnet", default=os.path.join(ROOT, "models", "large", "resnet50.onnx"))
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default=ROOT, help="the checkout whose onnxcam runs (default: this one)")
    args = parser.parse_args()
    global SOURCE
    SOURCE = os.path.abspath(args.source)
    work = tempfile.mkdtemp(prefix="sigint-trials-")
    try:
        make_inputs(work)
        table = scenarios(work, args.resnet if os.path.isfile(args.resnet) else None)
        if args.only:
            table = {k: v for k, v in table.items() if k in args.only.split(",")}
        durations = measure(work, table)
        rng = random.Random(args.seed)
        plan = [(i, rng.choice(sorted(table)), random.Random(rng.random())) for i in range(args.trials)]
        counts = collections.Counter()
        started = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(trial, work, i, name, table[name][0], table[name][1], durations[name], r)
                for i, name, r in plan
            ]
            for future in futures:
                t = future.result()
                counts[t["scenario"], t["outcome"]] += 1
                if t["outcome"] not in ("ok", "finished first", "finished (signal too late)"):
                    tail = " | ".join(t["stderr"].strip().splitlines()[-3:])[:300]
                    print(
                        f"{t['scenario']:26} {t['outcome']:20} exit {t['code']} after {t['sent']} SIGINT "
                        f"(first at {t['first_s']} s, {t['mode']}) {t['left'] or ''} {tail}",
                        flush=True,
                    )
        print(f"\n{args.trials} trials in {time.perf_counter() - started:.0f} s ({args.jobs} at a time)")
        for (name, result), n in sorted(counts.items()):
            print(f"{name:26} {result:26} {n:4}")
        bad = sum(n for (_, r), n in counts.items() if r not in ("ok", "finished first", "finished (signal too late)"))
        print(f"not as promised: {bad} of {args.trials}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
