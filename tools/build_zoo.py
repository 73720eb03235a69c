"""Build models/zoo/*.onnx: small random-weight classifiers with the op patterns of common architectures.

Each network is a narrow, shallow version of a well-known family, defined here in plain
torch (torchvision does not import beside the CPU torch 2.13 wheel). Its weights are random
but seeded, then made sane on natural images (scikit-image's bundled photographs):

1. layers without BatchNorm get their weights scaled, layer by layer, so that their output
   has unit standard deviation on a calibration batch (LSUV-style);
2. BatchNorm statistics are re-estimated on the calibration batches in train mode (cumulative
   average), so activations are O(1) rather than 1e-11; BatchNorm and LayerNorm get random affine
   parameters (a fresh one is the identity, which would hide a rule that ignores it);
3. the last layer is scaled so that the logits have a standard deviation of LOGITS_STD.

Every model takes ``input`` (batch ``N`` dynamic, spatial size fixed) and returns ``logits``
(or ``probs`` when it ends in Softmax), has 10 classes and records its preprocessing preset in
the metadata key ``onnxcam.preprocess``. The script checks each file with ``onnx.checker``,
compares ONNX Runtime with torch, and prints a table.

    python tools/build_zoo.py            # all models
    python tools/build_zoo.py vgg fp16   # some of them

The output is deterministic for fixed package versions (seeded torch and numpy, one thread).
"""

from __future__ import annotations

import copy
import io
import pathlib
import sys
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import skimage.data
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxcam.preprocess import to_tensor

ROOT = pathlib.Path(__file__).resolve().parent.parent
ZOO = ROOT / "models" / "zoo"
SEED = 0
NUM_CLASSES = 10
LOGITS_STD = 2.0
CALIBRATION_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
CALIBRATION_BATCHES, BATCH = 4, 12  # 48 random crops


# -- building blocks ------------------------------------------------------------------------


