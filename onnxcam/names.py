"""What things are called: the vocabularies the library and the command line share, and the grammar that turns
a user's words (a method name, a class, a unit) into them.

Standard library only, so the command line can declare its options without importing ONNX, ONNX Runtime or
OpenCV (`onnxcam --help` stays instant). The library modules that own each concept keep their own tables
(`methods.METHODS`, `preprocess.PRESETS`, `surgery.maps.FORMULAS`); tests/test_names.py checks that they agree
with these. Plain words (devices, gradient modes, scores, the exported model's tensor names) live only here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from onnxcam.errors import OnnxcamError

DEVICES = ("auto", "cpu", "cuda")  # --device; runtime.providers_for
PRESETS = ("imagenet", "inception", "lite", "caffe", "unit", "raw", "bgr")  # preprocess.PRESETS
DEFAULT_PRESET = "imagenet"  # when neither --preprocess nor the model says
RESIZES = ("stretch", "letterbox")  # preprocess.Fit: how an image is fit to the model's input (--resize)
DEFAULT_RESIZE = "stretch"  # when neither --resize nor the model says (ultralytics detectors: letterbox)
GRADIENT_MODES = ("auto", "analytic", "fd")  # Explainer(gradients=...)
TASKS = ("classify", "detect", "segment")  # what the model's output is (model.inspect chooses; --task overrides)
DETECTION_TARGETS = ("score", "class", "box")  # detection.TARGETS: what a detection's map explains (--explain)
SCORES = ("logit", "probability")  # what the map explains: the class's logit or its softmax probability
BOX_MODES = ("largest", "all")  # run --boxes: postprocess.boxes(every=False / True)
DEFAULT_MAX_PIXELS = 100_000_000  # preprocess.load_image refuses larger images unless told


def check_choice(what: str, value, choices) -> None:
    """The one-line error for a word outside its vocabulary (a table above, or a module's own): it names the word
    and lists the choices."""
    if value not in choices:
        raise OnnxcamError(f"unknown {what} '{value}'; choose one of {', '.join(choices)}")


# methods.METHODS, in its order, and its aliases
METHODS = (
    "cam",
    "gradcam",
    "gradcam++",
    "smoothgradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "gradcam-elementwise",
    "scorecam",
    "ablationcam",
    "eigencam",
    "eigengradcam",
    "attention-rollout",
    "gradient-rollout",
    "guided-backprop",
    "guided-gradcam",
    "smoothgrad",
)
DEFAULT_METHOD = "gradcam"
ALIASES = {"gradcampp": "gradcam++", "smoothgradcampp": "smoothgradcam++"}
EXPORTABLE_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")  # the in-graph formulas
CLASS_INPUT_MODES = ("optional", "required")  # export's class input

# the exported model's extra input and outputs
CLASS_INPUT = "onnxcam/class"
MAP_OUTPUT = "onnxcam/map"
TARGET_OUTPUT = "onnxcam/target"
SEED_INPUT = "onnxcam/seed"  # detection: dScore/doutput, fed at run time (the output's shape)
REGION_INPUT = "onnxcam/region"  # segmentation: float [N, H, W] at the output's resolution, 1 inside; -1 = predicted

# Pictures that preprocess.load_image reads (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM), by file name suffix: the
# files a folder stands for. A .npy file is a ready input tensor.
IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".pbm",
    ".pgm",
    ".ppm",
    ".pnm",
    ".pam",
)
TENSOR_SUFFIX = ".npy"
PICTURE_FORMATS = ("png", "jpg")  # writer.PICTURE_FORMATS: overlays, grids and saliency pictures

_INTEGER = re.compile("-?[0-9]+")


def method_names(values) -> list:
    """Method names as given (each may be a comma-separated list; aliases allowed) -> their canonical names,
    in order, without repeats ([DEFAULT_METHOD] for none); an unknown name is a user error listing the choices."""
    names = []
    for value in values:
        for name in value.split(","):
            name = ALIASES.get(name.strip(), name.strip())
            check_choice("method", name, METHODS)
            names.append(name)
    return list(dict.fromkeys(names)) or [DEFAULT_METHOD]


@dataclass(frozen=True)
class Target:
    """The classes to explain per image: `index`, or (index None) the `top` best-scoring ones."""

    index: int | None = None
    top: int = 1


def parse_target(text: str | None, labels: list | None, num_classes: int) -> Target:
    """`--target`: None (the top-1 class), `top-K` (the K best, at most every class), an exact class name, or a
    class index. A name wins over an index, and when any class name is a number every number is a name (labels
    0, 90, 180, 270: `90` is the class named 90, `1` is refused); `index:N` is always the index N."""
    if text is None:
        return Target()
    labels = labels or []
    if text in labels:
        return Target(labels.index(text))
    top = re.fullmatch(r"top-([0-9]+)", text)
    if top and int(top[1]) >= 1:
        return Target(top=min(int(top[1]), num_classes))
    index = re.fullmatch(r"(index:)?(-?[0-9]+)", text)
    if index is None:
        raise OnnxcamError(f"unknown class name '{text}'; give a class index, an exact name from the labels, or top-K")
    if not index[1] and any(_INTEGER.fullmatch(name) for name in labels):
        raise OnnxcamError(
            f"no class is named '{text}', and this model's class names are numbers: give a name "
            f"from its labels, or index:{text} for the class index {text}"
        )
    if not 0 <= int(index[2]) < num_classes:  # before NumPy sees it: 10**20 overflows int64
        raise OnnxcamError(f"target class {index[2]} is out of range; the model has {num_classes} classes")
    return Target(int(index[2]))


def parse_unit(text: str | None):
    """`--unit`: 'LAYER:K' or 'LAYER:K:I:J' -> (layer, k[, i, j]); the layer name may itself contain colons."""
    if text is None:
        return None
    parts = text.split(":")
    for count in (3, 1):
        if len(parts) > count and all(re.fullmatch("[0-9]+", p) for p in parts[-count:]):
            return (":".join(parts[:-count]), *map(int, parts[-count:]))
    raise OnnxcamError(f"--unit takes LAYER:K or LAYER:K:I:J, got '{text}'")


def is_tensor_file(path: str) -> bool:
    """Whether an input path is a ready input tensor (.npy) rather than a picture."""
    return os.path.splitext(path)[1].lower() == TENSOR_SUFFIX


def format_shape(dims) -> str:
    """[N, 1280, 7, 7]: a symbolic (None) dimension shows as N."""
    return "[" + ", ".join("N" if d is None else str(d) for d in dims) + "]"
