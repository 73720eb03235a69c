"""Every backward rule in onnxcam/surgery/vjp.py against central finite differences, through ONNX Runtime.

Each case builds a tiny classifier  x -> Conv -> A -> <ops under test> -> Flatten -> MatMul -> logits
(tests/tinymodels.py), asks `augment` for G = dScore/dA, and compares it with
finite differences of forward runs of the head that `cut_head` cuts off at A:

    (score(A + eps v) - score(A - eps v)) / (2 eps)  ~  <G, v>,   score = sum_n logits[n, class_n]

The reference never uses the rules' output, except that one of the three
directions v is G itself (the other two are random).

Precision, in fp32 (ORT CPU lacks double kernels for some of these ops): v has
the norm of A, so eps (5e-3) is the step relative to A; that balances fp32
rounding in the head against the O(eps^2) error of central differences
(worst relative error over all cases: about 4e-4, ReduceLogSumExp, against a tolerance of 1e-3;
LayerNorm over 6 entries is curved enough to take eps 1e-3).
The error is taken relative to max(|fd|, |<G, v>|, ||G|| ||v|| / sqrt(size)), the
last being the size of <G, v> for a random v, so that a random direction that
happens to be nearly orthogonal to G does not turn rounding noise into a failure.
Entries of A closer than 5% of A's RMS to a kink of the op under test (Relu's 0,
Clip's bounds, ...) are left out of v, and eps is capped so that no entry moves
more than half that margin: across a kink a finite difference measures the jump,
not the rule. A kink may also be a function (A, margin) -> mask of the entries to
hold still: for max-selections (MaxPool, ReduceMax), the entries of each window or
reduction whose maximum is not ahead of the runner-up by the margin.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.errors import UnsupportedOpError
from onnxcam.model import inspect_model
from onnxcam.surgery import CLASS_INPUT, TARGET_OUTPUT, augment, cut_head, grad_name
from onnxcam.surgery.backward import backward
from onnxcam.surgery.builder import Builder
from tinymodels import CHANNELS, CLASSES, IN_SHAPE, Net, classifier, session

EPS = 5e-3  # step, relative to ||A||
KINK_MARGIN = 0.05  # entries this close to a kink (in units of A's RMS) stay put
TOLERANCE = 1e-3  # relative error of the directional derivative
BATCHES = (1, 3)


def finite_difference_errors(head, a, g, classes, kinks, rng, eps=EPS):
    """Relative errors of <G, v> against central differences of the head, for three directions v."""
    rms = np.sqrt(np.mean(a.astype(np.float64) ** 2))
    movable = np.ones(a.shape, bool)
    for k in kinks:
        movable &= ~k(a, KINK_MARGIN * rms) if callable(k) else np.abs(a - k) > KINK_MARGIN * rms
    directions = [rng.normal(size=a.shape) for _ in range(2)] + [g.astype(np.float64)]  # two random, one steepest
    directions = [d * movable for d in directions]
    directions = [d * (np.linalg.norm(a) / np.linalg.norm(d)) for d in directions if np.linalg.norm(d) > 0]
    steps = [min(eps, 0.5 * KINK_MARGIN * rms / np.abs(d).max()) if kinks else eps for d in directions]
    points = [(a + s * d).astype(np.float32) for d, s in zip(directions, steps)]
    points += [(a - s * d).astype(np.float32) for d, s in zip(directions, steps)]
    name = head.get_inputs()[0].name
    if isinstance(head.get_inputs()[0].shape[0], int):  # a pinned batch: one run per point
        logits = np.concatenate([head.run(None, {name: p})[0] for p in points])
    else:
        (logits,) = head.run(None, {name: np.concatenate(points)})  # one run, batch rows independent
    scores = logits.astype(np.float64).reshape(len(points), len(a), -1)[:, np.arange(len(a)), classes].sum(axis=1)
    errors = []
    for i, s in enumerate(steps):
        plus, minus = points[i], points[i + len(steps)]
        v = (plus.astype(np.float64) - minus) / (2 * s)  # the step as really taken, after rounding to fp32
        fd = (scores[i] - scores[i + len(steps)]) / (2 * s)
        gv = float(np.sum(g.astype(np.float64) * v))
        typical = np.linalg.norm(g) * np.linalg.norm(v) / np.sqrt(g.size)  # size of <G, v> for a random v
        errors.append(abs(fd - gv) / max(abs(fd), abs(gv), typical))
    return errors


def check_gradients(model, layers=("A",), kinks=(), seed=0, eps=EPS, batches=BATCHES, runtime=session):
    """augment's dScore/dLayer vs finite differences at batch sizes 1 and 3; returns the worst relative error.
    `runtime` makes the sessions (model -> ORT session); it may rewrite the model first."""
    info = inspect_model(model)
    assert set(layers) <= {layer.name for layer in info.layers}, [layer.name for layer in info.layers]
    original = runtime(model)
    augmented_model = augment(info, list(layers))
    onnx.checker.check_model(augmented_model, full_check=True)  # every new node valid at the model's opset
    augmented = runtime(augmented_model)
    heads = {layer: runtime(cut_head(info, layer)) for layer in layers}
    names = [o.name for o in augmented.get_outputs()]
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in batches:
        x = rng.normal(size=(n, *IN_SHAPE)).astype(np.float32)
        classes = rng.permutation(CLASSES)[:n].astype(np.int64)
        (expected,) = original.run(None, {"x": x})
        out = dict(zip(names, augmented.run(None, {"x": x, CLASS_INPUT: classes})))
        logits = out[info.logits_name]
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out[TARGET_OUTPUT], classes)
        for layer in layers:
            a, g = out[layer], out[grad_name(layer)]
            assert g.shape == a.shape and g.dtype == np.float32 and np.isfinite(g).all()
            assert np.abs(g).max() > 0, "a zero gradient proves nothing"
            (cut,) = heads[layer].run(None, {layer: a})
            np.testing.assert_allclose(cut, logits, rtol=1e-5, atol=1e-5)
            errors = finite_difference_errors(heads[layer], a, g, classes, kinks, rng, eps)
            assert max(errors) < TOLERANCE, f"layer {layer}, batch {n}: relative errors {errors}"
            worst = max(worst, *errors)
    return worst


def case(label, opset, body, kinks=(), a_scale=1.0, eps=EPS):
    """One parametrized model: `body(net)` maps the tensor 'A' to the feature that feeds the classifier.
    A smaller eps suits strongly curved heads (LayerNorm over 6 entries: the O(eps^2) term dominates)."""
    return pytest.param(opset, body, kinks, a_scale, eps, id=f"{label}-opset{opset}")


# -- builders for ops whose form changed between opsets ---------------------------


def unsqueeze(n, x, axes):
    return n.op("Unsqueeze", x, n.ints(axes)) if n.opset >= 13 else n.op("Unsqueeze", x, axes=axes)


def squeeze(n, x, axes):
    return n.op("Squeeze", x, n.ints(axes)) if n.opset >= 13 else n.op("Squeeze", x, axes=axes)


def clip(n, x, lo=None, hi=None):
    if n.opset < 11:
        bounds = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
        return n.op("Clip", x, **bounds)
    inputs = [n.const(lo) if lo is not None else "", n.const(hi) if hi is not None else ""]
    while inputs and not inputs[-1]:
        inputs.pop()
    return n.op("Clip", x, *inputs)


def reduce(n, op, x, axes, keepdims="default"):
    """ReduceMean/ReduceSum with axes as this opset wants them (attribute, or input from opset 18/13)."""
    attrs = {} if keepdims == "default" else {"keepdims": keepdims}
    if n.opset >= (18 if op == "ReduceMean" else 13):
        return n.op(op, x, n.ints(axes), **attrs)
    return n.op(op, x, axes=axes, **attrs)


def gap(n, x):
    return n.op("GlobalAveragePool", x)


def batch_first(n, x):
    """[N*..., ...] -> [N, F]: undo a Flatten that folded the batch into its first axis."""
    return n.op("Reshape", x, n.ints([-1, F]))


def dropout(n, x, ratio, mask):
    """Dropout's output (its mask, a second output, is made but not used)."""
    outputs = 2 if mask else 1
    if n.opset < 12:
        out = n.op("Dropout", x, outputs=outputs, ratio=ratio)
    else:
        out = n.op("Dropout", x, n.const(ratio), outputs=outputs)
    return out[0] if mask else out


# -- cases --------------------------------------------------------------------------

C, H, W = CHANNELS, IN_SHAPE[1], IN_SHAPE[2]
F = C * H * W

SHAPE_CASES = [
    *[case("Identity", o, lambda n: n.op("Identity", "A")) for o in (7, 13)],
    *[case(f"Dropout-mask{m}", o, lambda n, m=m: dropout(n, "A", 0.3, m)) for o in (7, 13) for m in (0, 1)],
    *[case("Reshape-0,-1", o, lambda n: n.op("Reshape", "A", n.ints([0, -1]))) for o in (7, 14)],
    case("Reshape-3d", 13, lambda n: n.op("Reshape", "A", n.ints([-1, C * H, W]))),
    case("Reshape-scramble", 13, lambda n: n.op("Reshape", "A", n.ints([0, W, H, C]))),
    *[case("Flatten-axis1", o, lambda n: n.op("Flatten", "A", axis=1)) for o in (7, 13)],
    case("Flatten-axis2", 9, lambda n: batch_first(n, n.op("Flatten", "A", axis=2))),
    case("Flatten-axis-1", 13, lambda n: batch_first(n, n.op("Flatten", "A", axis=-1))),
    *[case("Unsqueeze-2-Squeeze-2", o, lambda n: squeeze(n, unsqueeze(n, "A", [2]), [2])) for o in (7, 11, 13)],
    *[
        case("Unsqueeze-4,1-Squeeze--2,1", o, lambda n: squeeze(n, unsqueeze(n, "A", [4, 1]), [-2, 1]))
        for o in (11, 13)
    ],
    *[case("Unsqueeze-only", o, lambda n: unsqueeze(n, "A", [1])) for o in (9, 13)],
    *[case("Squeeze-only", o, lambda n: squeeze(n, n.op("Reshape", "A", n.ints([0, 1, F])), [1])) for o in (9, 13)],
    case("Transpose-0231", 13, lambda n: n.op("Transpose", "A", perm=[0, 2, 3, 1])),
    case(
        "Transpose-2031-1302",
        7,
        lambda n: n.op("Transpose", n.op("Transpose", "A", perm=[2, 0, 3, 1]), perm=[1, 3, 0, 2]),
    ),
    case("Transpose-default-twice", 13, lambda n: n.op("Transpose", n.op("Transpose", "A"))),
]

