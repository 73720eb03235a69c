"""Time formulations of a strided Conv's input gradient dX (what onnxcam/surgery/vjp.py emits) on ONNX Runtime.

    python tools/bench_conv_backward.py                    # the demo's and ResNet-50's strided convs, batch 1
    python tools/bench_conv_backward.py --batch 16 --only dw --threads 1

Each formulation is one small ONNX graph g -> dX, checked equal to ConvTranspose (the reference, within 1e-5
of its largest entry) before it is timed; medians of interleaved runs. With --threads 1 the time is the
thread's CPU time, which other processes on a shared machine disturb far less than wall time.

- ConvTranspose: the textbook rule (for depthwise convs ORT runs one tiny GEMM and a col2im per channel).
- spread + Conv: g spread with zeros by a depthwise 1x1 ConvTranspose, then the stride-1 Conv of W flipped.
- Pad + DepthToSpace + Conv: the same spread made by padding channels and DepthToSpace.
- Resize + mask + Conv: the spread made by a nearest upsampling times a 0/1 mask.
- polyphase Conv + DepthToSpace: one stride-1 Conv with the s*s sub-kernels of W (no multiplications by
  the zeros of the spread), interleaved by DepthToSpace (grouped convs: g repeated s*s times).
- polyphase, a Conv per phase: depthwise only, s*s depthwise Convs, Concat, DepthToSpace.
- Conv per phase + DepthToSpace / Transpose / Concat (6-D): a stride-1 Conv per phase on that phase's own taps
  (sub-kernels of different sizes, no zero taps), Concat along channels and DepthToSpace, or a 6-D Transpose,
  or each phase as [N, C, R, 1, R, 1] concatenated along axes 5 and 3; then cropped to the input's size.
  Faster than ConvTranspose on ResNet-50's layer3/4 convs alone, but no faster end to end, so onnxcam
  keeps ConvTranspose for strided dense convs.
- 1x1 Conv + spread: k = 1 without pads: the 1x1 Conv of W^T at g's resolution, spread by a depthwise 1x1
  ConvTranspose (then a Pad or Slice to the input's size, or its output_padding).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ort.set_default_logger_severity(3)
node = helper.make_node

# name: (M out channels, C/G in channels per group, G, kernel, stride, begin pad, end pad, input size)
CASES = {
    "demo stem 3->32 k3 s2 SAME 224": (32, 3, 1, 3, 2, 0, 1, 224),
    "demo dw96 k3 s2 SAME 112": (96, 1, 96, 3, 2, 0, 1, 112),
    "demo dw144 k5 s2 SAME 56": (144, 1, 144, 5, 2, 1, 2, 56),
    "demo dw240 k3 s2 SAME 28": (240, 1, 240, 3, 2, 0, 1, 28),
    "demo dw672 k5 s2 SAME 14": (672, 1, 672, 5, 2, 1, 2, 14),
    "r50 stem 3->64 k7 s2 p3 224": (64, 3, 1, 7, 2, 3, 3, 224),
    "r50 layer2 128 k3 s2 p1 56": (128, 128, 1, 3, 2, 1, 1, 56),
    "r50 layer4 512 k3 s2 p1 14": (512, 512, 1, 3, 2, 1, 1, 14),
    "r50 downsample 256->512 k1 s2 56": (512, 256, 1, 1, 2, 0, 0, 56),
    "r50 layer3 256 k3 s2 p1 28": (256, 256, 1, 3, 2, 1, 1, 28),
    "r50 downsample 512->1024 k1 s2 28": (1024, 512, 1, 1, 2, 0, 0, 28),
    "r50 downsample 1024->2048 k1 s2 14": (2048, 1024, 1, 1, 2, 0, 0, 14),
    "grouped 32x4 k3 s2 p1 56": (128, 4, 32, 3, 2, 1, 1, 56),
    "dense 24 k3 s2 p1 odd 57": (24, 24, 1, 3, 2, 1, 1, 57),
    "dense 40->20 k1 s2 odd 29": (40, 20, 1, 1, 2, 0, 0, 29),
    "dense 32 k5 s3 p2 48": (32, 32, 1, 5, 3, 2, 2, 48),
    "dw64 k3 s3 p1 30": (64, 1, 64, 3, 3, 1, 1, 30),
}


def ints(*values):
    return np.array(values, np.int64)


def conv_transpose(w, group, s, b, e, size, out):
    k = w.shape[2]
    extra = size + b + e - ((out - 1) * s + k)
    return [
        node(
            "ConvTranspose",
            ["g", "W"],
            ["dx"],
            group=group,
            strides=[s, s],
            kernel_shape=[k, k],
            pads=[b, b, e, e],
            output_padding=[extra, extra],
        )
    ], {"W": w}


def flipped(w, group):
    """W flipped in space, in and out channels swapped per group: the stride-1 Conv that is Conv's transpose."""
    m, cg, k, _ = w.shape
    f = w[:, :, ::-1, ::-1].reshape(group, m // group, cg, k, k).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(f.reshape(group * cg, m // group, k, k))


def conv_on(spread, length, w, group, b, size, nodes, inits):
    """dX = stride-1 Conv of a spread gradient `length` long: pads k-1-b before, whatever makes `size` after."""
    k = w.shape[2]
    end = size + b - length
    if end < 0:
        nodes.append(node("Slice", [spread, "zero2", "cut", "hw"], ["cut_spread"]))
        inits.update(zero2=ints(0, 0), cut=ints(length + end, length + end), hw=ints(2, 3))
        spread, end = "cut_spread", 0
    nodes.append(
        node("Conv", [spread, "F"], ["dx"], group=group, kernel_shape=[k, k], pads=[k - 1 - b] * 2 + [end] * 2)
    )
    inits["F"] = flipped(w, group)
    return nodes, inits


def spread_conv(w, group, s, b, e, size, out):
    m = w.shape[0]
    nodes = [node("ConvTranspose", ["g", "one"], ["z"], group=m, strides=[s, s], kernel_shape=[1, 1])]
    return conv_on("z", (out - 1) * s + 1, w, group, b, size, nodes, {"one": np.ones([m, 1, 1, 1], np.float32)})


def pad_depth_to_space_conv(w, group, s, b, e, size, out):
    m = w.shape[0]
    nodes = [node("Pad", ["g", "channels"], ["z"]), node("DepthToSpace", ["z"], ["u"], blocksize=s, mode="DCR")]
    return conv_on("u", out * s, w, group, b, size, nodes, {"channels": ints(0, 0, 0, 0, 0, (s * s - 1) * m, 0, 0)})


def resize_mask_conv(w, group, s, b, e, size, out):
    mask = np.zeros((1, 1, out * s, out * s), np.float32)
    mask[:, :, ::s, ::s] = 1
    nodes = [node("Resize", ["g", "", "scales"], ["r"], mode="nearest"), node("Mul", ["r", "mask"], ["u"])]
    return conv_on("u", out * s, w, group, b, size, nodes, {"scales": np.array([1, 1, s, s], np.float32), "mask": mask})


def polyphase_plan(size, out, k, s, b):
    """dX[s m + p] = sum_j W[r_p + s j] g[m + c_p - j]: one stride-1 Conv with begin pad P, taps L, end pad E,
    and per phase p the kernel tap at each of the L positions (-1: zero)."""
    r = [(p + b) % s for p in range(s)]
    c = [(p + b) // s for p in range(s)]
    taps = [max(0, math.ceil((k - rp) / s)) for rp in r]
    live = [p for p in range(s) if taps[p]]
    begin = max(taps[p] - 1 - c[p] for p in live)
    length = begin + max(c[p] for p in live) + 1
    rows = math.ceil(size / s)
    end = rows - out - begin + length - 1
    index = -np.ones((s, length), np.int64)
    for p in live:
        for j in range(taps[p]):
            index[p, begin + c[p] - j] = r[p] + s * j
    return begin, length, end, rows, index


def polyphase_weights(w, group, s, b, size, out):
    m, cg, k, _ = w.shape
    channels = cg * group
    begin, length, end, rows, index = polyphase_plan(size, out, k, s, b)
    padded = np.zeros((m, cg, k + 1, k + 1), w.dtype)
    padded[:, :, :k, :k] = w  # index -1 reads the zero row and column
    phases = []
    for p1, p2 in itertools.product(range(s), range(s)):
        sub = padded[:, :, index[p1]][:, :, :, index[p2]]
        sub = sub.reshape(group, m // group, cg, length, length).transpose(0, 2, 1, 3, 4)
        phases.append(sub.reshape(channels, m // group, length, length))
    return np.concatenate(phases), begin, length, end, rows


def interleave(nodes, inits, phases, s, rows, size):
    nodes.append(node("DepthToSpace", [phases], ["u" if rows * s != size else "dx"], blocksize=s, mode="DCR"))
    if rows * s != size:
        nodes.append(node("Slice", ["u", "zero2", "size", "hw"], ["dx"]))
        inits.update(zero2=ints(0, 0), size=ints(size, size), hw=ints(2, 3))
    return nodes, inits


def polyphase(w, group, s, b, e, size, out):
    weights, begin, length, end, rows = polyphase_weights(w, group, s, b, size, out)
    if end < 0:
        raise ValueError("g reaches past dX: not built here")
    nodes, source = [], "g"
    if group > 1:
        nodes.append(node("Concat", ["g"] * (s * s), ["repeated"], axis=1))
        source = "repeated"
    nodes.append(
        node(
            "Conv",
            [source, "B"],
            ["phases"],
            group=group * s * s if group > 1 else 1,
            kernel_shape=[length, length],
            pads=[begin, begin, end, end],
        )
    )
    return interleave(nodes, {"B": weights}, "phases", s, rows, size)


def polyphase_per_phase(w, group, s, b, e, size, out):
    m = w.shape[0]
    if w.shape[1] != 1 or group != m:
        raise ValueError("depthwise only")
    weights, begin, length, end, rows = polyphase_weights(w, group, s, b, size, out)
    if end < 0:
        raise ValueError("g reaches past dX: not built here")
    nodes, inits = [], {}
    for p in range(s * s):
        inits[f"B{p}"] = np.ascontiguousarray(weights[p * m : (p + 1) * m])
        nodes.append(
            node(
                "Conv",
                ["g", f"B{p}"],
                [f"phase{p}"],
                group=m,
                kernel_shape=[length, length],
                pads=[begin, begin, end, end],
            )
        )
    nodes.append(node("Concat", [f"phase{p}" for p in range(s * s)], ["phases"], axis=1))
    return interleave(nodes, inits, "phases", s, rows, size)


def phase_plan(size, out, k, s, b):
    """Per phase p of one axis (dX[s m + p], m < R = ceil(size / s)): the taps T (W[r + s j], j < T), the first
    of them in W flipped, and the begin and end pads of the stride-1 Conv of g that gives the phase's R rows
    (negative: g cut there)."""
    rows = -(-size // s)
    plan = []
    for p in range(s):
        c, r = divmod(p + b, s)
        taps = max(0, -(-(k - r) // s))
        plan.append((taps, k - 1 - r - s * (taps - 1), taps - 1 - c, rows + c - out))
    return plan, rows


def phase_kernel(w, group, axis_taps):
    """W's sub-kernel W[r1 + s j1, r2 + s j2] flipped, channels swapped per group (see `flipped`)."""
    f = flipped(w, group)
    (t1, a1), (t2, a2), (s1, s2) = axis_taps
    return np.ascontiguousarray(f[:, :, a1 : a1 + s1 * t1 : s1][:, :, :, a2 : a2 + s2 * t2 : s2])


def per_phase(w, group, s, b, e, size, out, interleave_with="DepthToSpace"):
    """A stride-1 Conv per phase with that phase's sub-kernel (no zero taps), Concat, interleave, crop."""
    m, cg, k, _ = w.shape
    channels = cg * group
    plan, rows = phase_plan(size, out, k, s, b)
    nodes, inits, outputs = [], {"zero2": ints(0, 0), "hw": ints(2, 3)}, []
    for p1, p2 in itertools.product(range(s), range(s)):
        (t1, a1, pb1, pe1), (t2, a2, pb2, pe2) = plan[p1], plan[p2]
        name = f"phase{p1}{p2}"
        if not t1 or not t2:
            outputs.append(None)
            continue
        source = "g"
        if min(pb1, pb2, pe1, pe2) < 0:
            source = f"g{p1}{p2}"
            inits[source + "_b"] = ints(max(0, -pb1), max(0, -pb2))
            inits[source + "_e"] = ints(out + min(0, pe1), out + min(0, pe2))
            nodes.append(node("Slice", ["g", source + "_b", source + "_e", "hw"], [source]))
        inits["B" + name] = phase_kernel(w, group, [(t1, a1), (t2, a2), (s, s)])
        pads = [max(0, pb1), max(0, pb2), max(0, pe1), max(0, pe2)]
        nodes.append(node("Conv", [source, "B" + name], [name], group=group, kernel_shape=[t1, t2], pads=pads))
        outputs.append(name)
    # a zero phase: the channel Pad of the live phase before it (or after it, for leading zero phases)
    chunks, lead = [], 0
    for out_name in outputs:
        if out_name is None and not chunks:
            lead += 1
        elif out_name is None:
            chunks[-1][2] += 1
        else:
            chunks.append([out_name, lead, 0])
            lead = 0
    parts = []
    for i, (name, before, after) in enumerate(chunks):
        if before or after:
            inits[f"pad{i}"] = ints(0, before * channels, 0, 0, 0, after * channels, 0, 0)
            nodes.append(node("Pad", [name, f"pad{i}"], [f"padded{i}"]))
            name = f"padded{i}"
        parts.append(name)
    if len(parts) > 1 and interleave_with != "Concat":
        nodes.append(node("Concat", parts, ["phases"], axis=1))
        phases = "phases"
    else:
        phases = parts[0]
    crop = rows * s != size
    if interleave_with == "Concat":
        if len(parts) != s * s:
            raise ValueError("zero phases: not built here")
        inits["six"] = ints(0, channels, rows, 1, rows, 1)
        inits["four"] = ints(0, channels, rows * s, rows * s)
        lines = []
        for p1 in range(s):
            for p2 in range(s):
                nodes.append(node("Reshape", [parts[p1 * s + p2], "six"], [f"six{p1}{p2}"]))
            nodes.append(node("Concat", [f"six{p1}{p2}" for p2 in range(s)], [f"line{p1}"], axis=5))
            lines.append(f"line{p1}")
        nodes.append(node("Concat", lines, ["grid"], axis=3))
        nodes.append(node("Reshape", ["grid", "four"], ["u" if crop else "dx"]))
    elif interleave_with == "DepthToSpace":
        nodes.append(node("DepthToSpace", [phases], ["u" if crop else "dx"], blocksize=s, mode="DCR"))
    else:
        inits["six"] = ints(0, s, s, channels, rows, rows)
        inits["four"] = ints(0, channels, rows * s, rows * s)
        nodes.append(node("Reshape", [phases, "six"], ["six_d"]))
        nodes.append(node("Transpose", ["six_d"], ["moved"], perm=[0, 3, 4, 1, 5, 2]))
        nodes.append(node("Reshape", ["moved", "four"], ["u" if crop else "dx"]))
    if crop:
        inits["size"] = ints(size, size)
        nodes.append(node("Slice", ["u", "zero2", "size", "hw"], ["dx"]))
    return nodes, inits


def per_phase_transpose(w, group, s, b, e, size, out):
    return per_phase(w, group, s, b, e, size, out, interleave_with="Transpose")


def per_phase_concat(w, group, s, b, e, size, out):
    return per_phase(w, group, s, b, e, size, out, interleave_with="Concat")


def pointwise_spread(w, group, s, b, e, size, out):
    """k = 1, no pads: the 1x1 Conv of W^T at g's resolution, then spread by a depthwise 1x1 ConvTranspose."""
    m, cg, k, _ = w.shape
    if k != 1 or b or e:
        raise ValueError("1x1 without pads only")
    channels = cg * group
    spread = (out - 1) * s + 1
    nodes = [
        node("Conv", ["g", "F"], ["low"], group=group, kernel_shape=[1, 1]),
        node("ConvTranspose", ["low", "one"], ["z"], group=channels, strides=[s, s], kernel_shape=[1, 1]),
    ]
    inits = {"F": flipped(w, group), "one": np.ones([channels, 1, 1, 1], np.float32)}
    if spread < size:
        inits["tail"] = ints(0, 0, 0, 0, 0, 0, size - spread, size - spread)
        nodes.append(node("Pad", ["z", "tail"], ["dx"]))
    else:
        inits.update(zero2=ints(0, 0), size=ints(size, size), hw=ints(2, 3))
        nodes.append(node("Slice", ["z", "zero2", "size", "hw"], ["dx"]))
    return nodes, inits


def pointwise_spread_output_padding(w, group, s, b, e, size, out):
    """k = 1, no pads: the 1x1 Conv of W^T at g's resolution, then a depthwise 1x1 ConvTranspose with
    output_padding (its tail zeros)."""
    m, cg, k, _ = w.shape
    if k != 1 or b or e:
        raise ValueError("1x1 without pads only")
    channels = cg * group
    extra = size - ((out - 1) * s + 1)
    nodes = [
        node("Conv", ["g", "F"], ["low"], group=group, kernel_shape=[1, 1]),
        node(
            "ConvTranspose",
            ["low", "one"],
            ["dx"],
            group=channels,
            strides=[s, s],
            kernel_shape=[1, 1],
            output_padding=[extra, extra],
        ),
    ]
    return nodes, {"F": flipped(w, group), "one": np.ones([channels, 1, 1, 1], np.float32)}


FORMULATIONS = {
    "ConvTranspose": conv_transpose,
    "spread (1x1 ConvTranspose) + Conv": spread_conv,
    "Pad + DepthToSpace + Conv": pad_depth_to_space_conv,
    "Resize + mask + Conv": resize_mask_conv,
    "polyphase Conv + DepthToSpace": polyphase,
    "polyphase, a Conv per phase": polyphase_per_phase,
    "Conv per phase + DepthToSpace": per_phase,
    "Conv per phase + Transpose": per_phase_transpose,
    "Conv per phase + Concat (6-D)": per_phase_concat,
    "1x1 Conv + spread + Pad/Slice": pointwise_spread,
    "1x1 Conv + spread (output_padding)": pointwise_spread_output_padding,
}


def session(nodes, inits, threads):
    graph = helper.make_graph(
        nodes,
        "dx",
        [helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", None, None, None])],
        [helper.make_tensor_value_info("dx", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--only", default="", help="only the cases whose name contains this")
    args = parser.parse_args()
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    print(
        f"batch {args.batch}, threads {args.threads or 'default'}, median of {args.repeats} "
        f"({'thread CPU' if args.threads == 1 else 'wall'} time), ratio to ConvTranspose"
    )
    for name, (m, cg, group, k, s, b, e, size) in CASES.items():
        if args.only not in name:
            continue
        out = (size + b + e - k) // s + 1
        w = rng.normal(size=(m, cg, k, k)).astype(np.float32)
        g = rng.normal(size=(args.batch, m, out, out)).astype(np.float32)
        sessions, reference = {}, None
        for label, build in FORMULATIONS.items():
            try:
                sess = session(*build(w, group, s, b, e, size, out), args.threads)
            except ValueError:
                continue
            dx = sess.run(None, {"g": g})[0]
            reference = dx if reference is None else reference
            error = np.abs(dx - reference).max() / np.abs(reference).max()
            assert dx.shape == reference.shape and error < 1e-5, (name, label, dx.shape, reference.shape, error)
            sessions[label] = sess
        times = {label: [] for label in sessions}
        for round_ in range(args.repeats + 3):
            for label, sess in sessions.items():
                t0 = clock()
                sess.run(None, {"g": g})
                if round_ >= 3:
                    times[label].append(clock() - t0)
        medians = {label: statistics.median(ts) for label, ts in times.items()}
        print(f"\n{name}  (g {list(g.shape)})")
        for label, t in medians.items():
            print(f"  {label:36} {t * 1e3:8.3f} ms  {t / medians['ConvTranspose']:5.2f}x")


if __name__ == "__main__":
    main()
