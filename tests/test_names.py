"""onnxcam.names: the vocabularies the command line declares without importing the library agree with the
library's own tables, and the words users type (methods, targets, units) resolve as documented."""

import inspect

import cv2
import numpy as np
import pytest

from onnxcam import explainer, export, methods, names, preprocess, surgery, writer
from onnxcam.errors import OnnxcamError
from onnxcam.model import inspect_model
from onnxcam.surgery.maps import FORMULAS
from tinymodels import Net, classifier


def test_the_library_agrees_with_names():
    assert names.PRESETS == tuple(preprocess.PRESETS) and names.DEFAULT_PRESET in preprocess.PRESETS
    assert inspect.signature(preprocess.load_image).parameters["max_pixels"].default == names.DEFAULT_MAX_PIXELS
    assert names.METHODS == tuple(methods.METHODS)
    assert inspect.signature(explainer.Explainer.explain).parameters["method"].default == names.DEFAULT_METHOD
    assert names.EXPORTABLE_METHODS == tuple(FORMULAS) == export.METHODS
    assert names.PICTURE_FORMATS == tuple(writer.PICTURE_FORMATS)
    assert (names.CLASS_INPUT, names.TARGET_OUTPUT, names.MAP_OUTPUT) == (
        surgery.CLASS_INPUT,
        surgery.TARGET_OUTPUT,
        export.MAP_OUTPUT,
    )


def test_export_takes_exactly_the_class_input_modes():
    info = inspect_model(classifier(Net(13), "A"))
    for mode in names.CLASS_INPUT_MODES:
        export.export(info, [info.auto_layer.name], "gradcam", mode)
    with pytest.raises(OnnxcamError):
        export.export(info, [info.auto_layer.name], "gradcam", "sometimes")


@pytest.mark.parametrize("suffix", names.IMAGE_SUFFIXES)
def test_every_picture_suffix_a_folder_lists_is_one_the_loader_reads(tmp_path, suffix):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), np.uint8)
    gray = suffix in (".pbm", ".pgm")  # OpenCV writes these formats in gray only
    ok, data = cv2.imencode(suffix, rgb[..., 0] if gray else rgb)
    assert ok, suffix
    path = tmp_path / f"picture{suffix}"
    path.write_bytes(data.tobytes())
    assert preprocess.load_image(str(path)).shape == (12, 10, 3)


def test_method_names_accept_aliases_commas_and_repeats():
    assert names.method_names([]) == ["gradcam"]
    assert names.method_names(["gradcampp", "layercam, gradcam++", "cam"]) == ["gradcam++", "layercam", "cam"]
    with pytest.raises(OnnxcamError, match="unknown method 'magic'; choose one of cam, gradcam"):
        names.method_names(["gradcam,magic"])


def test_target_grammar():
    imagenet_like = ["tench", "goldfish", "great white shark"]
    assert names.parse_target(None, imagenet_like, 3) == names.Target()
    assert names.parse_target("goldfish", imagenet_like, 3) == names.Target(1)
    assert names.parse_target("2", imagenet_like, 3) == names.Target(2)
    assert names.parse_target("index:2", imagenet_like, 3) == names.Target(2)
    assert names.parse_target("2", None, 3) == names.Target(2)
    assert names.parse_target("top-2", imagenet_like, 3) == names.Target(top=2)
    assert names.parse_target("top-50", imagenet_like, 3) == names.Target(top=3)  # at most every class
    for bad in ("unicorn", "top-0", "top-x", "2.0", "²", ""):
        with pytest.raises(OnnxcamError, match="unknown class name"):
            names.parse_target(bad, imagenet_like, 3)
    # class names that are numbers are names first: 90 is the class named 90, not the index 90
    rotations = ["0", "90", "180", "270"]
    assert names.parse_target("90", rotations, 4) == names.Target(1)
    assert names.parse_target("0", rotations, 4) == names.Target(0)
    assert names.parse_target("index:3", rotations, 4) == names.Target(3)
    with pytest.raises(OnnxcamError, match="give a name from its labels, or index:2"):
        names.parse_target("2", rotations, 4)
    assert names.parse_target("top-1", ["top-1", "other"], 2) == names.Target(0)  # a name wins over top-K too


def test_unit_grammar():
    assert names.parse_unit(None) is None
    assert names.parse_unit("/layer:3/out:7") == ("/layer:3/out", 7)
    assert names.parse_unit("conv:7:1:2") == ("conv", 7, 1, 2)
    assert names.parse_unit("conv:7:1") == ("conv:7", 1)  # not I, J: the layer 'conv:7', channel 1
    for bad in ("conv", "conv:x", "conv:-1"):
        with pytest.raises(OnnxcamError, match="--unit takes LAYER:K"):
            names.parse_unit(bad)
