"""Score-CAM on the K channels of largest activation mass (`--scorecam-channels K`) against the full method:
seconds per image, interleaved in one process, on the shapes benchmark's held-out images.

    python tools/make_shapes.py /tmp/shapes --count 200 --seed 3 --model models/shapes/shapes_cnn.onnx
    python tools/scorecam_channels.py /tmp/shapes [--channels 48,24,12] [--repeats 5]

The faithfulness side of the comparison comes from `onnxcam eval` on the same folder, once per K:
    onnxcam eval models/shapes/shapes_cnn.onnx /tmp/shapes -m scorecam [--scorecam-channels K] \\
        --boxes /tmp/shapes/boxes.json --out /tmp/scorecam-K
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np

from onnxcam import Explainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "shapes", "shapes_cnn.onnx"))
    parser.add_argument("--channels", default="48,24,12")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ex = Explainer(args.model, device="cpu")
    x = ex.prepare(sorted(glob.glob(os.path.join(args.folder, "*.png")))[: args.images])
    choices = [None] + [int(k) for k in args.channels.split(",")]
    full = ex.explain(x, "scorecam")
    times = {k: [] for k in choices}
    for _ in range(args.repeats):
        for k in choices:
            t0 = time.perf_counter()
            res = ex.explain(x, "scorecam", scorecam_channels=k)
            times[k].append(time.perf_counter() - t0)
            times.setdefault(
                ("corr", k), [np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(res.maps, full.maps)])]
            )
    channels = next(lay.shape[1] for lay in ex.info.layers if lay.name == ex.layers[0])
    print(f"{args.model}, layer {ex.layers[0]} ({channels} channels), {len(x)} images, medians of {args.repeats}")
    for k in choices:
        print(
            f"  channels {k or channels:>4}: {np.median(times[k]) / len(x) * 1e3:7.1f} ms an image, map correlation "
            f"with the full method {times[('corr', k)][0]:.3f}"
        )


if __name__ == "__main__":
    main()
