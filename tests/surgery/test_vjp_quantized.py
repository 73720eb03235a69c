"""The straight-through rules of onnxcam/surgery/vjp_quantized.py, one quantized op at a time, against central
differences of the float op that the integers approximate.

Each case is a tiny graph, built with onnx.helper and run by ONNX Runtime,

    X_i (float) -> QuantizeLinear -> <quantized op> -> DequantizeLinear -> Y,

and `backward` gives dScore/dX_i for score = sum(G * Y), G a runtime input. The straight-through estimate is the
derivative of the float function

    score(U) = sum(G * clip(float op(U_i, dequantized constants), Y's float range))

at U_i = DequantizeLinear(QuantizeLinear(X_i)), times the mask of the X_i entries that round into their integer
range. The reference (`straight_through`) takes that derivative entry by entry by central differences in float64
on the ONNX reference evaluator, on a float graph that each case writes out from the op definitions (the float
op, its attributes, the constants dequantized by hand, per-channel scales on the weights' output-channel axis);
it never runs a rule. Before differencing, the float graph is checked against the quantized op's own output in
ONNX Runtime (within a step of Y's scale), which proves that the case's reading of the op is the runtime's.

Where a float output lies within a step and a half of an end of Y's range, the integer output may sit on the end
or one step inside depending on the runtime's integer rounding, so no mask read off it can be exact there: G is
0 at those entries (`G_BAND`). Every case with a clipping output has entries clipped by more than that, with G
not 0, so the masks are exercised; elementwise cases also check that the gradient is exactly 0 there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxcam.surgery.backward import backward
from onnxcam.surgery.builder import Builder
from tinymodels import session

OPSET = 13
MS = "com.microsoft"
G_BAND = 1.5  # steps of Y's scale around each end of its range where G is 0 (see the docstring)
EPS = 1e-6  # central-difference step in float64, relative to the input's scale
RTOL = 1e-4  # of the largest reference entry


@dataclass
class Case:
    """One quantized op. `inputs`: the computed inputs (x, scale, zero point); `node_inputs`: the quantized op's
    inputs, an int i standing for the i-th computed input quantized, None for an empty slot, else a constant;
    `output`: Y's (scale, zero point), None when the op gives floats; `float_inputs`: the float op's inputs, an
    int i standing for U_i, else a float constant."""

    op: str
    inputs: list
    node_inputs: list
    output: tuple | None
    float_op: str
    float_inputs: list
    attrs: dict = field(default_factory=dict)
    float_attrs: dict | None = None  # the float op's attributes, when not `attrs`
    float_opset: int = OPSET
    domain: str = MS
    elementwise: bool = False  # each output entry depends only on the same entry of each (same-shaped) input
    clips: bool = True  # some float outputs lie beyond Y's range (a fused ReLU, saturation)
    coerced: int | None = None  # the float op runs on U_0 flattened to 2-D at this axis (see `float_evaluator`)


def quantize(x, s, z):
    """QuantizeLinear in float64: round half to even, saturate."""
    info = np.iinfo(z.dtype)
    return np.clip(np.rint(np.asarray(x, np.float64) / s) + z, info.min, info.max).astype(z.dtype)


def dequantize(q, s, z):
    s, z = np.asarray(s, np.float64), np.asarray(z, np.float64)
    return (q.astype(np.float64) - z) * s


def value_range(s, z):
    info = np.iinfo(z.dtype)
    return (info.min - float(z)) * float(s), (info.max - float(z)) * float(s)


def quantized_model(case: Case) -> onnx.ModelProto:
    nodes, initializers = [], []

    def const(value):
        name = f"c{len(initializers)}"
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    inputs = []
    for i, (x, s, z) in enumerate(case.inputs):
        inputs.append(helper.make_tensor_value_info(f"X{i}", TensorProto.FLOAT, x.shape))
        nodes.append(helper.make_node("QuantizeLinear", [f"X{i}", const(s), const(z)], [f"q{i}"], name=f"quantize{i}"))
    slots = [f"q{v}" if isinstance(v, int) else "" if v is None else const(v) for v in case.node_inputs]
    out = "qy" if case.output else "Y"
    nodes.append(helper.make_node(case.op, slots, [out], name="op", domain=case.domain, **case.attrs))
    if case.output:
        nodes.append(helper.make_node("DequantizeLinear", ["qy", *map(const, case.output)], ["Y"], name="dequantize"))
    graph = helper.make_graph(nodes, "quantized", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    graph.initializer.extend(initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    # the rules need static shapes, which ONNX's shape inference does not give contrib ops: take them from a run
    feeds = {f"X{i}": x for i, (x, _, _) in enumerate(case.inputs)}
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    del probe.graph.output[:]
    probe.graph.output.extend(
        onnx.ValueInfoProto(name=n) for n in [f"q{i}" for i in range(len(case.inputs))] + [out, "Y"]
    )
    values = session(probe).run(None, feeds)
    del model.graph.output[:]
    for name, value in zip([o.name for o in probe.graph.output], values):
        info = helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        (model.graph.output if name == "Y" else model.graph.value_info).append(info)
    return model


def rule_gradients(model: onnx.ModelProto, feeds: dict, g: np.ndarray):
    """Y and dScore/dX_i from the rules (the graph's own backward pass)."""
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    seed = gs.Variable("G", dtype=np.float32, shape=list(g.shape))
    graph.inputs.append(seed)
    b = Builder(graph, OPSET)
    wrt = [tensors[name] for name in feeds]
    grads = backward(b, wrt, tensors["Y"], seed)
    graph.outputs = [tensors["Y"]] + [b.named(grads[t.name], f"grad/{t.name}", np.float32, t.shape) for t in wrt]
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = 8
    y, *grads = session(out).run(None, {**feeds, "G": g})
    return y, grads


def float_evaluator(case: Case, shapes: list) -> ReferenceEvaluator:
    """The float op on inputs U_i, in float64: outputs its result and that result clipped to Y's range."""
    names = [f"U{v}" if isinstance(v, int) else "" if v is None else f"k{k}" for k, v in enumerate(case.float_inputs)]
    constants = [
        numpy_helper.from_array(np.asarray(v, np.float64), f"k{k}")
        for k, v in enumerate(case.float_inputs)
        if not isinstance(v, int) and v is not None
    ]
    attrs = case.attrs if case.float_attrs is None else case.float_attrs
    nodes = [helper.make_node(case.float_op, names, ["F"], **attrs)]
    if case.coerced is not None:  # Softmax before opset 13, which onnx's reference evaluator computes as 13's
        constants.append(numpy_helper.from_array(np.array(shapes[0], np.int64), "shape"))
        nodes = [
            helper.make_node("Flatten", ["U0"], ["U0/2d"], axis=case.coerced),
            helper.make_node(case.float_op, ["U0/2d"], ["F/2d"], axis=1),
            helper.make_node("Reshape", ["F/2d", "shape"], ["F"]),
        ]
    if case.output:
        low, high = value_range(*case.output)
        constants += [numpy_helper.from_array(np.array(v, np.float64), n) for n, v in (("low", low), ("high", high))]
        nodes.append(helper.make_node("Clip", ["F", "low", "high"], ["Y"]))
    else:
        nodes.append(helper.make_node("Identity", ["F"], ["Y"]))
    inputs = [helper.make_tensor_value_info(f"U{i}", TensorProto.DOUBLE, s) for i, s in enumerate(shapes)]
    outputs = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None) for n in ("F", "Y")]
    graph = helper.make_graph(nodes, "float", inputs, outputs, constants)
    return ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.float_opset)]))


