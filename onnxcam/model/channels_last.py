"""Channels-last grids as candidate target layers, through exact NCHW twins.

Swin keeps its stages as [N, H, W, C], and so do ConvNeXt's blocks between their Transposes and Keras models
between their convolutions. Such a tensor t (layout NHWC, see layout.py) gets the twin

    nchw = Transpose(t, to NCHW)

and t's consumers read Transpose(nchw, back to t's layout) instead of t, an exact round trip, so the twin is an
ordinary NCHW candidate (gradients, in-graph maps, export), as pytorch-grad-cam's `reshape_transform` that
permutes an NHWC activation to NCHW does.

A tensor that is only a Transpose or Reshape of another candidate is the same layer and is not listed twice:
neither the output of a Transpose or Reshape, nor a tensor that only Transposes read into NCHW.
"""

from __future__ import annotations

from onnx import helper

from onnxcam.model.graph import REARRANGERS, add_round_trips
from onnxcam.model.layout import IDENTITY, NHWC


def nchw_name(name: str) -> str:
    """The NCHW twin of channels-last tensor `name`."""
    return f"{name}/nchw"


def is_channels_last(p) -> bool:
    """Whether layout p is NHWC (other orders of the axes, such as H and W swapped, are not an image's grid
    that a model would pool or explain)."""
    return p == NHWC


def is_new_layer(name, producer, consumers: list, layouts: dict) -> bool:
    """Whether channels-last tensor `name` is a layer of its own, not a rearrangement of a listed one (see the
    module's docstring)."""
    if producer.op_type in REARRANGERS:
        return False
    return not consumers or not all(
        c.op_type == "Transpose" and layouts.get(c.output[0]) == IDENTITY for c in consumers
    )


def add_nchw_twins(model, layers: dict) -> None:
    """Give each channels-last tensor in `layers` ({name: layout}) its NCHW twin; its consumers read the round
    trip."""
    if not layers:
        return
    infos = {vi.name: vi for vi in [*model.graph.value_info, *model.graph.output]}

    def make(out):
        p = layers[out]
        to_nchw = [p.index(axis) for axis in IDENTITY]
        t = infos[out].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        nodes = [
            helper.make_node("Transpose", [out], [nchw_name(out)], perm=to_nchw),
            helper.make_node("Transpose", [nchw_name(out)], [f"{out}/permuted"], perm=list(p)),
        ]
        made = [
            helper.make_tensor_value_info(nchw_name(out), t.elem_type, [dims[i] for i in to_nchw]),
            helper.make_tensor_value_info(f"{out}/permuted", t.elem_type, dims),
        ]
        return nodes, made

    add_round_trips(model, layers, "permuted", make)
