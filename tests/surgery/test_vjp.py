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
(worst relative error over all cases: about 2e-4, against a tolerance of 1e-3).
The error is taken relative to max(|fd|, |<G, v>|, ||G|| ||v|| / sqrt(size)), the
last being the size of <G, v> for a random v, so that a random direction that
happens to be nearly orthogonal to G does not turn rounding noise into a failure.
Entries of A closer than 5% of A's RMS to a kink of the op under test (Relu's 0,
Clip's bounds, ...) are left out of v, and eps is capped so that no entry moves
more than half that margin: across a kink a finite difference measures the jump,
not the rule.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam.errors import UnsupportedOpError
from onnxcam.model import inspect_model
from onnxcam.surgery import CLASS_INPUT, TARGET_OUTPUT, augment, cut_head, grad_name
from tinymodels import CHANNELS, CLASSES, IN_SHAPE, Net, classifier, session

EPS = 5e-3  # step, relative to ||A||
KINK_MARGIN = 0.05  # entries this close to a kink (in units of A's RMS) stay put
TOLERANCE = 1e-3  # relative error of the directional derivative
BATCHES = (1, 3)


def finite_difference_errors(head, a, g, classes, kinks, rng):
    """Relative errors of <G, v> against central differences of the head, for three directions v."""
    rms = np.sqrt(np.mean(a.astype(np.float64) ** 2))
    movable = np.ones(a.shape, bool)
    for k in kinks:
        movable &= np.abs(a - k) > KINK_MARGIN * rms
    directions = [rng.normal(size=a.shape) for _ in range(2)] + [g.astype(np.float64)]  # two random, one steepest
    directions = [d * movable for d in directions]
    directions = [d * (np.linalg.norm(a) / np.linalg.norm(d)) for d in directions if np.linalg.norm(d) > 0]
    steps = [min(EPS, 0.5 * KINK_MARGIN * rms / np.abs(d).max()) if kinks else EPS for d in directions]
    points = [(a + s * d).astype(np.float32) for d, s in zip(directions, steps)]
    points += [(a - s * d).astype(np.float32) for d, s in zip(directions, steps)]
    (logits,) = head.run(None, {head.get_inputs()[0].name: np.concatenate(points)})  # one run, batch rows independent
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


def check_gradients(model, layers=("A",), kinks=(), seed=0):
    """augment's dScore/dLayer vs finite differences at batch sizes 1 and 3; returns the worst relative error."""
    info = inspect_model(model)
    assert set(layers) <= {layer.name for layer in info.layers}, [layer.name for layer in info.layers]
    original = session(model)
    augmented = session(augment(info, list(layers)))
    heads = {layer: session(cut_head(info, layer)) for layer in layers}
    names = [o.name for o in augmented.get_outputs()]
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in BATCHES:
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
            errors = finite_difference_errors(heads[layer], a, g, classes, kinks, rng)
            assert max(errors) < TOLERANCE, f"layer {layer}, batch {n}: relative errors {errors}"
            worst = max(worst, *errors)
    return worst


def case(label, opset, body, kinks=(), a_scale=1.0):
    """One parametrized model: `body(net)` maps the tensor 'A' to the feature that feeds the classifier."""
    return pytest.param(opset, body, kinks, a_scale, id=f"{label}-opset{opset}")


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
    *[case("Unsqueeze-4,1-Squeeze--2,1", o, lambda n: squeeze(n, unsqueeze(n, "A", [4, 1]), [-2, 1])) for o in (11, 13)],
    *[case("Unsqueeze-only", o, lambda n: unsqueeze(n, "A", [1])) for o in (9, 13)],
    *[case("Squeeze-only", o, lambda n: squeeze(n, n.op("Reshape", "A", n.ints([0, 1, F])), [1])) for o in (9, 13)],
    case("Transpose-0231", 13, lambda n: n.op("Transpose", "A", perm=[0, 2, 3, 1])),
    case("Transpose-2031-1302", 7, lambda n: n.op("Transpose", n.op("Transpose", "A", perm=[2, 0, 3, 1]), perm=[1, 3, 0, 2])),
    case("Transpose-default-twice", 13, lambda n: n.op("Transpose", n.op("Transpose", "A"))),
]

