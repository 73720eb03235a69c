"""torchvision from the registry does not import beside the CPU torch wheel: its compiled ops fail to register
("operator torchvision::nms does not exist"). The tools that build models with it (and timm, and
pytorch-grad-cam, which import it) call `import_torchvision()` first; none of them uses those ops."""

from __future__ import annotations

import torch


def import_torchvision():
    """torchvision, imported with torch.library.register_fake a no-op for its own ops during the import."""
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