def conv_bn(cin, cout, k=3, s=1, groups=1, act=nn.ReLU, padding=None):
    layers = [
        nn.Conv2d(cin, cout, k, s, k // 2 if padding is None else padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """forward() gives logits; `head` is the last layer (scaled to calibrate the logits)."""

    softmax = False

    def forward(self, x):
        y = self.logits(x)
        return torch.softmax(y, dim=-1) if self.softmax else y


# -- resnet: BasicBlocks, residual Add, conv7x7 + MaxPool 3x3 s2 p1 stem ------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class ResNet(Classifier):
    def __init__(self, widths=(16, 32, 64, 96)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cins = (widths[0],) + widths[:-1]
        self.layer1 = nn.Sequential(BasicBlock(cins[0], widths[0], 1), BasicBlock(widths[0], widths[0], 1))
        self.layer2 = nn.Sequential(BasicBlock(cins[1], widths[1], 2))
        self.layer3 = nn.Sequential(BasicBlock(cins[2], widths[2], 2))
        self.layer4 = nn.Sequential(BasicBlock(cins[3], widths[3], 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = self.head = nn.Linear(widths[3], NUM_CLASSES)

    def logits(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -- vgg: Conv/ReLU stacks, MaxPool, Flatten -> Linear -> ReLU -> Linear (no GAP) ---------------


class VGG(Classifier):
    def __init__(self, cfg=(16, "M", 32, "M", 48, 48, "M", 64, 64, "M", 64, 64, "M"), size=64):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        spatial = size // 2 ** cfg.count("M")
        self.classifier = nn.Sequential(
            nn.Linear(cin * spatial * spatial, 96), nn.ReLU(), nn.Dropout(0.5), nn.Linear(96, NUM_CLASSES)
        )
        self.head = self.classifier[-1]

    def logits(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


# -- squeezenet 1.1: Fire modules (Concat), MaxPool ceil_mode, conv classifier -> ReLU -> GAP ----


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class SqueezeNet(Classifier):
    def __init__(self):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731  (48 -> 24 -> 12 -> 6: ceil matters)
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1),
            nn.ReLU(),
            pool(),
            Fire(32, 8, 16),
            Fire(32, 8, 16),
            pool(),
            Fire(32, 12, 24),
            Fire(48, 12, 24),
            pool(),
            Fire(48, 16, 32),
            Fire(64, 16, 32),
            Fire(64, 24, 48),
            Fire(96, 24, 48),
        )
        self.head = nn.Conv2d(96, NUM_CLASSES, 1)
        self.classifier = nn.Sequential(nn.Dropout(0.5), self.head, nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def logits(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


# -- mobilenetv2: ReLU6 (Clip), depthwise conv, inverted residuals ------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        layers = [conv_bn(cin, mid, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn(mid, mid, 3, stride, groups=mid, act=nn.ReLU6), conv_bn(mid, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(Classifier):
    # (expand, channels, repeats, stride)
    SETTINGS = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 2, 2), (6, 32, 1, 1), (6, 48, 2, 2))

    def __init__(self):
        super().__init__()
        layers, cin = [conv_bn(3, 16, 3, 2, act=nn.ReLU6)], 16
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 128, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, NUM_CLASSES))
        self.head = self.classifier[-1]

    def logits(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# -- mobilenetv3: HardSwish, HardSigmoid, squeeze-excitation ------------------------------------


class SqueezeExcite(nn.Module):
    """GAP -> 1x1 conv -> act -> 1x1 conv -> gate -> Mul."""

    def __init__(self, c, squeeze, act=nn.ReLU, gate=nn.Hardsigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))


class V3Block(nn.Module):
    def __init__(self, cin, k, mid, cout, se, act, stride):
        super().__init__()
        layers = [conv_bn(cin, mid, 1, act=act)] if mid != cin else []
        layers.append(conv_bn(mid, mid, k, stride, groups=mid, act=act))
        if se:
            layers.append(SqueezeExcite(mid, max(8, mid // 4)))
        layers.append(conv_bn(mid, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV3(Classifier):
    RE, HS = nn.ReLU, nn.Hardswish
    # (kernel, expanded, out, SE, activation, stride), MobileNetV3-Small-like
    SETTINGS = (
        (3, 16, 16, True, RE, 2),
        (3, 48, 16, False, RE, 2),
        (3, 64, 16, False, RE, 1),
        (5, 64, 24, True, HS, 2),
        (5, 96, 24, True, HS, 1),
        (5, 96, 32, True, HS, 2),
    )

    def __init__(self):
        super().__init__()
        layers, cin = [conv_bn(3, 16, 3, 2, act=nn.Hardswish)], 16
        for k, mid, cout, se, act, s in self.SETTINGS:
            layers.append(V3Block(cin, k, mid, cout, se, act, s))
            cin = cout
        layers.append(conv_bn(cin, 96, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, NUM_CLASSES)
        )
        self.head = self.classifier[-1]

    def logits(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# -- efficientnet: SiLU (Sigmoid * Mul), squeeze-excitation with Sigmoid --------------------------


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        mid = cin * expand
        layers = [conv_bn(cin, mid, 1, act=nn.SiLU)] if expand != 1 else []
        layers += [
            conv_bn(mid, mid, k, stride, groups=mid, act=nn.SiLU),
            SqueezeExcite(mid, max(2, cin // 4), act=nn.SiLU, gate=nn.Sigmoid),
            conv_bn(mid, cout, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class EfficientNet(Classifier):
    # (expand, kernel, stride, channels, repeats), EfficientNet-B0-like
    SETTINGS = (
        (1, 3, 1, 8, 1),
        (6, 3, 2, 12, 2),
        (6, 5, 2, 20, 2),
        (6, 3, 2, 40, 2),
        (6, 5, 1, 48, 1),
        (6, 5, 2, 64, 1),
    )

    def __init__(self):
        super().__init__()
        layers, cin = [conv_bn(3, 16, 3, 2, act=nn.SiLU)], 16
        for e, k, s, c, n in self.SETTINGS:
            for i in range(n):
                layers.append(MBConv(cin, c, k, s if i == 0 else 1, e))
                cin = c
        layers.append(conv_bn(cin, 192, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(192, NUM_CLASSES))
        self.head = self.classifier[-1]

    def logits(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# -- densenet: pre-activation BN, Concat, transition AveragePool 2x2 ---------------------------


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(F.relu(self.norm2(y)))], 1)


class Transition(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2))


class DenseNet(Classifier):
    def __init__(self, growth=8, blocks=(2, 3, 3, 2)):
        super().__init__()
        c = 2 * growth
        layers = [nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i != len(blocks) - 1:
                layers.append(Transition(c, c // 2))
                c //= 2
        layers.append(nn.BatchNorm2d(c))
        self.features = nn.Sequential(*layers)
        self.classifier = self.head = nn.Linear(c, NUM_CLASSES)

    def logits(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.features(x)), 1), 1))


# -- googlenet: Inception blocks, 4 branches incl. MaxPool 3x3 s1 p1, Concat --------------------


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj):
        super().__init__()
        self.branch1 = conv_bn(cin, c1, 1)
        self.branch2 = nn.Sequential(conv_bn(cin, c3r, 1), conv_bn(c3r, c3, 3))
        self.branch3 = nn.Sequential(conv_bn(cin, c5r, 1), conv_bn(c5r, c5, 3))  # torchvision uses 3x3 here too
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(cin, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(Classifier):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn(3, 16, 7, 2),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            conv_bn(16, 16, 1),
            conv_bn(16, 32, 3),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        )
        self.inception3a = Inception(32, 16, 16, 24, 4, 8, 8)  # -> 56
        self.inception3b = Inception(56, 24, 24, 32, 8, 16, 16)  # -> 88
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(88, 32, 24, 40, 8, 16, 16)  # -> 104
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.inception5a = Inception(104, 32, 32, 48, 8, 24, 24)  # -> 128
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = self.head = nn.Linear(128, NUM_CLASSES)

    def logits(self, x):
        x = self.maxpool3(self.inception3b(self.inception3a(self.stem(x))))
        x = self.inception5a(self.maxpool4(self.inception4a(x)))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


# -- shufflenetv2: channel Split (chunk), Concat, channel shuffle Reshape/Transpose/Reshape --------


def channel_shuffle(x, groups: int, channels: int, height: int, width: int):
    # static sizes (only the batch is dynamic): the exporter writes constant shapes
    x = x.reshape(-1, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(-1, channels, height, width)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride, size):
        super().__init__()
        self.stride, self.cout, self.size = stride, cout, size  # size: output height = width
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1))
        c2 = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            conv_bn(c2, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None), conv_bn(half, half, 1)
        )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.split(self.cout // 2, dim=1)  # torch.chunk, with static sizes: one Split node
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2, self.cout, self.size, self.size)


class ShuffleNetV2(Classifier):
    def __init__(self, size=96, channels=(24, 48, 96), repeats=(2, 2, 2)):
        super().__init__()
        self.conv1 = conv_bn(3, 16, 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, spatial, stages = 16, size // 4, []
        for c, n in zip(channels, repeats):
            spatial //= 2
            stages.append(
                nn.Sequential(*[ShuffleUnit(cin if i == 0 else c, c, 2 if i == 0 else 1, spatial) for i in range(n)])
            )
            cin = c
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = conv_bn(cin, 128, 1)
        self.fc = self.head = nn.Linear(128, NUM_CLASSES)

    def logits(self, x):
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.fc(self.conv5(x).mean([2, 3]))  # ReduceMean, as torchvision's ShuffleNetV2


# -- regnet: ResNeXt-like bottlenecks with grouped 3x3 conv ---------------------------------------


class XBlock(nn.Module):
    def __init__(self, cin, cout, stride, group_width=8):
        super().__init__()
        self.a = conv_bn(cin, cout, 1)
        self.b = conv_bn(cout, cout, 3, stride, groups=cout // group_width)
        self.c = conv_bn(cout, cout, 1, act=None)
        self.proj = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.activation = nn.ReLU()

    def forward(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.c(self.b(self.a(x))))


class RegNet(Classifier):
    def __init__(self, widths=(16, 32, 64, 96), depths=(1, 1, 2, 1)):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        blocks, cin = [], 16
        for w, d in zip(widths, depths):
            blocks.append(nn.Sequential(*[XBlock(cin if i == 0 else w, w, 2 if i == 0 else 1) for i in range(d)]))
            cin = w
        self.trunk_output = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = self.head = nn.Linear(cin, NUM_CLASSES)

    def logits(self, x):
        return self.fc(torch.flatten(self.avgpool(self.trunk_output(self.stem(x))), 1))


# -- convnext: depthwise 7x7, NHWC LayerNorm + Linear (MatMul) + GELU, layer scale --------------


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim, layer_scale=0.5):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # torchvision's default 1e-6 makes the block vanish (DESIGN.md); ~0.5 keeps it alive. Per-channel
        # values (0.6x..1.4x): a rule that took the scale for a scalar would show
        self.layer_scale = nn.Parameter(layer_scale * torch.empty(dim).uniform_(0.6, 1.4))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.layer_scale * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(Classifier):
    def __init__(self, dims=(16, 32, 48, 64), depths=(1, 1, 2, 1)):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))]
        for i, (d, n) in enumerate(zip(dims, depths)):
            if i:
                layers.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], d, 2, 2)))
            layers.append(nn.Sequential(*[CNBlock(d) for _ in range(n)]))
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.fc = self.head = nn.Linear(dims[-1], NUM_CLASSES)

    def logits(self, x):
        return self.fc(self.norm(self.features(x).mean([-2, -1])))


# -- keras_nhwc: NHWC input, Transposes around NCHW convs, ReduceMean, MatMul + Add, Softmax -------


class KerasNHWC(Classifier):
    """What tf2onnx makes of a small Keras CNN: NCHW convs between Transposes, an NHWC head.

    It has no `head` module: calibrate() scales dense_kernel and dense_bias.
    """

    softmax = True

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU())
        self.block2_conv = nn.Conv2d(24, 32, 3, 2, 1)
        self.block3 = nn.Sequential(nn.Conv2d(32, 48, 3, 2, 1), nn.ReLU(), nn.Conv2d(48, 64, 3, 1, 1), nn.ReLU())
        self.dense_kernel = nn.Parameter(torch.randn(64, NUM_CLASSES) / 8)
        self.dense_bias = nn.Parameter(torch.randn(NUM_CLASSES) * 0.1)

    def logits(self, x):
        x = self.block1(x.permute(0, 3, 1, 2))  # NHWC -> NCHW
        x = self.block2_conv(x).permute(0, 2, 3, 1)  # a relu left in NHWC between two Transposes
        x = self.block3(torch.relu(x).permute(0, 3, 1, 2))
        x = x.permute(0, 2, 3, 1).mean([1, 2])  # GlobalAveragePooling2D over NHWC: ReduceMean axes [1, 2]
        return x @ self.dense_kernel + self.dense_bias


# -- the caffe2-style model, defined in torch for its weights and written at opset 7 by hand --------


class Caffe2Net(Classifier):
    """AlexNet-ish: Conv/ReLU/LRN/MaxPool, Reshape, Gemm -> ReLU -> Dropout -> Gemm, Softmax."""

    softmax = True

    def __init__(self, size=96):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 5, 2, 2), nn.Conv2d(16, 32, 3, 1, 1)
        self.conv3, self.conv4 = nn.Conv2d(32, 48, 3, 1, 1), nn.Conv2d(48, 48, 3, 1, 1)
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        s = size // 2
        for _ in range(3):
            s = (s - 3) // 2 + 1
        self.fc6, self.fc7 = nn.Linear(48 * s * s, 96), nn.Linear(96, NUM_CLASSES)
        self.head = self.fc7

    def logits(self, x):
        pool = lambda t: F.max_pool2d(t, 3, 2)  # noqa: E731
        x = pool(self.lrn(F.relu(self.conv1(x))))
        x = pool(self.lrn(F.relu(self.conv2(x))))
        x = pool(F.relu(self.conv4(F.relu(self.conv3(x)))))
        return self.fc7(F.relu(self.fc6(x.reshape(x.shape[0], -1))))


