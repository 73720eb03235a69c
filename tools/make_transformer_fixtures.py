"""Vision-transformer parity fixtures: narrow timm models with seeded weights, exported to ONNX, and
pytorch-grad-cam 1.5.7's maps on them with its documented `reshape_transform` (drop the prefix tokens, lay the
rest on the patch grid row-major) at `blocks[-1].norm1`, the layer its tutorials use; and attention rollout
(Abnar & Zuidema 2020) and gradient-weighted rollout (Chefer et al. 2021) written here in torch, from the
attention probabilities that timm's own blocks compute (hooked at `attn_drop`).

Swin (timm's, and torchvision's): narrow two-stage models on the same images, with pytorch-grad-cam's maps at
the layer of its Swin tutorial, the last block's norm2 (timm: tokens [N, h*w, C], the tutorial's
`reshape_transform`; torchvision: channels-last [N, h, w, C], a permute), and at the final norm, onnxcam's
automatic layer (channels-last [N, h, w, C] before the head's global pooling).

    pip install torch==2.13.0 timm grad-cam==1.5.7 onnxscript   (torchvision through tools/torch_tools.py)
    python tools/make_transformer_fixtures.py          # tests/fixtures/transformers/*.onnx and *.npz
    python tools/make_transformer_fixtures.py swin swin_torchvision     # only these
    python tools/make_transformer_fixtures.py vit_cls_opset23   # vit_cls by the dynamo exporter at opset 23

vit_cls_opset23.onnx: the same weights as vit_cls, exported at opset 23, where timm's fused attention
(scaled_dot_product_attention) becomes ONNX `Attention` ops; its references are vit_cls.npz's.

tests/test_transformers.py compares onnxcam with these files, without torch.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "transformers")
SIZE, PATCH, WIDTH, DEPTH, HEADS, CLASSES = 32, 8, 32, 2, 2, 10
METHODS = ("GradCAM", "HiResCAM", "GradCAMPlusPlus", "LayerCAM", "EigenCAM")


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_tools import export_onnx, import_torchvision  # noqa: E402

import_torchvision()
import pytorch_grad_cam as pgc  # noqa: E402
import timm.models.deit  # noqa: E402
import timm.models.swin_transformer as swin  # noqa: E402
import timm.models.vision_transformer as vt  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

KWARGS = dict(img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=CLASSES)
MODELS = {  # name -> (builder, prefix tokens)
    "vit_cls": (lambda: vt.VisionTransformer(**KWARGS), 1),
    "deit_distilled": (lambda: timm.models.deit.VisionTransformerDistilled(**KWARGS), 2),
    "vit_registers": (lambda: vt.VisionTransformer(reg_tokens=4, **KWARGS), 5),
    "vit_avgpool": (lambda: vt.VisionTransformer(class_token=False, global_pool="avg", **KWARGS), 0),
}
SWIN_GRID = SIZE // 2  # patch 2: a 16x16 grid, then 8x8 after the patch merging; windows 4x4, shifted


def _swin_timm():
    return swin.SwinTransformer(
        img_size=SIZE, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 2), num_classes=CLASSES
    )


def _swin_torchvision():
    return import_torchvision().models.swin_transformer.SwinTransformer(
        patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4], num_classes=CLASSES
    )


def _tokens_on_grid(tensor):  # pytorch-grad-cam's Swin tutorial: tokens [N, h*w, C] on the last stage's grid
    grid = SWIN_GRID // 2
    return tensor.reshape(tensor.size(0), grid, grid, tensor.size(2)).transpose(2, 3).transpose(1, 2)


def _channels_first(tensor):  # [N, h, w, C] -> [N, C, h, w]
    return tensor.permute(0, 3, 1, 2)


# name -> (builder, {fixture key suffix: (the layer, its reshape_transform)}, dynamo export too). torchvision's
# through the dynamo exporter is left out: it writes the head's adaptive pooling as an `as_strided` Gather over the
# flattened batch, with indices computed from N, which onnxcam cannot tell keeps each image's values apart.
SWINS = {
    "swin": (
        _swin_timm,
        {"": (lambda m: m.layers[-1].blocks[-1].norm2, _tokens_on_grid), "/auto": (lambda m: m.norm, _channels_first)},
        True,
    ),
    "swin_torchvision": (
        _swin_torchvision,
        {"": (lambda m: m.features[-1][-1].norm2, _channels_first), "/auto": (lambda m: m.norm, _channels_first)},
        False,
    ),
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """Seeded weights with a sane scale: timm's own init (std 0.02) leaves every class tied."""
    torch.manual_seed(seed)
    model = (MODELS[name][0] if name in MODELS else SWINS[name][0])().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 1.0 / np.sqrt(module.in_features))
                if module.bias is not None:
                    module.bias.normal_(0, 0.1)
        for p in (getattr(model, n, None) for n in ("cls_token", "dist_token", "reg_token", "pos_embed")):
            if p is not None:
                p.normal_(0, 0.5)
        for n, p in model.named_parameters():
            if n.endswith("relative_position_bias_table"):
                p.normal_(0, 0.5)
    return model


