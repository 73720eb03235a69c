"""What the tools that build models with torch share: torchvision imported beside the CPU torch wheel, and the
legacy ONNX export with a dynamic batch that onnxcam's benchmarks and fixtures use."""

from __future__ import annotations

import torch


def import_torchvision():
    """torchvision, imported with torch.library.register_fake a no-op for its own ops during the import: the
    registry's torchvision does not import beside the CPU torch wheel ("operator torchvision::nms does not
    exist"), and none of these tools uses those ops."""
    original = torch.library.register_fake

    def tolerant(name, *args, **kwargs):
        if isinstance(name, str) and name.startswith("torchvision::"):
            return args[0] if args else (lambda fn: fn)
        return original(name, *args, **kwargs)

    torch.library.register_fake = tolerant
    try:
        import torchvision
    finally:
        torch.library.register_fake = original
    return torchvision


def export_onnx(model, x, path: str, opset: int = 17) -> None:
    """torch.onnx's legacy exporter: input `input`, output `logits`, the batch dynamic."""
    torch.onnx.export(
        model,
        x,
        path,
        input_names=["input"],
        output_names=["logits"],
        opset_version=opset,
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        dynamo=False,
    )