def caffe2_onnx(net: Caffe2Net, size: int) -> onnx.ModelProto:
    """Opset 7, IR 3 (initializers also listed as graph inputs, as IR < 4 requires)."""
    inits, nodes = [], []

    def param(name, t):
        inits.append(numpy_helper.from_array(t.detach().numpy().astype(np.float32), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(x, m, name, k, s, p):
        y = node(
            "Conv",
            [x, param(f"{name}_w", m.weight), param(f"{name}_b", m.bias)],
            name,
            kernel_shape=[k, k],
            strides=[s, s],
            pads=[p] * 4,
        )
        return node("Relu", [y], f"{name}_relu")

    def pool(x, name):
        return node("MaxPool", [x], name, kernel_shape=[3, 3], strides=[2, 2])

    def lrn(x, name):
        return node("LRN", [x], name, size=5, alpha=1e-4, beta=0.75, bias=1.0)

    x = pool(lrn(conv("data", net.conv1, "conv1", 5, 2, 2), "norm1"), "pool1")
    x = pool(lrn(conv(x, net.conv2, "conv2", 3, 1, 1), "norm2"), "pool2")
    x = pool(conv(conv(x, net.conv3, "conv3", 3, 1, 1), net.conv4, "conv4", 3, 1, 1), "pool5")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "pool5_flat_shape")
    inits.append(shape)
    x = node("Reshape", [x, shape.name], "pool5_flat")
    x = node("Gemm", [x, param("fc6_w", net.fc6.weight), param("fc6_b", net.fc6.bias)], "fc6", transB=1)
    x = node("Dropout", [node("Relu", [x], "fc6_relu")], "drop6", ratio=0.5)
    x = node("Gemm", [x, param("fc7_w", net.fc7.weight), param("fc7_b", net.fc7.bias)], "fc7", transB=1)
    node("Softmax", [x], "probs", axis=1)
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, size, size])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(
        nodes,
        "caffe2_opset7",
        inputs,
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", NUM_CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], producer_name="onnxcam-zoo")
    model.ir_version = 3
    return model


# -- the zoo --------------------------------------------------------------------------------------


@dataclass
class Spec:
    name: str
    make: object  # () -> Classifier
    opset: int
    size: int = 96
    preset: str = "imagenet"
    layout: str = "NCHW"
    patterns: str = ""
    keep_bn: bool = False  # export BatchNormalization nodes instead of folding them into Conv


SPECS = [
    Spec(
        "resnet",
        ResNet,
        17,
        patterns="BasicBlocks, residual Add, BN (kept), ReLU, MaxPool 3x3 s2 p1 stem, GAP",
        keep_bn=True,
    ),
    Spec("vgg", VGG, 13, size=64, patterns="Conv/ReLU stacks, MaxPool 2x2, Flatten -> Gemm -> ReLU -> Gemm (no GAP)"),
    Spec(
        "squeezenet",
        SqueezeNet,
        11,
        patterns="Fire modules (Concat), MaxPool ceil_mode, conv classifier -> ReLU -> GAP -> Flatten",
    ),
    Spec("mobilenetv2", MobileNetV2, 13, patterns="ReLU6 (Clip), depthwise conv, inverted residual Add"),
    Spec("mobilenetv3", MobileNetV3, 17, patterns="HardSwish, SE: GAP -> conv -> ReLU -> conv -> HardSigmoid -> Mul"),
    Spec("efficientnet", EfficientNet, 13, patterns="SiLU as Sigmoid * Mul, SE with Sigmoid gate, residual Add"),
    Spec("densenet", DenseNet, 13, patterns="pre-activation BN (kept), Concat, transition AveragePool 2x2"),
    Spec(
        "googlenet", GoogLeNet, 15, patterns="Inception: 4 branches incl. MaxPool 3x3 s1 p1, Concat; MaxPool ceil_mode"
    ),
    Spec(
        "shufflenetv2",
        ShuffleNetV2,
        13,
        patterns="Split (chunk), Concat, channel shuffle Reshape/Transpose/Reshape, ReduceMean",
    ),
    Spec("regnet", RegNet, 18, patterns="grouped Conv, ResNeXt-like bottlenecks, residual Add"),
    Spec(
        "convnext",
        ConvNeXt,
        18,
        patterns="depthwise 7x7, Transpose to NHWC, LayerNormalization, MatMul, Erf GELU, layer scale Mul, ReduceMean (axes input)",
    ),
    Spec(
        "keras_nhwc",
        KerasNHWC,
        13,
        preset="inception",
        layout="NHWC",
        patterns="NHWC input, Transposes around NCHW convs, ReduceMean, MatMul + Add, Softmax output",
    ),
    Spec(
        "caffe2_opset7",
        Caffe2Net,
        7,
        preset="caffe",
        patterns="IR 3, Conv, ReLU, LRN, MaxPool, Reshape [0,-1], Gemm (with C), Dropout, Softmax output",
    ),
    Spec("fp16", MobileNetV2, 13, patterns="float16 weights, activations, input and output (mobilenetv2)"),
    Spec(
        "resnet_qdq",
        ResNet,
        17,
        patterns="resnet quantized QDQ: QuantizeLinear/DequantizeLinear, uint8 activations, int8 weights",
    ),
    Spec(
        "resnet_qoperator",
        ResNet,
        17,
        patterns="resnet quantized QOperator: QLinearConv, QLinearAdd, "
        "QLinearGlobalAveragePool, QGemm (com.microsoft), uint8 activations, int8 weights",
    ),
]
# name -> the onnxruntime.quantization format it is quantized to (from resnet.onnx)
QUANTIZED = {"resnet_qdq": "QDQ", "resnet_qoperator": "QOperator"}


def output_name(spec: Spec) -> str:
    return "probs" if spec.make in (KerasNHWC, Caffe2Net) else "logits"


def calibration_batches(spec: Spec, seed: int) -> list:
    """Random crops (scale 0.25..1, aspect 3/4..4/3) of scikit-image's photographs, preprocessed."""
    rng = np.random.default_rng(seed)
    images = [getattr(skimage.data, name)() for name in CALIBRATION_IMAGES]
    crops = []
    for i in range(CALIBRATION_BATCHES * BATCH):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        area = rng.uniform(0.25, 1.0) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = min(h, int(np.sqrt(area / aspect))), min(w, int(np.sqrt(area * aspect)))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y : y + ch, x : x + cw]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    tensors = to_tensor(crops, (spec.size, spec.size), spec.layout, 3, spec.preset)
    return [torch.from_numpy(tensors[i : i + BATCH]) for i in range(0, len(tensors), BATCH)]