ACTIVATION_CASES = [
    *[case("Relu", o, lambda n: n.op("Relu", "A"), kinks=[0.0]) for o in (7, 13, 14)],
    *[
        case(
            f"Clip-{label}",
            o,
            lambda n, lo=lo, hi=hi: clip(n, "A", lo, hi),
            kinks=[k for k in (lo, hi) if k is not None],
        )
        for o in (7, 9, 10, 11, 12, 13)  # attributes up to opset 10, inputs from 11
        for label, lo, hi in [
            ("min", -0.3, None),
            ("max", None, 0.4),
            ("min-max", -0.5, 0.6),
            ("no-bounds", None, None),
        ]
    ],
    case(
        "Clip-bounds-from-Constant-nodes",
        13,
        lambda n: n.op("Clip", "A", n.const_node(-0.5), n.const_node(0.6)),
        kinks=[-0.5, 0.6],
    ),
    *[case("Sigmoid", o, lambda n: n.op("Sigmoid", "A")) for o in (7, 13)],
    *[case("Tanh", o, lambda n: n.op("Tanh", "A")) for o in (7, 13)],
    *[case("LeakyRelu-default", o, lambda n: n.op("LeakyRelu", "A"), kinks=[0.0]) for o in (7, 16)],
    *[case("LeakyRelu-alpha0.3", o, lambda n: n.op("LeakyRelu", "A", alpha=0.3), kinks=[0.0]) for o in (9, 16)],
    case("HardSigmoid-default", 7, lambda n: n.op("HardSigmoid", "A"), kinks=[-2.5, 2.5], a_scale=2.5),
    case(
        "HardSigmoid-0.25,0.4",
        13,
        lambda n: n.op("HardSigmoid", "A", alpha=0.25, beta=0.4),
        kinks=[-1.6, 2.4],
        a_scale=2.5,
    ),
    *[case("HardSwish", o, lambda n: n.op("HardSwish", "A"), kinks=[-3.0, 3.0], a_scale=2.5) for o in (14, 18)],
    *[case("Erf", o, lambda n: n.op("Erf", "A")) for o in (9, 13)],
    case("Gelu-by-Erf", 13, lambda n: gelu(n, "A")),
]


def gelu(n, x):
    """x * (1 + erf(x / sqrt(2))) / 2, as torch.onnx writes GELU before opset 20."""
    erf = n.op("Erf", n.op("Div", x, n.const(np.sqrt(2.0))))
    return n.op("Mul", n.op("Mul", x, n.const(0.5)), n.op("Add", n.const(1.0), erf))


BROADCAST_SHAPES = {"1C11": (1, C, 1, 1), "C11": (C, 1, 1), "scalar": (), "W": (W,), "CHW": (C, H, W)}


def _constant(n, shape):
    """Entries of size 0.5 to 1.5 with random signs: safe as divisors."""
    return n.const(n.rng.uniform(0.5, 1.5, shape) * n.rng.choice([-1, 1], shape))


def _binary(op, kind, a_first):
    def body(n):
        c = _constant(n, BROADCAST_SHAPES[kind])
        if op == "Div" and not a_first:  # keep the divisor away from 0: A^2 + 1
            return n.op("Div", c, n.op("Add", n.op("Mul", "A", "A"), n.const(1.0)))
        return n.op(op, "A", c) if a_first else n.op(op, c, "A")

    return body


ARITHMETIC_CASES = [
    *[
        case(f"{op}-{'A,c' if a_first else 'c,A'}-{kind}", 13, _binary(op, kind, a_first))
        for op in ("Add", "Sub", "Mul", "Div")
        for kind in ("1C11", "C11", "scalar", "W", "CHW")
        for a_first in (True, False)
    ],
    *[case(f"{op}-A,c-1C11", o, _binary(op, "1C11", True)) for op in ("Add", "Sub", "Mul", "Div") for o in (7, 9, 14)],
    *[
        case(f"{op}-broadcast-on-axis0", 13, lambda n, op=op: _broadcast_axis0(n, op))
        for op in ("Add", "Sub", "Mul", "Div")
    ],
    *[case("SE-gate-Mul-Sigmoid-GAP", o, lambda n: n.op("Mul", "A", n.op("Sigmoid", gap(n, "A")))) for o in (7, 13)],
    case("SE-gate-HardSigmoid-ReduceMean", 13, lambda n: hard_gate(n, "A")),
    case("spatial-gate-Mul-N1HW", 13, lambda n: n.op("Mul", "A", n.op("Sigmoid", reduce(n, "ReduceMean", "A", [1])))),
    case("Add-A,GAP(A)", 13, lambda n: n.op("Add", "A", gap(n, "A"))),
    case("Sub-GAP(A),A", 13, lambda n: n.op("Sub", gap(n, "A"), "A")),
    case("Div-A,GAP(A^2)+1", 13, lambda n: n.op("Div", "A", n.op("Add", gap(n, n.op("Mul", "A", "A")), n.const(1.0)))),
    case("Div-GAP(A),A^2+1", 13, lambda n: n.op("Div", gap(n, "A"), n.op("Add", n.op("Mul", "A", "A"), n.const(1.0)))),
    case("Mul-A,A", 13, lambda n: n.op("Mul", "A", "A")),
    case("Add-A,A", 13, lambda n: n.op("Add", "A", "A")),
    case("residual-Add-A,Relu(A)", 13, lambda n: n.op("Add", "A", n.op("Relu", "A")), kinks=[0.0]),
]


def hard_gate(n, x):
    """MobileNetV3's squeeze-excite: HardSigmoid(ReduceMean over H, W) * x."""
    return n.op("Mul", n.op("HardSigmoid", reduce(n, "ReduceMean", x, [2, 3])), x)


def _broadcast_axis0(n, op):
    """[1, N, C, H, W] op [2, 1, 1, 1, 1]: the gradient must be summed over a size-1 axis 0, then batch first."""
    out = n.op(op, unsqueeze(n, "A", [0]), _constant(n, (2, 1, 1, 1, 1)))
    return n.op("Transpose", out, perm=[1, 0, 2, 3, 4])


K = 5  # outputs of the linear layers under test


def flat(n):
    return n.op("Flatten", "A", axis=1)  # [N, F]


def _gemm(opset, operand, trans_a, trans_b, bias, attrs):
    """Gemm with A's features as its first ('A') or second ('B') operand; batch first again afterwards."""

    def body(n):
        f = flat(n)
        s = 1.0 / np.sqrt(F)
        if operand == "A":  # [N, F] x [F, K]
            inputs = [n.op("Transpose", f) if trans_a else f, n.randn(*((K, F) if trans_b else (F, K)), scale=s)]
            c_shape = (K,)
        else:  # [K, F] x [F, N] -> [K, N]
            inputs = [n.randn(*((F, K) if trans_a else (K, F)), scale=s), f if trans_b else n.op("Transpose", f)]
            c_shape = (K, 1)
        if bias:
            inputs.append(n.randn(*c_shape))
        out = n.op("Gemm", *inputs, transA=trans_a, transB=trans_b, **attrs)
        return out if operand == "A" else n.op("Transpose", out)

    label = f"Gemm-{operand}-operand-tA{trans_a}-tB{trans_b}-{'C' if bias else 'noC'}{'-' if attrs else ''}"
    label += ",".join(f"{k}{v}" for k, v in attrs.items())
    return case(label, opset, body)


def _gemm_bias_on_path(n):
    """C = GAP(A) [N, C] also depends on A: its gradient is beta * dY."""
    pooled = n.op("Flatten", gap(n, "A"), axis=1)
    return n.op("Gemm", flat(n), n.randn(F, C, scale=F**-0.5), pooled, alpha=0.7, beta=1.3)


LINEAR_CASES = [
    *[
        _gemm(opset, operand, ta, tb, bias, {"alpha": 0.7, "beta": 1.3} if bias else {"alpha": 0.7})
        for opset, bias in ((7, True), (9, True), (11, False), (13, True), (13, False))
        for operand in ("A", "B")
        for ta in (0, 1)
        for tb in (0, 1)
    ],
    _gemm(13, "A", 0, 1, True, {}),
    *[case("Gemm-C-on-path", o, _gemm_bias_on_path) for o in (7, 13)],
    *[case("MatMul-2d", o, lambda n: n.op("MatMul", flat(n), n.randn(F, K))) for o in (7, 9, 13)],
    case(
        "MatMul-2d-B-operand",
        13,
        lambda n: n.op("Transpose", n.op("MatMul", n.randn(K, F), n.op("Transpose", flat(n)))),
    ),
    case(
        "MatMul-3d-x-2d", 13, lambda n: n.op("MatMul", n.op("Reshape", "A", n.ints([0, C, H * W])), n.randn(H * W, K))
    ),
    case("MatMul-4d-x-2d", 9, lambda n: n.op("MatMul", "A", n.randn(W, K))),
    case("MatMul-4d-x-3d", 13, lambda n: n.op("MatMul", "A", n.randn(C, W, K))),
    case("MatMul-4d-x-1C..", 13, lambda n: n.op("MatMul", "A", n.randn(1, C, W, K))),
    case("MatMul-3d-x-4d-B-operand", 13, lambda n: n.op("MatMul", n.randn(C, K, H), "A")),
    case(
        "MatMul-N1HW-x-3d-broadcast", 13, lambda n: n.op("MatMul", reduce(n, "ReduceMean", "A", [1]), n.randn(C, W, K))
    ),
    case("MatMul-A-x-A^T", 13, lambda n: n.op("MatMul", "A", n.op("Transpose", "A", perm=[0, 1, 3, 2]))),
]


