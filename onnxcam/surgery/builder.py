"""A tiny node factory over an onnx-graphsurgeon graph, used by the backward rules.

It knows the model's opset, so rules can ask for "ReduceSum over these axes"
and get the attribute form or the input form that this opset wants.

Gradients are float32 even in float16 models: rules read forward tensors
through `fwd`, which casts half-precision values up once, so the backward
pass accumulates in float32 while the forward pass runs as deployed.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper


class NeedsStaticShape(Exception):
    """A backward rule needs a shape (or a constant) that is known only at run time. The walker turns it into
    an UnsupportedOpError that names the tensor; it is never a user-facing error by itself."""

    def __init__(self, tensor: str, shape):
        super().__init__(f"'{tensor}' has shape {shape}, known only at run time")
        self.tensor, self.shape = tensor, shape


class Builder:
    def __init__(self, graph: gs.Graph, opset: int, guided: bool = False, prefix: str = "onnxcam"):
        self.graph = graph
        self.opset = opset
        self.guided = guided  # ReLU passes only positive gradients (guided backpropagation)
        self.dtype = np.dtype(np.float32)  # of gradients and float constants
        self._ids = itertools.count()
        self._prefix = prefix
        self._upcast = {}
        self.quantized = {}  # integer tensor name -> (scale, zero point): `fwd` gives its float value
        self.one_hot = {}  # gradient name -> [N] column of its single 1.0 per row (a class score's seed)

    def fwd(self, t: gs.Tensor) -> gs.Tensor:
        """A forward tensor as the gradient dtype (float16/bfloat16/float64 values are cast once, then reused);
        a quantized one (in `quantized`) as its float value."""
        if t.name in self.quantized:
            return self.dequantized(t, *self.quantized[t.name])
        if t.dtype is None or np.dtype(t.dtype).name not in ("float16", "bfloat16", "float64"):
            return t
        if t.name not in self._upcast:
            if isinstance(t, gs.Constant):
                self._upcast[t.name] = self.const(np.asarray(t.values, dtype=self.dtype))
            else:
                self._upcast[t.name] = self.op("Cast", t, to=helper.np_dtype_to_tensor_dtype(self.dtype))
        return self._upcast[t.name]

    def dequantized(self, t: gs.Tensor, scale: gs.Tensor, zero_point: gs.Tensor | None) -> gs.Tensor:
        """DequantizeLinear(t, scale, zero point), made once per tensor."""
        if t.name not in self._upcast:
            inputs = [t, scale] + ([zero_point] if zero_point is not None else [])
            self._upcast[t.name] = self.op("DequantizeLinear", *inputs, dtype=self.dtype, shape=t.shape)
        return self._upcast[t.name]

    def name(self, hint: str) -> str:
        return f"{self._prefix}/{hint}_{next(self._ids)}"

    def const(self, value, dtype=None) -> gs.Constant:
        """A constant; Python floats and float arrays take the gradient dtype unless told otherwise."""
        arr = np.asarray(value)
        if dtype is None and arr.dtype.kind == "f":
            dtype = self.dtype
        return gs.Constant(self.name("const"), np.ascontiguousarray(arr, dtype=dtype))

    def op(self, op_type: str, *inputs, dtype=None, shape=None, **attrs) -> gs.Variable:
        """Append one single-output node; numbers and arrays among the inputs become constants."""
        tensors = [x if isinstance(x, gs.Tensor) else self.const(x) for x in inputs]
        out = gs.Variable(self.name(op_type.lower()), dtype=dtype, shape=shape)
        self.graph.nodes.append(gs.Node(op_type, self.name(op_type), attrs, tensors, [out]))
        return out

    def named(self, tensor: gs.Tensor, name: str, dtype, shape) -> gs.Variable:
        """`tensor` under a name of onnxcam's choosing (a graph output): an Identity node that makes it."""
        out = gs.Variable(name, dtype=dtype, shape=shape)
        self.graph.nodes.append(gs.Node("Identity", self.name("Identity"), {}, [tensor], [out]))
        return out

    def ops(self, op_type: str, *inputs, outputs: int, **attrs) -> list:
        """Append one node with several outputs; returns them all."""
        tensors = [x if isinstance(x, gs.Tensor) else self.const(x) for x in inputs]
        outs = [gs.Variable(self.name(op_type.lower())) for _ in range(outputs)]
        self.graph.nodes.append(gs.Node(op_type, self.name(op_type), attrs, tensors, outs))
        return outs

    def reduce(self, op_type, x, axes, keepdims=True):
        """Reduce<op> over axes, as an attribute or (ReduceSum from 13, the others from 18) an input."""
        axes = [int(a) for a in axes]
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            return self.op(op_type, x, self.const(axes, np.int64), keepdims=int(keepdims))
        return self.op(op_type, x, axes=axes, keepdims=int(keepdims))

    def reduce_sum(self, x, axes, keepdims=True):
        return self.reduce("ReduceSum", x, axes, keepdims)

    def slice(self, x, starts, ends, axes, steps=None):
        """x[starts:ends:steps] on axes: attributes before opset 10 (no steps there), inputs from 10."""
        starts, ends, axes = ([int(v) for v in vs] for vs in (starts, ends, axes))
        if self.opset < 10:
            if steps is not None and any(s != 1 for s in steps):
                raise ValueError(f"Slice steps need opset 10, model has {self.opset}")
            return self.op("Slice", x, starts=starts, ends=ends, axes=axes)
        inputs = [self.const(v, np.int64) for v in (starts, ends, axes)]
        if steps is not None:
            inputs.append(self.const([int(s) for s in steps], np.int64))
        return self.op("Slice", x, *inputs)

    def pad(self, x, begins, ends, value=0.0):
        """Constant-mode Pad; begins/ends cover every axis of x. Attributes before opset 11, inputs from 11."""
        pads = [int(p) for p in list(begins) + list(ends)]
        if self.opset < 11:
            return self.op("Pad", x, pads=pads, value=float(value))
        return self.op("Pad", x, self.const(pads, np.int64), self.const(value))

    def where(self, condition, a, c):
        """condition ? a : c, elementwise with broadcasting (Where from opset 9, a blend of masks before)."""
        if self.opset >= 9:
            return self.op("Where", condition, a, c)
        chosen = self.op("Cast", condition, to=helper.np_dtype_to_tensor_dtype(self.dtype))
        return self.op("Add", self.op("Mul", a, chosen), self.op("Mul", c, self.op("Sub", self.const(1.0), chosen)))

    def unsqueeze(self, x, axes):
        axes = [int(a) for a in axes]
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.const(axes, np.int64))
        return self.op("Unsqueeze", x, axes=axes)

    def reshape_like(self, g, x):
        return self.op("Reshape", g, self.op("Shape", x))

    def mask(self, g, condition):
        """g where condition holds, else 0 (Mul by the cast mask: valid from opset 7)."""
        return self.op("Mul", g, self.op("Cast", condition, to=helper.np_dtype_to_tensor_dtype(self.dtype)))

    def unbroadcast(self, g, out_shape, x):
        """Sum a gradient of broadcast shape `out_shape` back down to the shape of input x."""
        x_shape = list(x.shape) if x.shape is not None else None
        if x_shape is None or out_shape is None:
            raise NeedsStaticShape(
                x.name if x_shape is None else "broadcast output", x_shape if x_shape is None else out_shape
            )
        lead = len(out_shape) - len(x_shape)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(x_shape) if d == 1 and out_shape[lead + i] != 1]
        if not axes:
            return g
        summed = self.reduce_sum(g, axes, keepdims=True)
        return self.reshape_like(summed, x) if lead else summed
