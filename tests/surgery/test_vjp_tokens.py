"""Backward rules of the ops transformer graphs use, against central finite differences (see test_vjp.py).

'A' [N, 4, 7, 6] is turned into 42 tokens of 4 channels, [N, 42, 4], and the op under test works on them.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_vjp import case, check_gradients

from tinymodels import classifier

TOKENS, WIDTH = 42, 4


def tokens(n):
    """A [N, 4, 7, 6] -> [N, 42, 4], as a patch embedding is flattened."""
    return n.op("Transpose", n.op("Reshape", "A", n.ints([0, WIDTH, TOKENS])), perm=[0, 2, 1])


def attention(n):
    """One softmax attention block on the tokens, pre-norm, with a residual, then the first token."""
    t = tokens(n)
    x = n.op("LayerNormalization", t, n.randn(WIDTH, scale=0.5), n.randn(WIDTH, scale=0.1), axis=-1)
    q, k, v = (n.op("MatMul", x, n.randn(WIDTH, WIDTH, scale=0.7)) for _ in range(3))
    scores = n.op("Mul", n.op("MatMul", q, n.op("Transpose", k, perm=[0, 2, 1])), n.const(0.5))
    mixed = n.op("MatMul", n.op("Softmax", scores, axis=-1), v)
    return n.op("Gather", n.op("Add", t, mixed), n.ints(0), axis=1)


TOKEN_CASES = [
    case("Gather-tokens-list", 13, lambda n: n.op("Gather", tokens(n), n.ints([0, 5, 5, 41]), axis=1)),
    case("Gather-first-token", 13, lambda n: n.op("Gather", tokens(n), n.ints(0), axis=1)),
    case("Gather-negative-index", 11, lambda n: n.op("Gather", tokens(n), n.ints([-1, 3]), axis=1)),
    case("Gather-2d-indices-channels", 13, lambda n: n.op("Gather", tokens(n), n.ints([[0, 1], [3, 3]]), axis=2)),
    case("Gather-from-Constant-node", 13, lambda n: n.op("Gather", tokens(n), n.const_node([2, 7], np.int64), axis=1)),
    case("Gather-opset7", 7, lambda n: n.op("Gather", "A", n.ints([1, 3]), axis=1)),
    case("Einsum-token-linear", 12, lambda n: n.op("Einsum", tokens(n), n.randn(WIDTH, 3), equation="nkc,cd->nkd")),
    case("Einsum-tokens-gram", 13, lambda n: n.op("Einsum", tokens(n), tokens(n), equation="nic,njc->nij")),
    case(
        "Einsum-implicit-output", 12, lambda n: n.op("Einsum", tokens(n), n.randn(WIDTH, 3), equation="akc,cd")
    ),  # -> "adk": [N, 3, 42]
    case("Attention-block", 17, attention),
    case("Attention-opset23-tokens", 23, lambda n: onnx_attention(n, 2, 2)),
    case("Attention-opset23-grouped-heads", 23, lambda n: onnx_attention(n, 2, 1, scale=0.3)),
    case("Attention-opset23-per-head-mask", 23, lambda n: onnx_attention(n, 0, 0, mask=True)),
]


def onnx_attention(n, q_heads, kv_heads, scale=None, mask=False):
    """ONNX's Attention (opset 23) on the tokens: [N, 42, 4] q, k, v with q_heads and kv_heads (grouped-query
    attention where fewer), or with 0 heads as [N, 2, 42, 2] per-head tensors with a float mask [42, 42]."""
    t = tokens(n)
    kv_width = WIDTH // q_heads * kv_heads if q_heads else WIDTH
    q, k, v = (n.op("MatMul", t, n.randn(WIDTH, width, scale=0.7)) for width in (WIDTH, kv_width, kv_width))
    extra = {"scale": scale} if scale else {}
    if q_heads:
        return n.op("Attention", q, k, v, q_num_heads=q_heads, kv_num_heads=kv_heads, **extra)
    q, k, v = (n.op("Transpose", n.op("Reshape", x, n.ints([0, TOKENS, 2, 2])), perm=[0, 2, 1, 3]) for x in (q, k, v))
    return n.op("Attention", q, k, v, n.randn(TOKENS, TOKENS), **extra)


@pytest.mark.parametrize("opset, body, kinks, a_scale, eps", TOKEN_CASES)
def test_rule_matches_finite_differences(opset, body, kinks, a_scale, eps):
    from tinymodels import Net

    net = Net(opset, a_scale=a_scale)
    check_gradients(classifier(net, body(net)), kinks=kinks, eps=eps)


MS = "com.microsoft"


def _declare_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference does not know com.microsoft ops: declare every tensor's shape as ONNX Runtime
    computes it (batch symbolic), so that the walker's rules see them."""
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    names = [o for node in probe.graph.node for o in node.output if o not in {x.name for x in probe.graph.output}]
    probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {"x": np.zeros((1, 3, 7, 6), np.float32)})
    for name, value in zip(names, values):
        model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *value.shape[1:]]))
    return model


