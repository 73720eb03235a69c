"""The gradient engine on every common architecture: the model zoo in models/zoo.

The zoo (built by tools/build_zoo.py, committed as ONNX files, so no torch here) holds
small random-weight classifiers with the op patterns of ResNet, VGG, SqueezeNet,
MobileNetV2/V3, EfficientNet, DenseNet, GoogLeNet, ShuffleNetV2, RegNet, ConvNeXt, a
Keras-style NHWC graph, a Caffe2-era opset-7 graph, a float16 model and a ResNet quantized
twice (QDQ and QOperator formats). For each model, at the automatic layer and at one mid-network layer:
dScore/dA agrees with finite differences of the cut-off head (tests/gradcheck.py), the augmented model keeps the
logits, a batch of 8 gives the maps of the 8 single images, and `onnxcam run` works. The quantized
models' gradients are straight-through estimates (surgery/vjp_quantized.py; see QUANTIZED).

Ops that have no backward rule yet make a test xfail with the op's name (run with -rx to
list them); known onnxcam bugs are strict xfails that name the bug, so fixing one turns its
test into an XPASS failure that asks for the marker to go.
"""

import contextlib
import functools
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from conftest import CHELSEA, COFFEE, ROOT
from gradcheck import check_layer_gradient, session
from onnxcam import Explainer
from onnxcam.cli import main
from onnxcam.errors import UnsupportedOpError
from onnxcam.preprocess import load_image
from onnxcam.surgery import CLASS_INPUT, augment

ZOO = os.path.join(ROOT, "models", "zoo")

# model: (the automatic layer, a mid-network layer). The mid layer sits where the head behind
# it has the model's characteristic ops, and forks where the model has forks.
LAYERS = {
    # block output that feeds both layer3's conv1 and its downsample conv: the two gradients add up
    "resnet": ("/layer4/layer4.0/relu_1/Relu_output_0", "/layer2/layer2.0/relu_1/Relu_output_0"),
    # Conv/ReLU/MaxPool stack, then Flatten -> Gemm -> Relu -> Gemm (no global pooling)
    "vgg": ("/features/features.20/MaxPool_output_0", "/features/features.12/Relu_output_0"),
    # a Fire module's squeeze ReLU: feeds both expand convs, then Concat, MaxPool ceil_mode
    "squeezenet": ("/classifier/classifier.2/Relu_output_0", "/features/features.7/Relu_output_0"),
    # inverted-residual Add; the head has more residual Adds and ReLU6 (Clip)
    "mobilenetv2": ("/features/features.11/features.11.2/Clip_output_0", "/features/features.5/Add_output_0"),
    # depthwise HardSwish output that feeds a squeeze-excitation gate and the Mul it gates
    "mobilenetv3": (
        "/features/features.7/features.7.2/HardSwish_output_0",
        "/features/features.4/block/block.1/block.1.2/HardSwish_output_0",
    ),
    # SiLU (Sigmoid * Mul) output feeding an SE block; the residual branch still needs the image
    "efficientnet": (
        "/features/features.10/features.10.2/Mul_output_0",
        "/features/features.7/block/block.1/block.1.2/Mul_output_0",
    ),
    # a dense block's Concat: feeds the next layer's BN and the next Concat; transitions follow
    "densenet": ("/Relu_output_0", "/features/features.12/Concat_output_0"),
    # a branch conv of inception3b: the head has its ReLU, the Concat, MaxPool ceil_mode and a whole
    # Inception block with its MaxPool 3x3 s1 p1 branch. Not a Concat or ReLU output: their exact zeros
    # make all-zero MaxPool windows, ties where the head has no derivative (differences see the max or
    # min of the window's direction entries, the rule the first element's)
    "googlenet": ("/inception5a/Concat_output_0", "/inception3b/branch4/branch4.1/branch4.1.0/Conv_output_0"),
    # Concat before a channel shuffle (Reshape/Transpose/Reshape) and a channel Split
    "shufflenetv2": ("/conv5/conv5.2/Relu_output_0", "/stage3/stage3.0/Concat_output_0"),
    # block output feeding the next bottleneck (grouped conv) and its identity shortcut
    "regnet": (
        "/trunk_output/trunk_output.3/trunk_output.3.0/activation/Relu_output_0",
        "/trunk_output/trunk_output.2/trunk_output.2.0/activation/Relu_output_0",
    ),
    # stage-1 block output: both its inputs (the stem's LayerNorm2d, the block's Linear/GELU branch) come back
    # from NHWC through Transposes; the head has every later block and the LayerNorm2d downsamplers
    "convnext": ("/features/features.7/features.7.0/Add_output_0", "/features/features.1/features.1.0/Add_output_0"),
    # the head has a ReLU in NHWC between two Transposes, then ReduceMean, MatMul + Add, Softmax
    "keras_nhwc": ("/block3/block3.3/Relu_output_0", "/block1/block1.3/Relu_output_0"),
    # the head has ReLU, LRN, MaxPool, Reshape [0, -1], Gemm, Dropout (a conv output, not a ReLU one:
    # see googlenet)
    "caffe2_opset7": ("pool5", "conv2"),
    "fp16": ("/features/features.11/features.11.2/Clip_output_0", "/features/features.5/Add_output_0"),
    "resnet_qdq": (
        "/layer4/layer4.0/relu_1/Relu_output_0_DequantizeLinear_Output",
        "/layer3/layer3.0/relu_1/Relu_output_0_DequantizeLinear_Output",
    ),
    # uint8 block outputs (ReLU absorbed into QLinearAdd), explained through their float twins
    "resnet_qoperator": (
        "/layer4/layer4.0/Add_output_0_quantized/dequantized",
        "/layer3/layer3.0/Add_output_0_quantized/dequantized",
    ),
}
MODELS = list(LAYERS)