@torch.no_grad()
def lsuv(model: Classifier, x: torch.Tensor) -> None:
    """Scale each Conv/Linear (in forward order) so that its output has unit std on x."""
    order = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: order.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    model(x)
    for h in hooks:
        h.remove()
    for module in order:
        seen = {}
        hook = module.register_forward_hook(lambda mod, i, o, seen=seen: seen.update(std=float(o.std())))  # -> None
        model(x)
        hook.remove()
        module.weight.div_(seen["std"])
        if module.bias is not None:
            module.bias.div_(seen["std"])


@torch.no_grad()
def calibrate(model: Classifier, batches: list) -> None:
    """LSUV for BN-free layers, BN statistics from natural images, then logits std = LOGITS_STD."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        lsuv(model, torch.cat(batches))
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):  # not the identity affine of a fresh LayerNorm
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
    model.train()
    for b in batches:
        model(b)
    model.eval()
    std = float(model.logits(torch.cat(batches)).std())
    if isinstance(model, KerasNHWC):
        model.dense_kernel.mul_(LOGITS_STD / std)
        model.dense_bias.mul_(LOGITS_STD / std)
    else:
        model.head.weight.mul_(LOGITS_STD / std)
        model.head.bias.mul_(LOGITS_STD / std)


def export(model: nn.Module, spec: Spec, example: torch.Tensor, out: str) -> onnx.ModelProto:
    buf = io.BytesIO()
    # TrainingMode.PRESERVE on an eval() model keeps BatchNormalization nodes (inference form);
    # the default (EVAL) folds each BN that follows a Conv into it.
    mode = torch.onnx.TrainingMode.PRESERVE if spec.keep_bn else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            opset_version=spec.opset,
            training=mode,
            input_names=["input"],
            output_names=[out],
            do_constant_folding=True,
            dynamic_axes={"input": {0: "N"}, out: {0: "N"}},
        )
    return onnx.load_from_string(buf.getvalue())


def finish(proto: onnx.ModelProto, spec: Spec) -> onnx.ModelProto:
    """Shapes inferred, IR version ORT 1.31 can load, metadata, checked."""
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    # onnx 1.23 writes IR 14, which ONNX Runtime 1.31 cannot load; IR 3 is the caffe2 era's (opset 7)
    proto.ir_version = (
        3 if spec.opset == 7 else max(8, helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True))
    )
    proto.producer_name, proto.producer_version = "onnxcam tools/build_zoo.py", ""
    del proto.metadata_props[:]
    helper.set_model_props(
        proto,
        {
            "onnxcam.preprocess": spec.preset,
            "onnxcam.source": f"tools/build_zoo.py, random weights, seed {SEED}: {spec.patterns}",
        },
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def quantize(fp32_path: pathlib.Path, out_path: pathlib.Path, batches: list, quant_format: str) -> onnx.ModelProto:
    """ORT static quantization, QDQ or QOperator format: uint8 activations, int8 per-tensor weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": b.numpy()[i : i + 1]} for b in batches for i in range(0, len(b), 3)])

        def get_next(self):
            return next(self.items, None)

    tmp, folded = out_path.with_suffix(".tmp.onnx"), out_path.with_suffix(".tmp-folded.onnx")
    try:
        # ORT's graph optimizations fold BatchNormalization into Conv first, as ORT recommends
        quant_pre_process(str(fp32_path), str(folded), skip_symbolic_shape=True)
        quantize_static(
            str(folded),
            str(tmp),
            Reader(),
            quant_format=QuantFormat[quant_format],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
        )
        proto = onnx.load(str(tmp))
    finally:
        for path in (tmp, folded):
            path.unlink(missing_ok=True)
    # ORT's optimizer declares every domain it knows; keep those the nodes use
    used = {n.domain for n in proto.graph.node} | {""}
    kept = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto


