"""How long the command line takes to start: `onnxcam --help` and `onnxcam run --help`, against a bare interpreter.

    python tools/cli_startup.py [--repeats 15]

Runs each command in a fresh interpreter from the repository root (so this checkout's onnxcam is imported) and
prints the median and the best wall time, the median CPU time, the time `python -X importtime` gives the onnxcam
imports, and whether ONNX, ONNX Runtime, OpenCV or NumPy were loaded. On a busy machine the best wall time and
the CPU time are the steadier figures.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "onnxcam --help": ["-m", "onnxcam", "--help"],
    "onnxcam run --help": ["-m", "onnxcam", "run", "--help"],
}
HEAVY = ("onnx", "onnxruntime", "cv2", "numpy")


def timed(args: list) -> tuple:
    """(wall seconds, CPU seconds) of one run of the interpreter with args."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_profile(args: list) -> tuple:
    """(milliseconds the onnxcam imports take, the heavy modules imported) from python -X importtime."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args], cwd=ROOT, check=True, capture_output=True, text=True
    )
    own, heavy = 0, set()
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if match is None:
            continue
        name = match[4]
        if name.split(".")[0] in HEAVY:
            heavy.add(name.split(".")[0])
        if name.startswith("onnxcam") and not match[3]:  # top-level imports only: cumulative times nest
            own += int(match[2])
    return own / 1000, sorted(heavy)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"{'command':22} {'wall median':>11} {'wall best':>9} {'CPU median':>10} {'onnxcam imports':>15}  heavy")
    for label, command in COMMANDS.items():
        runs = [timed(command) for _ in range(args.repeats)]
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        imports, heavy = import_profile(command) if command[0] == "-m" else (0.0, [])
        print(
            f"{label:22} {statistics.median(walls):10.3f}s {min(walls):8.3f}s {statistics.median(cpus):9.3f}s "
            f"{imports:13.1f}ms  {', '.join(heavy) or 'none'}"
        )


if __name__ == "__main__":
    main()