def straight_through(case: Case, g: np.ndarray, u: list, evaluator) -> list:
    """d sum(G * clip(float op(U))) / dU_i by central differences, entry by entry, masked where X_i rounds out of
    its integer range."""

    def score(values):
        return float(np.sum(g * evaluator.run(["Y"], dict(zip([f"U{i}" for i in range(len(u))], values)))[0]))

    grads = []
    for i, (x, s, z) in enumerate(case.inputs):
        eps = EPS * float(s)
        d = np.zeros(u[i].shape)
        for k in np.ndindex(u[i].shape):
            plus, minus = [v.copy() for v in u], [v.copy() for v in u]
            plus[i][k] += eps
            minus[i][k] -= eps
            d[k] = (score(plus) - score(minus)) / (2 * eps)
        low, high = value_range(s, z)
        grads.append(d * ((x > low - s / 2) & (x < high + s / 2)))
    return grads


def check(case: Case, seed: int = 0):
    rng = np.random.default_rng(seed)
    feeds = {f"X{i}": x for i, (x, _, _) in enumerate(case.inputs)}
    u = [dequantize(quantize(x, s, z), s, z) for x, s, z in case.inputs]
    evaluator = float_evaluator(case, [x.shape for x in u])
    f, clipped = evaluator.run(["F", "Y"], {f"U{i}": v for i, v in enumerate(u)})
    model = quantized_model(case)
    g = rng.normal(size=f.shape)
    if case.output:
        s_y = float(case.output[0])
        low, high = value_range(*case.output)
        g[(np.abs(f - low) < G_BAND * s_y) | (np.abs(f - high) < G_BAND * s_y)] = 0
        outside = (f < low) | (f > high)
        assert np.any(outside & (g != 0)) or not case.clips, "the case clips nothing where G is not 0"
    y, grads = rule_gradients(model, feeds, g.astype(np.float32))
    step = float(case.output[0]) if case.output else 1e-4 * np.abs(clipped).max()
    np.testing.assert_allclose(y, clipped, rtol=0, atol=1.01 * step)  # the case reads the op as ORT runs it
    expected = straight_through(case, g, u, evaluator)
    for got, want in zip(grads, expected):
        assert np.abs(want).max() > 0, "a zero gradient proves nothing"
        np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * np.abs(want).max())
        assert np.all(got[want == 0] == 0), "a masked entry is not exactly 0"
    if case.elementwise and case.output:
        for got in grads:
            assert np.all(np.broadcast_to(got, outside.shape)[outside & (g != 0)] == 0)


