"""Seconds per image of Grad-CAM on segmentation models against their plain forward pass (issue #18's closing
note), ONNX Runtime on the CPU, batch 1.

    python tools/bench_segmentation.py                           # the committed small FCN and DBNet text detector
    python tools/bench_segmentation.py --torchvision fcn_resnet50 deeplabv3_resnet50 --size 520

Each model: the plain forward (an ONNX Runtime session of the file as is) and onnxcam's Grad-CAM for the default
class over its predicted region (maps in the graph, the default; and in NumPy from A and dScore/dA), on the same
prepared input tensor, medians of interleaved rounds after a warm-up. --torchvision builds seeded torchvision
models with tools/make_segmentation_fixtures.py (needs torch) into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

import onnx  # noqa: E402

from onnxcam import Explainer  # noqa: E402
from onnxcam.runtime import make_session  # noqa: E402

MODELS = {  # name -> (path, input size, preprocessing)
    "fcn_small": (os.path.join(ROOT, "models", "segment", "fcn_small.onnx"), None, None),
    "ppocr_det": (os.path.join(ROOT, "models", "real", "ch_PP-OCRv4_det_infer.onnx"), (640, 640), "inception"),
}


def bench(name: str, path: str, size, preset, rounds: int) -> None:
    from skimage import data

    ex = Explainer(path, device="cpu", input_size=size, preprocess_preset=preset)
    numpy_path = Explainer(path, device="cpu", input_size=size, preprocess_preset=preset, maps_in_graph=False)
    x = ex.prepare(data.astronaut())
    plain = make_session(onnx.load(path), ["CPUExecutionProvider"])
    contenders = {
        "forward": lambda: plain.run(None, {ex.info.input_name: x}),
        "gradcam": lambda: ex.explain(x, "gradcam"),
        "gradcam (NumPy maps)": lambda: numpy_path.explain(x, "gradcam"),
    }
    times = {k: [] for k in contenders}
    for round_ in range(rounds + 1):
        for k, run in contenders.items():
            t0 = time.perf_counter()
            run()
            if round_:  # round 0 warms up (and builds the sessions)
                times[k].append(time.perf_counter() - t0)
    forward = statistics.median(times["forward"])
    print(f"{name}  input {list(x.shape)}  output {list(ex.info.logits_shape[1:])}  layer {ex.layers[0]}")
    for k, ts in times.items():
        t = statistics.median(ts)
        print(f"  {k:22} {t:8.4f} s/image  {t / forward:6.2f} x forward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--torchvision", nargs="*", default=[], help="fcn_resnet50, deeplabv3_resnet50")
    parser.add_argument("--size", type=int, default=520, help="--torchvision: input size")
    args = parser.parse_args()
    print(f"onnxruntime on the CPU, batch 1, medians of {args.rounds} rounds")
    for name, (path, size, preset) in MODELS.items():
        bench(name, path, size, preset, args.rounds)
    if args.torchvision:
        from make_segmentation_fixtures import calibrate, export, full_model, photographs

        with tempfile.TemporaryDirectory() as folder:
            for kind in args.torchvision:
                model, x = full_model(kind), photographs(args.size)
                calibrate(model, x)
                path = os.path.join(folder, f"{kind}.onnx")
                export(model, x, path)
                bench(kind, path, None, None, args.rounds)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
