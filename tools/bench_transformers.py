"""Full-size vision transformers from torchvision with seeded random weights: the automatic layer onnxcam
picks, and Grad-CAM's time against a plain forward pass (interleaved medians, batch 1, CPU).

    pip install torch==2.13.0 torchvision   (imported through tools/torch_tools.py)
    python tools/bench_transformers.py [--models vit_b_16,swin_t] [--repeats 7]

vit_b_16's head is zero-initialized by torchvision: it is re-initialized here, or every class ties.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

from onnxcam import Explainer
from onnxcam.runtime import session_options

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_tools import export_onnx, import_torchvision  # noqa: E402

torchvision = import_torchvision()


def export(name: str, folder: str) -> str:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    if name.startswith("vit"):
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    path = os.path.join(folder, f"{name}.onnx")
    export_onnx(model, torch.randn(1, 3, 224, 224), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_b_16,swin_t")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("ONNXCAM_CACHE_DIR", "off")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            bench(name, export(name, folder), args.repeats)


def bench(name: str, path: str, repeats: int) -> None:
    t0 = time.perf_counter()
    ex = Explainer(path, device="cpu")
    inspected = time.perf_counter() - t0
    x = ex.prepare(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "chelsea.png"))
    plain = ort.InferenceSession(path, session_options(), providers=["CPUExecutionProvider"])
    runs = {
        "forward": lambda: plain.run(None, {"input": x}),
        "gradcam": lambda: ex.explain(x, "gradcam"),
        "gradcam, class 1": lambda: ex.explain(x, "gradcam", target=1),
    }
    for run in runs.values():
        run()  # sessions built, caches warm
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
    base = np.median(times["forward"])
    print(f"{name}: automatic layer {ex.layers[0]}  (Explainer built in {inspected:.1f} s)")
    for k, v in times.items():
        print(f"  {k:18} {np.median(v) * 1e3:8.1f} ms  {np.median(v) / base:5.2f}x the forward")


if __name__ == "__main__":
    main()
