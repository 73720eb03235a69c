"""Segmentation parity with pytorch-grad-cam 1.5.7's SemanticSegmentationTarget (issue #18).

Builds torchvision segmentation networks with seeded random weights (BatchNorm statistics calibrated on a few
scikit-image photographs, so activations have a sane range), exports them to ONNX, and runs pytorch-grad-cam as
its semantic segmentation tutorial does: the model wrapped to return `model(x)["out"]`, the target layer the
backbone's last block, `SemanticSegmentationTarget(category, mask)` with mask = the pixels the model predicts
as the category. onnxcam explains the ONNX file with the same class (its predicted region found in the graph),
at the ONNX tensor whose values are the hooked activations.

Small mode (default): writes the CI fixtures, read by tests/test_segmentation.py (no torch there):

    models/segment/fcn_small.onnx, deeplabv3_small.onnx   torchvision's FCN and DeepLabV3 classes on
        ResNet-18 cut after layer2 (output stride 8, 128 channels; the target layer, as layer4 is for the
        ResNet-50 ones), 6 classes, input 128x128; the DeepLabV3 head is torchvision's DeepLabHead at 32
        channels instead of 256 (same ASPP, image pooling branch included). A backbone whose last block ends
        in ReLU, as ResNet's: Grad-CAM++'s weights divide by 2G^2 + sum(A) G^3, which comes near zero where
        sum(A) < 0 (a HardSwish output, MobileNetV3's), and there float32 rounding decides the map
    tests/fixtures/segment/NAME.npz   input [N, 3, 128, 128], layer, targets [N], masks uint8 [N, 128, 128]
        (the reference's region), margin (the smallest top-2 logit gap in the file: how far argmax is from a
        tie), map/METHOD uint16 [N, 128, 128] (the reference's map times 65535)

Full mode (`--full`): torchvision FCN-ResNet50 and DeepLabV3-ResNet50 (21 classes, target layer
`model.backbone.layer4` as in the tutorial), nothing written but temporary files; prints the max abs difference
of the normalized maps per method.

    python tools/make_segmentation_fixtures.py
    python tools/make_segmentation_fixtures.py --full [--size 256]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.torch_tools import import_torchvision  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models", "segment")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "segment")
IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina")
EXPLAINED = 3  # images per fixture: the first of IMAGES whose head has no ReLU input near its kink
KINK = 1e-5  # torch and ONNX Runtime differ by ~1e-6: a ReLU input closer to 0 may pass a gradient in one only
METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM"}
SMALL_CLASSES = 6
SMALL_SIZE = 128


class SegmentationModelOutputWrapper(nn.Module):
    """pytorch-grad-cam's segmentation tutorial: torchvision's models return a dict."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.eval()  # a new module trains; torch.onnx.export restores that mode, the wrapped model's too

    def forward(self, x):
        return self.model(x)["out"]


def small_model(kind: str) -> nn.Module:
    tv = import_torchvision()
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    torch.manual_seed(0)
    backbone = IntermediateLayerGetter(tv.models.resnet18(), {"layer2": "out"})
    channels = 128
    if kind == "fcn":
        return FCN(backbone, FCNHead(channels, SMALL_CLASSES))
    head = nn.Sequential(  # torchvision's DeepLabHead, 32 channels wide
        ASPP(channels, [12, 24, 36], 32),
        nn.Conv2d(32, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, SMALL_CLASSES, 1),
    )
    return DeepLabV3(backbone, head)


def full_model(kind: str) -> nn.Module:
    tv = import_torchvision()
    torch.manual_seed(0)
    build = {
        "fcn_resnet50": tv.models.segmentation.fcn_resnet50,
        "deeplabv3_resnet50": tv.models.segmentation.deeplabv3_resnet50,
    }
    return build[kind](weights=None, weights_backbone=None, num_classes=21, aux_loss=False)


def photographs(size: int, names=IMAGES) -> np.ndarray:
    """scikit-image photographs as onnxcam's imagenet preset makes input tensors of them."""
    from skimage import data

    from onnxcam import preprocess

    images = [getattr(data, name)() for name in names]
    return preprocess.to_tensor(images, (size, size), "NCHW", 3, "imagenet", np.float32)


