"""Time formulations of MaxPool's input gradient dX (what onnxcam/surgery/vjp.py emits) on ONNX Runtime.

    python tools/bench_pool_backward.py                     # ResNet-50's stem pool, batch 1 and 16
    python tools/bench_pool_backward.py --batches 16 --repeats 9

The pool sits where it does in a model: its input made by a Conv (so in ONNX Runtime's NCHWc layout), dY made
by a Conv, dX read by a Conv. Each formulation is built by the same Builder the rules use, checked equal to
the first-maximum rule computed in NumPy on a tie-rich input (a rounded ReLU output), then timed with ORT's
profiler: the kernel time of its own nodes ("rule"), and the whole run's kernel time over a run without it
("total - base", which counts the layout reorders it causes). Medians over the runs.

- Indices + Expand + ScatterElements: MaxPool's Indices output, scatter-add of dY into zeros.
- Indices + ConstantOfShape + ScatterElements: the same with the zeros made by ConstantOfShape.
- separable Indices + Gather + ScatterElements: a [1, k] pool then a [k, 1] pool, each with Indices (the row-
  major first maximum of a 2-D window is the first maximum of its first maximal row), composed by Gather.
- offsets in NCHWc Convs + grouped ConvTranspose: per window offset, x == y by a one-hot strided Conv and
  HardSigmoid, the first hit by a chain of Muls, the offsets stacked and placed by one ConvTranspose.
- window masks: the rule before opset 16 (per offset: Slice, Less, Pad-interleave, Sum).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import statistics
import sys
import tempfile

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from onnxcam.surgery import vjp  # noqa: E402
from onnxcam.surgery.builder import Builder  # noqa: E402

ort.set_default_logger_severity(3)
STEM = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # ResNet-50: [N, 64, 112, 112] -> 56


def indices_scatter(b, node, g, zeros="Expand"):
    x = b.fwd(node.inputs[0])
    attrs = {k: v for k, v in node.attrs.items() if k != "storage_order"}
    _, indices = b.ops("MaxPool", x, outputs=2, **attrs)
    shape = b.op("Shape", b.op("Reshape", x, b.const([-1], np.int64)))
    data = b.op("Expand", b.const(np.zeros(1)), shape) if zeros == "Expand" else b.op("ConstantOfShape", shape)
    flat = [b.op("Reshape", t, b.const([-1], np.int64)) for t in (indices, g[0])]
    return b.reshape_like(b.op("ScatterElements", data, *flat, axis=0, reduction="add"), node.inputs[0])


def separable_indices(b, node, g):
    _, _, k, strides, _, begin = vjp._pool_geometry(node)
    x = b.fwd(node.inputs[0])
    pads = [0, begin[1], 0, begin[1]]
    rows, in_x = b.ops("MaxPool", x, outputs=2, kernel_shape=[1, k[1]], strides=[1, strides[1]], pads=pads)
    pads = [begin[0], 0, begin[0], 0]
    _, in_rows = b.ops("MaxPool", rows, outputs=2, kernel_shape=[k[0], 1], strides=[strides[0], 1], pads=pads)
    flat = [b.op("Reshape", t, b.const([-1], np.int64)) for t in (in_x, in_rows, g[0], x)]
    index = b.op("Gather", flat[0], flat[1], axis=0)
    dx = b.op("ScatterElements", b.op("ConstantOfShape", b.op("Shape", flat[3])), index, flat[2], reduction="add")
    return b.reshape_like(dx, node.inputs[0])


def offsets_conv_transpose(b, node, g):
    in_shape, out_shape, k, strides, dilations, begin = vjp._pool_geometry(node)
    c, n = in_shape[1], len(k)
    x, y = b.fwd(node.inputs[0]), b.fwd(node.outputs[0])
    full = [(out_shape[2 + i] - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1 for i in range(n)]
    end = [max(0, full[i] - begin[i] - in_shape[2 + i]) for i in range(n)]
    scale = 2.0**22  # HardSigmoid's alpha 2^127 times this takes the smallest nonzero x - y to <= -1
    minus_y = b.op("Conv", y, b.const(np.full([c, 1, 1, 1], -scale)), group=c, kernel_shape=[1, 1])
    offsets = list(itertools.product(*(range(size) for size in k)))
    rest, parts = g[0], []
    for j, offset in enumerate(offsets):
        if j == len(offsets) - 1:
            parts.append(b.unsqueeze(rest, [2]))
            break
        w = np.zeros([c, 1, *k], np.float32)
        w[(slice(None), 0, *offset)] = scale
        attrs = dict(group=c, kernel_shape=k, strides=strides, pads=begin + end, dilations=dilations)
        taken = b.op("Add", b.op("Conv", x, b.const(w), **attrs), minus_y)
        hit = b.op("HardSigmoid", taken, alpha=2.0**127, beta=1.0)
        taps = [np.arange(out_shape[2 + i]) * strides[i] - begin[i] + offset[i] * dilations[i] for i in range(n)]
        inside = np.ones([], np.float32)
        for i in range(n):
            inside = np.multiply.outer(inside, ((taps[i] >= 0) & (taps[i] < in_shape[2 + i])).astype(np.float32))
        if not inside.all():  # the Conv reads zeros there, which may equal y
            hit = b.op("Mul", hit, b.const(inside.reshape([1, 1, *out_shape[2:]])))
        part = b.op("Mul", rest, hit)
        minus = b.op("Conv", part, b.const(np.full([c, 1, 1, 1], -1.0)), group=c, kernel_shape=[1, 1])
        rest = b.op("Add", minus, rest)
        parts.append(b.unsqueeze(part, [2]))
    stacked = b.op("Concat", *parts, axis=2)  # channel-major: [N, C, offsets, ...]
    stacked = b.op("Reshape", stacked, b.const([0, c * len(offsets), *out_shape[2:]], np.int64))
    w = np.zeros([c * len(offsets), 1, *k], np.float32)
    for j, offset in enumerate(offsets):
        w[(slice(j, None, len(offsets)), 0, *offset)] = 1
    output_padding = [max(0, in_shape[2 + i] + begin[i] - full[i]) for i in range(n)]
    attrs = dict(group=c, kernel_shape=k, strides=strides, pads=begin + end, dilations=dilations)
    return b.op("ConvTranspose", stacked, b.const(w), output_padding=output_padding, **attrs)


def window_masks(b, node, g):
    opset, b.opset = b.opset, 15
    try:
        return vjp._max_pool(b, node, g)[0]
    finally:
        b.opset = opset


FORMULATIONS = {
    "Indices + Expand + ScatterElements": indices_scatter,
    "Indices + ConstantOfShape + Scatter": lambda b, node, g: indices_scatter(b, node, g, "ConstantOfShape"),
    "separable Indices + Gather + Scatter": separable_indices,
    "offsets in NCHWc Convs + ConvTranspose": offsets_conv_transpose,
    "window masks (before opset 16)": window_masks,
}


def build(formulation, channels, size, attrs, opset=17):
    """x0, g0 -> Conv -> MaxPool, Conv; dX -> Conv: the pool's backward between Convs, as in a model."""
    one = gs.Constant("one", np.ones([channels, 1, 1, 1], np.float32))
    x0 = gs.Variable("x0", np.float32, ["N", channels, size, size])
    g0 = gs.Variable("g0", np.float32, None)
    x = gs.Variable("x", np.float32, ["N", channels, size, size])
    probe = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("MaxPool", ["a"], ["b"], **attrs)],
            "probe",
            [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, channels, size, size])],
            [onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, None)],
        ),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
    )
    out = list(onnx.shape_inference.infer_shapes(probe).graph.output[0].type.tensor_type.shape.dim)
    out_shape = ["N", channels] + [d.dim_value for d in out[2:]]
    y, g = gs.Variable("y", np.float32, out_shape), gs.Variable("g", np.float32, out_shape)
    pointwise = dict(group=channels, kernel_shape=[1, 1])
    pool = gs.Node("MaxPool", "pool", dict(attrs), [x], [y])
    nodes = [gs.Node("Conv", "make_x", pointwise, [x0, one], [x]), pool]
    nodes.append(gs.Node("Conv", "make_g", pointwise, [g0, one], [g]))
    graph = gs.Graph(nodes=nodes, inputs=[x0, g0], opset=opset)
    dx = formulation(Builder(graph, opset), pool, [g]) if formulation else x
    outputs = [gs.Variable(name, np.float32) for name in ("dx_out", "y_out")]
    graph.nodes += [gs.Node("Conv", f"read_{t.name}", pointwise, [t, one], [o]) for t, o in zip((dx, y), outputs)]
    graph.outputs = outputs
    model = gs.export_onnx(graph.cleanup().toposort())
    model.ir_version = 8
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.gettempdir(), "bench_pool_backward")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, out_shape[2:]


