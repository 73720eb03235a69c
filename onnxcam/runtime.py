"""ONNX Runtime sessions: pick the execution provider once, build sessions quietly.

The onnxruntime-gpu wheel lists CUDA even where no GPU or CUDA library exists,
and logs loud errors when it then fails to load it. We probe once, with ORT's
logger silenced, and report which provider really runs.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import EncodeError
from onnx import helper, numpy_helper

from onnxcam.errors import ModelError, OnnxcamError
from onnxcam.names import DEVICES, check_choice

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# cuDNN's exhaustive algorithm search (ORT's default) benchmarks every new input shape; onnxcam's runs vary
# in batch (the last chunk of a folder, Score-CAM's and the finite differences' rows), so use its heuristic.
PROVIDER_OPTIONS = {CUDA: {"cudnn_conv_algo_search": "HEURISTIC"}}

ort.set_default_logger_severity(3)  # errors only: ORT's warnings are not the user's business


@functools.cache
def cuda_available() -> bool:
    """Whether a session can really start on CUDA here (not just whether the wheel lists it)."""
    if CUDA not in ort.get_available_providers():
        return False
    probe = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "probe",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
        ir_version=7,
    )
    ort.set_default_logger_severity(4)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=[CUDA, CPU])
        return session.get_providers()[0] == CUDA
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(3)


def providers_for(device: str) -> list:
    """Execution providers for --device auto|cpu|cuda."""
    check_choice("device", device, DEVICES)
    if device == "cpu":
        return [CPU]
    if cuda_available():
        return [CUDA, CPU]
    if device == "cuda":
        raise OnnxcamError(
            f"CUDA was requested but {CUDA} cannot start here (available: {', '.join(ort.get_available_providers())}); "
            "use --device cpu"
        )
    return [CPU]


def session_options(level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> ort.SessionOptions:
    """Options of every onnxcam session. Intra-op threads do not spin-wait for work after a run: an Explainer
    alternates between sessions (the model and its cut-off head, several methods), and one session's spinning
    threads would take the cores from the next (on 2 cores a forward ran 2x slower so); a lone session runs as
    fast either way."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def with_options(providers: list) -> list:
    """Provider names as ORT takes them, with onnxcam's options where it has some."""
    return [(p, PROVIDER_OPTIONS[p]) if isinstance(p, str) and p in PROVIDER_OPTIONS else p for p in providers]


def make_session(
    model: onnx.ModelProto, providers: list, options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """A session with every graph optimization (or the given options); a model ONNX Runtime rejects is a
    one-line ModelError. Models over protobuf's 2 GB limit (what external data is for) are handed over as a
    copy without their large initializers, whose data ORT reads from OrtValues instead (`_within_limit`)."""
    options = options or session_options()
    try:
        data, kept = _within_limit(model, options)
        session = ort.InferenceSession(data, options, providers=with_options(providers))
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load the model: {ort_error_text(exc)}") from None
    session._onnxcam_initializers = kept  # ORT reads those arrays in place: they live as long as the session
    return session


PROTOBUF_LIMIT = (1 << 31) - 1  # bytes: protobuf serializes no larger message
LARGE_INITIALIZER = 1 << 20  # bytes: initializers larger than this leave a model over the limit


def _within_limit(model: onnx.ModelProto, options: ort.SessionOptions) -> tuple:
    """(serialized model, arrays to keep alive). Under the limit, the model itself. Over it, a copy whose large
    initializers are stubs (external data that is never read), their data given to ORT through
    `options.add_external_initializers`: nothing is written to disk, and each tensor is copied once."""
    data = _serialized(model)
    if data is not None:
        return data, []
    hollow = onnx.ModelProto()
    _copy_fields(model, hollow, skip="graph")
    _copy_fields(model.graph, hollow.graph, skip="initializer")
    names, arrays = [], []
    for tensor in model.graph.initializer:
        small = _serialized(tensor)
        if tensor.data_location == onnx.TensorProto.EXTERNAL or (small is not None and len(small) <= LARGE_INITIALIZER):
            hollow.graph.initializer.append(tensor)
            continue
        stub = hollow.graph.initializer.add(
            name=tensor.name, data_type=tensor.data_type, dims=tensor.dims, data_location=onnx.TensorProto.EXTERNAL
        )
        stub.external_data.add(key="location", value="onnxcam-in-memory")
        names.append(tensor.name)
        arrays.append(numpy_helper.to_array(tensor))
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in arrays]
    options.add_external_initializers(names, values)
    return hollow.SerializeToString(), [arrays, values]


def _serialized(message) -> bytes | None:
    """The message's bytes, or None past PROTOBUF_LIMIT (where protobuf itself refuses)."""
    try:
        data = message.SerializeToString()
    except EncodeError:
        return None
    return data if len(data) <= PROTOBUF_LIMIT else None


def _copy_fields(source, target, skip: str) -> None:
    """Copy every set field of a protobuf message but one."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def ort_error_text(exc: Exception) -> str:
    """ONNX Runtime's message on one line, keeping the lines that tell what is wrong ("index: 0 Got: 1
    Expected: 16") and dropping its generic advice, its status-code prefix and its source-file assertions."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(line for line in lines if not line.lower().startswith("please fix")) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(
        r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' Status Message: ",
        r"\1 node '\2': ",
        text,
    )
    return re.sub(r"\S+\.(?:h|cc|cpp):\d+ .*? was false\. ", "", text)[:500]
