"""Read an ONNX file and check, before anything else uses it, what would otherwise fail far from the cause:
external data outside the model's folder or shorter than declared, tensor data that does not match its
shape, text fields that are not UTF-8, nodes that ONNX itself rejects."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import external_data_helper, helper

from onnxcam.errors import ModelError


def load_model(path: str) -> onnx.ModelProto:
    """Read an ONNX file, refusing non-ONNX files and external data that is outside the model's folder,
    missing, or shorter than its tensor's declared shape. Every external reference is checked (with
    os.stat only) before any external byte is read."""
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"not an ONNX model: {path} ({type(exc).__name__}); is it complete?") from None
    if not model.graph.node or not model.opset_import:
        raise ModelError(f"not an ONNX model: {path} (no graph nodes or opset)")
    bad_text = _invalid_text(model)
    if bad_text:
        raise ModelError(f"not a valid ONNX model: {path} (field {bad_text} is not UTF-8 text); the file is corrupt")
    base = os.path.dirname(os.path.abspath(path))
    tensors = list(external_data_helper._get_all_tensors(model))
    external = [t for t in tensors if external_data_helper.uses_external_data(t)]
    for tensor in external:
        _check_external_data(tensor, base)
    for tensor in external:
        try:
            external_data_helper.load_external_data_for_tensor(tensor, base)
        except Exception as exc:  # OSError, or the onnx package's own checks (ValueError, ValidationError)
            raise ModelError(f"cannot read the external data of tensor '{tensor.name}' in {path}: {exc}") from None
    for tensor in tensors:
        _check_tensor_data(tensor)
    return model


def _invalid_text(message) -> str | None:
    """The first string field (a name, an op type, ...) that does not hold valid UTF-8, as 'Type.field'.

    protobuf hands such fields back as bytes instead of str; they break name lookups and re-export later."""
    for field_, value in message.ListFields():
        repeated = field_.is_repeated if hasattr(field_, "is_repeated") else field_.label == field_.LABEL_REPEATED
        if field_.type == field_.TYPE_STRING:
            if any(isinstance(v, bytes) for v in (value if repeated else [value])):
                return f"{message.DESCRIPTOR.name}.{field_.name}"
        elif field_.type == field_.TYPE_MESSAGE and field_.message_type.name != "TensorProto":
            for item in value if repeated else [value]:
                found = _invalid_text(item)
                if found:
                    return found
        elif field_.type == field_.TYPE_MESSAGE:  # tensors: check the names, not (megabytes of) raw data
            for item in value if repeated else [value]:
                for text in (
                    item.name,
                    item.doc_string,
                    *(e.key for e in item.external_data),
                    *(e.value for e in item.external_data),
                ):
                    if isinstance(text, bytes):
                        return "TensorProto.name"
    return None


def _check_external_location(tensor, base: str) -> str:
    """The real path of the tensor's external data file, refusing one outside the model's folder.

    realpath resolves symlinks (of the file and of every folder on the way), so a link inside the
    folder that points outside is refused too; nothing is opened here."""
    location = _external_info(tensor).get("location", "")
    outside = ModelError(
        f"external data of tensor '{tensor.name}' points outside the model's folder ({location!r}); refusing to read it"
    )
    if not location or "\0" in location or os.path.isabs(location):
        raise outside
    target = os.path.realpath(os.path.join(base, location))
    if not target.startswith(os.path.realpath(base) + os.sep):
        raise outside
    return target


def _external_info(tensor) -> dict:
    return {e.key: e.value for e in tensor.external_data}


def _check_external_data(tensor, base: str) -> None:
    """Refuse, with os.stat only, external data that escapes, is missing, or cannot hold the tensor."""
    target = _check_external_location(tensor, base)
    info = _external_info(tensor)
    location = info["location"]
    if not os.path.exists(target):
        raise ModelError(
            f"external data file '{location}' of tensor '{tensor.name}' is missing; it must sit next to the model in {base}"
        )
    if not os.path.isfile(target):
        raise ModelError(f"external data '{location}' of tensor '{tensor.name}' is not a regular file")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelError(f"external data of tensor '{tensor.name}' has a non-integer offset or length") from None
    size = os.path.getsize(target)
    available = size - offset
    if offset < 0 or (length is not None and length < 0) or available < (length or 0):
        raise ModelError(
            f"external data of tensor '{tensor.name}' declares offset {offset} and length {length} "
            f"but '{location}' holds {size} bytes: the file is truncated or the model is corrupt"
        )
    expected = _expected_bytes(tensor)
    stored = available if length is None else length
    if expected is not None and stored != expected:
        raise ModelError(
            f"tensor '{tensor.name}' declares shape {list(tensor.dims)} ({expected} bytes) but its external data "
            f"in '{location}' holds {stored} bytes; the model or its data file is corrupt"
        )


# TensorProto types whose elements are packed two to a byte.
_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
_COMPLEX = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


def elements(tensor) -> int:
    if any(d < 0 for d in tensor.dims):
        raise ModelError(
            f"tensor '{tensor.name}' declares a negative dimension {list(tensor.dims)}; the model is corrupt"
        )
    return int(np.prod(tensor.dims, dtype=object)) if tensor.dims else 1  # Python ints: no overflow


def _expected_bytes(tensor) -> int | None:
    """Bytes that raw (or external) data of this tensor must hold; None for strings and unknown types."""
    if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # a type this onnx version does not know
        return None
    n = elements(tensor)
    return (n + 1) // 2 if tensor.data_type in _PACKED else n * itemsize


def _check_tensor_data(tensor) -> None:
    """A tensor's data must match its declared shape, or later numpy / ORT calls fail far from the cause."""
    if tensor.data_type == onnx.TensorProto.UNDEFINED or tensor.data_type not in onnx.TensorProto.DataType.values():
        raise ModelError(f"tensor '{tensor.name}' has no valid element type ({tensor.data_type}); the model is corrupt")
    expected = _expected_bytes(tensor)
    if expected is None:
        return
    if tensor.HasField("raw_data"):
        stored, unit = len(tensor.raw_data), "bytes"
    else:
        n = elements(tensor)
        expected = (n + 1) // 2 if tensor.data_type in _PACKED else 2 * n if tensor.data_type in _COMPLEX else n
        fields = (tensor.float_data, tensor.int32_data, tensor.int64_data, tensor.double_data, tensor.uint64_data)
        stored, unit = sum(len(f) for f in fields), "values"
    if stored != expected:
        raise ModelError(
            f"tensor '{tensor.name}' declares shape {list(tensor.dims)} ({expected} {unit}) but holds {stored} {unit}; "
            "the model is corrupt"
        )