def kernel_times(session, feed, repeats):
    """dX, and per run (the first dropped) the kernel milliseconds: total, the rule's nodes, reorders."""
    for _ in range(repeats + 1):
        outputs = session.run(None, feed)
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e["name"] == "model_run")
    per_run = [collections.Counter() for _ in runs]
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        run = next(i for i, (start, stop) in enumerate(runs) if start <= e["ts"] <= stop)
        op = e["args"]["op_name"]
        part = "layout" if op.startswith("Reorder") else "rule" if e["name"].startswith("onnxcam/") else "model"
        per_run[run][part] += e["dur"] / 1e3
        per_run[run]["total"] += e["dur"] / 1e3
    return outputs[0], per_run[1:]


def first_max_gradient(x, g, kernel, strides, begin):
    """The definition (2-D, no dilation): each window's dY to its first maximum, row-major; padding never."""
    dx = np.zeros(x.shape, np.float64)
    for i, j in np.ndindex(*g.shape[2:]):
        rows = [
            r for r in range(i * strides[0] - begin[0], i * strides[0] - begin[0] + kernel[0]) if 0 <= r < x.shape[2]
        ]
        cols = [
            c for c in range(j * strides[1] - begin[1], j * strides[1] - begin[1] + kernel[1]) if 0 <= c < x.shape[3]
        ]
        window = x[:, :, rows][:, :, :, cols].reshape(*x.shape[:2], -1)
        first = np.argmax(window, axis=-1)
        n, c = np.indices(x.shape[:2])
        np.add.at(dx, (n, c, np.asarray(rows)[first // len(cols)], np.asarray(cols)[first % len(cols)]), g[:, :, i, j])
    return dx


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default="", help="only the formulations whose name contains this")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for batch in [int(v) for v in args.batches.split(",")]:
        shape = (batch, args.channels, args.size, args.size)
        x0 = np.maximum(np.round(rng.normal(size=shape) * 4) / 4, 0).astype(np.float32)  # ties: zeros and quarters
        base, out_shape = build(None, args.channels, args.size, STEM)
        g0 = rng.normal(size=(batch, args.channels, *out_shape)).astype(np.float32)
        feed = {"x0": x0, "g0": g0}
        expected = first_max_gradient(x0, g0, STEM["kernel_shape"], STEM["strides"], STEM["pads"][:2])
        sessions = {}
        for label, formulation in FORMULATIONS.items():
            if args.only in label:
                sessions[label] = build(formulation, args.channels, args.size, STEM)[0]
        _, base_runs = kernel_times(base, feed, args.repeats)
        base_total = statistics.median(r["total"] for r in base_runs)
        print(f"\nbatch {batch}: MaxPool k3 s2 p1 on {list(shape)}, kernel ms (median of {args.repeats} runs)")
        print(f"  {'':40} {'total - base':>12} {'rule':>8} {'reorders':>9}")
        for label, session in sessions.items():
            dx, runs = kernel_times(session, feed, args.repeats)
            error = np.abs(dx - expected).max() / np.abs(expected).max()
            assert error < 1e-6, (label, error)
            median = {key: statistics.median(r[key] for r in runs) for key in ("total", "rule", "layout")}
            print(f"  {label:40} {median['total'] - base_total:12.1f} {median['rule']:8.1f} {median['layout']:9.1f}")


if __name__ == "__main__":
    main()
