"""Vision transformers against pytorch-grad-cam 1.5.7 with its `reshape_transform` at blocks[-1].norm1.

Fixtures (tools/make_transformer_fixtures.py): narrow timm models with seeded weights, exported by torch.onnx's
legacy and dynamo exporters, and pytorch-grad-cam's maps on two photos: a ViT with a class token, a DeiT with a
distillation token, a ViT with four register tokens, and a ViT with average pooling and no class token; and
Swin, timm's and torchvision's, with pytorch-grad-cam's maps at its Swin tutorial's layer, the last block's norm2,
and at onnxcam's automatic layer, the final norm (channels-last before the head's global pooling).
"""

import functools
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import ROOT
from onnxcam import Explainer
from onnxcam.export import MAP_OUTPUT, export
from onnxcam.model.tokens import grid_name

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "transformers")
NAMES = ("vit_cls", "deit_distilled", "vit_registers", "vit_avgpool")
METHODS = {
    "GradCAM": "gradcam",
    "HiResCAM": "hirescam",
    "GradCAMPlusPlus": "gradcam++",
    "LayerCAM": "layercam",
    "EigenCAM": "eigencam",
}
NORM1 = "/blocks/blocks.1/norm1/LayerNormalization_output_0"
EXPORTERS = {"legacy": ("", NORM1), "dynamo": ("_dynamo", "layer_norm_2")}  # file suffix, blocks[-1].norm1's tensor


def _load(name, exporter="legacy"):
    suffix = EXPORTERS[exporter][0]
    return os.path.join(FIXTURES, f"{name}{suffix}.onnx"), dict(np.load(os.path.join(FIXTURES, f"{name}.npz")))


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", NAMES)
def test_token_layers_are_found_on_their_grid(name, exporter):
    path, fx = _load(name, exporter)
    ex = Explainer(path, device="cpu")
    auto = ex.info.auto_layer
    assert auto.tokens is not None and auto.tokens.prefix == int(fx["prefix"])
    assert (auto.tokens.height, auto.tokens.width) == (4, 4) and auto.shape[1:] == (32, 4, 4)
    if name != "vit_avgpool":  # class-token pooling: the last block's output reaches the logits only through it
        assert auto.name == grid_name(EXPORTERS[exporter][1])
    plain = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": fx["input"]})[0]
    np.testing.assert_allclose(ex.logits(fx["input"]), plain, rtol=1e-5, atol=1e-5)  # the twin changes nothing


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("maps_in_graph", [True, False], ids=["in-graph", "numpy"])
@pytest.mark.parametrize("name", NAMES)
def test_maps_equal_pytorch_grad_cam(name, maps_in_graph, exporter):
    path, fx = _load(name, exporter)
    ex = Explainer(path, layer=EXPORTERS[exporter][1], device="cpu", maps_in_graph=maps_in_graph)
    for reference, method in METHODS.items():
        res = ex.explain(fx["input"], method, target=fx["targets"])
        assert np.abs(res.maps - fx[reference]).max() <= 1e-3, (name, method)


@pytest.mark.parametrize("name", ["vit_cls", "deit_distilled"])
def test_export_of_a_transformer(name):
    path, fx = _load(name)
    ex = Explainer(path, device="cpu")
    model = export(ex.info, ex.layers, "gradcam")
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    heat = session.run([MAP_OUTPUT], {"input": fx["input"], "onnxcam/class": fx["targets"]})[0]
    assert np.abs(heat - fx["GradCAM"]).max() <= 1e-3


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", NAMES)
def test_rollouts_equal_the_torch_reference(name, exporter):
    """Attention rollout and gradient-weighted rollout, from the Softmax outputs of the ONNX graph, against the
    same formulas in torch on timm's own attention probabilities (tools/make_transformer_fixtures.py)."""
    path, fx = _load(name, exporter)
    ex = Explainer(path, device="cpu")
    assert len(ex.info.attention) == 2  # one Softmax [N, heads, T, T] per block
    for method, key in (("attention-rollout", "rollout"), ("gradient-rollout", "gradient_rollout")):
        res = ex.explain(fx["input"], method, target=fx["targets"])
        want = np.maximum(fx[key], 0)
        assert np.abs(res.raw - want).max() <= 1e-4 * np.abs(want).max(), (name, method)
        np.testing.assert_array_equal(res.targets, fx["targets"])


def test_rollout_needs_a_transformer():
    from conftest import DEMO
    from onnxcam import OnnxcamError

    with pytest.raises(OnnxcamError, match="needs a vision transformer's attention"):
        Explainer(DEMO, device="cpu").explain(np.zeros((1, 3, 224, 224), np.float32), "attention-rollout")


def test_a_model_fused_by_the_transformer_optimizer_gives_the_same_maps(tmp_path):
    """onnxruntime.transformers.optimizer writes com.microsoft SkipLayerNormalization and BiasGelu into the ViT:
    their backward rules give the unoptimized export's maps."""
    from onnxruntime.transformers import optimizer

    path, fx = _load("vit_cls")
    # opt_level 0: the Python fusions alone (the ONNX Runtime pass imports torch, which the tests do not need)
    fused = optimizer.optimize_model(path, model_type="vit", num_heads=2, hidden_size=32, opt_level=0)
    fused.save_model_to_file(str(tmp_path / "fused.onnx"))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node if n.domain == "com.microsoft"}
    assert {"SkipLayerNormalization", "BiasGelu"} <= ops
    plain, optimized = Explainer(path, device="cpu"), Explainer(str(tmp_path / "fused.onnx"), device="cpu")
    assert plain.layers == optimized.layers
    for method in ("gradcam", "hirescam", "gradcam++", "layercam", "gradient-rollout"):
        a = plain.explain(fx["input"], method, target=fx["targets"])
        b = optimized.explain(fx["input"], method, target=fx["targets"])
        assert b.gradients == "analytic" and np.abs(a.maps - b.maps).max() <= 1e-4, method