def _conv(out, kernel, group=1, bias=True, **attrs):
    def body(n):
        fan_in = C // group * int(np.prod(kernel))
        inputs = ["A", n.randn(out, C // group, *kernel, scale=fan_in**-0.5)]
        if bias:
            inputs.append(n.randn(out, scale=0.1))
        return n.op("Conv", *inputs, kernel_shape=list(kernel), group=group, **attrs)

    return body


CONV_VARIANTS = [
    ("3x3-pad1-bias", _conv(5, (3, 3), pads=[1, 1, 1, 1])),
    ("1x1-nobias", _conv(3, (1, 1), bias=False)),
    ("group2", _conv(6, (3, 3), group=2, pads=[1, 1, 1, 1])),
    ("depthwise", _conv(C, (3, 3), group=C, pads=[1, 1, 1, 1])),
    ("depthwise-x2", _conv(2 * C, (3, 3), group=C)),
    ("stride2-pad1", _conv(5, (3, 3), strides=[2, 2], pads=[1, 1, 1, 1])),
    ("stride2-nopad", _conv(5, (3, 3), strides=[2, 2])),
    ("stride2,1-k3x2", _conv(5, (3, 2), strides=[2, 1])),
    ("dilation2-pad2", _conv(5, (3, 3), dilations=[2, 2], pads=[2, 2, 2, 2])),
    ("dilation2,1-stride2", _conv(5, (3, 3), dilations=[2, 1], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("pads-0,1,2,0", _conv(5, (3, 3), pads=[0, 1, 2, 0])),
    ("pads-1,0,0,2-stride2", _conv(5, (3, 3), strides=[2, 2], pads=[1, 0, 0, 2])),
    ("SAME_UPPER-k3", _conv(5, (3, 3), auto_pad="SAME_UPPER")),
    ("SAME_UPPER-k2", _conv(5, (2, 2), auto_pad="SAME_UPPER")),
    ("SAME_LOWER-k2", _conv(5, (2, 2), auto_pad="SAME_LOWER")),
    ("SAME_UPPER-k3-stride2", _conv(5, (3, 3), auto_pad="SAME_UPPER", strides=[2, 2])),
    ("SAME_LOWER-k3-stride2", _conv(5, (3, 3), auto_pad="SAME_LOWER", strides=[2, 2])),
    ("SAME_LOWER-k2-stride2", _conv(5, (2, 2), auto_pad="SAME_LOWER", strides=[2, 2])),  # ORT: no dilation with SAME
    ("VALID-k3", _conv(5, (3, 3), auto_pad="VALID")),
    ("VALID-k3-stride2", _conv(5, (3, 3), auto_pad="VALID", strides=[2, 2])),
    ("1x1-stride2", _conv(5, (1, 1), strides=[2, 2])),  # odd rows: the spread gradient is cut short
    ("depthwise-stride2-pad1", _conv(C, (3, 3), group=C, strides=[2, 2], pads=[1, 1, 1, 1])),
    ("k2-pads2", _conv(5, (2, 2), pads=[2, 2, 2, 2])),  # pads beyond the kernel's reach: ConvTranspose
    ("pads-0,0,3,3", _conv(5, (3, 3), pads=[0, 0, 3, 3])),  # end pads beyond the reach: g is cut short
]


WHERE_OPSETS_MATTER = ("SAME", "VALID", "stride2", "group")  # Conv-1 vs Conv-11: auto_pad wording, default pads

# Strided depthwise convs go through a spread gradient and a stride-1 Conv (dense ones through ConvTranspose)
STRIDED_DEPTHWISE_VARIANTS = [
    (
        "depthwise-stride2-SAME_UPPER-k3",
        _conv(C, (3, 3), group=C, strides=[2, 2], auto_pad="SAME_UPPER"),
    ),  # TF: 0,0,1,1
    ("depthwise-stride2-SAME_LOWER-k2", _conv(C, (2, 2), group=C, strides=[2, 2], auto_pad="SAME_LOWER")),
    ("depthwise-stride3-pad1", _conv(C, (3, 3), group=C, strides=[3, 3], pads=[1, 1, 1, 1])),
    ("depthwise-stride2,3-k3x2-pads0,1,1,0", _conv(C, (3, 2), group=C, strides=[2, 3], pads=[0, 1, 1, 0])),
    ("depthwise-x2-stride2-k5-pads1,2,2,1", _conv(2 * C, (5, 5), group=C, strides=[2, 2], pads=[1, 2, 2, 1])),
    (
        "depthwise-stride2-dilation2-pad2",
        _conv(C, (3, 3), group=C, strides=[2, 2], dilations=[2, 2], pads=[2, 2, 2, 2]),
    ),
    ("depthwise-stride2-dilation2,1-nopad", _conv(C, (2, 3), group=C, strides=[2, 2], dilations=[2, 1])),
    ("depthwise-stride2-k2-pads2", _conv(C, (2, 2), group=C, strides=[2, 2], pads=[2, 2, 2, 2])),  # beyond the reach
    ("depthwise-stride2-k3-pads0,0,3,3", _conv(C, (3, 3), group=C, strides=[2, 2], pads=[0, 0, 3, 3])),  # g cut short
    (
        "depthwise-1d-stride2-k3-pad1",
        lambda n: n.op(
            "Conv", _one_d(n), n.randn(C, 1, 3, scale=3**-0.5), kernel_shape=[3], strides=[2], pads=[1, 1], group=C
        ),
    ),
    ("stride3-k5-pad2", _conv(5, (5, 5), strides=[3, 3], pads=[2, 2, 2, 2])),
    ("group2-stride2-pad1", _conv(6, (3, 3), group=2, strides=[2, 2], pads=[1, 1, 1, 1])),
]


def _wide_conv(width, out, kernel, group=1, **attrs):
    """A 1x1 Conv to `width` channels, then a Conv on it: strided dense and grouped Convs whose input has
    channels in ONNX Runtime's NCHWc blocks (16), and some that have not."""

    def body(n):
        wide = n.op("Conv", "A", n.randn(width, C, 1, 1, scale=C**-0.5), kernel_shape=[1, 1])
        fan_in = width // group * int(np.prod(kernel))
        weights = n.randn(out, width // group, *kernel, scale=fan_in**-0.5)
        return n.op("Conv", wide, weights, kernel_shape=list(kernel), group=group, **attrs)

    return body


# A is 7 x 6: odd and even sizes, neither always a multiple of the stride
STRIDED_DENSE_VARIANTS = [
    ("16ch-k3-stride2-pad1", _wide_conv(16, 5, (3, 3), strides=[2, 2], pads=[1, 1, 1, 1])),
    ("32ch-k7-stride2-pad3", _wide_conv(32, 3, (7, 7), strides=[2, 2], pads=[3, 3, 3, 3])),
    ("16ch-k3-stride3-pad1", _wide_conv(16, 5, (3, 3), strides=[3, 3], pads=[1, 1, 1, 1])),
    ("16ch-k5-stride3-pads2,0,1,2", _wide_conv(16, 4, (5, 5), strides=[3, 3], pads=[2, 0, 1, 2])),
    ("16ch-k3-stride2-SAME_UPPER", _wide_conv(16, 5, (3, 3), strides=[2, 2], auto_pad="SAME_UPPER")),
    ("16ch-k4-stride2-SAME_LOWER", _wide_conv(16, 5, (4, 4), strides=[2, 2], auto_pad="SAME_LOWER")),
    ("16ch-k3x2-stride2,3-pads0,1,1,0", _wide_conv(16, 5, (3, 2), strides=[2, 3], pads=[0, 1, 1, 0])),
    ("16ch-k2-stride2-pads2", _wide_conv(16, 5, (2, 2), strides=[2, 2], pads=[2, 2, 2, 2])),  # beyond the reach
    ("16ch-k3-stride2-pads0,0,3,3", _wide_conv(16, 5, (3, 3), strides=[2, 2], pads=[0, 0, 3, 3])),  # g cut short
    ("16ch-k3-stride2-VALID", _wide_conv(16, 5, (3, 3), strides=[2, 2], auto_pad="VALID")),
    ("16ch-k1-stride2", _wide_conv(16, 32, (1, 1), strides=[2, 2])),
    ("16ch-k3-stride2-dilation2-pad2", _wide_conv(16, 5, (3, 3), strides=[2, 2], dilations=[2, 2], pads=[2] * 4)),
    ("16ch-group2-k3-stride2-pad1", _wide_conv(16, 4, (3, 3), group=2, strides=[2, 2], pads=[1, 1, 1, 1])),
    ("20ch-k3-stride2-pad1", _wide_conv(20, 5, (3, 3), strides=[2, 2], pads=[1, 1, 1, 1])),
]


def _batch_norm(epsilon, const=Net.const):
    def body(n):
        values = [n.rng.normal(size=C), n.rng.normal(size=C), n.rng.normal(0, 0.3, C), n.rng.uniform(0.5, 2.0, C)]
        params = [const(n, v) for v in values]
        return n.op("BatchNormalization", "A", *params, **({"epsilon": epsilon} if epsilon else {}))

    return body


POOL_CASES = [
    *[case(f"Conv-{label}", 11, body) for label, body in CONV_VARIANTS],
    *[
        case(f"Conv-{label}", o, body)
        for label, body in CONV_VARIANTS
        if any(w in label for w in WHERE_OPSETS_MATTER)
        for o in (7, 18)
    ],
    *[case(f"Conv-{label}", o, body) for label, body in STRIDED_DEPTHWISE_VARIANTS for o in (7, 11, 13, 18, 21)],
    *[case(f"Conv-{label}", 11, body) for label, body in STRIDED_DENSE_VARIANTS],
    *[case(f"Conv-{label}", o, body) for label, body in STRIDED_DENSE_VARIANTS[:6] for o in (7, 18)],
    *[case("BatchNormalization", o, _batch_norm(None)) for o in (7, 9, 14, 15)],
    case("BatchNormalization-eps0.1", 15, _batch_norm(0.1)),
    case("BatchNormalization-params-from-Constant-nodes", 15, _batch_norm(1e-3, const=Net.const_node)),
    *[case("GlobalAveragePool", o, lambda n: gap(n, "A")) for o in (7, 13)],
    *[
        case(
            f"{op}-axes{','.join(map(str, axes))}-keepdims-{keep}",
            o,
            lambda n, op=op, a=axes, k=keep: reduce(n, op, "A", a, k),
        )
        for op in ("ReduceMean", "ReduceSum")
        for o in (11, 13, 18)  # axes: attribute; ReduceSum input from 13; ReduceMean input from 18
        for axes, keep in (
            ([2, 3], 1),
            ([2, 3], 0),
            ([1], 0),
            ([-1], 1),
            ([1, 2], 0),
            ([1, 2, 3], 1),
            ([3, 1], "default"),
        )
    ],
    *[
        case(
            f"{op}-axes-from-Constant-node",
            o,
            lambda n, op=op: n.op(op, "A", n.const_node([2, 3], np.int64), keepdims=0),
        )
        for op, o in (("ReduceSum", 13), ("ReduceMean", 18))
    ],
    *[
        case(f"{op}-empty-axes-noop", o, lambda n, op=op: n.op(op, "A", n.ints([]), noop_with_empty_axes=1))
        for op, o in (("ReduceSum", 13), ("ReduceMean", 18))
    ],
]


# -- kink functions for max-selections ---------------------------------------------


def window_ties(kernel, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)):
    """MaxPool's kinks: in each window whose top two entries lie within the margin, hold its leaders still.
    Every window start on the padded grid is visited (a superset of ceil_mode's windows): extra ones only
    hold a few more entries still."""

    def frozen(a, margin):
        n, c, h, w = a.shape
        top, left, bottom, right = pads
        mask = np.zeros(a.shape, bool)
        for r0 in range(-top, h + bottom, strides[0]):
            for c0 in range(-left, w + right, strides[1]):
                rows = r0 + np.arange(kernel[0]) * dilations[0]
                cols = c0 + np.arange(kernel[1]) * dilations[1]
                rows, cols = rows[(rows >= 0) & (rows < h)], cols[(cols >= 0) & (cols < w)]
                if not len(rows) or not len(cols):
                    continue
                window = a[:, :, rows][:, :, :, cols]
                mask[:, :, rows[:, None], cols[None]] |= _leaders(window.reshape(n, c, -1), margin).reshape(
                    window.shape
                )
        return mask

    return frozen


def reduce_ties(axes):
    """ReduceMax/ReduceMin/GlobalMaxPool's kinks: leaders of reductions over `axes` within the margin."""

    def frozen(a, margin):
        moved = np.moveaxis(a, axes, list(range(a.ndim - len(axes), a.ndim)))
        lead = moved.shape[: a.ndim - len(axes)]
        flat = moved.reshape(*lead, -1)
        held = _leaders(flat, margin) | _leaders(-flat, margin)  # max and min alike
        return np.moveaxis(held.reshape(moved.shape), list(range(a.ndim - len(axes), a.ndim)), axes)

    return frozen


def _leaders(values, margin):
    """Along the last axis: the entries within `margin` of the maximum where the runner-up is that close."""
    top2 = (
        np.sort(values, axis=-1)[..., -2:]
        if values.shape[-1] > 1
        else np.concatenate([values, values - 2 * margin], -1)
    )
    close = (top2[..., 1] - top2[..., 0] < margin)[..., None]
    return close & (values > top2[..., 1:] - margin)


# -- more builders --------------------------------------------------------------------


def near_channel_mean(a, margin):
    """Min(A, GAP(A))'s kinks: entries near their channel's mean (which moves too, by at most half a margin)."""
    return np.abs(a - a.mean(axis=(2, 3), keepdims=True)) < 2 * margin


def positive(n, x, offset=0.5):
    """x^2 + offset: an input for Log, Sqrt, fractional powers."""
    return n.op("Add", n.op("Mul", x, x), n.const(offset))


def pool(n, op, x, **attrs):
    return n.op(op, x, **attrs)


def split(n, x, axis, sizes, outputs):
    if n.opset >= 18 and sizes is None:
        return n.op("Split", x, axis=axis, num_outputs=outputs, outputs=outputs)
    if sizes is None:
        return n.op("Split", x, axis=axis, outputs=outputs)
    if n.opset >= 13:
        return n.op("Split", x, n.ints(sizes), axis=axis, outputs=outputs)
    return n.op("Split", x, axis=axis, split=sizes, outputs=outputs)


def slice_(n, x, starts, ends, axes=None, steps=None, constant_nodes=False):
    if n.opset < 10:
        assert steps is None
        return n.op("Slice", x, starts=starts, ends=ends, **({"axes": axes} if axes is not None else {}))
    ints = (lambda v: n.const_node(v, np.int64)) if constant_nodes else n.ints
    inputs = [ints(starts), ints(ends)]
    if axes is not None or steps is not None:
        inputs.append(ints(axes) if axes is not None else "")
    if steps is not None:
        inputs.append(ints(steps))
    return n.op("Slice", x, *inputs)


def pad(n, x, pads, mode=None, value=None, axes=None):
    attrs = {"mode": mode} if mode else {}
    if n.opset < 11:
        return n.op("Pad", x, pads=pads, **attrs, **({"value": value} if value is not None else {}))
    inputs = [n.ints(pads), n.const(value) if value is not None else ""]
    if axes is not None:
        inputs.append(n.ints(axes))
    while inputs and not inputs[-1]:
        inputs.pop()
    return n.op("Pad", x, *inputs, **attrs)


def resize(n, x, scales=None, sizes=None, axes=None, **attrs):
    """Upsample (opset 7: attribute; 9: input), Resize-10 (scales), Resize-11+ (roi, scales or sizes)."""
    if n.opset < 9:
        return n.op("Upsample", x, scales=[float(s) for s in scales], **attrs)
    if n.opset < 10:
        return n.op("Upsample", x, n.const(scales), **attrs)
    if n.opset < 11:
        return n.op("Resize", x, n.const(scales), **attrs)
    extra = {"axes": axes} if axes is not None else {}
    roi = n.const(np.zeros(0)) if n.opset < 13 else ""
    if sizes is not None:
        empty = n.const(np.zeros(0)) if n.opset < 13 else ""
        return n.op("Resize", x, roi, empty, n.ints(sizes), **attrs, **extra)
    return n.op("Resize", x, roi, n.const(scales), **attrs, **extra)


def _conv_transpose(out, kernel, group=1, bias=True, **attrs):
    def body(n):
        inputs = ["A", n.randn(C, out // group, *kernel, scale=(C * np.prod(kernel) / group) ** -0.5)]
        if bias:
            inputs.append(n.randn(out, scale=0.1))
        return n.op("ConvTranspose", *inputs, kernel_shape=list(kernel), group=group, **attrs)

    return body


def layer_norm(n, x, axis=None, bias=True, epsilon=None):
    shape = (C, H, W)[axis:] if axis is not None else (W,)
    inputs = [x, n.const(n.rng.uniform(0.5, 1.5, shape)), n.randn(*shape) if bias else ""]
    attrs = {k: v for k, v in (("axis", axis), ("epsilon", epsilon)) if v is not None}
    return n.op("LayerNormalization", *[i for i in inputs if i], **attrs)


def softmax(n, op, x, axis):
    return n.op(op, x, **({} if axis is None else {"axis": axis}))


INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
MAX_C = [-0.3, 0.1, 0.4, -0.6]  # per-channel constants for Max/Min (kinks where A equals them)


ELEMENTWISE_CASES = [
    *[case("Neg", o, lambda n: n.op("Neg", "A")) for o in (7, 13)],
    *[case("Exp", o, lambda n: n.op("Exp", "A")) for o in (7, 13)],
    *[case("Log-A^2+0.5", o, lambda n: n.op("Log", positive(n, "A"))) for o in (7, 13)],
    *[case("Sqrt-A^2+0.5", o, lambda n: n.op("Sqrt", positive(n, "A"))) for o in (7, 13)],
    *[case("Reciprocal-A^2+0.5", o, lambda n: n.op("Reciprocal", positive(n, "A"))) for o in (7, 13)],
    *[case("Abs", o, lambda n: n.op("Abs", "A"), kinks=[0.0]) for o in (7, 13)],
    *[case("Softplus", o, lambda n: n.op("Softplus", "A")) for o in (7, 13)],
    *[case("Elu-default", o, lambda n: n.op("Elu", "A")) for o in (7, 13)],
    case("Elu-alpha0.4", 9, lambda n: n.op("Elu", "A", alpha=0.4), kinks=[0.0]),
    case("Selu-default", 7, lambda n: n.op("Selu", "A"), kinks=[0.0]),
    case("Selu-alpha1.2-gamma0.8", 13, lambda n: n.op("Selu", "A", alpha=1.2, gamma=0.8), kinks=[0.0]),
    case("Celu-alpha0.6", 12, lambda n: n.op("Celu", "A", alpha=0.6)),
    case("ThresholdedRelu-0.3", 10, lambda n: n.op("ThresholdedRelu", "A", alpha=0.3), kinks=[0.3]),
    case("Mish", 18, lambda n: n.op("Mish", "A")),
    case("Gelu-none", 20, lambda n: n.op("Gelu", "A"), a_scale=2.0),
    case("Gelu-tanh", 20, lambda n: n.op("Gelu", "A", approximate="tanh"), a_scale=2.0),
    case("Gelu-none", 21, lambda n: n.op("Gelu", "A")),
    *[case("PRelu-slope-C11", o, lambda n: n.op("PRelu", "A", n.randn(C, 1, 1)), kinks=[0.0]) for o in (7, 9, 16)],
    case("PRelu-slope-scalar", 9, lambda n: n.op("PRelu", "A", n.const([0.2])), kinks=[0.0]),
    case("PRelu-slope-from-A", 13, lambda n: n.op("PRelu", "A", n.op("Sigmoid", gap(n, "A"))), kinks=[0.0]),
    *[case("Pow-A^2", o, lambda n: n.op("Pow", "A", n.const(2.0))) for o in (7, 13)],
    case("Pow-A^3", 7, lambda n: n.op("Pow", "A", n.const(3.0))),
    case("Pow-(A^2+0.5)^1.5", 13, lambda n: n.op("Pow", positive(n, "A"), n.const(1.5))),
    case("Pow-exponent-from-Constant-node", 13, lambda n: n.op("Pow", positive(n, "A"), n.const_node(-0.7))),
    case(
        "Pow-exponent-from-Constant-value_float",
        13,
        lambda n: n.op("Pow", positive(n, "A"), n.op("Constant", value_float=1.5)),
    ),
    case("Pow-int64-exponent", 15, lambda n: n.op("Pow", "A", n.ints(3))),
    case(
        "Pow-per-channel-exponent",
        13,
        lambda n: n.op("Pow", positive(n, "A"), n.const([[[0.5]], [[1.5]], [[2.0]], [[-1.0]]])),
    ),
    case("Pow-1.5^A-exponent-on-path", 13, lambda n: n.op("Pow", n.const(1.5), "A")),
    case("Pow-A^2^GAP(A)-both-on-path", 13, lambda n: n.op("Pow", positive(n, "A"), gap(n, "A"))),
    case("Cast-to-float", 13, lambda n: n.op("Cast", "A", to=1)),
    case("Cast-double-and-back", 13, lambda n: n.op("Cast", n.op("Tanh", n.op("Cast", "A", to=11)), to=1)),
    case("CastLike", 15, lambda n: n.op("CastLike", "A", n.const(0.0))),
    case(
        "Cast-int-branch-off-path",
        13,
        lambda n: n.op("Add", "A", n.op("Cast", n.op("Cast", "A", to=7), to=1)),
        kinks=[-3.0, -2.0, -1.0, 1.0, 2.0, 3.0],
    ),  # the integer branch jumps where A crosses an integer
    *[case("Max-A,0.2", o, lambda n: n.op("Max", "A", n.const(0.2)), kinks=[0.2]) for o in (8, 13)],
    *[case("Max-A,-A", o, lambda n: n.op("Max", "A", n.op("Neg", "A")), kinks=[0.0]) for o in (7, 13)],
    *[case("Min-A,-A", o, lambda n: n.op("Min", "A", n.op("Neg", "A")), kinks=[0.0]) for o in (7, 13)],
    case("Min-A,-0.1", 13, lambda n: n.op("Min", "A", n.const(-0.1)), kinks=[-0.1]),
    case("Max-A,c-C11", 13, lambda n: n.op("Max", "A", n.const(np.reshape(MAX_C, (C, 1, 1)))), kinks=MAX_C),
    case("Max-c-C11,A", 12, lambda n: n.op("Max", n.const(np.reshape(MAX_C, (C, 1, 1))), "A"), kinks=MAX_C),
    case("Max-3-inputs", 13, lambda n: n.op("Max", "A", n.const(0.2), n.op("Neg", "A")), kinks=[0.0, 0.2, -0.2]),
    case("Min-A,GAP(A)", 13, lambda n: n.op("Min", "A", gap(n, "A")), kinks=[near_channel_mean]),
    *[
        case(
            "Where-A>0.1,2A,Sigmoid(A)",
            o,
            lambda n: n.op(
                "Where", n.op("Greater", "A", n.const(0.1)), n.op("Mul", "A", n.const(2.0)), n.op("Sigmoid", "A")
            ),
            kinks=[0.1],
        )
        for o in (9, 16)
    ],
    case(
        "Where-const-cond,c,A",
        13,
        lambda n: n.op("Where", n.const(n.rng.random((H, W)) > 0.5, np.bool_), n.const(0.3), "A"),
    ),
    *[case("Sum-A,Tanh(A),c", o, lambda n: n.op("Sum", "A", n.op("Tanh", "A"), n.randn(C, 1, 1))) for o in (8, 13)],
    case("Sum-A,Tanh(A)-same-shapes", 7, lambda n: n.op("Sum", "A", n.op("Tanh", "A"))),
    case("Sum-one-input", 13, lambda n: n.op("Sum", "A")),
    *[case("Mean-A,A^2,GAP(A)", o, lambda n: n.op("Mean", "A", n.op("Mul", "A", "A"), gap(n, "A"))) for o in (8, 13)],
    case("Mean-A,A^2", 7, lambda n: n.op("Mean", "A", n.op("Mul", "A", "A"))),
]

LRN_VARIANTS = [  # (label, attributes, channels of a 1x1 conv before LRN (None: LRN on A's 4), scale of A)
    ("size3-alpha1", dict(size=3, alpha=1.0), None, 1.0),
    ("size5-alpha2-beta0.5-bias2", dict(size=5, alpha=2.0, beta=0.5, bias=2.0), None, 1.0),
    ("size3-alpha3-beta0.9-9-channels", dict(size=3, alpha=3.0, beta=0.9), 9, 1.0),
    ("size5-defaults-A-scale100", dict(size=5), 9, 100.0),  # default alpha 1e-4 matters only for large A (AlexNet)
]
LRN_EVEN_VARIANTS = [  # ORT runs odd sizes only: these run with LRN written out (test_lrn_even_size_...)
    ("size2-alpha1.5-beta1-bias0.5", dict(size=2, alpha=1.5, beta=1.0, bias=0.5), None, 1.0),
    ("size4-alpha3-beta0.9-9-channels", dict(size=4, alpha=3.0, beta=0.9), 9, 1.0),
]


def _lrn(attrs, channels):
    """LRN on A, or on a 1x1 conv of A to more channels (windows that are clipped at both ends, and inner ones)."""

    def body(n):
        x = "A" if channels is None else _conv(channels, (1, 1), bias=False)(n)
        return n.op("LRN", x, **attrs)

    return body


def _lrn_written_out(model):
    """The model with each LRN node replaced by the spec's formula in standard ops, its output keeping its name:
    y = x / (bias + alpha/size * square_sum)^beta, square_sum a 1x1 Conv of x^2 with the banded [C, C] matrix of
    the spec's window c - floor((size-1)/2) .. c + ceil((size-1)/2) (built apart from the rule's Pad + Slice)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: v.type.tensor_type.shape.dim for v in [*graph.input, *graph.value_info, *graph.output]}
    nodes = []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "LRN":
            nodes.append(node)
            continue
        a = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        size, alpha, beta, bias = a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
        k = np.arange(shapes[node.input[0]][1].dim_value)
        band = (k[None] >= k[:, None] - np.floor((size - 1) / 2)) & (k[None] <= k[:, None] + np.ceil((size - 1) / 2))
        x, y, p = node.input[0], node.output[0], f"lrn{i}_"
        for name, value in (("band", band[:, :, None, None]), ("scale", alpha / size), ("bias", bias), ("beta", beta)):
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), p + name))
        nodes += [
            helper.make_node("Mul", [x, x], [p + "square"]),
            helper.make_node("Conv", [p + "square", p + "band"], [p + "sum"], kernel_shape=[1, 1]),
            helper.make_node("Mul", [p + "sum", p + "scale"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "bias"], [p + "d"]),
            helper.make_node("Pow", [p + "d", p + "beta"], [p + "power"]),
            helper.make_node("Div", [x, p + "power"], [y]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


NORMALIZATION_CASES = [
    *[case(f"Softmax-axis{a}", o, lambda n, a=a: softmax(n, "Softmax", "A", a)) for o in (13, 18) for a in (1, -1, 2)],
    case("Softmax-default-axis", 13, lambda n: softmax(n, "Softmax", "A", None)),
    *[case(f"Softmax-2d-coercion-axis{a}", 11, lambda n, a=a: softmax(n, "Softmax", "A", a)) for a in (1, 2, 3, -1)],
    *[case("Softmax-default-axis1-coerced", o, lambda n: softmax(n, "Softmax", "A", None)) for o in (7, 11)],
    *[case(f"LogSoftmax-axis{a}", 13, lambda n, a=a: softmax(n, "LogSoftmax", "A", a)) for a in (1, -1)],
    *[
        case(f"LogSoftmax-2d-coercion-axis{a}", o, lambda n, a=a: softmax(n, "LogSoftmax", "A", a))
        for o in (7, 11)
        for a in (1, 2)
    ],
    *[
        case(
            "InstanceNormalization",
            o,
            lambda n: n.op("InstanceNormalization", "A", n.const(n.rng.uniform(0.5, 1.5, C)), n.randn(C)),
        )
        for o in (7, 17)
    ],
    case(
        "InstanceNormalization-eps0.1",
        13,
        lambda n: n.op("InstanceNormalization", "A", n.randn(C), n.randn(C), epsilon=0.1),
    ),
    *[case("LayerNormalization-last-axis", o, lambda n: layer_norm(n, "A"), eps=1e-3) for o in (17, 18, 21)],
    case("LayerNormalization-last-two-axes", 17, lambda n: layer_norm(n, "A", axis=-2)),
    case(
        "LayerNormalization-axis1-no-bias-eps0.01", 17, lambda n: layer_norm(n, "A", axis=1, bias=False, epsilon=0.01)
    ),
    case("LayerNormalization-axis2", 18, lambda n: layer_norm(n, "A", axis=2)),
    case("LayerNormalization-scale-from-A", 17, lambda n: n.op("LayerNormalization", "A", n.op("Tanh", "A"))),
    case("LayerNorm-written-out-Pow-Sqrt", 13, lambda n: _layer_norm_decomposed(n, "A"), eps=1e-3),
    *[
        case(f"LRN-{label}", o, _lrn(attrs, widen), a_scale=scale)
        for label, attrs, widen, scale in LRN_VARIANTS
        for o in (7, 13, 21)
    ],
]


def _layer_norm_decomposed(n, x):
    """LayerNorm as torch.onnx writes it before opset 17: ReduceMean, Sub, Pow 2, ReduceMean, Add, Sqrt, Div."""
    centered = n.op("Sub", x, reduce(n, "ReduceMean", x, [-1]))
    var = reduce(n, "ReduceMean", n.op("Pow", centered, n.const(2.0)), [-1])
    return n.op("Div", centered, n.op("Sqrt", n.op("Add", var, n.const(1e-5))))


SELECTION_CASES = [
    *[
        case(
            f"{op}-axes{','.join(map(str, axes))}-keepdims-{keep}",
            o,
            lambda n, op=op, a=axes, k=keep: reduce_any(n, op, "A", a, k),
            kinks=[reduce_ties(axes)],
        )
        for op in ("ReduceMax", "ReduceMin")
        for o in (11, 13, 18)
        for axes, keep in (([2, 3], 1), ([2, 3], 0), ([1], 0), ([-1], 1))
    ],
    *[case("GlobalMaxPool", o, lambda n: n.op("GlobalMaxPool", "A"), kinks=[reduce_ties([2, 3])]) for o in (7, 13)],
    *[
        case(
            f"{op}-axes{','.join(map(str, axes))}",
            o,
            lambda n, op=op, a=axes: reduce_any(n, op, "A", a, 0),
            kinks=kinks,
        )
        for op, kinks in (("ReduceSumSquare", []), ("ReduceL2", []), ("ReduceL1", [0.0]), ("ReduceLogSumExp", []))
        for o in (11, 18)
        for axes in ([2, 3], [1])
    ],
]


def reduce_any(n, op, x, axes, keepdims="default"):
    """Any Reduce* op: axes as an attribute, or as an input from opset 18 (ReduceSum: 13)."""
    attrs = {} if keepdims == "default" else {"keepdims": keepdims}
    if n.opset >= (13 if op == "ReduceSum" else 18):
        return n.op(op, x, n.ints(axes), **attrs)
    return n.op(op, x, axes=axes, **attrs)


SLICING_CASES = [
    *[case("Concat-A,Tanh(A)-axis1", o, lambda n: n.op("Concat", "A", n.op("Tanh", "A"), axis=1)) for o in (7, 13)],
    case("Concat-A,Sigmoid(A),A-axis2", 11, lambda n: n.op("Concat", "A", n.op("Sigmoid", "A"), "A", axis=2)),
    case("Concat-axis-1", 13, lambda n: n.op("Concat", n.op("Tanh", "A"), "A", axis=-1)),
    *[
        case("Split-1,3-axis1-both", o, lambda n: n.op("Concat", *reversed(split(n, "A", 1, [1, 3], 2)), axis=1))
        for o in (7, 11, 13)
    ],
    *[
        case(
            "Split-1,2,1-middle-unused",
            o,
            lambda n: n.op("Concat", n.op("Tanh", (s := split(n, "A", 1, [1, 2, 1], 3))[2]), s[0], axis=1),
        )
        for o in (11, 13)
    ],
    *[case("Split-3,4-axis2-one-used", o, lambda n: split(n, "A", 2, [3, 4], 2)[1]) for o in (7, 13)],
    case("Split-equal-axis1", 13, lambda n: split(n, "A", 1, None, 2)[0]),
    case("Split-num_outputs2-axis-1", 18, lambda n: n.op("Mul", *split(n, "A", 1, None, 2))),
    case("Split-num_outputs2-uneven-axis2", 18, lambda n: split(n, "A", 2, None, 2)[1]),
    case("Slice-attrs-axis1-1:3", 7, lambda n: slice_(n, "A", [1], [3], [1])),
    case(
        "Slice-attrs-negative-clamped", 9, lambda n: slice_(n, "A", [1, -5], [-1, 100], [2, 3])
    ),  # unsorted axes: no shape
    case("Slice-attrs-no-axes", 7, lambda n: slice_(n, "A", [0, 1, 2], [INT64_MAX, 3, 6])),
    *[
        case("Slice-inputs-negative-clamped", o, lambda n: slice_(n, "A", [-5, 1], [INT64_MAX, -1], [3, 2]))
        for o in (10, 13)
    ],
    case("Slice-step2", 10, lambda n: slice_(n, "A", [1], [7], [2], [2])),
    case("Slice-step3-from1-to-1", 13, lambda n: slice_(n, "A", [1, 0], [-1, 100], [2, 3], [3, 2])),
    case("Slice-step-1-reverse-all", 13, lambda n: slice_(n, "A", [-1], [INT64_MIN], [3], [-1])),
    case("Slice-step-2-reverse", 11, lambda n: slice_(n, "A", [5, 100], [0, INT64_MIN], [2, 3], [-2, -3])),
    case("Slice-step-1-clamped", 13, lambda n: slice_(n, "A", [100], [-100], [-2], [-1])),
    case(
        "Slice-from-Constant-nodes", 13, lambda n: slice_(n, "A", [1, 1], [3, 5], [1, -1], [1, 2], constant_nodes=True)
    ),
    case("Slice-batch-axis-kept", 13, lambda n: slice_(n, "A", [0, 2], [INT64_MAX, 6], [0, 3])),
    case(
        "Slice-twice-overlapping-Add",
        13,
        lambda n: n.op("Add", slice_(n, "A", [0], [4], [2]), slice_(n, "A", [3], [7], [2])),
    ),
    *[
        case("Pad-constant-0,0,1,2,0,0,2,1", o, lambda n: pad(n, "A", [0, 0, 1, 2, 0, 0, 2, 1]))
        for o in (7, 11, 13, 18, 21)
    ],
    case("Pad-constant-value0.5", 11, lambda n: pad(n, "A", [0, 1, 0, 0, 0, 1, 1, 1], value=0.5)),
    case("Pad-constant-value0.5-attr", 7, lambda n: pad(n, "A", [0, 1, 0, 0, 0, 1, 1, 1], value=0.5)),
    case("Pad-negative-crop", 13, lambda n: pad(n, "A", [0, 0, -1, 2, 0, -1, 1, -2])),
    case("Pad-axes-input", 18, lambda n: pad(n, "A", [1, 2, 2, 0], axes=[2, -1])),
    *[case("Pad-reflect", o, lambda n: pad(n, "A", [0, 0, 2, 1, 0, 0, 1, 3], mode="reflect")) for o in (7, 11, 13)],
    *[case("Pad-edge", o, lambda n: pad(n, "A", [0, 0, 2, 1, 0, 0, 3, 2], mode="edge")) for o in (9, 11, 18)],
    case("Pad-wrap", 19, lambda n: pad(n, "A", [0, 0, 2, 1, 0, 0, 3, 6], mode="wrap")),
    case(
        "Pad-then-Conv",
        13,
        lambda n: n.op("Conv", pad(n, "A", [0, 0, 1, 1, 0, 0, 1, 1]), n.randn(5, C, 3, 3, scale=1 / 6)),
    ),
    *[case("Expand-GAP(A)-to-1CHW", o, lambda n: n.op("Expand", gap(n, "A"), n.ints([1, C, H, W]))) for o in (8, 13)],
    case("Expand-noop", 8, lambda n: n.op("Expand", "A", n.ints([1, 1, 1]))),
    case(
        "Expand-new-leading-axis",
        13,
        lambda n: n.op("Transpose", n.op("Expand", "A", n.ints([2, 1, 1, 1, 1])), perm=[1, 0, 2, 3, 4]),
    ),
    case("Expand-N1HW-to-NCHW", 13, lambda n: n.op("Expand", reduce(n, "ReduceMean", "A", [1]), n.ints([C, 1, 1]))),
    *[case("Tile-1,2,1,3", o, lambda n: n.op("Tile", "A", n.ints([1, 2, 1, 3]))) for o in (7, 13)],
]


CONV_TRANSPOSE_VARIANTS = [
    ("3x3-pad1", _conv_transpose(5, (3, 3), pads=[1, 1, 1, 1])),
    ("3x3-nobias", _conv_transpose(3, (3, 3), bias=False)),
    ("2x2-stride2", _conv_transpose(5, (2, 2), strides=[2, 2])),
    ("3x3-stride2-pad1-outpad1", _conv_transpose(5, (3, 3), strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    ("3x3-stride2-pads-0,1,2,0", _conv_transpose(5, (3, 3), strides=[2, 2], pads=[0, 1, 2, 0])),
    ("group2", _conv_transpose(6, (3, 3), group=2, pads=[1, 1, 1, 1])),
    ("depthwise", _conv_transpose(C, (3, 3), group=C, strides=[2, 2])),
    ("dilation2", _conv_transpose(5, (3, 3), dilations=[2, 2], pads=[1, 2, 1, 0])),
    ("dilation2-stride2-outpad1", _conv_transpose(5, (3, 2), dilations=[2, 2], strides=[2, 3], output_padding=[1, 1])),
    ("SAME_UPPER-stride2", _conv_transpose(5, (3, 3), auto_pad="SAME_UPPER", strides=[2, 2])),
    ("SAME_LOWER-stride2", _conv_transpose(5, (3, 3), auto_pad="SAME_LOWER", strides=[2, 2])),
    ("SAME_UPPER-k4-stride1", _conv_transpose(5, (4, 4), auto_pad="SAME_UPPER")),
    ("VALID-stride2", _conv_transpose(5, (3, 3), auto_pad="VALID", strides=[2, 2])),
    ("output_shape-odd-total", _conv_transpose(5, (3, 3), strides=[2, 2], output_shape=[14, 11])),
    (
        "output_shape-SAME_UPPER",
        _conv_transpose(5, (3, 3), strides=[2, 2], output_shape=[12, 10], auto_pad="SAME_UPPER"),
    ),
]

MAX_POOL_VARIANTS = [  # (label, attributes, first opset)
    ("k2-s2", dict(kernel_shape=[2, 2], strides=[2, 2]), 7),
    ("k3-s1-p1", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 7),
    ("k3-s3-floor-leftover", dict(kernel_shape=[3, 3], strides=[3, 3]), 7),
    ("k3,2-s1,2-pads-1,0,0,1", dict(kernel_shape=[3, 2], strides=[1, 2], pads=[1, 0, 0, 1]), 7),
    ("SAME_UPPER-k3-s2", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), 7),
    ("SAME_LOWER-k2-s1", dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER"), 7),
    ("k3-s2-p1-ceil", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), 10),
    ("k2-s2-ceil", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), 10),
    (
        "k3-s2-p1-ceil-dilation2",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, dilations=[2, 2]),
        10,
    ),
    ("k2-s1-dilation2,1", dict(kernel_shape=[2, 2], dilations=[2, 1]), 10),
]


def _max_pool(attrs, indices=False):
    def body(n):
        out = n.op("MaxPool", "A", outputs=2 if indices else 1, **attrs)
        return out[0] if indices else out

    return body


def _pool_ties(attrs):
    """window_ties on the pool's window grid (SAME pads resolved as the spec does; ceil_mode reaches further)."""
    k = attrs["kernel_shape"]
    strides = attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    begin = attrs.get("pads", [0, 0, 0, 0])[:2]
    if "auto_pad" in attrs:
        total = [
            max(0, (-(-d // s) - 1) * s + (k_ - 1) * dl + 1 - d) for d, s, k_, dl in zip((H, W), strides, k, dilations)
        ]
        begin = [t // 2 if attrs["auto_pad"] == "SAME_UPPER" else t - t // 2 for t in total]
    span = [(k_ - 1) * dl + 1 for k_, dl in zip(k, dilations)]
    return window_ties(k, strides, begin + span, dilations)


AVERAGE_POOL_VARIANTS = [  # (label, attributes, first opset)
    ("k2-s2", dict(kernel_shape=[2, 2], strides=[2, 2]), 7),
    ("k3-s1-p1-exclude-pad", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 7),
    ("k3-s1-p1-include-pad", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), 7),
    ("k3,2-s2,1-pads-1,0,2,1-exclude-pad", dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 2, 1]), 7),
    ("k3-s3-floor-leftover", dict(kernel_shape=[3, 3], strides=[3, 3]), 7),
    ("SAME_UPPER-k3-s2", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), 7),
    ("SAME_LOWER-k2-s1-include-pad", dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER", count_include_pad=1), 7),
    ("k3-s2-p1-ceil-exclude-pad", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), 10),
    (
        "k3-s2-p1-ceil-include-pad",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
        10,
    ),
    ("k2-s2-ceil", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), 10),
    (
        "k3-s2-p1-dilation2-ceil",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[2, 2], ceil_mode=1),
        19,
    ),
    (
        "k2-dilation2,1-include-pad",
        dict(kernel_shape=[2, 2], pads=[1, 0, 1, 1], dilations=[2, 1], count_include_pad=1),
        19,
    ),
]

RESIZE_VARIANTS = [  # (label, opsets, kwargs of resize()); sizes need axes (18+) to leave the batch alone
    ("nearest-2x", (7, 9, 10, 11, 13, 21), dict(scales=[1, 1, 2, 2])),
    ("linear-2x", (7, 9, 10, 11, 13, 21), dict(scales=[1, 1, 2, 2], mode="linear")),
    ("linear-2x,3x", (9, 10), dict(scales=[1, 1, 2, 3], mode="linear")),
    (
        "linear-align_corners",
        (11, 13, 21),
        dict(scales=[1, 1, 2, 2], mode="linear", coordinate_transformation_mode="align_corners"),
    ),
    (
        "linear-half_pixel-1.5x",
        (11, 19),
        dict(scales=[1, 1, 1.5, 1.5], mode="linear", coordinate_transformation_mode="half_pixel"),
    ),
    (
        "linear-asymmetric",
        (11, 13),
        dict(scales=[1, 1, 2, 2], mode="linear", coordinate_transformation_mode="asymmetric"),
    ),
    (
        "linear-pytorch_half_pixel-1.5x",
        (13,),
        dict(scales=[1, 1, 1.5, 1.5], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    ),
    ("linear-down-0.6x,0.5x", (11, 18), dict(scales=[1, 1, 0.6, 0.5], mode="linear")),
    ("cubic-2x", (11, 13), dict(scales=[1, 1, 2, 2], mode="cubic")),
    (
        "nearest-1.5x-floor-asymmetric",
        (11, 13),
        dict(scales=[1, 1, 1.5, 1.5], nearest_mode="floor", coordinate_transformation_mode="asymmetric"),
    ),
    ("nearest-1.5x-ceil", (11, 13), dict(scales=[1, 1, 1.5, 1.5], nearest_mode="ceil")),
    (
        "nearest-1.7x-round_prefer_ceil-align_corners",
        (13,),
        dict(scales=[1, 1, 1.7, 1.7], nearest_mode="round_prefer_ceil", coordinate_transformation_mode="align_corners"),
    ),
    (
        "nearest-tf_half_pixel_for_nn",
        (11,),
        dict(scales=[1, 1, 1.5, 2], coordinate_transformation_mode="tf_half_pixel_for_nn"),
    ),
    ("nearest-sizes-axes2,3", (18, 21), dict(sizes=[11, 9], axes=[2, 3])),
    (
        "linear-pytorch_half_pixel-sizes-1,13",
        (18,),
        dict(sizes=[1, 13], axes=[2, 3], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    ),
    (
        "cubic-align_corners-exclude_outside-sizes",
        (18,),
        dict(
            sizes=[10, 8], axes=[2, 3], mode="cubic", exclude_outside=1, coordinate_transformation_mode="align_corners"
        ),
    ),
    ("linear-scales-axes-2,3", (18,), dict(scales=[2, 1.5], axes=[2, 3], mode="linear")),
    ("linear-antialias-down", (18,), dict(scales=[1, 1, 0.5, 0.7], mode="linear", antialias=1)),
    (
        "linear-half_pixel_symmetric",
        (19,),
        dict(scales=[1, 1, 1.5, 2], mode="linear", coordinate_transformation_mode="half_pixel_symmetric"),
    ),
    ("nearest-sizes-axis3", (18,), dict(sizes=[9], axes=[3])),
]


def _resize_case(label, opset, kwargs):
    if opset < 11:  # Upsample and Resize-10: scales only, nearest or linear, asymmetric coordinates
        kwargs = {k: v for k, v in kwargs.items() if k in ("scales", "mode")}
    op = "Upsample" if opset < 10 else "Resize"
    return case(f"{op}-{label}", opset, lambda n: resize(n, "A", **kwargs))


def _one_d(n):
    """A as [N, C, H*W]: for 1-D pooling and transposed convolution."""
    return n.op("Reshape", "A", n.ints([0, C, H * W]))


def _one_d_ties(kernel, stride, pad):
    """window_ties on the 1-D windows over A's flattened H*W."""
    frozen = window_ties((1, kernel), (1, stride), (0, pad, 0, pad + kernel), (1, 1))
    return lambda a, margin: frozen(a.reshape(len(a), C, 1, H * W), margin).reshape(a.shape)


RESAMPLING_CASES = [
    *[
        case(
            "MaxPool-1d-k3-s2-p1",
            o,
            lambda n: n.op("MaxPool", _one_d(n), kernel_shape=[3], strides=[2], pads=[1, 1]),
            kinks=[_one_d_ties(3, 2, 1)],
        )
        for o in (8, 16)
    ],
    case(
        "AveragePool-1d-k3-s2-p1-ceil",
        11,
        lambda n: n.op("AveragePool", _one_d(n), kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1),
    ),
    case(
        "ConvTranspose-1d-k3-s2",
        11,
        lambda n: n.op("ConvTranspose", _one_d(n), n.randn(C, 3, 3), kernel_shape=[3], strides=[2]),
    ),
    *[case(f"ConvTranspose-{label}", 11, body) for label, body in CONV_TRANSPOSE_VARIANTS],
    *[
        case(f"ConvTranspose-{label}", o, body)
        for label, body in CONV_TRANSPOSE_VARIANTS[:4] + CONV_TRANSPOSE_VARIANTS[9:]
        for o in (7, 18)
    ],
    *[
        case(f"MaxPool-{label}", o, _max_pool(attrs), kinks=[_pool_ties(attrs)])
        for label, attrs, first in MAX_POOL_VARIANTS
        for o in ((7, 12, 16) if first == 7 else (10, 16, 21))  # scatter-add from 16, window masks before
    ],
    *[
        case(
            "MaxPool-k2-s2-Indices-storage_order1",
            o,
            _max_pool(dict(kernel_shape=[2, 2], strides=[2, 2], storage_order=1), indices=True),
            kinks=[_pool_ties(dict(kernel_shape=[2, 2], strides=[2, 2]))],
        )
        for o in (8, 16)
    ],
    *[
        case(f"AveragePool-{label}", o, lambda n, a=attrs: n.op("AveragePool", "A", **a))
        for label, attrs, first in AVERAGE_POOL_VARIANTS
        for o in sorted({first, max(first, 11), 19})
    ],
    *[_resize_case(label, o, kwargs) for label, opsets, kwargs in RESIZE_VARIANTS for o in opsets],
]


@pytest.mark.parametrize(
    "opset, body, kinks, a_scale, eps",
    SHAPE_CASES
    + ACTIVATION_CASES
    + ARITHMETIC_CASES
    + LINEAR_CASES
    + POOL_CASES
    + ELEMENTWISE_CASES
    + NORMALIZATION_CASES
    + SELECTION_CASES
    + SLICING_CASES
    + RESAMPLING_CASES,
)
def test_rule_matches_finite_differences(opset, body, kinks, a_scale, eps):
    net = Net(opset, a_scale=a_scale)
    check_gradients(classifier(net, body(net)), kinks=kinks, eps=eps)


def test_strided_depthwise_backward_is_a_spread_and_a_conv():
    """The speed route (the values are checked above): no per-channel kxk ConvTranspose for a strided depthwise conv,
    only the 1x1 spread; and the activation masks read Clip's output, so Conv + Clip can stay fused."""
    net = Net(13)
    body = clip(net, _conv(C, (3, 3), group=C, strides=[2, 2], auto_pad="SAME_UPPER")(net), 0.0, 6.0)
    graph = augment(inspect_model(classifier(net, body)), ["A"]).graph
    transposed = [n for n in graph.node if n.op_type == "ConvTranspose"]
    assert len(transposed) == 1, [n.name for n in transposed]
    assert next(a.ints for a in transposed[0].attribute if a.name == "kernel_shape") == [1, 1]
    clip_node = next(n for n in graph.node if n.op_type == "Clip")
    readers = {n.op_type for n in graph.node if clip_node.input[0] in n.input}
    assert readers == {"Clip"}, readers


def test_two_layers_and_an_op_without_rule_before_the_target():
    """Cos lies before B (not between B and the score): no rule needed; A and B each get their own gradient."""
    net = Net(13)
    b = net.op("Conv", net.op("Cos", "A"), net.randn(C, C, 3, 3, scale=(9 * C) ** -0.5), pads=[1, 1, 1, 1])
    model = classifier(net, net.op("Mul", b, net.op("Sigmoid", gap(net, b))))
    with pytest.raises(UnsupportedOpError):
        augment(inspect_model(model), ["A"])
    check_gradients(model, layers=(b,))
    net = Net(13)
    b = net.op("Conv", "A", net.randn(C, C, 3, 3, scale=(9 * C) ** -0.5), pads=[1, 1, 1, 1])
    check_gradients(classifier(net, net.op("Tanh", b)), layers=("A", b))


@pytest.mark.parametrize("op", ["Softsign", "Cos"])
def test_op_without_rule_between_layer_and_score_is_refused(op):
    net = Net(13)
    model = classifier(net, net.op("Sigmoid", net.op(op, "A", name=f"mystery_{op.lower()}")))
    with pytest.raises(UnsupportedOpError) as err:
        augment(inspect_model(model), ["A"])
    message = str(err.value)
    assert op in message and f"mystery_{op.lower()}" in message


def test_negative_class_picks_the_top_class_in_the_graph():
    net = Net(13)
    model = classifier(net, net.op("Relu", "A"))
    augmented = session(augment(inspect_model(model), ["A"]))
    names = [o.name for o in augmented.get_outputs()]
    x = np.random.default_rng(1).normal(size=(3, *IN_SHAPE)).astype(np.float32)
    top = session(model).run(None, {"x": x})[0].argmax(axis=1)
    other = (top + 1) % CLASSES

    def run(classes=None):
        feed = {"x": x} if classes is None else {"x": x, CLASS_INPUT: np.asarray(classes, np.int64)}
        return dict(zip(names, augmented.run(None, feed)))

    mixed = run([-1, other[1], -5])
    np.testing.assert_array_equal(mixed[TARGET_OUTPUT], [top[0], other[1], top[2]])
    np.testing.assert_array_equal(mixed[grad_name("A")], run([top[0], other[1], top[2]])[grad_name("A")])
    default = run()  # the class input may be left unfed: its initializer says -1
    np.testing.assert_array_equal(default[TARGET_OUTPUT], top)
    np.testing.assert_array_equal(default[grad_name("A")], run(top)[grad_name("A")])
    assert not np.allclose(run(other)[grad_name("A")], default[grad_name("A")])  # the class does matter


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha", [1.0, 0.7])
@pytest.mark.parametrize("opset", [7, 13])
def test_class_seed_through_a_gemm_head_is_the_class_row(opset, alpha, trans_b):
    """x -> Conv -> A -> GAP -> Flatten -> Gemm -> logits: dlogit_c/dA = alpha W_c / (h w) (closed form), read by a
    Gather of the class's weights rather than a product of the one-hot seed with all of them."""
    net = Net(opset)
    c, h, w = IN_SHAPE
    weights = net.rng.normal(size=(CLASSES, CHANNELS)).astype(np.float32)
    a = net.op("Conv", "x", net.randn(CHANNELS, c, 3, 3), kernel_shape=[3, 3], pads=[1] * 4)
    flat = net.op("Flatten", net.op("GlobalAveragePool", a), axis=1)
    fc = net.const(weights if trans_b else weights.T)
    logits = net.op("Gemm", flat, fc, net.randn(CLASSES), alpha=alpha, transB=trans_b)
    graph = helper.make_graph(
        net.nodes,
        "gemm_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", CLASSES])],
        net.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    augmented = augment(inspect_model(model), [a])
    assert "Gather" in {n.op_type for n in augmented.graph.node}
    classes = np.int64([4, 0, 9])
    x = np.random.default_rng(2).normal(size=(3, c, h, w)).astype(np.float32)
    names = [o.name for o in augmented.graph.output]
    out = dict(zip(names, session(augmented).run(None, {"x": x, CLASS_INPUT: classes})))
    expected = np.broadcast_to((alpha * weights[classes] / (h * w))[:, :, None, None], out[a].shape)
    np.testing.assert_allclose(out[grad_name(a)], expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("input_gradient", [None, "plain"])
def test_gradient_enters_the_blocked_layout_only_to_go_on(input_gradient):
    """GAP's gradient goes into ONNX Runtime's NCHWc layout by an identity Conv only where the backward goes on
    from it (to the input); a target layer's own gradient would only be reordered back out."""
    net = Net(13)
    b = net.op("Conv", "A", net.randn(16, C, 1, 1), kernel_shape=[1, 1])  # 16 channels: one NCHWc block
    model = classifier(net, net.op("GlobalAveragePool", b))
    graph = augment(inspect_model(model), [b], input_gradient=input_gradient).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    identities = [
        n for n in graph.node if n.op_type == "Conv" and n.input[1] in weights and np.all(weights[n.input[1]] == 1)
    ]
    assert len(identities) == (1 if input_gradient else 0)


@pytest.mark.parametrize("opset", [7, 13, 21])
@pytest.mark.parametrize("label, attrs, widen, a_scale", [pytest.param(*v, id=v[0]) for v in LRN_EVEN_VARIANTS])
def test_lrn_even_size_matches_finite_differences(opset, label, attrs, widen, a_scale):
    """ONNX allows even LRN sizes (an asymmetric window: S^T swaps its extents), ORT's kernels do not
    (size % 2 == 1). The rule's graph runs on ORT with the LRN node written out as the spec defines it."""
    net = Net(opset, a_scale=a_scale)
    model = classifier(net, _lrn(attrs, widen)(net))
    check_gradients(model, runtime=lambda m: session(_lrn_written_out(m)))


@pytest.mark.parametrize("size", [3, 5])
def test_lrn_written_out_matches_onnxruntime(size):
    """The written-out LRN above is ORT's LRN where ORT has one (odd sizes)."""
    net = Net(13)
    model = classifier(net, _lrn(dict(size=size, alpha=2.0, beta=0.6, bias=1.5), 9)(net))
    x = np.random.default_rng(0).normal(size=(3, *IN_SHAPE)).astype(np.float32)
    expected, written_out = (session(m).run(None, {"x": x})[0] for m in (model, _lrn_written_out(model)))
    np.testing.assert_allclose(written_out, expected, rtol=1e-5, atol=1e-6)


# -- selections with exact ties, sizes-driven Resize, refusals ---------------------------------


def _fc_and_outputs(model, layer, x, classes):
    """The classifier's FC matrix [F, classes] and the augmented run's outputs (layer activations, gradient)."""
    fc = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == model.graph.node[-1].input[1])
    augmented = session(augment(inspect_model(model), [layer]))
    names = [o.name for o in augmented.get_outputs()]
    out = dict(zip(names, augmented.run(None, {"x": x, CLASS_INPUT: classes})))
    return fc, out[layer], out[grad_name(layer)]


@pytest.mark.parametrize("opset", [9, 12, 16])
@pytest.mark.parametrize(
    "attrs", [dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), dict(kernel_shape=[2, 3], strides=[2, 1])]
)
def test_max_pool_ties_go_to_the_first_maximum(opset, attrs):
    """B = Max(A, 0.3) is 0.3 on about 60% of its entries: windows with tied maxima. Each window's gradient
    goes to its first maximum in row-major order (the element ORT's MaxPool and its Indices pick)."""
    net = Net(opset)
    b = net.op("Max", "A", net.const(0.3))
    model = classifier(net, net.op("MaxPool", b, **attrs))
    x = np.random.default_rng(0).normal(size=(2, *IN_SHAPE)).astype(np.float32)
    classes = np.array([3, 7])
    fc, act, grad = _fc_and_outputs(model, b, x, classes)
    (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs.get("strides", [1, 1])
    top, left = attrs.get("pads", [0, 0])[:2]
    padded = np.pad(act, [(0, 0), (0, 0), (top, top), (left, left)], constant_values=-np.inf)
    oh, ow = (padded.shape[2] - kh) // sh + 1, (padded.shape[3] - kw) // sw + 1
    d_out = fc[:, classes].T.reshape(2, C, oh, ow)
    expected = np.zeros_like(padded)
    ties = 0
    for n_, c_, i, j in np.ndindex(2, C, oh, ow):
        window = padded[n_, c_, i * sh : i * sh + kh, j * sw : j * sw + kw]
        ties += (window == window.max()).sum() > 1
        r, s = np.unravel_index(np.argmax(window), window.shape)  # the first maximum
        expected[n_, c_, i * sh + r, j * sw + s] += d_out[n_, c_, i, j]
    assert ties > 10
    np.testing.assert_allclose(grad, expected[:, :, top : top + H, left : left + W], rtol=1e-6, atol=1e-6)


def _first_max_gradient(x, g, kernel, strides, begin, dilations):
    """dX of MaxPool by its definition: each window's dY goes to its first maximum in row-major order
    (np.argmax takes the first); entries outside X (padding, ceil_mode's overhang) are never picked."""
    dx = np.zeros(x.shape, np.float64)
    flat_x, flat_dx = x.reshape(*x.shape[:2], -1), dx.reshape(*x.shape[:2], -1)
    rows = np.indices(x.shape[:2])
    for out in np.ndindex(*g.shape[2:]):
        taps = [o * s - b + np.arange(k) * d for o, s, b, k, d in zip(out, strides, begin, kernel, dilations)]
        inside = [t[(t >= 0) & (t < n)] for t, n in zip(taps, x.shape[2:])]
        window = np.ravel_multi_index(np.ix_(*inside), x.shape[2:]).ravel()  # row-major
        first = window[np.argmax(flat_x[:, :, window], axis=-1)]
        np.add.at(flat_dx, (*rows, first), g[(..., *out)])
    return dx


MAX_POOL_TIE_CASES = [  # (label, X's shape, attributes, begin pads as the spec resolves them, first opset)
    ("k3-s2-p1-C16", (2, 16, 9, 10), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), [1, 1], 7),
    ("k3-s2-p1-C5", (3, 5, 8, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), [1, 1], 7),
    ("k2-s2", (2, 16, 8, 6), dict(kernel_shape=[2, 2], strides=[2, 2]), [0, 0], 7),
    ("k3-s1-p1", (2, 3, 6, 7), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), [1, 1], 7),
    ("k3-s3-p1,0,0,1", (2, 4, 10, 9), dict(kernel_shape=[3, 3], strides=[3, 3], pads=[1, 0, 0, 1]), [1, 0], 7),
    ("k2,3-s3,2-ceil", (2, 32, 8, 9), dict(kernel_shape=[2, 3], strides=[3, 2], ceil_mode=1), [0, 0], 10),
    (
        "k3-s2-p1-ceil-dilation2",
        (2, 4, 9, 8),
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, dilations=[2, 2]),
        [1, 1],
        10,
    ),
    ("k2-s1-dilation2,1", (2, 16, 6, 6), dict(kernel_shape=[2, 2], dilations=[2, 1]), [0, 0], 10),
    ("SAME_UPPER-k3-s2", (2, 5, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), [1, 0], 7),
    ("SAME_LOWER-k2-s1", (2, 5, 5, 6), dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER"), [1, 1], 7),
    ("1d-k3-s2-p1", (2, 16, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1]), [1], 7),
    (
        "3d-k2-s2",
        (2, 3, 5, 4, 5),
        dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2], pads=[1, 0, 1, 1, 1, 0]),
        [1, 0, 1],
        7,
    ),
]


