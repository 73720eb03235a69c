"""Hostile and broken inputs for tests/test_hostile.py: tiny ONNX models that are wrong in one way each,
image files that lie about their size, and a JPEG that asks to be rotated.

Everything is built in memory with onnx.helper, struct and OpenCV; nothing is downloaded.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tinymodels import CLASSES, IN_SHAPE, Net, classifier, ir_version

# -- models ----------------------------------------------------------------------------------------


def tiny(body=None, opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """x [N, 3, 7, 6] -> Conv 'A' -> body (default Relu) -> Flatten -> MatMul -> logits [N, 10]."""
    net = Net(opset, seed=seed)
    return classifier(net, body(net) if body else net.op("Relu", "A"))


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def with_tail(model: onnx.ModelProto, op: str, **attrs) -> onnx.ModelProto:
    """The same classifier with `op` (Softmax, Sigmoid) applied to its scores: it outputs probabilities."""
    m = copy(model)
    logits = m.graph.output[0].name
    m.graph.node.append(helper.make_node(op, [logits], ["probs"], name="tail", **attrs))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", CLASSES]))
    return m


def with_feature_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """Two outputs: the scores and the feature map 'A'."""
    m = copy(model)
    m.graph.output.append(helper.make_tensor_value_info("A", TensorProto.FLOAT, ["N", 4, IN_SHAPE[1], IN_SHAPE[2]]))
    return m


def with_second_input(model: onnx.ModelProto, feeds_scores: bool) -> onnx.ModelProto:
    """A second input 'y': either added to the scores, or only feeding a second output 'aux'."""
    m = copy(model)
    logits = m.graph.output[0].name
    if feeds_scores:
        m.graph.input.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES]))
        m.graph.node.append(helper.make_node("Add", [logits, "y"], ["scores"], name="add_y"))
        del m.graph.output[:]
        m.graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES]))
    else:
        m.graph.input.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2]))
        m.graph.node.append(helper.make_node("Mul", ["y", "y"], ["aux"], name="square_y"))
        m.graph.output.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 2]))
    return m


def with_huge_constant(model: onnx.ModelProto, dims=(100_000, 100_000)) -> onnx.ModelProto:
    """The scores plus ReduceSum(ConstantOfShape(dims)): tiny on disk, 40 GB if ONNX Runtime folds it."""
    m = copy(model)
    logits = m.graph.output[0].name
    m.graph.initializer.append(numpy_helper.from_array(np.array(dims, np.int64), "huge_shape"))
    m.graph.node.extend(
        [
            helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"], name="huge"),
            helper.make_node("ReduceSum", ["huge"], ["huge_sum"], name="huge_sum", keepdims=0),
            helper.make_node("Add", [logits, "huge_sum"], ["scores"], name="add_huge"),
        ]
    )
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES]))
    return m


def with_input_dims(model: onnx.ModelProto, dims) -> onnx.ModelProto:
    """The image input re-declared with `dims` (ints, or strings for symbolic dimensions)."""
    m = copy(model)
    shape = m.graph.input[0].type.tensor_type.shape
    for d, value in zip(shape.dim, dims):
        d.Clear()
        if isinstance(value, str):
            d.dim_param = value
        else:
            d.dim_value = value
    return m


def _model(nodes, inputs, initializers, output, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version(opset)
    return model


def _weights(*shape, seed=0):
    return np.random.default_rng(seed).normal(0, 0.3, shape).astype(np.float32)


def fully_convolutional() -> onnx.ModelProto:
    """x [N, 3, H, W] (dynamic size) -> Conv 'A' -> Relu -> GlobalAveragePool -> Flatten -> MatMul -> logits."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])
    inits = [
        numpy_helper.from_array(_weights(4, 3, 3, 3), "w"),
        numpy_helper.from_array(_weights(4, CLASSES, seed=1), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["A"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["A"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc"),
    ]
    return _model(nodes, [x], inits, out)


def vector_input() -> onnx.ModelProto:
    """x [N, 12] -> MatMul -> logits: no image-like input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])
    return _model(
        [helper.make_node("MatMul", ["x", "fc"], ["logits"], name="fc")],
        [x],
        [numpy_helper.from_array(_weights(12, CLASSES), "fc")],
        out,
    )


def no_spatial_layer(pool_first: bool) -> onnx.ModelProto:
    """An image classifier without a 4-D layer of spatial size > 1: Flatten -> MatMul, or
    GlobalAveragePool -> 1x1 Conv -> Flatten -> MatMul."""
    c, h, w = IN_SHAPE
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, h, w])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])
    if pool_first:
        nodes = [
            helper.make_node("GlobalAveragePool", ["x"], ["g"], name="gap"),
            helper.make_node("Conv", ["g", "w"], ["c"], name="conv1x1"),
            helper.make_node("Flatten", ["c"], ["f"], name="flat"),
            helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc"),
        ]
        inits = [
            numpy_helper.from_array(_weights(4, c, 1, 1), "w"),
            numpy_helper.from_array(_weights(4, CLASSES), "fc"),
        ]
    else:
        nodes = [
            helper.make_node("Flatten", ["x"], ["f"], name="flat"),
            helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc"),
        ]
        inits = [numpy_helper.from_array(_weights(c * h * w, CLASSES), "fc")]
    return _model(nodes, [x], inits, out)


# -- images ----------------------------------------------------------------------------------------


def picture(h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    """A random BGR uint8 picture."""
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def encode(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok, ext
    return buf.tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def palette_png(transparent: bool) -> bytes:
    """A 3x4 palette PNG (red, green columns); with `transparent`, red is fully transparent (tRNS)."""
    ihdr = struct.pack(">IIBBBBB", 4, 3, 8, 3, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes([0, 1, 0, 1]) for _ in range(3))
    chunks = [png_chunk(b"IHDR", ihdr), png_chunk(b"PLTE", bytes([255, 0, 0, 0, 255, 0]))]
    if transparent:
        chunks.append(png_chunk(b"tRNS", bytes([0, 255])))
    chunks += [png_chunk(b"IDAT", zlib.compress(rows)), png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def exif_jpeg(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG of `image` with an EXIF APP1 segment holding only the Orientation tag (0x0112)."""
    tiff = (
        b"MM\x00\x2a\x00\x00\x00\x08"
        + struct.pack(">H", 1)
        + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
        + struct.pack(">I", 0)
    )
    app1 = b"Exif\x00\x00" + tiff
    jpg = encode(".jpg", image)
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


def bomb(kind: str, width: int = 50_000, height: int = 50_000) -> bytes:
    """A small file whose header declares width x height pixels (with too little data for them)."""
    if kind == "png":
        raw = zlib.compress(b"\x00" * (1 + 3 * width) * 2, 9)
        return (
            b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", raw)
            + png_chunk(b"IEND", b"")
        )
    if kind == "jpg":
        sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
        return b"\xff\xd8" + sof + b"\xff\xd9"
    if kind == "gif":
        return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"\x3b"
    if kind == "bmp":
        dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54) + dib + b"\x00" * 16
    if kind == "webp":
        vp8x = (
            b"VP8X"
            + struct.pack("<I", 10)
            + b"\x00\x00\x00\x00"
            + (width - 1).to_bytes(3, "little")
            + (height - 1).to_bytes(3, "little")
        )
        return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    if kind == "tiff":
        entries = struct.pack("<HHII", 256, 4, 1, width) + struct.pack("<HHII", 257, 4, 1, height)
        return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + struct.pack("<I", 0)
    if kind == "ppm":
        return b"P6\n%d %d\n255\n" % (width, height) + b"\x00" * 64
    raise ValueError(kind)


BOMB_KINDS = ("png", "jpg", "gif", "bmp", "webp", "tiff", "ppm")