def ort_run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def build(spec: Spec) -> tuple:
    # seeded by the network class: fp16 has mobilenetv2's weights, resnet_qdq and resnet_qoperator quantize resnet's
    seed = SEED + zlib.crc32(spec.make.__name__.encode()) % 1000
    torch.manual_seed(seed)
    batches = calibration_batches(spec, seed)
    model = spec.make()
    calibrate(model, batches)
    probe = torch.cat(batches)[:8]
    out = output_name(spec)
    path = ZOO / f"{spec.name}.onnx"

    with torch.no_grad():
        expected = model(probe).numpy()
        logits = model.logits(torch.cat(batches)).numpy()
    if spec.name == "caffe2_opset7":
        proto = caffe2_onnx(model, spec.size)
    elif spec.name == "fp16":
        with torch.no_grad():
            model.half()  # the TorchScript exporter traces float16 on the CPU: float16 end to end, no Casts
            logits = model.logits(torch.cat(batches).half()).float().numpy()
            # reference: float32 arithmetic on the float16 weights and input (BN folding in float16 and
            # float16 rounding between layers leave ~0.06 on logits of std 2, about 15 ulps)
            expected = copy.deepcopy(model).float()(probe.half().float()).numpy()
        proto = export(model, spec, probe.half(), out)
    elif spec.name in QUANTIZED:
        proto = quantize(ZOO / "resnet.onnx", path, batches, QUANTIZED[spec.name])
        del proto.graph.value_info[:]  # the quantizer's are the float model's: infer them afresh
    else:
        proto = export(model, spec, probe, out)
    proto = finish(proto, spec)
    if spec.name in QUANTIZED:  # the logits the quantized model really gives
        logits = ort_run(proto, torch.cat(batches).numpy())
    x = probe.numpy().astype(np.float16 if spec.name == "fp16" else np.float32)
    got = ort_run(proto, x).astype(np.float32)
    diff = float(np.abs(got - expected).max())
    limit = {"fp16": 0.15, **dict.fromkeys(QUANTIZED, 1.0)}.get(spec.name, 1e-4)
    assert got.shape == expected.shape and diff < limit, (spec.name, diff)
    path.write_bytes(proto.SerializeToString())
    ops = sorted({n.op_type for n in proto.graph.node})
    return spec, proto, path.stat().st_size, ops, float(logits.std()), diff