ACTIVATION_CASES = [
    *[case("Relu", o, lambda n: n.op("Relu", "A"), kinks=[0.0]) for o in (7, 13, 14)],
    *[
        case(f"Clip-{label}", o, lambda n, lo=lo, hi=hi: clip(n, "A", lo, hi), kinks=[k for k in (lo, hi) if k is not None])
        for o in (7, 9, 10, 11, 12, 13)  # attributes up to opset 10, inputs from 11
        for label, lo, hi in [("min", -0.3, None), ("max", None, 0.4), ("min-max", -0.5, 0.6), ("no-bounds", None, None)]
    ],
    case(
        "Clip-bounds-from-Constant-nodes", 13,
        lambda n: n.op("Clip", "A", n.const_node(-0.5), n.const_node(0.6)), kinks=[-0.5, 0.6],
    ),
    *[case("Sigmoid", o, lambda n: n.op("Sigmoid", "A")) for o in (7, 13)],
    *[case("Tanh", o, lambda n: n.op("Tanh", "A")) for o in (7, 13)],
    *[case("LeakyRelu-default", o, lambda n: n.op("LeakyRelu", "A"), kinks=[0.0]) for o in (7, 16)],
    *[case("LeakyRelu-alpha0.3", o, lambda n: n.op("LeakyRelu", "A", alpha=0.3), kinks=[0.0]) for o in (9, 16)],
    case("HardSigmoid-default", 7, lambda n: n.op("HardSigmoid", "A"), kinks=[-2.5, 2.5], a_scale=2.5),
    case(
        "HardSigmoid-0.25,0.4", 13,
        lambda n: n.op("HardSigmoid", "A", alpha=0.25, beta=0.4), kinks=[-1.6, 2.4], a_scale=2.5,
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
    *[case(f"{op}-broadcast-on-axis0", 13, lambda n, op=op: _broadcast_axis0(n, op)) for op in ("Add", "Sub", "Mul", "Div")],
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
    case("MatMul-2d-B-operand", 13, lambda n: n.op("Transpose", n.op("MatMul", n.randn(K, F), n.op("Transpose", flat(n))))),
    case("MatMul-3d-x-2d", 13, lambda n: n.op("MatMul", n.op("Reshape", "A", n.ints([0, C, H * W])), n.randn(H * W, K))),
    case("MatMul-4d-x-2d", 9, lambda n: n.op("MatMul", "A", n.randn(W, K))),
    case("MatMul-4d-x-3d", 13, lambda n: n.op("MatMul", "A", n.randn(C, W, K))),
    case("MatMul-4d-x-1C..", 13, lambda n: n.op("MatMul", "A", n.randn(1, C, W, K))),
    case("MatMul-3d-x-4d-B-operand", 13, lambda n: n.op("MatMul", n.randn(C, K, H), "A")),
    case("MatMul-N1HW-x-3d-broadcast", 13, lambda n: n.op("MatMul", reduce(n, "ReduceMean", "A", [1]), n.randn(C, W, K))),
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
]


WHERE_OPSETS_MATTER = ("SAME", "VALID", "stride2", "group")  # Conv-1 vs Conv-11: auto_pad wording, default pads


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
    *[case("BatchNormalization", o, _batch_norm(None)) for o in (7, 9, 14, 15)],
    case("BatchNormalization-eps0.1", 15, _batch_norm(0.1)),
    case("BatchNormalization-params-from-Constant-nodes", 15, _batch_norm(1e-3, const=Net.const_node)),
    *[case("GlobalAveragePool", o, lambda n: gap(n, "A")) for o in (7, 13)],
    *[
        case(f"{op}-axes{','.join(map(str, axes))}-keepdims-{keep}", o, lambda n, op=op, a=axes, k=keep: reduce(n, op, "A", a, k))
        for op in ("ReduceMean", "ReduceSum")
        for o in (11, 13, 18)  # axes: attribute; ReduceSum input from 13; ReduceMean input from 18
        for axes, keep in (([2, 3], 1), ([2, 3], 0), ([1], 0), ([-1], 1), ([1, 2], 0), ([1, 2, 3], 1), ([3, 1], "default"))
    ],
    *[
        case(f"{op}-axes-from-Constant-node", o, lambda n, op=op: n.op(op, "A", n.const_node([2, 3], np.int64), keepdims=0))
        for op, o in (("ReduceSum", 13), ("ReduceMean", 18))
    ],
    *[
        case(f"{op}-empty-axes-noop", o, lambda n, op=op: n.op(op, "A", n.ints([]), noop_with_empty_axes=1))
        for op, o in (("ReduceSum", 13), ("ReduceMean", 18))
    ],
]


@pytest.mark.parametrize(
    "opset, body, kinks, a_scale", SHAPE_CASES + ACTIVATION_CASES + ARITHMETIC_CASES + LINEAR_CASES + POOL_CASES
)
def test_rule_matches_finite_differences(opset, body, kinks, a_scale):
    net = Net(opset, a_scale=a_scale)
    check_gradients(classifier(net, body(net)), kinks=kinks)


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
