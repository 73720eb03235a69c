"""A full-width ResNet-50 in plain torch (torchvision does not import beside the CPU torch wheel),
for benchmarks: random seeded weights, exported to ONNX on demand (not committed: ~100 MB).

    python tools/resnet50.py [OUT.onnx]      # default models/large/resnet50.onnx
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

from torch_tools import export_onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATH = os.path.join(ROOT, "models", "large", "resnet50.onnx")


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks, cin = [], 64
        for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for i in range(count):
                stage.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
            blocks.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2048, classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def build(seed: int = 0) -> ResNet50:
    """The seeded network in eval mode (BatchNorm statistics: mean 0, var 1, as initialized)."""
    torch.manual_seed(seed)
    return ResNet50().eval()


def export(path: str = DEFAULT_PATH, seed: int = 0) -> str:
    import onnx

    os.makedirs(os.path.dirname(path), exist_ok=True)
    model = build(seed)
    x = torch.randn(1, 3, 224, 224)
    export_onnx(model, x, path)
    proto = onnx.load(path)
    proto.ir_version = 8
    proto.metadata_props.add(key="onnxcam.preprocess", value="imagenet")
    onnx.save(proto, path)
    return path


if __name__ == "__main__":
    print(export(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH))