def calibrate(model: nn.Module, x: np.ndarray) -> None:
    """Fresh BatchNorm statistics (mean 0, var 1) on random weights make degenerate activations: set them to
    the batch statistics of the photographs (and flips of them), then evaluate."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        batch = torch.from_numpy(np.concatenate([x, x[..., ::-1].copy()]))
        model(batch)
    model.eval()


def export(model: nn.Module, x: np.ndarray, path: str) -> None:
    torch.onnx.export(
        SegmentationModelOutputWrapper(model),
        torch.from_numpy(x[:1]),
        path,
        input_names=["input"],
        output_names=["out"],
        opset_version=17,
        dynamic_axes={"input": {0: "N"}, "out": {0: "N"}},
        dynamo=False,
    )


def onnx_tensor_of(path: str, x: np.ndarray, activation: np.ndarray) -> str:
    """The candidate layer of the ONNX file whose values are the hooked torch activation."""
    from onnxcam.model import inspect_model, load_model
    from onnxcam.surgery import augment
    from tinymodels import session

    info = inspect_model(load_model(path))
    names = [layer.name for layer in info.layers if tuple(layer.shape[1:]) == activation.shape[1:]]
    values = session(augment(info, names, gradients=False)).run(names, {info.input_name: x})
    errors = {n: float(np.abs(v - activation).max()) for n, v in zip(names, values)}
    best = min(errors, key=errors.get)
    assert errors[best] < 1e-3 * (1 + np.abs(activation).max()), errors
    return best


def reference(model: nn.Module, layer: nn.Module, x: np.ndarray, classes: list) -> tuple:
    """pytorch-grad-cam's maps per method, the masks (predicted pixels of each row's class) and the top-2 gap."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    wrapper = SegmentationModelOutputWrapper(model)
    with torch.no_grad():
        out = wrapper(torch.from_numpy(x)).numpy()
    predicted = out.argmax(axis=1)
    top2 = np.sort(out, axis=1)[:, -2:]
    margin = float((top2[:, 1] - top2[:, 0]).min())
    masks = np.uint8([p == c for p, c in zip(predicted, classes)])
    targets = [SemanticSegmentationTarget(int(c), np.float32(m)) for c, m in zip(classes, masks)]
    maps = {}
    for name, cls in METHODS.items():
        with getattr(pytorch_grad_cam, cls)(model=wrapper, target_layers=[layer]) as cam:
            maps[name] = cam(input_tensor=torch.from_numpy(x), targets=targets)
    return maps, masks, margin, out


def away_from_kinks(model: nn.Module, x: np.ndarray, strict: bool = True) -> np.ndarray:
    """The rows of x whose every ReLU input in the head (after the target layer) is KINK or more from 0 (not
    strict: the first rows, whatever their margins; a wide head always has some input that close to 0)."""
    margins = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: margins.append(np.abs(i[0].numpy()).reshape(len(x), -1).min(axis=1)))
        for m in model.classifier.modules()
        if isinstance(m, nn.ReLU)
    ]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    margin = np.min(margins, axis=0)
    keep = np.flatnonzero(margin >= KINK if strict else margin >= 0)[:EXPLAINED]
    print(
        f"  images {[IMAGES[i] for i in keep]}: head ReLU inputs at least {[f'{m:.1e}' for m in margin[keep]]} from 0"
    )
    return x[keep]


def hooked(model: nn.Module, layer: nn.Module, x: np.ndarray) -> np.ndarray:
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.detach().numpy()))
    with torch.no_grad():
        model(torch.from_numpy(x))
    handle.remove()
    return seen[0]


def classes_to_explain(out: np.ndarray) -> list:
    """Per image: the class predicted on the most pixels, then (as another row) the runner-up by pixels."""
    counts = np.stack([(out.argmax(axis=1) == c).sum(axis=(1, 2)) for c in range(out.shape[1])], axis=1)
    order = np.argsort(-counts, axis=1, kind="stable")
    return [int(order[i, 0]) for i in range(len(out))], [int(order[i, 1]) for i in range(len(out))]


def onnxcam_maps(path: str, layer: str, x: np.ndarray, classes: list, region=None) -> tuple:
    from onnxcam import Explainer

    ex = Explainer(path, layer=layer, device="cpu")
    maps = {m: ex.explain(x, m, target=classes, region=region) for m in METHODS}
    return {m: r.maps for m, r in maps.items()}, next(iter(maps.values())).region


