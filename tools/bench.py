"""Time a plain ONNX Runtime forward pass against onnxcam's explanations, in one process.

    python tools/bench.py [--model M] [--image I] [--repeats 50] [--batch 1] [--methods gradcam,cam]

Prints medians and the ratio explain / forward. Both sides get the same input
tensor (image decoding excluded) and the same session options; the explain
time includes post-processing (normalize, resize).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from onnxcam import Explainer
from onnxcam.runtime import make_session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median seconds per callable, timing them in turn each round so drifts in machine load hit all alike."""
    times = {name: [] for name in fns}
    for round_ in range(repeats + 3):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if round_ >= 3:  # warm-up rounds
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "efficientnet_lite0.onnx"))
    parser.add_argument("--image", default=os.path.join(ROOT, "examples", "chelsea.png"))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="gradcam,cam")
    args = parser.parse_args()

    t0 = time.perf_counter()
    ex = Explainer(args.model, device=args.device)
    x = np.repeat(ex.prepare(args.image), args.batch, axis=0)
    methods = args.methods.split(",")
    for m in methods:  # build every session before timing anything
        ex.explain(x, method=m)
    setup = time.perf_counter() - t0
    plain = make_session(ex.info.model, ex.providers)
    feed = {ex.info.input_name: x}

    fns = {"forward": lambda: plain.run(None, feed)}
    fns.update({m: (lambda m=m: ex.explain(x, method=m)) for m in methods})
    medians = interleaved_medians(fns, args.repeats)
    print(f"model {os.path.basename(args.model)}  provider {ex.provider}  batch {args.batch}  "
          f"repeats {args.repeats}  (setup incl. surgery and sessions: {setup:.2f} s)")
    for name, t in medians.items():
        print(f"{name:10} {t * 1e3:8.2f} ms   {t / medians['forward']:.2f}x forward")


if __name__ == "__main__":
    main()
