"""Shapes learned by running (onnxcam.model.shapes.learn_shapes): what the probe costs, and what it fixes.

    python tools/shape_probe.py resnet50      # the probe's cost on a full-width ResNet-50 (tools/resnet50.py)
    python tools/shape_probe.py shufflenet    # torchvision shufflenet_v2_x1_0, dynamic batch: layers after shuffles
    python tools/shape_probe.py swin          # torchvision swin_t: backward rules through run-time shapes

`resnet50` prints medians of repeated runs: the probe with every tensor that feeds the logits fetched (the
worst case: static inference knows them all here, so inspect_model itself runs no probe) and with the logits
alone, next to building the plain model's ONNX Runtime session (all optimizations, as the explainer does) and
one forward pass at batch 1. `shufflenet` exports torchvision's network (random weights, the import shim of
DESIGN.md) with a dynamic batch and prints what inspect_model finds, and a Grad-CAM at the automatic layer
against torch autograd on the same weights and input; `swin` does the same for swin_t at its stem convolution,
whose gradient passes the GlobalAveragePool that reads a run-time-shaped Transpose. torch and torchvision are needed here only.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from onnxcam.model import inspect_model, load_model  # noqa: E402
from onnxcam.model.graph import data_ancestors  # noqa: E402
from onnxcam.model.shapes import learn_shapes  # noqa: E402
from onnxcam.runtime import CPU, session_options  # noqa: E402


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def resnet50(repeats: int = 9) -> None:
    import resnet50 as builder

    path = builder.DEFAULT_PATH
    if not os.path.exists(path):
        builder.export(path)
    model = load_model(path)
    start = time.perf_counter()
    info = inspect_model(model)
    inspect_s = time.perf_counter() - start
    graph = info.model.graph
    producers = {o: n for n in graph.node for o in n.output}
    feeding = [o for n in graph.node for o in n.output if o in data_ancestors(info.logits_name, producers)]

    def probe(names):  # rewrites shapes static inference already gave: the same values again
        learn_shapes(info.model, names, info.input_name, info.input_shape)

    def build():
        return ort.InferenceSession(info.model.SerializeToString(), session_options(), providers=[CPU])

    x = np.zeros((1, *info.input_shape[1:]), np.float32)
    session = build()
    rows = [
        ("inspect_model (no probe needed)", inspect_s),
        (f"probe, all {len(feeding)} tensors feeding the logits", _median(lambda: probe(feeding), repeats)),
        ("probe, the logits alone", _median(lambda: probe([info.logits_name]), repeats)),
        ("session build: serialize + ORT_ENABLE_ALL", _median(build, repeats)),
        ("forward, batch 1", _median(lambda: session.run(None, {info.input_name: x}), repeats)),
    ]
    print(f"ResNet-50 ({path}), onnxruntime {ort.__version__} CPU, {os.cpu_count()} cores, medians of {repeats}")
    for label, seconds in rows:
        print(f"  {label:48} {seconds:7.3f} s")


def _export(net, path: str) -> None:
    import torch

    from torch_tools import export_onnx

    export_onnx(net, torch.randn(1, 3, 224, 224), path)


def _gradcam_against_torch(net, path: str, module, layer: str | None = None) -> None:
    """Grad-CAM of class 0 at `layer` (None: the automatic one) by onnxcam, analytic gradients only, and
    by torch autograd at `module` on the same input: relu(sum_k mean_ij(G_k) A_k), before normalization."""
    import torch

    from onnxcam import Explainer

    image = os.path.join(ROOT, "examples", "chelsea.png")
    ex = Explainer(path, device="cpu", gradients="analytic", layer=layer)
    start = time.perf_counter()
    res = ex.explain(image, "gradcam", target=0)
    print(f"Grad-CAM (analytic) {time.perf_counter() - start:.2f} s at {ex.layers[0]}, class 0")
    kept = {}
    hook = module.register_forward_hook(lambda mod, inputs, out: kept.setdefault("a", out))
    logit = net(torch.from_numpy(ex.prepare(image)))[0, 0]
    hook.remove()
    (grad,) = torch.autograd.grad(logit, kept["a"])
    a, g = kept["a"].detach().numpy(), grad.numpy()
    reference = np.maximum(np.einsum("nk,nkhw->nhw", g.mean(axis=(2, 3)), a), 0)
    scale = np.abs(reference).max()
    print(
        f"raw map vs torch autograd: max abs difference {np.abs(res.raw - reference).max() / scale:.1e} "
        f"of the map's max ({scale:.1e})"
    )


def shufflenet() -> None:
    import torch

    from torch_tools import import_torchvision

    torch.manual_seed(0)
    net = import_torchvision().models.shufflenet_v2_x1_0().eval()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "shufflenet.onnx")
        _export(net, path)
        start = time.perf_counter()
        info = inspect_model(load_model(path))
        print(f"inspect_model       {time.perf_counter() - start:.2f} s, {len(info.layers)} candidate layers")
        print(f"automatic layer     {info.auto_layer.name} {list(info.auto_layer.shape)}")
        names = {layer.name for layer in info.layers}
        for name in (
            "/stage2/stage2.0/Concat_output_0",
            "/stage4/stage4.3/Reshape_1_output_0",
            "/conv5/conv5.2/Relu_output_0",
        ):
            print(f"  candidate? {name:42} {name in names}")
        _gradcam_against_torch(net, path, net.conv5)


def swin() -> None:
    """torchvision swin_t: its GlobalAveragePool reads '/permute/Transpose_output_0', sized at run time."""
    import torch

    from torch_tools import import_torchvision

    torch.manual_seed(0)
    net = import_torchvision().models.swin_t().eval()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "swin_t.onnx")
        _export(net, path)
        start = time.perf_counter()
        info = inspect_model(load_model(path))
        print(f"inspect_model       {time.perf_counter() - start:.2f} s, {len(info.layers)} candidate layers")
        shapes = {
            vi.name: [d.dim_value or d.dim_param or "?" for d in vi.type.tensor_type.shape.dim]
            for vi in info.model.graph.value_info
        }
        print(f"/permute/Transpose_output_0 {shapes.get('/permute/Transpose_output_0')}")
        _gradcam_against_torch(net, path, net.features[0][0], info.layers[0].name)


if __name__ == "__main__":
    {"resnet50": resnet50, "shufflenet": shufflenet, "swin": swin}[sys.argv[1] if len(sys.argv) > 1 else "resnet50"]()