def main(names: list) -> None:
    torch.set_num_threads(1)  # reproducible float sums
    ZOO.mkdir(parents=True, exist_ok=True)
    specs = [s for s in SPECS if not names or s.name in names]
    unknown = set(names) - {s.name for s in SPECS}
    if unknown:
        sys.exit(f"unknown model(s): {', '.join(sorted(unknown))}; known: {', '.join(s.name for s in SPECS)}")
    rows = []
    for spec in specs:
        if spec.name in QUANTIZED and not (ZOO / "resnet.onnx").exists():
            sys.exit(f"{spec.name} quantizes models/zoo/resnet.onnx: build resnet first")
        rows.append(build(spec))
        print(f"built {spec.name}", file=sys.stderr)
    print(f"{'name':16} {'opset':>5} {'bytes':>9} {'nodes':>5} {'logits std':>10} {'ORT-torch':>9}  ops")
    for spec, proto, size, ops, std, diff in rows:
        print(
            f"{spec.name:16} {spec.opset:>5} {size:>9,} {len(proto.graph.node):>5} {std:>10.3f} {diff:>9.1e}  {' '.join(ops)}"
        )
    total = sum(p.stat().st_size for p in ZOO.glob("*.onnx"))
    print(f"zoo total: {total:,} bytes in {len(list(ZOO.glob('*.onnx')))} files")


if __name__ == "__main__":
    main(sys.argv[1:])