def test_inspect_shows_token_layers_with_their_grid_and_prefix():
    from click.testing import CliRunner

    from onnxcam.cli import main

    result = CliRunner().invoke(main, ["inspect", _load("deit_distilled")[0]])
    assert result.exit_code == 0, result.output
    assert f"{grid_name(NORM1)}" in result.output and "tokens: 2 prefix + 4x4 grid" in result.output
    assert "attention   2 blocks" in result.output


# name -> exporter -> (file suffix, the last block's norm2 (pytorch-grad-cam's Swin tutorial), the final norm: the
# automatic layer, as its NCHW twin or, for torchvision, the Transpose to NCHW that the head's pooling reads)
SWINS = {
    "swin": {
        "legacy": (
            "",
            "/layers/layers.1/blocks/blocks.1/norm2/LayerNormalization_output_0",
            "/norm/LayerNormalization_output_0/nchw",
        ),
        "dynamo": ("_dynamo", "layer_norm_9", "layer_norm_10/nchw"),
    },
    "swin_torchvision": {
        "legacy": (
            "",
            "/features/features.3/features.3.1/norm2/LayerNormalization_output_0",
            "/permute/Transpose_output_0",
        )
    },
}
SWIN_CASES = [(name, exporter) for name, exporters in SWINS.items() for exporter in exporters]


@functools.cache
def _swin(name, exporter, layer=None, maps_in_graph=False):
    """(Explainer, fixtures) of a Swin fixture; shared by the tests (building one runs the model's shapes)."""
    suffix = SWINS[name][exporter][0]
    path = os.path.join(FIXTURES, f"{name}{suffix}.onnx")
    ex = Explainer(path, layer=layer, device="cpu", maps_in_graph=maps_in_graph)
    return ex, dict(np.load(os.path.join(FIXTURES, f"{name}.npz")))


@pytest.mark.parametrize(("name", "exporter"), SWIN_CASES)
def test_swin_layers_are_channels_last_grids(name, exporter):
    """The automatic layer is the final norm; the tutorial's norm2 is a candidate on the last stage's 8x8 grid
    (timm's: tokens [N, 64, C], torchvision's: channels-last [N, 8, 8, C])."""
    _, norm2, auto = SWINS[name][exporter]
    ex, fx = _swin(name, exporter)
    assert ex.info.auto_layer.name == auto and ex.info.auto_layer.shape == (None, 32, 8, 8)
    layer = ex.info.resolve_layer(norm2)
    assert layer.shape == (None, 32, 8, 8) and (layer.tokens is None) == (name == "swin_torchvision")
    path = os.path.join(FIXTURES, f"{name}{SWINS[name][exporter][0]}.onnx")
    plain = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": fx["input"]})[0]
    np.testing.assert_allclose(ex.logits(fx["input"]), plain, rtol=1e-5, atol=1e-5)  # the twins change nothing


@pytest.mark.parametrize("layer", ["norm2", "auto"])
@pytest.mark.parametrize(("name", "exporter"), SWIN_CASES)
def test_swin_maps_equal_pytorch_grad_cam(name, exporter, layer):
    """At the tutorial's norm2 with the maps computed in the graph, at the automatic layer in NumPy."""
    norm2 = SWINS[name][exporter][1]
    ex, fx = _swin(name, exporter, norm2, True) if layer == "norm2" else _swin(name, exporter)
    key = "" if layer == "norm2" else "/auto"
    for reference, method in METHODS.items():
        res = ex.explain(fx["input"], method, target=fx["targets"])
        assert res.gradients in ("analytic", None), (name, method)
        assert np.abs(res.maps - fx[reference + key]).max() <= 1e-3, (name, layer, method)


def test_export_of_a_swin():
    ex, fx = _swin("swin", "dynamo")
    model = export(ex.info, ex.layers, "gradcam")
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    heat = session.run([MAP_OUTPUT], {"input": fx["input"], "onnxcam/class": fx["targets"]})[0]
    assert np.abs(heat - fx["GradCAM/auto"]).max() <= 1e-3


def test_onnx_attention_ops_give_the_same_maps_and_rollouts():
    """vit_cls exported at opset 23, where timm's fused attention becomes ONNX `Attention` ops: onnxcam inlines
    their schema's function body, so the backward rules cover them and rollout reads their Softmax."""
    path = os.path.join(FIXTURES, "vit_cls_opset23.onnx")
    assert sum(n.op_type == "Attention" for n in onnx.load(path).graph.node) == 2
    fx = dict(np.load(os.path.join(FIXTURES, "vit_cls.npz")))
    ex = Explainer(path, device="cpu")
    assert ex.layers == [grid_name("layer_norm_2")] and len(ex.info.attention) == 2
    for reference, method in METHODS.items():
        res = ex.explain(fx["input"], method, target=fx["targets"])
        assert res.gradients in ("analytic", None) and np.abs(res.maps - fx[reference]).max() <= 1e-3, method
    for method, key in (("attention-rollout", "rollout"), ("gradient-rollout", "gradient_rollout")):
        want = np.maximum(fx[key], 0)
        assert np.abs(ex.explain(fx["input"], method, target=fx["targets"]).raw - want).max() <= 1e-4 * want.max()