GRAD_RTOL = 1e-3
# float16: G is rounded at every op of the backward pass (unit roundoff 2**-11 = 4.9e-4), and
# the ~30 ops between the mid layer and the score add up to a few 1e-3 (measured: 3.4e-3 at
# most); the differences themselves run on a float32 copy of the head (see gradcheck).
FP16_GRAD_RTOL = 2e-2
MAP_ATOL = 1e-5

# Quantized models: integer tensors (QuantizeLinear outputs, QLinear* ops) lie between every layer and the
# logits; their gradients are the straight-through estimator's, the slope of the float function the integers
# approximate, not the derivative of the quantized head (zero almost everywhere).
QUANTIZED = {"resnet_qdq", "resnet_qoperator"}
QUANTIZED_GRADIENT = (
    "central differences of a quantized head at small steps see its staircase, so no small-step check applies; "
    "test_quantized_gradcam_tracks_the_float_model checks the maps against the float model's, and "
    "tests/test_real_models.py against central differences at steps above the quantization's"
)
# (test, model) -> reason: onnxcam bugs these tests found, strict so a fix is noticed
KNOWN_BUGS = {}


def cases(test, ids):
    return [
        pytest.param(i, id=i, marks=pytest.mark.xfail(reason=KNOWN_BUGS[test, i], strict=True))
        if (test, i) in KNOWN_BUGS
        else pytest.param(i, id=i)
        for i in ids
    ]


def path(name):
    return os.path.join(ZOO, f"{name}.onnx")


@functools.cache
def explainer(name):
    """Analytic gradients only (the 'auto' fallback to finite differences would hide a missing rule)."""
    return Explainer(path(name), device="cpu", gradients="analytic")


@contextlib.contextmanager
def rule_or_xfail():
    try:
        yield
    except UnsupportedOpError as error:
        pytest.xfail(f"no backward rule for {error.op} yet (node '{error.node}')")