def build_small(kind: str) -> None:
    model = small_model(kind)
    x = photographs(SMALL_SIZE)
    calibrate(model, x)
    x = away_from_kinks(model, x)
    os.makedirs(MODELS, exist_ok=True)
    path = os.path.join(MODELS, f"{kind}_small.onnx")
    export(model, x, path)
    layer_module = model.backbone.layer2
    layer = onnx_tensor_of(path, x, hooked(model, layer_module, x))
    with torch.no_grad():
        out = SegmentationModelOutputWrapper(model)(torch.from_numpy(x)).numpy()
    first, second = classes_to_explain(out)
    xs = np.concatenate([x, x])
    classes = first + second
    maps, masks, margin, _ = reference(model, layer_module, xs, classes)
    ours, region = onnxcam_maps(path, layer, xs, classes)
    print(
        f"{kind}_small: layer {layer}, classes {classes}, top-2 margin {margin:.2e}, region pixels {masks.sum(axis=(1, 2))}"
    )
    print(f"  regions equal: {bool(np.array_equal(region, masks.astype(bool)))}")
    for m in METHODS:
        print(f"  {m:10} max |onnxcam - pytorch-grad-cam| = {np.abs(ours[m] - maps[m]).max():.2e}")
    os.makedirs(FIXTURES, exist_ok=True)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    np.savez_compressed(
        os.path.join(FIXTURES, f"{kind}_small.npz"),
        model=os.path.relpath(path, ROOT),
        model_sha256=digest,
        layer=layer,
        input=xs,
        targets=np.int64(classes),
        masks=masks,
        margin=np.float32(margin),
        **{f"map/{m}": np.uint16(np.round(np.clip(v, 0, 1) * 65535)) for m, v in maps.items()},
    )
    print(f"  wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB) and its fixture")


def check_full(kind: str, size: int) -> None:
    model = full_model(kind)
    x = photographs(size)
    calibrate(model, x)
    x = away_from_kinks(model, x, strict=False)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{kind}.onnx")
        export(model, x, path)
        layer = onnx_tensor_of(path, x, hooked(model, model.backbone.layer4, x))
        with torch.no_grad():
            out = SegmentationModelOutputWrapper(model)(torch.from_numpy(x)).numpy()
        classes = classes_to_explain(out)[0]
        maps, masks, margin, _ = reference(model, model.backbone.layer4, x, classes)
        ours, region = onnxcam_maps(path, layer, x, classes)
        fed, _ = onnxcam_maps(path, layer, x, classes, region=masks)
    differ = int((region != masks.astype(bool)).sum())
    print(f"{kind} {size}x{size}: layer {layer}, classes {classes}, top-2 margin {margin:.2e}")
    print(f"  predicted regions: {differ} of {masks.size} pixels differ from torch's (argmax near-ties)")
    exact = float64_reference(model, x, classes, masks)
    for m in METHODS:
        print(
            f"  {m:10} max |onnxcam - pytorch-grad-cam| = {np.abs(fed[m] - maps[m]).max():.2e} (torch's region fed), "
            f"{np.abs(ours[m] - maps[m]).max():.2e} (onnxcam's predicted region); float32's own noise: "
            f"max |pytorch-grad-cam - pytorch-grad-cam in float64| = {np.abs(maps[m] - exact[m]).max():.2e}"
        )


def float64_reference(model: nn.Module, x: np.ndarray, classes: list, masks: np.ndarray) -> dict:
    """pytorch-grad-cam's maps of the same network in float64: how far float32 rounding alone moves each map (a
    ReLU input within rounding of 0 passes or stops a gradient; HiResCAM's per-pixel product shows it)."""
    import copy

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    double = copy.deepcopy(model).double()
    wrapper = SegmentationModelOutputWrapper(double)
    targets = [SemanticSegmentationTarget(int(c), np.float64(m)) for c, m in zip(classes, masks)]
    maps = {}
    for name, cls in METHODS.items():
        with getattr(pytorch_grad_cam, cls)(model=wrapper, target_layers=[double.backbone.layer4]) as cam:
            maps[name] = cam(input_tensor=torch.from_numpy(x).double(), targets=targets)
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="FCN-ResNet50 and DeepLabV3-ResNet50, print only")
    parser.add_argument("--size", type=int, default=256, help="--full: input size")
    parser.add_argument("--only", help="comma-separated model kinds")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    kinds = ("fcn_resnet50", "deeplabv3_resnet50") if args.full else ("fcn", "deeplabv3")
    for kind in args.only.split(",") if args.only else kinds:
        check_full(kind, args.size) if args.full else build_small(kind)


if __name__ == "__main__":
    main()
