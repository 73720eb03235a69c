"""The CUDA path end to end: maps equal to the CPU's, and timings, on the demo and ResNet-50.

    python tools/gpu_check.py                          # on a machine with a GPU
    python tools/gpu_check.py --device cpu --batches 1,2 --repeats 2 --resnet50 skip   # dry run of every path here

For each model: every in-graph method (the maps computed inside the ONNX graph) and the exported model
(`onnxcam export`, one per in-graph method) run on the device and on the CPU, for the top-1 class and
for an explicit class; a method passes when no map entry differs by more than --tolerance (1e-4) and
the classes explained agree. Then medians of interleaved runs at each batch size: the plain forward
pass, Grad-CAM and Guided Grad-CAM (the Python API, results back in NumPy), and the exported Grad-CAM
model; with IO binding (the input copied to the device once, outputs left there) for the plain forward
and the exported model, the runs a GPU client would make. Prints one table per model.

Exit status: 0 when every map matches, 1 when one does not, 2 when CUDA cannot start (with
--device cuda, the default). `--device cpu` runs the same code with the CPU standing in for the
device: a dry run of the script on machines without a GPU (its comparisons are then CPU vs CPU).
ResNet-50 is models/large/resnet50.onnx, built by tools/resnet50.py when missing (needs torch).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]  # this checkout's onnxcam, and bench.py's timing helper
os.environ.setdefault("ONNXCAM_CACHE_DIR", "off")  # time and compare fresh sessions, write nothing

import onnxruntime as ort  # noqa: E402

from bench import interleaved_medians  # noqa: E402
from onnxcam import Explainer  # noqa: E402
from onnxcam.export import export  # noqa: E402
from onnxcam.runtime import CPU, CUDA, cuda_available, make_session, providers_for  # noqa: E402
from onnxcam.surgery import CLASS_INPUT  # noqa: E402
from onnxcam.surgery.maps import FORMULAS  # noqa: E402

DEMO = os.path.join(ROOT, "models", "efficientnet_lite0.onnx")
IMAGES = [os.path.join(ROOT, "examples", name) for name in ("chelsea.png", "coffee.png")]
MAP_OUTPUT = "onnxcam/map"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run, the CPU standing in for the GPU"
    )
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--resnet50",
        choices=("build", "skip"),
        default="build",
        help="build: make models/large/resnet50.onnx with tools/resnet50.py (torch) when missing",
    )
    args = parser.parse_args()
    if args.device == "cuda" and not cuda_available():
        listed = "lists it" if CUDA in ort.get_available_providers() else "does not list it"
        print(
            f"CUDA cannot start here: onnxruntime {ort.__version__} {listed} (providers: "
            f"{', '.join(ort.get_available_providers())}), but no session runs on it: no GPU, or no CUDA / cuDNN "
            "libraries this onnxruntime-gpu can load. Nothing was checked; `--device cpu` dry-runs the script.",
            file=sys.stderr,
        )
        return 2
    print(f"onnxruntime {ort.__version__}, device: {device_name(args.device)}")
    models = [("demo", DEMO)]
    resnet = find_resnet50(args.resnet50)
    if resnet:
        models.append(("ResNet-50", resnet))
    ok = True
    for label, path in models:
        ok = check_model(label, path, args) and ok
    print("\nevery map matches the CPU's" if ok else "\nSOME MAPS DIFFER from the CPU's: see FAIL above")
    return 0 if ok else 1


def device_name(device: str) -> str:
    if device == "cpu":
        return f"CPU ({os.cpu_count()} cores), dry run: the CPU stands in for the GPU"
    if shutil.which("nvidia-smi"):
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        if query.returncode == 0 and query.stdout.strip():
            return "GPU " + query.stdout.strip().splitlines()[0]
    return "GPU (nvidia-smi not found)"


def find_resnet50(mode: str) -> str | None:
    """models/large/resnet50.onnx; built when missing and mode is "build" and torch is installed."""
    path = os.path.join(ROOT, "models", "large", "resnet50.onnx")
    if os.path.exists(path):
        return path
    if mode == "skip":
        print("ResNet-50 skipped (--resnet50 skip)")
        return None
    if importlib.util.find_spec("torch") is None:
        print(
            "ResNet-50 skipped: models/large/resnet50.onnx is missing, and torch, which tools/resnet50.py needs "
            "to build it, is not installed"
        )
        return None
    print("building ResNet-50 (tools/resnet50.py) ...")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "resnet50.py"), path], check=True, capture_output=True)
    return path


def check_model(label: str, path: str, args) -> bool:
    """Print the equality and timing tables of one model; True when every map matches."""
    providers = providers_for(args.device)
    device, reference = Explainer(path, device=args.device), Explainer(path, device="cpu")
    images = reference.prepare(IMAGES)
    logits = reference.logits(images)
    second = np.argsort(logits, axis=1)[:, -2]  # an explicit class that is not the top-1
    print(f"\n{label}: {os.path.relpath(path, ROOT)}, layer {device.layers[0]}, provider {device.provider}")
    print(f"  maps on {args.device} vs CPU, {len(images)} images: max |difference| (tolerance {args.tolerance:g})")
    print(f"  {'':24} {'top-1':>10} {'explicit':>10}")
    ok = True
    for method in FORMULAS:
        diffs = []
        for target in (None, second):
            a = device.explain(images, method=method, target=target)
            b = reference.explain(images, method=method, target=target)
            diffs.append(np.inf if not np.array_equal(a.targets, b.targets) else float(np.abs(a.maps - b.maps).max()))
        ok = report(method, diffs, args.tolerance) and ok
    exported = {}
    for method in FORMULAS:
        model = export(reference.info, reference.layers, method)
        exported[method] = make_session(model, providers)
        cpu = make_session(model, [CPU])
        diffs = []
        for extra in ({}, {CLASS_INPUT: second.astype(np.int64)}):
            feed = {reference.info.input_name: images, **extra}
            a, b = (dict(zip([o.name for o in s.get_outputs()], s.run(None, feed))) for s in (exported[method], cpu))
            same = np.array_equal(a["onnxcam/target"], b["onnxcam/target"])
            diffs.append(float(np.abs(a[MAP_OUTPUT] - b[MAP_OUTPUT]).max()) if same else np.inf)
        ok = report(f"export {method}", diffs, args.tolerance) and ok
    timings(device, exported["gradcam"], providers, images, second, args)
    return ok


def report(name: str, diffs: list, tolerance: float) -> bool:
    ok = max(diffs) <= tolerance
    cells = " ".join(f"{'classes!' if d == np.inf else f'{d:.1e}':>10}" for d in diffs)
    print(f"  {name:24} {cells}   {'ok' if ok else 'FAIL'}")
    return ok


def timings(ex: Explainer, exported, providers: list, images: np.ndarray, second: np.ndarray, args) -> None:
    """Medians of interleaved runs per batch size, and ratios to the plain forward pass."""
    plain = make_session(ex.info.model, providers)
    name = ex.info.input_name
    where = "cuda" if args.device == "cuda" else "cpu"
    batches = [int(b) for b in args.batches.split(",")]
    columns = {}
    for batch in batches:
        x = np.concatenate([images] * -(-batch // len(images)))[:batch]
        explicit = np.resize(second, batch)
        fns = {
            "forward": lambda x=x: plain.run(None, {name: x}),
            "forward, IO binding": bound(plain, name, x, where),
            "gradcam": lambda x=x: ex.explain(x, method="gradcam"),
            "gradcam, explicit class": lambda x=x, c=explicit: ex.explain(x, method="gradcam", target=c),
            "guided-gradcam": lambda x=x: ex.explain(x, method="guided-gradcam"),
            "export gradcam": lambda x=x: exported.run(None, {name: x}),
            "export gradcam, IO binding": bound(exported, name, x, where),
        }
        for fn in fns.values():  # every session built and warm before timing
            fn()
        columns[batch] = interleaved_medians(fns, args.repeats)
    print(f"  median of {args.repeats} interleaved runs (ratio to the plain forward of the same batch)")
    print("  " + " " * 28 + "".join(f"{f'batch {b}':>22}" for b in batches))
    for row in columns[batches[0]]:
        cells = "".join(
            f"{columns[b][row] * 1e3:12.2f} ms {columns[b][row] / columns[b]['forward']:5.2f}x" for b in batches
        )
        print(f"  {row:28}{cells}")


def bound(session, name: str, x: np.ndarray, where: str):
    """A run with IO binding: x copied to the device once, the outputs left there."""
    binding = session.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, where, 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, where)
    return lambda: session.run_with_iobinding(binding)


if __name__ == "__main__":
    sys.exit(main())
