"""Seconds per image of Grad-CAM on a detector vs its plain forward pass (CPU, batch 1).

    python tools/bench_detection.py [MODEL] [--runs N]

MODEL defaults to models/detect/yolov8_tiny.onnx; the image is scikit-image's astronaut. Grad-CAM's time covers
everything `Explainer.explain` does for every detection above --conf (the forward run, the decoding, one gradient
run whose rows are the detections, the maps); the plain forward pass is one ONNX Runtime run of the model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import skimage.data

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onnxcam import Explainer  # noqa: E402

DEFAULT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "detect", "yolov8_tiny.onnx"
)


def best(fn, runs: int) -> float:
    fn()  # warm-up (builds sessions)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=DEFAULT)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--max-det", type=int, default=300, help="cap the detections explained (seeded models)")
    args = parser.parse_args()
    ex = Explainer(args.model, device="cpu")
    x = ex.prepare(skimage.data.astronaut())
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    forward = best(lambda: session.run(None, {ex.info.input_name: x}), args.runs)
    count = len(ex.explain(x, conf=args.conf, max_det=args.max_det).maps)
    one = best(lambda: ex.explain(x, conf=args.conf, max_det=1), args.runs)
    every = best(lambda: ex.explain(x, conf=args.conf, max_det=args.max_det), args.runs)
    print(f"model     {args.model}  input {list(x.shape)}  ({ex.provider}, {os.cpu_count()} CPUs)")
    print(f"forward   {forward * 1000:8.1f} ms / image")
    print(f"gradcam   {one * 1000:8.1f} ms / image  (1 detection, {one / forward:.1f}x the forward pass)")
    print(f"gradcam   {every * 1000:8.1f} ms / image  ({count} detections above --conf {args.conf}, one map each)")


if __name__ == "__main__":
    main()
