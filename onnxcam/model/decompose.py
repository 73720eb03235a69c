"""Fused attention ops replaced by the standard ONNX ops that compute them, before anything else reads the graph:
the backward rules then cover them, and attention rollout finds their Softmax (the attention probabilities).

- ONNX `Attention` (opset 23): the function body that the ONNX schema itself defines for the node's attributes
  and inputs (onnx.defs), inlined.
- com.microsoft `Attention` and `MultiHeadAttention` (what ONNX Runtime's transformer optimizer fuses a
  self-attention into): softmax(q k^T * scale + bias + mask) v per head, written out here as ONNX Runtime's
  contrib-op documentation defines it, for the forms a vision transformer uses: no past state, no rotary
  embedding, not unidirectional, a mask only as a 2-D [batch, keys] key mask (1 attends, 0 does not); any other
  form is refused with a one-line error naming the node.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper

from onnxcam.errors import ModelError

MS = "com.microsoft"
# com.microsoft's default additive value for masked keys.
_MASK_FILTER = -10000.0


def decompose_attention(model: onnx.ModelProto) -> bool:
    """Replace every fused attention node of `model` (see the module's docstring) in place; whether any was.
    Needs the tensors' ranks (shape inference run before)."""
    graph = model.graph
    if not any(_decomposer(n) for n in graph.node):
        return False
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    types = {vi.name: vi.type for vi in [*graph.value_info, *graph.input, *graph.output]}
    types.update((t.name, helper.make_tensor_type_proto(t.data_type, list(t.dims))) for t in graph.initializer)
    consumed = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    nodes = []
    for k, node in enumerate(graph.node):
        make = _decomposer(node)
        nodes += make(node, node.name or f"{node.op_type}_{k}", types, consumed, opset) if make else [node]
    del graph.node[:]
    graph.node.extend(nodes)
    return True


def _decomposer(node):
    return _DECOMPOSERS.get((node.domain or "", node.op_type))


def _refuse(node, why: str) -> ModelError:
    return ModelError(
        f"{node.domain + '.' if node.domain else ''}{node.op_type} node '{node.name}' {why}: onnxcam explains it "
        "only by rewriting it into standard ONNX ops, which it does for the forms vision transformers use"
    )


def _inline_onnx_attention(node, prefix, types, consumed, opset):
    """The ONNX schema's own function body for this node, its tensors renamed under `prefix`."""
    schema = defs.get_schema(node.op_type, opset, "")
    heads = any(a.name == "q_num_heads" for a in node.attribute)
    in_types = []
    for i, name in enumerate(node.input):
        t = types.get(name) if name else None
        if name and (t is None or not t.tensor_type.HasField("shape")) and i < 3:
            t = helper.make_tensor_type_proto(
                types[name].tensor_type.elem_type if t else 1, [None] * (3 if heads else 4)
            )
        in_types.append((t or onnx.TypeProto()).SerializeToString())
    if any(name for name in node.input[4:6]):
        raise _refuse(node, "has a past key/value cache")
    body = onnx.FunctionProto.FromString(schema.get_context_dependent_function(node.SerializeToString(), in_types))
    rename = dict(zip(body.input, node.input))
    rename.update((inner, outer) for inner, outer in zip(body.output, node.output) if outer)
    nodes = []
    for inner in body.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        copy.name = f"{prefix}/{inner.op_type}_{len(nodes)}"
        copy.input[:] = [rename.get(i, f"{prefix}/{i}") if i else "" for i in inner.input]
        copy.output[:] = [rename.get(o, f"{prefix}/{o}") if o else "" for o in inner.output]
        nodes.append(copy)
    return nodes


class _Writer:
    """Nodes under one prefix: op(...) returns the output's name."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes = prefix, []

    def op(self, op_type, *inputs, out=None, **attrs):
        out = out or f"{self.prefix}/{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{out}/node", **attrs))
        return out

    def const(self, value, dtype=np.int64):
        return self.op("Constant", value=numpy_helper.from_array(np.asarray(value, dtype)))

    def heads(self, x, count, keys_last=False):
        """[B, S, count * h] -> [B, count, S, h] ([B, count, h, S] for keys_last)."""
        split = self.op("Reshape", x, self.const([0, 0, count, -1]))
        return self.op("Transpose", split, perm=[0, 2, 3, 1] if keys_last else [0, 2, 1, 3])

    def attend(self, q, k, v, count, head_size, scale, additive):
        """softmax(q k^T scale + additive terms) v over `count` heads; q, k, v [B, S, count * h]."""
        scores = self.op("MatMul", self.heads(q, count), self.heads(k, count, keys_last=True))
        scores = self.op("Mul", scores, self.const(scale if scale else 1 / math.sqrt(head_size), np.float32))
        for term in additive:
            scores = self.op("Add", scores, term)
        mixed = self.op("MatMul", self.op("Softmax", scores, axis=-1), self.heads(v, count))
        return self.op("Reshape", self.op("Transpose", mixed, perm=[0, 2, 1, 3]), self.const([0, 0, -1]))

    def key_mask(self, mask, filter_value):
        """A [B, keys] mask (1 attends) as an additive [B, 1, 1, keys] term."""
        dropped = self.op("Sub", self.const(1.0, np.float32), self.op("Cast", mask, to=onnx.TensorProto.FLOAT))
        return self.op("Unsqueeze", self.op("Mul", dropped, self.const(filter_value, np.float32)), self.const([1, 2]))


def _ms_common(node, types, consumed, opset, past, extra_outputs):
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if opset < 13:
        raise _refuse(node, f"is in a model of opset {opset} (the rewrite needs 13)")
    if attrs.get("unidirectional") or attrs.get("do_rotary") or attrs.get("past_present_share_buffer"):
        raise _refuse(node, "is unidirectional or rotary")
    if any(i < len(node.input) and node.input[i] for i in past):
        raise _refuse(node, "has a past state")
    if any(o and o in consumed for o in node.output[1 : 1 + extra_outputs]):
        raise _refuse(node, "has its present state read")
    return attrs, float(attrs.get("mask_filter_value", _MASK_FILTER))


def _rank(types, name):
    t = types.get(name)
    return len(t.tensor_type.shape.dim) if t is not None and t.tensor_type.HasField("shape") else None


def _ms_attention(node, prefix, types, consumed, opset):
    """com.microsoft Attention: input [B, S, in] @ weights [in, q+k+v] (+ bias) -> q, k, v; inputs: input,
    weights, bias, mask_index, past, attention_bias (relative_position_bias before ORT 1.18), past length."""
    attrs, filter_value = _ms_common(node, types, consumed, opset, past=(4, 6), extra_outputs=1)
    w = _Writer(prefix)
    args = list(node.input) + [""] * (6 - len(node.input))
    weights = types.get(args[1])
    if weights is None or len(weights.tensor_type.shape.dim) != 2:
        raise _refuse(node, "has weights of an unknown shape")
    total = weights.tensor_type.shape.dim[1].dim_value
    sizes = list(attrs.get("qkv_hidden_sizes") or [total // 3] * 3)
    count = int(attrs["num_heads"])
    qkv = w.op("MatMul", args[0], args[1])
    if args[2]:
        qkv = w.op("Add", qkv, args[2])
    starts = np.cumsum([0] + sizes)
    q, k, v = (w.op("Slice", qkv, w.const([starts[i]]), w.const([starts[i + 1]]), w.const([2])) for i in range(3))
    additive = [args[5]] if args[5] else []
    if args[3]:
        if _rank(types, args[3]) != 2:
            raise _refuse(node, "has a mask_index that is not a 2-D [batch, keys] mask")
        additive.append(w.key_mask(args[3], filter_value))
    w.attend(q, k, v, count, sizes[0] // count, attrs.get("scale"), additive)
    w.nodes[-1].output[0] = node.output[0]
    return w.nodes


def _ms_multi_head_attention(node, prefix, types, consumed, opset):
    """com.microsoft MultiHeadAttention with separate query [B, S, D], key [B, L, D], value [B, L, Dv]; inputs:
    query, key, value, bias [D + D + Dv], key_padding_mask, attention_bias, past_key, past_value."""
    attrs, filter_value = _ms_common(node, types, consumed, opset, past=(6, 7, 8, 9), extra_outputs=3)
    w = _Writer(prefix)
    args = list(node.input) + [""] * (6 - len(node.input))
    if not args[1] or not args[2] or _rank(types, args[1]) != 3 or _rank(types, args[2]) != 3:
        raise _refuse(node, "has packed or per-head key/value inputs (only separate [batch, keys, width] ones)")
    q, k, v = args[:3]
    if args[3]:
        widths = [_width(types, name) for name in (q, k, v)]
        starts = np.cumsum([0] + widths)
        q, k, v = (
            w.op("Add", x, w.op("Slice", args[3], w.const([starts[i]]), w.const([starts[i + 1]]), w.const([0])))
            for i, x in enumerate((q, k, v))
        )
    additive = [args[5]] if args[5] else []
    if args[4]:
        if _rank(types, args[4]) != 2:
            raise _refuse(node, "has a key_padding_mask that is not a 2-D [batch, keys] mask")
        additive.append(w.key_mask(args[4], filter_value))
    count = int(attrs["num_heads"])
    w.attend(q, k, v, count, _width(types, args[0]) // count, attrs.get("scale"), additive)
    w.nodes[-1].output[0] = node.output[0]
    return w.nodes


def _width(types, name) -> int:
    t = types.get(name)
    dims = t.tensor_type.shape.dim if t is not None else []
    if not dims or not dims[-1].dim_value:
        raise ModelError(f"the width of '{name}' is not known")
    return dims[-1].dim_value


_DECOMPOSERS = {
    ("", "Attention"): _inline_onnx_attention,
    (MS, "Attention"): _ms_attention,
    (MS, "MultiHeadAttention"): _ms_multi_head_attention,
}