def _pool_backward(shape, attrs, opset):
    """A session X, dY -> dX built by onnxcam's reverse pass over one MaxPool node, and Y's shape."""
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("MaxPool", ["X"], ["Y"], **attrs)],
            "pool",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", *shape[1:]])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        ),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    model.ir_version = 8
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    x, y = graph.inputs[0], graph.outputs[0]
    seed = gs.Variable("dY", np.float32, y.shape)
    b = Builder(graph, opset)
    dx = b.named(backward(b, [x], y, seed)[x.name], "dX", np.float32, x.shape)
    graph.inputs, graph.outputs = [x, seed], [dx]
    exported = gs.export_onnx(graph.cleanup().toposort())
    exported.ir_version = 8
    return session(exported), [shape[0], *y.shape[1:]]


@pytest.mark.parametrize(
    "shape, attrs, begin, opset",
    [
        pytest.param(shape, attrs, begin, o, id=f"{label}-opset{o}")
        for label, shape, attrs, begin, first in MAX_POOL_TIE_CASES
        for o in sorted({max(first, 12), 17})  # window masks before 16, MaxPool's Indices from 16
    ],
)
def test_max_pool_backward_is_the_first_maximum_rule(shape, attrs, begin, opset):
    """X in {0, 1, 2, 3, ..} with half its entries 0 (a rounded ReLU output): most windows hold several equal
    maxima, where finite differences cannot decide. dX equals the definition, computed in NumPy."""
    rng = np.random.default_rng(1)
    x = np.maximum(np.round(rng.normal(size=shape) * 1.5), 0).astype(np.float32)
    pool, out_shape = _pool_backward(shape, attrs, opset)
    g = rng.normal(size=out_shape).astype(np.float32)
    n = len(shape) - 2
    strides, dilations = attrs.get("strides", [1] * n), attrs.get("dilations", [1] * n)
    expected = _first_max_gradient(x, g, attrs["kernel_shape"], strides, begin, dilations)
    np.testing.assert_allclose(pool.run(None, {"X": x, "dY": g})[0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "op, opset", [("GlobalMaxPool", 8), ("GlobalMaxPool", 13), ("ReduceMax", 13), ("ReduceMax", 18)]
)
def test_max_reductions_split_ties_evenly(op, opset):
    """B = Min(A, 0.3): most channels reach their maximum 0.3 at many entries; each gets an equal share."""
    net = Net(opset)
    b = net.op("Min", "A", net.const(0.3))
    pooled = net.op(op, b) if op == "GlobalMaxPool" else reduce_any(net, op, b, [2, 3])
    model = classifier(net, pooled)
    x = np.random.default_rng(0).normal(size=(2, *IN_SHAPE)).astype(np.float32)
    classes = np.array([3, 7])
    fc, act, grad = _fc_and_outputs(model, b, x, classes)
    d_out = fc[:, classes].T.reshape(2, C, 1, 1)
    hit = act == act.max(axis=(2, 3), keepdims=True)
    assert (hit.sum(axis=(2, 3)) > 1).any()
    np.testing.assert_allclose(grad, hit * d_out / hit.sum(axis=(2, 3), keepdims=True), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("opset", [11, 13, 16])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_with_sizes_input(opset, mode):
    """Resize by 'sizes' (no axes before opset 18): the sizes name the batch too, so the batch is pinned to 1."""
    net = Net(opset)
    model = classifier(net, resize(net, "A", sizes=[1, C, 11, 9], mode=mode))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    check_gradients(model, batches=(1,))


def _refused(label, opset, body, why):
    return pytest.param(opset, body, why, id=f"{label}-opset{opset}")


@pytest.mark.parametrize(
    "opset, body, why",
    [
        _refused(
            "Resize-tf_crop_and_resize",
            11,
            lambda n: n.op(
                "Resize",
                "A",
                n.const([0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9]),
                n.const([1, 1, 2, 2]),
                name="culprit",
                coordinate_transformation_mode="tf_crop_and_resize",
            ),
            "tf_crop_and_resize",
        ),
        _refused(
            "Resize-keep_aspect_ratio_policy",
            18,
            lambda n: n.op(
                "Resize",
                "A",
                "",
                "",
                n.ints([14, 14]),
                axes=[2, 3],
                keep_aspect_ratio_policy="not_larger",
                name="culprit",
            ),
            "keep_aspect_ratio_policy",
        ),
        _refused(
            "LayerNormalization-Mean-output-used",
            17,
            lambda n: n.op("Add", *n.op("LayerNormalization", "A", n.const(np.ones(W)), outputs=3, name="culprit")[:2]),
            "Mean",
        ),
        _refused(
            "Slice-batch-axis",
            13,
            lambda n: n.op("Slice", "A", n.ints([1]), n.ints([2]), n.ints([0]), name="culprit"),
            "batch axis",
        ),
        _refused(
            "Pad-batch-axis", 13, lambda n: n.op("Pad", "A", n.ints([1, 0, 0, 0, 0, 0, 0, 0]), name="culprit"), "batch"
        ),
        _refused(
            "Pad-reflect-too-wide",
            13,
            lambda n: n.op("Pad", "A", n.ints([0, 0, 0, 6, 0, 0, 0, 0]), mode="reflect", name="culprit"),
            "reflect mode",
        ),
        _refused(
            "ReduceMean-all-axes", 13, lambda n: n.op("Add", "A", n.op("ReduceMean", "A", name="culprit")), "batch axis"
        ),
        _refused(
            "Tile-batch-axis", 13, lambda n: n.op("Tile", "A", n.ints([2, 1, 1, 1]), name="culprit"), "batch axis"
        ),
        _refused(
            "ConvTranspose-SAME-output_padding",
            11,
            lambda n: n.op(
                "ConvTranspose",
                "A",
                n.randn(C, 3, 3, 3),
                kernel_shape=[3, 3],
                strides=[2, 2],
                auto_pad="SAME_UPPER",
                output_padding=[1, 1],
                name="culprit",
            ),
            "output_padding",
        ),
    ],
)
def test_rule_refuses_what_it_cannot_differentiate(opset, body, why):
    net = Net(opset)
    model = classifier(net, body(net))
    with pytest.raises(UnsupportedOpError) as err:
        augment(inspect_model(model), ["A"])
    message = str(err.value)
    assert "(node 'culprit')" in message and why in message and err.value.node == "culprit", message


# -- half-precision heads: rules read float16 forward values, gradients stay float32 ---------------

ALL_CASES = (
    SHAPE_CASES
    + ACTIVATION_CASES
    + ARITHMETIC_CASES
    + LINEAR_CASES
    + POOL_CASES
    + ELEMENTWISE_CASES
    + NORMALIZATION_CASES
    + SELECTION_CASES
    + SLICING_CASES
    + RESAMPLING_CASES
)
HALF_CASES = [
    p
    for p in ALL_CASES
    if p.id
    in {
        "MaxPool-k3-s2-p1-ceil-opset10",
        "MaxPool-k3-s2-p1-ceil-opset16",
        "AveragePool-k3-s1-p1-exclude-pad-opset11",
        "ConvTranspose-3x3-stride2-pad1-outpad1-opset11",
        "LayerNormalization-last-axis-opset17",
        "InstanceNormalization-opset17",
        "Softmax-2d-coercion-axis1-opset11",
        "LogSoftmax-axis1-opset13",
        "Resize-linear-half_pixel-1.5x-opset19",
        "Upsample-nearest-2x-opset9",
        "PRelu-slope-C11-opset9",
        "Pow-(A^2+0.5)^1.5-opset13",
        "Max-A,c-C11-opset13",
        "Slice-step-2-reverse-opset11",
        "Pad-reflect-opset13",
        "Gelu-tanh-opset20",
        "Where-A>0.1,2A,Sigmoid(A)-opset16",
        "ReduceMax-axes2,3-keepdims-0-opset18",
        "Split-1,2,1-middle-unused-opset13",
        "Elu-default-opset7",
        "Mish-opset18",
        "ReduceL2-axes2,3-opset18",
        "GlobalMaxPool-opset13",
        "Expand-GAP(A)-to-1CHW-opset13",
        "Tile-1,2,1,3-opset13",
        "Sum-A,Tanh(A),c-opset13",
        "LRN-size5-alpha2-beta0.5-bias2-opset13",
        "Conv-depthwise-stride2-SAME_UPPER-k3-opset13",
        "Conv-depthwise-x2-stride2-k5-pads1,2,2,1-opset18",
        "Conv-stride3-k5-pad2-opset11",
        "Relu-opset14",
        "Clip-min-max-opset13",
    }
]


class _HalfNet(Net):
    """A Net whose bodies see A rounded to float16 (Cast there and back) wherever they say 'A'."""

    def __init__(self, opset):
        super().__init__(opset)
        self.a16 = super().op("Cast", "A", to=TensorProto.FLOAT16)
        self.a = super().op("Cast", self.a16, to=TensorProto.FLOAT)

    def op(self, op_type, *inputs, **attrs):
        return super().op(op_type, *[self.a if i == "A" else i for i in inputs], **attrs)


def _half_head(model, net):
    """The head in float16: drop the Cast back to float32 after A, store the head's float constants in float16
    (Resize scales and roi stay float32), and cast the logits back to float32 at the end."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    keep32 = {"conv_w", "conv_b"} | {i for n in graph.node if n.op_type in ("Resize", "Upsample") for i in n.input[1:]}
    for t in graph.initializer:
        if t.data_type == TensorProto.FLOAT and t.name not in keep32:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    nodes = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] == net.a)]
    for node in nodes:
        node.input[:] = [net.a16 if i == net.a else i for i in node.input]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
    logits = graph.output[0].name
    nodes[-1].output[0] = logits + "_16"
    nodes.append(helper.make_node("Cast", [logits + "_16"], [logits], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


def _rounded(model):
    """The float32 model with its head's constants rounded to float16: the float32 twin of _half_head."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    keep32 = {"conv_w", "conv_b"} | {
        i for n in model.graph.node if n.op_type in ("Resize", "Upsample") for i in n.input[1:]
    }
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT and t.name not in keep32:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16).astype(np.float32), t.name))
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(
                    numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16).astype(np.float32))
                )
    return model


@pytest.mark.parametrize("opset, body, kinks, a_scale, eps", HALF_CASES)
def test_half_precision_head_gives_float32_gradients(opset, body, kinks, a_scale, eps):
    """The same head in float16 and in float32 (same rounded constants, same float16-rounded A): the float16
    model's G is float32 and within float16 rounding of the float32 model's G."""
    net = _HalfNet(opset)
    model = classifier(net, body(net))
    x = np.random.default_rng(0).normal(size=(3, *IN_SHAPE)).astype(np.float32)
    classes = np.array([1, 4, 8])
    grads = []
    for m in (_half_head(model, net), _rounded(model)):
        augmented_model = augment(inspect_model(m), ["A"])
        onnx.checker.check_model(augmented_model, full_check=True)
        augmented = session(augmented_model)
        names = [o.name for o in augmented.get_outputs()]
        grads.append(dict(zip(names, augmented.run(None, {"x": x, CLASS_INPUT: classes})))[grad_name("A")])
    half, full = grads
    assert half.dtype == np.float32 and np.abs(full).max() > 0
    assert np.linalg.norm(half - full) < 1e-2 * np.linalg.norm(full), np.linalg.norm(half - full) / np.linalg.norm(full)