def check_nodes(model) -> None:
    """Node by node, what ONNX itself requires: every input defined, a registered op (for the ONNX domains),
    the op's number of inputs and outputs, attribute types. (onnx.checker.check_model would also judge the
    whole graph, and refuse models that ONNX Runtime runs; its per-node check is what catches corruption.)"""
    graph = model.graph
    types = onnx.TensorProto.DataType.values()
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type not in types:
            raise ModelError(
                f"tensor '{vi.name}' declares element type {vi.type.tensor_type.elem_type}, which ONNX does not "
                "define; the model is corrupt"
            )
    defined = (
        {i.name for i in graph.input}
        | {t.name for t in graph.initializer}
        | {t.values.name for t in graph.sparse_initializer}
        | {o for n in graph.node for o in n.output}
    )
    context = onnx.checker.C.CheckerContext()
    context.ir_version = model.ir_version
    context.opset_imports = {o.domain: o.version for o in model.opset_import}
    for node in graph.node:
        missing = [i for i in node.input if i and i not in defined]
        if missing:
            raise ModelError(
                f"node '{node.name}' ({node.op_type}) reads '{missing[0]}', which no node, input or initializer "
                "of the graph defines; the model is corrupt"
            )
        if any(a.HasField("g") or len(a.graphs) for a in node.attribute):
            continue  # subgraphs read outer names: checking them alone would fail; ORT judges them
        try:
            onnx.checker.check_node(node, context)
        except Exception as exc:  # ValidationError
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"node '{node.name}' ({node.op_type}) is invalid: {first}") from None