# -- cases --------------------------------------------------------------------------------------------------

U8, I8 = np.uint8, np.int8


def zero(dtype, value):
    return np.array(value, dtype)


def scale(value):
    return np.array(value, np.float32)


def computed(rng, shape, s, z, spread=1.1):
    """A computed input (x, scale, zero point) whose values cover about `spread` of the integer range: with
    spread > 1 a few entries lie beyond it, where QuantizeLinear saturates."""
    low, high = value_range(s, z)
    x = rng.uniform(-spread, spread, shape) * (high - low) / 2 + (high + low) / 2
    return x.astype(np.float32), scale(s), z


def integers(rng, shape, dtype, low=None, high=None):
    info = np.iinfo(dtype)
    return rng.integers(info.min if low is None else low, (info.max if high is None else high) + 1, shape).astype(dtype)


def weighted(op, rng, x_type, w_type, per_channel, out, attrs=None, transposed=False):
    """QLinearConv / QLinearMatMul / QGemm with constant weights (per-channel scales on the output channels),
    a computed input and, for Conv, an int32 bias (scale x scale times weight scale, zero point 0)."""
    attrs = dict(attrs or {})
    z_x = zero(x_type, 7 if x_type == U8 else -3)
    if op == "QLinearConv":
        x_shape, w_shape, channels, axis = (2, 4, 5, 6), (6, 4 // attrs.get("group", 1), 3, 3), 6, 0
    else:
        x_shape, channels, axis = (3, 5) if op == "QGemm" else (2, 3, 5), 4, -1
        w_shape = (channels, 5) if transposed else (5, channels)
        axis = 0 if transposed else -1
    x = computed(rng, x_shape, 0.04, z_x)
    w = integers(rng, w_shape, w_type)
    if per_channel:
        s_w = scale(rng.uniform(0.002, 0.006, channels))
        z_w = np.zeros(channels, w_type) if w_type == I8 else integers(rng, channels, w_type, 120, 136)
    else:
        s_w, z_w = scale(0.004), zero(w_type, 0 if w_type == I8 else 131)
    shape = [-1 if a == axis % len(w_shape) else 1 for a in range(len(w_shape))]
    w_float = dequantize(w, s_w.reshape(shape), z_w.reshape(shape))
    node_inputs, float_inputs = [0, x[1], x[2], w, s_w, z_w], [0, w_float]
    if op == "QLinearConv":
        bias = rng.integers(-2000, 2000, channels).astype(np.int32)
        node_inputs += [*out, bias]
        float_inputs.append(bias * float(x[1]) * s_w.astype(np.float64))
        return Case(op, [x], node_inputs, out, "Conv", float_inputs, attrs, domain="")
    if op == "QLinearMatMul":
        return Case(op, [x], node_inputs + list(out), out, "MatMul", float_inputs, domain="")
    attrs["transB"] = int(transposed)
    node_inputs += [None, *out] if out else []
    return Case(op, [x], node_inputs, out, "Gemm", float_inputs, attrs, clips=out is not None)


def conv_cases():
    rng = np.random.default_rng(1)
    pad = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    relu_u8, relu_i8 = (scale(0.05), zero(U8, 0)), (scale(0.05), zero(I8, -128))
    return [
        pytest.param(weighted("QLinearConv", rng, U8, U8, False, (scale(0.03), zero(U8, 120)), pad), id="u8-u8"),
        pytest.param(weighted("QLinearConv", rng, U8, I8, True, relu_u8, pad), id="u8-i8-perchannel-relu"),
        pytest.param(weighted("QLinearConv", rng, U8, U8, True, relu_u8, pad), id="u8-u8-perchannel-relu"),
        pytest.param(
            weighted("QLinearConv", rng, I8, I8, True, relu_i8, {**pad, "strides": [2, 2]}),
            id="i8-i8-perchannel-stride2-relu",
        ),
        pytest.param(
            weighted("QLinearConv", rng, U8, I8, False, (scale(0.03), zero(U8, 100)), {**pad, "group": 2}),
            id="u8-i8-group2",
        ),
    ]


@pytest.mark.parametrize("case", conv_cases())
def test_qlinear_conv(case):
    check(case)


def matmul_cases():
    rng = np.random.default_rng(2)
    relu_i8 = (scale(0.02), zero(I8, -128))
    both = [computed(rng, (2, 3, 5), 0.05, zero(U8, 140)), computed(rng, (2, 5, 4), 0.05, zero(U8, 110))]
    return [
        pytest.param(weighted("QLinearMatMul", rng, U8, U8, False, (scale(0.01), zero(U8, 130))), id="u8-u8"),
        pytest.param(weighted("QLinearMatMul", rng, I8, I8, True, relu_i8), id="i8-i8-percolumn-relu"),
        pytest.param(
            weighted("QLinearMatMul", rng, U8, I8, True, (scale(0.01), zero(U8, 0))), id="u8-i8-percolumn-relu"
        ),
        pytest.param(
            Case(
                "QLinearMatMul",
                both,
                [0, *both[0][1:], 1, *both[1][1:], scale(0.5), zero(U8, 125)],
                (scale(0.5), zero(U8, 125)),
                "MatMul",
                [0, 1],
                domain="",
            ),
            id="u8-computed-both",
        ),
        pytest.param(
            weighted("QGemm", rng, U8, I8, True, None, {"alpha": 0.5}, transposed=True), id="qgemm-float-out-transB"
        ),
        pytest.param(weighted("QGemm", rng, U8, U8, False, (scale(0.01), zero(U8, 0))), id="qgemm-u8-relu"),
        pytest.param(
            weighted("QGemm", rng, I8, I8, True, relu_i8, transposed=True), id="qgemm-i8-percolumn-transB-relu"
        ),
    ]


@pytest.mark.parametrize("case", matmul_cases())
def test_qlinear_matmul_and_qgemm(case):
    check(case)


def binary(op, float_op, rng, dtype, shapes, out, scales=(0.03, 0.05)):
    zs = [zero(dtype, v) for v in ((90, 160) if dtype == U8 else (-20, 15))]
    inputs = [computed(rng, shape, s, z) for shape, s, z in zip(shapes, scales, zs)]
    node_inputs = [0, *inputs[0][1:], 1, *inputs[1][1:], *out]
    return Case(op, inputs, node_inputs, out, float_op, [0, 1], elementwise=shapes[0] == shapes[1])


def elementwise_cases():
    rng = np.random.default_rng(3)
    same, broadcast = [(2, 3, 4, 4)] * 2, [(2, 3, 4, 4), (1, 3, 1, 1)]
    return [
        pytest.param(binary("QLinearAdd", "Add", rng, U8, same, (scale(0.04), zero(U8, 0))), id="add-u8-relu"),
        pytest.param(binary("QLinearAdd", "Add", rng, I8, same, (scale(0.02), zero(I8, 10))), id="add-i8-saturating"),
        pytest.param(
            binary("QLinearAdd", "Add", rng, U8, broadcast, (scale(0.03), zero(U8, 128))), id="add-u8-broadcast"
        ),
        pytest.param(binary("QLinearMul", "Mul", rng, U8, same, (scale(0.05), zero(U8, 128))), id="mul-u8"),
        pytest.param(
            binary("QLinearMul", "Mul", rng, I8, broadcast, (scale(0.01), zero(I8, -128))), id="mul-i8-broadcast-relu"
        ),
    ]


@pytest.mark.parametrize("case", elementwise_cases())
def test_qlinear_add_and_mul(case):
    check(case)


def unary(op, float_op, rng, dtype, out, attrs=None, shape=(2, 3, 4, 5), s=0.05, float_attrs=None, **kw):
    x = computed(rng, shape, s, zero(dtype, 100 if dtype == U8 else -7))
    return Case(op, [x], [0, *x[1:], *out], out, float_op, [0], attrs or {}, float_attrs, **kw)


def unary_cases():
    rng = np.random.default_rng(4)
    avg = {"kernel_shape": [2, 2], "strides": [2, 2]}
    padded = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}
    return [
        pytest.param(
            unary(
                "QLinearLeakyRelu", "LeakyRelu", rng, U8, (scale(0.03), zero(U8, 40)), {"alpha": 0.1}, elementwise=True
            ),
            id="leakyrelu-u8",
        ),
        pytest.param(
            unary(
                "QLinearLeakyRelu",
                "LeakyRelu",
                rng,
                I8,
                (scale(0.03), zero(I8, -100)),
                {"alpha": 0.2},
                elementwise=True,
            ),
            id="leakyrelu-i8",
        ),
        pytest.param(
            unary("QLinearSigmoid", "Sigmoid", rng, U8, (scale(0.6 / 255), zero(U8, 0)), elementwise=True),
            id="sigmoid-u8-saturating",
        ),
        pytest.param(
            unary(
                "QLinearSigmoid", "Sigmoid", rng, I8, (scale(1 / 256), zero(I8, -128)), elementwise=True, clips=False
            ),
            id="sigmoid-i8",
        ),
        pytest.param(
            unary(
                "QLinearSoftmax",
                "Softmax",
                rng,
                U8,
                (scale(1 / 256), zero(U8, 0)),
                {"axis": -1, "opset": 13},
                float_attrs={"axis": -1},
                clips=False,
            ),
            id="softmax-u8-opset13",
        ),
        pytest.param(
            unary(
                "QLinearSoftmax",
                "Softmax",
                rng,
                I8,
                (scale(0.5 / 256), zero(I8, -128)),
                {"axis": 1, "opset": 13},
                float_attrs={"axis": 1},
            ),
            id="softmax-i8-axis1-saturating",
        ),
        pytest.param(
            unary(
                "QLinearSoftmax",
                "Softmax",
                rng,
                U8,
                (scale(1 / 256), zero(U8, 0)),
                {"axis": 1, "opset": 12},
                shape=(2, 3, 4),
                coerced=1,
                clips=False,
            ),
            id="softmax-u8-opset12",
        ),
        pytest.param(
            unary(
                "QLinearGlobalAveragePool",
                "GlobalAveragePool",
                rng,
                U8,
                (scale(0.01), zero(U8, 120)),
                {"channels_last": 0},
                float_attrs={},
            ),
            id="gap-u8",
        ),
        pytest.param(
            unary(
                "QLinearGlobalAveragePool", "GlobalAveragePool", rng, I8, (scale(0.002), zero(I8, -128)), float_attrs={}
            ),
            id="gap-i8-relu",
        ),
        pytest.param(
            unary("QLinearAveragePool", "AveragePool", rng, U8, (scale(0.02), zero(U8, 128)), avg), id="avgpool-u8"
        ),
        pytest.param(
            unary("QLinearAveragePool", "AveragePool", rng, I8, (scale(0.02), zero(I8, -128)), padded),
            id="avgpool-i8-padded-relu",
        ),
    ]