def reshape_transform(prefix: int):
    def transform(tensor):  # pytorch-grad-cam's ViT tutorial, with the prefix as a parameter
        grid = SIZE // PATCH
        result = tensor[:, prefix:, :].reshape(tensor.size(0), grid, grid, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    return transform


def rollouts(model, x: torch.Tensor, targets, prefix: int) -> tuple:
    """(rollout, gradient-weighted rollout) [N, h, w]: the class token's row of the relevance over the grid
    tokens (the mean of the grid tokens' rows without a class token)."""
    probabilities = []

    def keep(module, args, output):
        output.retain_grad()
        probabilities.append(output)

    hooks = []
    for block in model.blocks:
        block.attn.fused_attn = False  # the explicit softmax(q k^T) path, whose probabilities the hook sees
        hooks.append(block.attn.attn_drop.register_forward_hook(keep))
    logits = model(x)
    logits[torch.arange(len(x)), torch.as_tensor(targets)].sum().backward()
    for hook in hooks:
        hook.remove()
    n, t = x.shape[0], probabilities[0].shape[-1]
    eye = torch.eye(t, dtype=torch.float64).expand(n, t, t)
    plain, weighted = eye, eye
    for a in probabilities:
        a64, g64 = a.detach().double(), a.grad.double()
        plain = ((a64.mean(dim=1) + torch.eye(t, dtype=torch.float64)) / 2) @ plain
        weighted = weighted + (g64 * a64).clamp(min=0).mean(dim=1) @ weighted
    grid = SIZE // PATCH

    def row(r):
        r = r[:, 0] if prefix else r[:, prefix:].mean(dim=1)
        return r[:, prefix:].reshape(n, grid, grid).numpy().astype(np.float32)

    return row(plain), row(weighted)


def inputs() -> np.ndarray:
    """Two photos from examples/, resized and standardized (the tests feed this tensor as is)."""
    import cv2

    images = [
        cv2.cvtColor(cv2.imread(os.path.join(ROOT, "examples", f)), cv2.COLOR_BGR2RGB)
        for f in ("chelsea.png", "coffee.png")
    ]
    x = np.stack([cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for im in images]).astype(np.float32)
    return np.ascontiguousarray(((x / 255.0 - 0.5) / 0.25).transpose(0, 3, 1, 2))


def export_dynamo(model, x: np.ndarray, path: str, opset: int = 18) -> None:
    torch.onnx.export(
        model,
        (torch.from_numpy(x),),
        input_names=["input"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes={"x": {0: torch.export.Dim("N")}},
        external_data=False,
    ).save(path)


def export_both(model, x: np.ndarray, name: str, dynamo: bool = True) -> str:
    """The legacy export (name.onnx) and the same weights through the dynamo exporter (name_dynamo.onnx, needs
    onnxscript) at the opset it writes best."""
    path = os.path.join(OUT, f"{name}.onnx")
    export_onnx(model, torch.from_numpy(x), path)
    if dynamo:
        export_dynamo(model, x, os.path.join(OUT, f"{name}_dynamo.onnx"))
    return path


def cams(model, x: np.ndarray, targets, layer, transform) -> dict:
    """pytorch-grad-cam's maps of every method at `layer`."""
    found = {}
    for method in METHODS:
        cam = getattr(pgc, method)(model=model, target_layers=[layer], reshape_transform=transform)
        found[method] = cam(
            input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(int(t)) for t in targets]
        ).astype(np.float32)
    return found


def logits_and_targets(model, x: np.ndarray, name: str) -> tuple:
    """The logits and the classes they pick, checked for ties."""
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    assert np.ptp(logits, axis=1).min() > 0.5, f"{name}: classes nearly tied {logits}"
    return logits, logits.argmax(axis=1)


def main() -> None:
    known = [*MODELS, *SWINS, "vit_cls_opset23"]
    names = sys.argv[1:] or known
    unknown = sorted(set(names) - set(known))
    if unknown:
        sys.exit(f"unknown models {unknown}; choose from {known}")
    os.makedirs(OUT, exist_ok=True)
    x = inputs()
    if "vit_cls_opset23" in names:
        export_dynamo(build("vit_cls"), x, os.path.join(OUT, "vit_cls_opset23.onnx"), opset=23)
    for name, (_, prefix) in ((n, m) for n, m in MODELS.items() if n in names):
        model = build(name)
        path = export_both(model, x, name)
        logits, targets = logits_and_targets(model, x, name)
        fixtures = {"input": x, "logits": logits, "targets": targets, "prefix": prefix}
        fixtures.update(cams(model, x, targets, model.blocks[-1].norm1, reshape_transform(prefix)))
        fixtures["rollout"], fixtures["gradient_rollout"] = rollouts(build(name), torch.from_numpy(x), targets, prefix)
        np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **fixtures)
        print(f"{name}: {os.path.getsize(path)} bytes, logits range {np.ptp(logits):.2f}, targets {targets.tolist()}")
    for name, (_, layers, dynamo) in ((n, m) for n, m in SWINS.items() if n in names):
        model = build(name)
        path = export_both(model, x, name, dynamo)
        logits, targets = logits_and_targets(model, x, name)
        fixtures = {"input": x, "logits": logits, "targets": targets}
        for suffix, (layer, transform) in layers.items():
            found = cams(model, x, targets, layer(model), transform)
            fixtures.update((f"{method}{suffix}", cam) for method, cam in found.items())
        np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **fixtures)
        print(f"{name}: {os.path.getsize(path)} bytes, logits range {np.ptp(logits):.2f}, targets {targets.tolist()}")


if __name__ == "__main__":
    sys.exit(main())
