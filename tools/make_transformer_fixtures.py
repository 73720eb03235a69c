"""Vision-transformer parity fixtures: narrow timm models with seeded weights, exported to ONNX, and
pytorch-grad-cam 1.5.7's maps on them with its documented `reshape_transform` (drop the prefix tokens, lay the
rest on the patch grid row-major) at `blocks[-1].norm1`, the layer its tutorials use; and attention rollout
(Abnar & Zuidema 2020) and gradient-weighted rollout (Chefer et al. 2021) written here in torch, from the
attention probabilities that timm's own blocks compute (hooked at `attn_drop`).

    pip install torch==2.13.0 timm grad-cam==1.5.7 onnxscript   (torchvision through tools/torch_tools.py)
    python tools/make_transformer_fixtures.py          # tests/fixtures/transformers/*.onnx and *.npz

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
import timm.models.vision_transformer as vt  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

KWARGS = dict(img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=CLASSES)
MODELS = {  # name -> (builder, prefix tokens)
    "vit_cls": (lambda: vt.VisionTransformer(**KWARGS), 1),
    "deit_distilled": (lambda: timm.models.deit.VisionTransformerDistilled(**KWARGS), 2),
    "vit_registers": (lambda: vt.VisionTransformer(reg_tokens=4, **KWARGS), 5),
    "vit_avgpool": (lambda: vt.VisionTransformer(class_token=False, global_pool="avg", **KWARGS), 0),
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """Seeded weights with a sane scale: timm's own init (std 0.02) leaves every class tied."""
    torch.manual_seed(seed)
    model = MODELS[name][0]().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 1.0 / np.sqrt(module.in_features))
                if module.bias is not None:
                    module.bias.normal_(0, 0.1)
        for p in (getattr(model, n, None) for n in ("cls_token", "dist_token", "reg_token", "pos_embed")):
            if p is not None:
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


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    x = inputs()
    for name, (_, prefix) in MODELS.items():
        model = build(name)
        path = os.path.join(OUT, f"{name}.onnx")
        export_onnx(model, torch.from_numpy(x), path)
        # the same weights through the dynamo exporter (needs onnxscript), at the opset it writes best
        torch.onnx.export(
            model,
            (torch.from_numpy(x),),
            input_names=["input"],
            output_names=["logits"],
            opset_version=18,
            dynamo=True,
            dynamic_shapes={"x": {0: torch.export.Dim("N")}},
            external_data=False,
        ).save(os.path.join(OUT, f"{name}_dynamo.onnx"))
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()
        targets = logits.argmax(axis=1)
        assert np.ptp(logits, axis=1).min() > 0.5, f"{name}: classes nearly tied {logits}"
        fixtures = {"input": x, "logits": logits, "targets": targets, "prefix": prefix}
        for method in METHODS:
            cam = getattr(pgc, method)(
                model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape_transform(prefix)
            )
            fixtures[method] = cam(
                input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(int(t)) for t in targets]
            ).astype(np.float32)
        fixtures["rollout"], fixtures["gradient_rollout"] = rollouts(build(name), torch.from_numpy(x), targets, prefix)
        np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **fixtures)
        print(f"{name}: {os.path.getsize(path)} bytes, logits range {np.ptp(logits):.2f}, targets {targets.tolist()}")


if __name__ == "__main__":
    sys.exit(main())
