"""Time onnxcam against a plain ONNX Runtime forward pass (and pytorch-grad-cam, where installed).

    python tools/bench.py                               # demo model, CPU, batch 1 and 16
    python tools/bench.py --model resnet50 --batches 1  # full-width ResNet-50 (built by tools/resnet50.py)
    python tools/bench.py --device cuda --torch         # also pytorch-grad-cam on the same weights
    python tools/bench.py --batches 1 --folder 256      # also `onnxcam run DIR` vs plain batched forward
    python tools/bench.py --profile guided              # ORT's profiler: where a Guided Grad-CAM run's time goes

Prints medians of repeated runs in one process and ratios: method / plain forward, and
pytorch-grad-cam / onnxcam. Each method is timed twice: for the top-1 class (target=None, chosen
inside the graph) and for a class given explicitly (target=c, one per image, c = the image's top-1
class, so both do the same work). Calls are interleaved round by round so that drifts in machine
load hit every contender alike. Both sides get the same prepared input tensor (image decoding
excluded); onnxcam's time includes its post-processing. Also prints surgery and session
building time and the process's peak memory.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# torch's OpenMP threads spin-wait after each op by default, taking the cores from the ORT run timed next
# (onnxcam's own sessions do not spin: onnxcam.runtime.session_options); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM / Ablation-CAM progress bars
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]  # this checkout's onnxcam, not an installed one

from onnxcam import Explainer  # noqa: E402
from onnxcam.runtime import make_session, session_options  # noqa: E402
from onnxcam.surgery import augment  # noqa: E402

DEMO = os.path.join(ROOT, "models", "efficientnet_lite0.onnx")
FAST = ("cam", "gradcam", "gradcam++", "layercam", "xgradcam", "hirescam", "guided-gradcam")
SLOW = ("ablationcam", "scorecam")  # K extra head / model runs per image: timed once, batch 1


def interleaved_medians(fns: dict, repeats: int, warmup: int = 2, clock=time.perf_counter) -> dict:
    """Median seconds per callable, timing them in turn each round."""
    times = {name: [] for name in fns}
    for round_ in range(repeats + warmup):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            if round_ >= warmup:
                times[name].append(clock() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def model_path(name: str) -> str:
    if name == "demo":
        return DEMO
    if name == "resnet50":
        import resnet50

        return resnet50.DEFAULT_PATH if os.path.exists(resnet50.DEFAULT_PATH) else resnet50.export()
    return name


def torch_twin(name: str):
    """The torch network with the ONNX file's weights, and its target layer, for pytorch-grad-cam."""
    if name == "resnet50":
        import resnet50

        net = resnet50.build()
        return net, net.layer4[-1]
    if name == "demo":
        import build_demo_model

        net = build_demo_model.load_model().eval()
        return net, net._head_act
    return None, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="demo, resnet50, or a path to an ONNX classifier")
    parser.add_argument("--image", default=os.path.join(ROOT, "examples", "chelsea.png"))
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(FAST))
    parser.add_argument("--slow", action="store_true", help="also Ablation-CAM and Score-CAM (batch 1, once)")
    parser.add_argument("--torch", action="store_true", help="also pytorch-grad-cam (needs torch and grad-cam)")
    parser.add_argument(
        "--maps-in-numpy",
        action="store_true",
        help="compute gradient CAMs in NumPy from A and dScore/dA, not inside the graph",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: the process's CPU time (all threads; onnxcam's threads do not spin), which other "
        "jobs on a shared machine disturb far less than the wall time",
    )
    parser.add_argument("--no-explicit", action="store_true", help="time target=None only, not also target=c")
    parser.add_argument(
        "--profile",
        choices=("layer", "guided", "plain"),
        help="instead of timing methods, profile one augmented graph with ORT's profiler: layer "
        "gradients only (the CAM family), or also the guided (Guided Grad-CAM) or plain "
        "(SmoothGrad) input gradient; prints the op types and nodes that take the time",
    )
    parser.add_argument(
        "--folder",
        type=int,
        default=0,
        metavar="N",
        help="also time `onnxcam run DIR` (Grad-CAM, batch 16) on N images against decoding, "
        "preprocessing and a plain batched forward of the same images",
    )
    args = parser.parse_args()

    path = model_path(args.model)
    t0 = time.perf_counter()
    ex = Explainer(path, device=args.device, maps_in_graph=not args.maps_in_numpy)
    inspect_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = augment(ex.info, ex.layers)
    surgery_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_session(model, ex.providers)
    session_s = time.perf_counter() - t0
    plain = make_session(ex.info.model, ex.providers)
    methods = args.methods.split(",")
    print(
        f"model {os.path.basename(path)}  provider {ex.provider}  layer {ex.layers[0]}  cores {os.cpu_count()}  "
        f"maps in graph {ex.maps_in_graph}"
    )
    print(f"inspect {inspect_s:.2f} s   surgery {surgery_s:.2f} s   gradient session {session_s:.2f} s")

    image = ex.prepare(args.image)
    if args.profile:
        for batch in map(int, args.batches.split(",")):
            profile(
                ex,
                model if args.profile == "layer" else None,
                plain,
                np.repeat(image, batch, axis=0),
                args.profile,
                args.repeats,
            )
        return
    top1 = int(ex.logits(image).argmax())
    for batch in map(int, args.batches.split(",")):
        x = np.repeat(image, batch, axis=0)
        explicit = [top1] * batch
        for m in methods:  # build every session before timing
            ex.explain(x, method=m)
            if not args.no_explicit:
                ex.explain(x, method=m, target=explicit)
        fns = {"forward": lambda x=x: plain.run(None, {ex.info.input_name: x})}
        for m in methods:
            fns[m] = lambda m=m, x=x: ex.explain(x, method=m)
            if not args.no_explicit:
                fns[m + " target=c"] = lambda m=m, x=x, c=explicit: ex.explain(x, method=m, target=c)
        cams = {}
        if args.torch:
            cams = torch_contenders(args.model, x)
            fns.update(cams)
        medians = interleaved_medians(
            fns, args.repeats, clock=time.process_time if args.clock == "cpu" else time.perf_counter
        )
        forward = medians["forward"]
        print(
            f"\nbatch {batch}  ({args.repeats} rounds, median {'CPU ' if args.clock == 'cpu' else ''}ms; "
            "ratio to the plain forward)"
        )
        print(
            f"  {'':24} {'target=None':>20}   {'' if args.no_explicit else f'target={top1} (explicit)':>22}"
            f"{'' if args.no_explicit else '   explicit / None'}"
        )
        print(f"  {'forward':24} {forward * 1e3:9.2f} ms  {1:6.2f}x")
        for m in methods:
            t = medians[m]
            line = f"  {m:24} {t * 1e3:9.2f} ms  {t / forward:6.2f}x"
            if not args.no_explicit:
                c = medians[m + " target=c"]
                line += f"   {c * 1e3:9.2f} ms  {c / forward:6.2f}x   {c / t:8.2f}"
            print(line)
        for name in cams:
            ours = medians[name.split(" ")[-1].strip("()")]
            print(
                f"  {name:24} {medians[name] * 1e3:9.2f} ms  {medians[name] / forward:6.2f}x   "
                f"pytorch-grad-cam / onnxcam: {medians[name] / ours:.2f}x"
            )
    if args.slow:
        for m in SLOW:
            t0 = time.perf_counter()
            ex.explain(image, method=m)
            print(f"\n{m}, batch 1, once: {time.perf_counter() - t0:.2f} s")
        if args.torch:
            for m in SLOW:
                print(f"pytorch-grad-cam {m} (batch size 32), batch 1, once: {torch_slow(args.model, m, image):.2f} s")
    if args.folder:
        folder_throughput(path, args.image, args.folder, args.device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory (max RSS) {peak:.0f} MB")


def profile(ex, model, plain, x: np.ndarray, kind: str, repeats: int, top: int = 12) -> None:
    """ORT's profiler on the augmented graph (`model`, or built here with the `kind` of input gradient): mean
    kernel time per run by op type, split into the model's own nodes, onnxcam's backward and map nodes, and
    the layout reorders ORT inserts (NCHWc, CPU); then the slowest nodes."""
    if model is None:
        model = augment(ex.info, ex.layers, input_gradient=kind)
    options = session_options()
    options.enable_profiling = True
    session = make_session(model, ex.providers, options)
    feed = {ex.info.input_name: x}
    for _ in range(2):
        session.run(None, feed)
    run_times, forward_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        run_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain.run(None, feed)
        forward_times.append(time.perf_counter() - t0)
    path = session.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    runs = repeats + 2
    by_op, by_node = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = event["name"][: -len("_kernel_time")]
        op = event["args"].get("op_name", "?")
        part = "onnxcam" if node.startswith("onnxcam/") else "layout" if op.startswith("Reorder") else "model"
        by_op[(part, op)] += event["dur"] / 1e3 / runs
        by_node[(op, node)] += event["dur"] / 1e3 / runs
    run, forward = statistics.median(run_times), statistics.median(forward_times)
    print(f"\nprofile: {kind} gradients, batch {len(x)}, {repeats} runs (profiling on: slower than plain timing)")
    print(
        f"  run {run * 1e3:.2f} ms, plain forward {forward * 1e3:.2f} ms ({run / forward:.2f}x); kernel time per run: "
        + ", ".join(
            f"{part} {sum(t for (p, _), t in by_op.items() if p == part):.2f} ms"
            for part in ("model", "layout", "onnxcam")
        )
    )
    total = sum(by_op.values())
    for (part, op), t in by_op.most_common(top):
        print(f"  {part:8} {op:24} {t:8.2f} ms  {t / total:6.1%}")
    print("  slowest nodes:")
    for (op, node), t in by_node.most_common(top // 2):
        print(f"    {op:22} {t:8.2f} ms  {node}")


def torch_contenders(model_name: str, x: np.ndarray) -> dict:
    """pytorch-grad-cam's GradCAM on the torch twin, keyed 'pytorch-grad-cam (gradcam)'."""
    import torch

    from make_parity_fixtures import _stub_torchvision

    _stub_torchvision()  # pytorch-grad-cam imports torchvision, which does not import beside CPU torch
    from pytorch_grad_cam import GradCAM

    torch.set_num_threads(os.cpu_count())
    net, layer = torch_twin(model_name)
    if net is None:
        print("(no torch twin for this model: pytorch-grad-cam skipped)")
        return {}
    tensor = torch.from_numpy(x)
    gradcam = GradCAM(model=net, target_layers=[layer])
    return {"pytorch-grad-cam (gradcam)": lambda: gradcam(input_tensor=tensor, targets=None)}


def torch_slow(model_name: str, method: str, x: np.ndarray) -> float:
    """Seconds for one pytorch-grad-cam Score-CAM or Ablation-CAM of x (batch 1), 32 rows per run as onnxcam."""
    import torch

    from make_parity_fixtures import _stub_torchvision

    _stub_torchvision()
    from pytorch_grad_cam import AblationCAM, ScoreCAM

    net, layer = torch_twin(model_name)
    if net is None:
        return float("nan")
    cam = {"scorecam": ScoreCAM, "ablationcam": AblationCAM}[method](model=net, target_layers=[layer])
    cam.batch_size = 32
    t0 = time.perf_counter()
    cam(input_tensor=torch.from_numpy(x), targets=None)
    return time.perf_counter() - t0


def folder_throughput(path: str, image: str, count: int, device: str) -> None:
    """Images per second of `onnxcam run DIR -b 16` (Grad-CAM: decode, explain, write overlay PNGs, or JSON
    boxes only with --pictures none) against decoding, preprocessing and a plain batched forward of the same files,
    in this process with the sessions built; and the command's wall time in a fresh process (imports and
    setup included)."""
    import shutil
    import subprocess
    import tempfile

    import cv2
    from click.testing import CliRunner

    from onnxcam.cli import main as cli
    from onnxcam.preprocess import load_image

    tmp = tempfile.mkdtemp(prefix="onnxcam-bench-")
    try:
        folder, out = os.path.join(tmp, "images"), os.path.join(tmp, "out")
        os.makedirs(folder)
        rgb = load_image(image)
        for i in range(count):  # distinct files: shifted crops, alternately flipped
            shifted = np.roll(rgb, (i * 7) % rgb.shape[0], axis=0)
            cv2.imwrite(
                os.path.join(folder, f"{i:05d}.png"),
                cv2.cvtColor(shifted[:, ::-1] if i % 2 else shifted, cv2.COLOR_RGB2BGR),
            )
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        ex = Explainer(path, device=device)
        plain = make_session(ex.info.model, ex.providers)

        def forward_all():
            for start in range(0, len(files), 16):
                x = ex.prepare([load_image(f) for f in files[start : start + 16]])
                plain.run(None, {ex.info.input_name: x})

        base = ["run", path, folder, "-b", "16", "-o", out, "--device", device]
        variants = {
            "png overlays": base,
            "jpg overlays": base + ["--pictures", "jpg"],
            "json only": base + ["--json", "--pictures", "none"],
        }

        def run_all(args):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output

        fns = {"forward": forward_all, **{name: (lambda a=a: run_all(a)) for name, a in variants.items()}}
        times = interleaved_medians(fns, 3, 1)  # the warm-up round fills the session cache
        print(f"\nfolder of {count} images, batch 16 (median of 3, in process)")
        print(f"  decode + preprocess + plain forward      {count / times['forward']:7.1f} images/s")
        for name in variants:
            print(
                f"  onnxcam run DIR (gradcam, {name:12})   {count / times[name]:7.1f} images/s   "
                f"{times['forward'] / times[name]:.0%} of the plain forward's throughput"
            )
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "onnxcam", *base], check=True, capture_output=True)
        wall = time.perf_counter() - t0
        print(
            f"  onnxcam run DIR in a fresh process       {count / wall:7.1f} images/s   ({wall:.2f} s wall, overlays)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