@pytest.mark.parametrize("case", unary_cases())
def test_qlinear_unary(case):
    check(case)


def concat_case(rng, dtype, axis, out):
    shapes = [(2, 3, 4), (2, 2, 4), (2, 3, 4)] if axis == 1 else [(2, 3, 4), (2, 3, 2)]
    zs = (60, 128, 200) if dtype == U8 else (-10, 0, 30)
    inputs = [computed(rng, sh, s, zero(dtype, z)) for sh, s, z in zip(shapes, (0.02, 0.05, 0.03), zs)]
    node_inputs = [*out] + [v for i, x in enumerate(inputs) for v in (i, *x[1:])]
    return Case("QLinearConcat", inputs, node_inputs, out, "Concat", list(range(len(inputs))), {"axis": axis})


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(concat_case(np.random.default_rng(5), U8, 1, (scale(0.045), zero(U8, 0))), id="u8-axis1-relu"),
        pytest.param(
            concat_case(np.random.default_rng(6), I8, -1, (scale(0.033), zero(I8, 5))), id="i8-axis-1-saturating"
        ),
    ],
)
def test_qlinear_concat(case):
    check(case)


@pytest.mark.parametrize("dtype, z", [(U8, 77), (I8, -9)])
def test_quantize_dequantize(dtype, z):
    """QDQ: QuantizeLinear passes the gradient where its input rounds into the integer range, DequantizeLinear
    passes it on."""
    x = computed(np.random.default_rng(7), (2, 3, 4, 5), 0.03, zero(dtype, z), spread=1.3)
    check(Case("DequantizeLinear", [x], [0, *x[1:]], None, "Identity", [0], domain="", clips=False))
