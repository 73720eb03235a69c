"""Do exported models load, and give the same maps, on the ONNX Runtime releases that pipelines pin?

Exports the demo (every exportable method, and the ORT format) and zoo models at other opsets with this
checkout, computes each map with `Explainer` here, then installs each onnxruntime release from PyPI into a
throwaway virtual environment and runs the original and the explained models there. Prints a Markdown table:
one row per model (original) or export, one column per release; a cell is the max abs difference from the
Python map, or why it did not load.

    python tools/ort_compat.py                     # 1.16.3, 1.18.1, 1.20.1, 1.22.1 and the newest release
    python tools/ort_compat.py --versions 1.16.3,1.18.1 --models demo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime
from onnx import version_converter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from onnxcam import Explainer  # noqa: E402
from onnxcam.export import METHODS, export, ort_format  # noqa: E402

IMAGES = [os.path.join(ROOT, "examples", name) for name in ("chelsea.png", "coffee.png")]
MODELS = {  # name -> (file, methods): opsets 17, 21 (IR 10), 18, 11, 13 with float16 weights, and 7 (IR 3)
    "demo": ("models/efficientnet_lite0.onnx", sorted(METHODS)),
    "demo@21": ("models/efficientnet_lite0.onnx", ["gradcam"]),  # converted to opset 21, IR 10 (from 1.18 on)
    "convnext": ("models/zoo/convnext.onnx", ["gradcam"]),
    "squeezenet": ("models/zoo/squeezenet.onnx", ["gradcam"]),
    "fp16": ("models/zoo/fp16.onnx", ["gradcam"]),
    "caffe2": ("models/zoo/caffe2_opset7.onnx", ["gradcam"]),
}
DEFAULT_VERSIONS = "1.16.3,1.18.1,1.20.1,1.22.1,newest"

# Runs inside each virtual environment: only onnxruntime and NumPy there.
CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
jobs = json.load(open(sys.argv[1]))
results = {}
for job in jobs:
    try:
        session = ort.InferenceSession(job["model"], providers=["CPUExecutionProvider"])
    except Exception as exc:
        message = str(exc).strip().splitlines()[0]  # "... model.cc:149 onnxruntime::Model::Model(...) WHY"
        results[job["row"]] = "no: " + message[message.rfind(") ") + 2 if ") " in message else 0:][:100]
        continue
    if job.get("reference") is None:
        results[job["row"]] = "loads"
        continue
    x = np.load(job["input"])
    heat = session.run(["onnxcam/map"], {job["input_name"]: x})[0]
    results[job["row"]] = float(np.abs(heat - np.load(job["reference"])).max())
print(json.dumps({"version": ort.__version__, "results": results}))
"""


def _source(folder: str, name: str) -> str:
    path = os.path.join(ROOT, MODELS[name][0])
    if name.endswith("@21"):  # a newer opset and IR than every zoo model: the oldest releases refuse it
        model = version_converter.convert_version(onnx.load(path), 21)
        model.ir_version = 10
        path = os.path.join(folder, f"{name}.onnx")
        onnx.save(model, path)
    return path


def prepare(folder: str, names: list, methods: list | None = None) -> list:
    """Export every row's model into `folder` (each model's methods, or `methods`), with its input and the
    Python map; the jobs for the child."""
    jobs = []
    for name in names:
        path = _source(folder, name)
        explainer = Explainer(path, device="cpu")
        x = explainer.prepare(IMAGES)
        np.save(os.path.join(folder, f"{name}.x.npy"), x)
        opset, ir = explainer.info.opset, explainer.info.model.ir_version
        jobs.append({"row": f"{name} original (opset {opset}, IR {ir})", "model": path})
        for method in methods or MODELS[name][1]:
            model = export(explainer.info, explainer.layers, method)
            reference = os.path.join(folder, f"{name}.{method}.map.npy")
            np.save(reference, explainer.explain(x, method=method).maps)
            common = {
                "input": os.path.join(folder, f"{name}.x.npy"),
                "input_name": explainer.info.input_name,
                "reference": reference,
            }
            target = os.path.join(folder, f"{name}.{method}.onnx")
            onnx.save(model, target)
            jobs.append({"row": f"{name} {method} (IR {model.ir_version})", "model": target, **common})
            if name == "demo" and method == "gradcam":
                target = os.path.join(folder, f"{name}.{method}.ort")
                with open(target, "wb") as f:
                    f.write(ort_format(model))
                jobs.append(
                    {
                        "row": f"{name} {method}, ORT format written by {onnxruntime.__version__}",
                        "model": target,
                        **common,
                    }
                )
    return jobs


def newest() -> str:
    """The newest onnxruntime release on the package index, as pip sees it."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "onnxruntime"], capture_output=True, text=True, check=True
    )
    return done.stdout.split("(")[1].split(")")[0]


def run_in_venv(version: str, folder: str, jobs: list) -> dict:
    """Install onnxruntime==version (and a NumPy it was built for) into a fresh venv in `folder` and run the
    jobs there: {"version", "results": {row: max abs diff | "loads" | "no: why"}}, or {"error": why}."""
    venv = os.path.join(folder, f"venv-{version}")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    numpy = "numpy<2" if tuple(map(int, version.split(".")[:2])) < (1, 19) else "numpy"  # NumPy 2 from 1.19 on
    started = time.perf_counter()
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            f"onnxruntime=={version}",
            numpy,
            "packaging",
        ],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        tail = install.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"pip could not install onnxruntime=={version}: {tail[0]}"}
    print(f"onnxruntime {version}: installed in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    child, jobs_file = os.path.join(folder, "child.py"), os.path.join(folder, "jobs.json")
    with open(child, "w") as f:
        f.write(CHILD)
    with open(jobs_file, "w") as f:
        json.dump(jobs, f)
    done = subprocess.run([python, child, jobs_file], capture_output=True, text=True, cwd=folder)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cell(value) -> str:
    if isinstance(value, float):
        return f"loads, {value:.1e}"
    return value if value is not None else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", default=DEFAULT_VERSIONS, help="onnxruntime releases, comma-separated ('newest')")
    parser.add_argument("--models", default=",".join(MODELS), help=f"of {', '.join(MODELS)}")
    args = parser.parse_args()
    versions = [newest() if v == "newest" else v for v in args.versions.split(",")]
    with tempfile.TemporaryDirectory(prefix="ort-compat-") as folder:
        os.environ.setdefault("ONNXCAM_CACHE_DIR", "off")
        jobs = prepare(folder, args.models.split(","))
        columns = {v: run_in_venv(v, folder, jobs) for v in versions}
    print("| model / export | " + " | ".join(f"onnxruntime {v}" for v in versions) + " |")
    print("|---" * (len(versions) + 1) + "|")
    for job in jobs:
        row = [cell(columns[v].get("results", {}).get(job["row"], columns[v].get("error"))) for v in versions]
        print(f"| {job['row']} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