def _fused_model(op, extra, outputs=1, **attrs):
    """x -> Conv -> A -> tokens -> op (a com.microsoft fused op) -> Flatten -> MatMul -> logits."""
    from tinymodels import CLASSES, Net

    net = Net(13, seed=4)
    t = tokens(net)
    inputs = [t] + [e(net, t) if callable(e) else (net.randn(*e, scale=0.5) if e else "") for e in extra]
    out = net.op(op, *inputs, outputs=outputs, domain=MS, **attrs)
    first = out if outputs == 1 else out[0]
    feature = first if outputs == 1 else net.op("Add", first, net.op("Tanh", out[-1]))
    flat = net.op("Flatten", feature, axis=1)
    logits = net.op("MatMul", flat, net.randn(TOKENS * WIDTH, CLASSES, scale=0.2))
    stem = helper.make_node("Conv", ["x", "w", "b"], ["A"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    rng = np.random.default_rng(0)
    inits = [
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b"),
    ]
    graph = helper.make_graph(
        [stem] + net.nodes,
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 7, 6])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", CLASSES])],
        inits + net.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return _declare_shapes(model)


FUSED_CASES = [
    pytest.param("Gelu", [], 1, {}, id="Gelu"),
    pytest.param("FastGelu", [], 1, {}, id="FastGelu"),
    pytest.param("FastGelu", [(WIDTH,)], 1, {}, id="FastGelu-bias"),
    pytest.param("BiasGelu", [(WIDTH,)], 1, {}, id="BiasGelu"),
    pytest.param("QuickGelu", [], 1, {"alpha": 1.5}, id="QuickGelu"),
    pytest.param(
        "SkipLayerNormalization",
        [lambda n, t: n.op("Tanh", t), (WIDTH,), (WIDTH,), (WIDTH,)],
        1,
        {"epsilon": 1e-5},
        id="SkipLayerNormalization-skip-on-path-beta-bias",
    ),
    pytest.param(
        "SkipLayerNormalization",
        [(TOKENS, WIDTH), (WIDTH,)],
        4,
        {"epsilon": 1e-5},
        id="SkipLayerNormalization-sum-output-used",
    ),
    # decomposed into standard ops (onnxcam/model/decompose.py); the forward is checked against ORT's kernel
    pytest.param("Attention", [(WIDTH, 3 * WIDTH), (3 * WIDTH,)], 1, {"num_heads": 2}, id="Attention"),
    pytest.param(
        "Attention",
        [(WIDTH, 3 * WIDTH), (3 * WIDTH,), "", "", (1, 2, TOKENS, TOKENS)],
        1,
        {"num_heads": 2, "scale": 0.4},
        id="Attention-attention-bias-scale",
    ),
    pytest.param(
        "MultiHeadAttention",
        [lambda n, t: n.op("Tanh", t), lambda n, t: t, (3 * WIDTH,), "", (1, 2, TOKENS, TOKENS)],
        1,
        {"num_heads": 2},
        id="MultiHeadAttention-bias-attention-bias",
    ),
]


@pytest.mark.parametrize("op, extra, outputs, attrs", FUSED_CASES)
def test_fused_transformer_ops_match_finite_differences(op, extra, outputs, attrs):
    """check_gradients also compares the logits with the fused model's in ONNX Runtime (its own kernels), so a
    decomposed op computes what the fused one does."""
    check_gradients(_fused_model(op, extra, outputs, **attrs), eps=1e-3)  # LayerNorm over 4 entries: curved


def test_gather_on_a_leading_axis_that_is_not_the_batch():
    """torchvision's attention stacks q, k, v on a leading axis of size 3 and Gathers them apart."""
    from tinymodels import Net

    def body(n):
        t = tokens(n)
        qkv = n.op(
            "Transpose",
            n.op("Reshape", n.op("MatMul", t, n.randn(WIDTH, 3 * WIDTH, scale=0.5)), n.ints([0, TOKENS, 3, WIDTH])),
            perm=[2, 0, 1, 3],
        )  # [3, N, T, C]
        q, k = n.op("Gather", qkv, n.ints(0), axis=0), n.op("Gather", qkv, n.ints(1), axis=0)
        return n.op("Mul", q, n.op("Tanh", k))

    net = Net(13)
    check_gradients(classifier(net, body(net)))


def test_global_pooling_input_is_a_candidate_where_the_layout_was_lost():
    """Swin: channels-last windows reshaped into tokens and back, then permuted to NCHW before the pooling. The
    pooled tensor is NCHW by the pooling's definition: a candidate (and the automatic layer), its gradient exact."""
    from onnxcam.model import inspect_model
    from tinymodels import CLASSES, Net

    net = Net(13)
    mixed = net.op("MatMul", tokens(net), net.randn(WIDTH, WIDTH, scale=0.5))  # [N, 42, 4]
    nhwc = net.op("Reshape", mixed, net.ints([0, 7, 6, WIDTH]))
    pooled_input = net.op("Transpose", net.op("Tanh", nhwc), perm=[0, 3, 1, 2])
    model = classifier(net, net.op("GlobalAveragePool", pooled_input), classes=CLASSES)
    info = inspect_model(model)
    assert info.auto_layer.name == pooled_input
    check_gradients(model, layers=(pooled_input,))


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMean's axes: an attribute, then an input
def test_a_channels_last_grid_pooled_over_its_axes_1_and_2_is_a_candidate(opset):
    """timm's Swin: tokens [N, h*w, C] reshaped to [N, h, w, C], a LayerNorm, ReduceMean over (1, 2). Found back
    from the pooling: the normed grid through its NCHW twin (the automatic layer), and the tokens, on their
    7x6 grid without prefix; the Reshape's output, the same values as the tokens, is not listed twice."""
    from onnxcam.model import inspect_model
    from onnxcam.model.channels_last import nchw_name
    from onnxcam.model.tokens import grid_name
    from tinymodels import CLASSES, Net

    net = Net(opset)
    mixed = net.op("MatMul", tokens(net), net.randn(WIDTH, WIDTH, scale=0.5))  # [N, 42, 4]
    nhwc = net.op("Reshape", mixed, net.ints([0, 7, 6, WIDTH]))
    normed = net.op("LayerNormalization", nhwc, net.randn(WIDTH, scale=0.5), net.randn(WIDTH, scale=0.1), axis=-1)
    axes = {"axes": [1, 2]} if opset < 18 else {}
    pooled = net.op("ReduceMean", normed, *([net.ints([1, 2])] if opset >= 18 else []), keepdims=0, **axes)
    model = classifier(net, pooled, classes=CLASSES)
    info = inspect_model(model)
    names = [layer.name for layer in info.layers]
    assert info.auto_layer.name == nchw_name(normed) and info.auto_layer.shape == (None, WIDTH, 7, 6)
    assert grid_name(mixed) in names and nchw_name(nhwc) not in names
    assert info.resolve_layer(mixed).tokens.prefix == 0
    check_gradients(model, layers=(nchw_name(normed), grid_name(mixed)), eps=1e-3)  # LayerNorm over 4: curved


def test_a_fused_attention_form_that_is_not_rewritten_is_refused_on_one_line():
    from onnxcam import ModelError
    from onnxcam.model import inspect_model

    model = _fused_model("Attention", [(WIDTH, 3 * WIDTH), (3 * WIDTH,)], 1, num_heads=2, unidirectional=1)
    with pytest.raises(ModelError, match=r"^com\.microsoft\.Attention node '.*' is unidirectional or rotary: [^\n]*$"):
        inspect_model(model)