def eight_images():
    """Eight different RGB crops (some mirrored) of the two example photographs."""
    photos = [load_image(CHELSEA), load_image(COFFEE)]
    images = []
    for i in range(8):
        photo = photos[i % 2]
        h, w = photo.shape[:2]
        k = i // 2
        crop = photo[k * h // 12 : k * h // 12 + 2 * h // 3, k * w // 10 : k * w // 10 + 2 * w // 3]
        images.append(np.ascontiguousarray(crop[:, ::-1] if k % 2 else crop))
    return images


def test_every_zoo_file_is_tested():
    assert sorted(f[:-5] for f in os.listdir(ZOO) if f.endswith(".onnx")) == sorted(MODELS)


@pytest.mark.parametrize("name", cases("candidates", MODELS))
def test_layers_are_found(name):
    info = explainer(name).info
    auto, mid = LAYERS[name]
    assert info.auto_layer.name == auto
    assert mid in [layer.name for layer in info.layers]
    assert info.num_classes == 10
    assert min(info.size) >= 64 and min(info.auto_layer.shape[2:]) >= 2
    dtypes = {vi.name: vi.type.tensor_type.elem_type for vi in info.model.graph.value_info}
    ints = [layer.name for layer in info.layers if helper.tensor_dtype_to_np_dtype(dtypes[layer.name]).kind != "f"]
    assert not ints, f"integer tensors listed as candidate layers: {ints[:3]}"


@pytest.mark.parametrize("case", cases("gradient", [f"{n}-{w}" for n in MODELS for w in ("auto", "mid")]))
def test_gradient_matches_finite_differences(case):
    """dScore/dA from the appended ONNX nodes vs differences of the cut-off head, 3 directions."""
    name, where = case.rsplit("-", 1)
    if name in QUANTIZED:
        pytest.xfail(QUANTIZED_GRADIENT)
    ex = explainer(name)
    auto, mid = LAYERS[name]
    layer = mid if where == "mid" else auto
    x = ex.prepare([CHELSEA, COFFEE])
    with rule_or_xfail():
        # top-1 for chelsea, class 3 for coffee: the class input and per-row seeds are used as well
        error = check_layer_gradient(ex.info, layer, x, classes=[-1, 3], float32_head=name == "fp16")
    assert error < (FP16_GRAD_RTOL if name == "fp16" else GRAD_RTOL), f"relative error {error:.2e} at {layer}"


@pytest.mark.parametrize("name", cases("logits", MODELS))
def test_augmented_model_keeps_the_outputs(name):
    """The model as the file has it vs the augmented one (with A's gradient): inspect_model's edits (the
    quantized models' float twins) must not move them."""
    info = explainer(name).info
    x = explainer(name).prepare([CHELSEA, COFFEE])
    names = list(dict.fromkeys([info.output_name, info.logits_name]))
    plain_model = onnx.load(path(name))
    if info.logits_name not in [o.name for o in plain_model.graph.output]:  # expose the Softmax input
        plain_model.graph.output.append(helper.make_empty_tensor_value_info(info.logits_name))
    plain = session(plain_model).run(names, {info.input_name: x})
    with rule_or_xfail():
        aug = augment(info, [info.auto_layer.name])
    feed = {info.input_name: x, CLASS_INPUT: np.array([-1, -1])}
    got = session(aug).run(names, feed)
    for expected, actual in zip(plain, got):
        if name == "fp16":
            # exposing A as an output stops ONNX Runtime fusing the node that makes it; in float16 the
            # unfused path rounds once more: allow 2 ulps of the largest logit
            atol = 2 * float(np.spacing(np.abs(expected).max()))
        else:
            atol = 1e-5
        assert actual.dtype == expected.dtype
        assert np.abs(actual.astype(np.float64) - expected).max() <= atol


@pytest.mark.parametrize("name", cases("batch", MODELS))
def test_batch_of_8_equals_single_images(name):
    ex = explainer(name)
    images = eight_images()
    with rule_or_xfail():
        batch = ex.explain(images)
    assert batch.maps.shape == (8, *ex.info.size)
    assert np.ptp(batch.maps, axis=0).max() > 0.1  # eight different inputs, eight different maps
    for i, image in enumerate(images):
        single = ex.explain(image)
        assert single.targets[0] == batch.targets[i]
        assert np.abs(single.maps[0] - batch.maps[i]).max() < MAP_ATOL, f"image {i}"


@pytest.mark.parametrize("name", cases("cli", MODELS))
def test_cli_run_writes_a_map_of_the_input_size(name, tmp_path):
    result = CliRunner().invoke(main, ["run", path(name), CHELSEA, "--npy", "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "gradients finite differences" not in result.output, result.output
    heat = np.load(tmp_path / "chelsea.gradcam.npy")
    assert heat.shape == explainer(name).info.size and heat.dtype == np.float32
    assert 0 <= heat.min() and heat.max() <= 1


@pytest.mark.parametrize("gradients", ["analytic", "fd"])
@pytest.mark.parametrize("name", sorted(QUANTIZED))
def test_quantized_gradcam_tracks_the_float_model(name, gradients):
    """The quantized ResNets quantize the float one (logits correlate 0.995): their Grad-CAM, straight-through
    or from finite differences, should look like the float model's analytic Grad-CAM of the same class. (Not each one's top-1:
    int8 kernels round differently on CPUs with and without AVX512-VNNI/AMX, and the small quantized model
    ties classes on some of them.)"""
    images = [CHELSEA, COFFEE]
    reference = explainer("resnet").explain(images)
    float_maps = reference.maps
    quantized = Explainer(path(name), device="cpu", gradients=gradients).explain(images, target=reference.targets)
    for i in range(len(images)):
        assert quantized.maps[i].std() > 0, f"image {i}: a flat map"
        assert np.corrcoef(quantized.maps[i].ravel(), float_maps[i].ravel())[0, 1] > 0.9, f"image {i}"
