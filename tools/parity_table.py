"""Print onnxcam vs pytorch-grad-cam 1.5.7 as a markdown table: method x network, max abs difference.

    python tools/parity_table.py            # every fixture in tests/fixtures/parity
    python tools/parity_table.py resnet vgg

Runs the comparisons of tests/test_parity.py (imported from there, so the two cannot drift apart) on
the committed ONNX files, CPU only, no torch. Cells: the max abs difference of the final maps in
[0, 1]; guided backprop: of the input gradients, relative to the reference's max abs value; the
Smooth Grad-CAM++ / SmoothGrad rows compare onnxcam with noise 0 against its own Grad-CAM++ and plain
input gradient. A cell over the test's tolerance is marked **bold**; "n/a (x)" cells say why below.
Unlike the test, Score-CAM runs on every network whatever it costs (the demo: about a minute).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _test_module():
    spec = importlib.util.spec_from_file_location("test_parity", os.path.join(ROOT, "tests", "test_parity.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["test_parity"] = module
    spec.loader.exec_module(module)
    return module


ROWS = [
    ("gradcam", "Grad-CAM"),
    ("gradcam++", "Grad-CAM++"),
    ("xgradcam", "XGrad-CAM"),
    ("layercam", "LayerCAM"),
    ("hirescam", "HiResCAM"),
    ("gradcam-elementwise", "Grad-CAM elementwise"),
    ("scorecam", "Score-CAM"),
    ("ablationcam", "Ablation-CAM"),
    ("eigencam", "Eigen-CAM"),
    ("eigengradcam", "Eigen-Grad-CAM"),
    ("gradcam@aug_smooth", "Grad-CAM, aug_smooth"),
    ("gradcam@eigen_smooth", "Grad-CAM, eigen_smooth"),
    ("gradcam@layers2", "Grad-CAM, two layers"),
    ("guided-backprop", "Guided backprop (rel.)"),
    ("smooth:smoothgradcam++", "Smooth Grad-CAM++ noise 0 vs Grad-CAM++ (onnxcam)"),
    ("smooth:smoothgradcam++@layers2", "same, two layers"),
    ("smooth:smoothgrad", "SmoothGrad noise 0 vs input gradient (onnxcam, rel.)"),
]


def main(names: list) -> None:
    tp = _test_module()
    networks = names or tp.networks()
    missing = set(networks) - set(tp.networks())
    if missing:
        sys.exit(f"no parity fixture for {', '.join(sorted(missing))}; run tools/make_parity_fixtures.py")
    reasons = {}  # reason -> letter

    def na(reason: str) -> str:
        letter = reasons.setdefault(reason, "abcdefghijklmnopqrstuvwxyz"[len(reasons)])
        return f"n/a ({letter})"

    t0 = time.perf_counter()
    table = {}
    for name in networks:
        fx = tp.fixture(name)
        kinds = {key: kind for kind, key in tp.keys(name)}
        for key, _ in ROWS:
            if key.startswith("smooth:"):
                key = key.split(":", 1)[1]
                if tp.split(key)[1] == "layers2" and "layers2" not in fx:
                    cell = ""
                else:
                    cell = tp.smooth_difference(name, key)
            elif key not in kinds:
                cell = "" if tp.split(key)[1] == "layers2" else na("not in the fixture")
            elif kinds[key] == "na":
                cell = na(str(fx[f"na/{key}"]))
            else:
                tolerance = tp.tolerance(name, key)
                cell = tp.difference(name, kinds[key], key)
                if tolerance is not None and cell > tolerance:
                    cell = f"**{cell:.1e}**"
            table[name, key] = cell
        print(f"{name} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    def fmt(cell):
        return f"{cell:.1e}" if isinstance(cell, float) else cell

    print("| method | " + " | ".join(networks) + " |")
    print("|---|" + "---|" * len(networks))
    for key, label in ROWS:
        key = key.split(":", 1)[-1]
        print(f"| {label} | " + " | ".join(fmt(table[n, key]) for n in networks) + " |")
    print()
    for reason, letter in reasons.items():
        print(f"({letter}) {reason}")
    notes = {f"{n} {k}": why for (n, k), why in tp.LOOSER.items() if n in networks}
    for case, why in notes.items():
        print(f"{case}: {why}")
    print()
    print("Layers (ONNX tensors), inputs and targets:")
    for name in networks:
        fx = tp.fixture(name)
        rows = ", ".join(
            f"{img} -> class {int(c)} ({kind})" for img, c, kind in zip(fx["images"], fx["targets"], fx["target_kinds"])
        )
        layers = " + ".join(fx["layers2"] if "layers2" in fx else fx["layers"])
        print(f"- {name}: {layers}; {rows}")


if __name__ == "__main__":
    main(sys.argv[1:])
