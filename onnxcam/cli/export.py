"""`onnxcam export MODEL -o OUT.onnx`: an ONNX model whose outputs include the heatmap (onnxcam.export)."""

from __future__ import annotations

import os

import click

import onnxcam
from onnxcam import names
from onnxcam.cli.options import layer_option, method_option, model_options
from onnxcam.errors import OnnxcamError


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="The explained model to write.")
@method_option(names.EXPORTABLE_METHODS)
@layer_option
@click.option(
    "--class-input",
    type=click.Choice(names.CLASS_INPUT_MODES),
    default="optional",
    show_default=True,
    help="optional: may be left unfed (top-1); required: a plain input, for clients such as "
    "onnxruntime-node that cannot feed an optional one.",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(("onnx", "ort")),
    default="onnx",
    show_default=True,
    help="ort: ONNX Runtime's ORT format (mobile and minimal builds), optimized for the CPU; OUT must end in .ort.",
)
@model_options
def command(model, out, methods, layers, class_input, file_format, model_args):
    """Write MODEL plus the METHOD heatmap as outputs: same inputs (and an optional class), one Run call."""
    methods = names.method_names(methods)
    if len(methods) > 1 or methods[0] not in names.EXPORTABLE_METHODS:
        raise OnnxcamError(
            f"export writes the map of one method among {', '.join(names.EXPORTABLE_METHODS)}; got {', '.join(methods)}"
        )
    if file_format == "ort" and not out.lower().endswith(".ort"):
        raise OnnxcamError(f"an ORT format model's name must end in .ort (ONNX Runtime knows the format by it): {out}")
    info = onnxcam.model.inspect_model(onnxcam.model.load_model(model), **model_args)
    inputs = [model, *_external_files(model)]  # its weights too, under any name; no device node either
    onnxcam.outputs.refuse_inputs([out], inputs, option="-o path")
    onnxcam.writer.check_target(out, inputs)
    layers = list(dict.fromkeys(info.resolve_layer(n).name for n in (layers or [None])))
    exported = onnxcam.export.export(info, layers, methods[0], class_input)
    data = onnxcam.export.ort_format(exported) if file_format == "ort" else exported.SerializeToString()
    onnxcam.outputs.write({out: data}, inputs, option="-o path")
    h, w = info.size
    kind = "ORT format, " if file_format == "ort" else ""
    click.echo(
        f"wrote     {out}  ({os.path.getsize(out) / 1e6:.1f} MB, {kind}opset {info.opset}, IR {exported.ir_version})"
    )
    click.echo(f"method    {methods[0]} at {', '.join(layers)}")
    outputs = [o.name for o in info.model.graph.output]
    click.echo(f"outputs   {', '.join(outputs)}, {names.MAP_OUTPUT} [N, {h}, {w}], {names.TARGET_OUTPUT} [N]")


def _external_files(model: str) -> list:
    """The external data files that the model at `model` names (load_model has checked that they are inside
    its folder)."""
    import onnx
    from onnx import external_data_helper as ext

    proto = onnx.load(model, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(model))
    return sorted(
        {
            os.path.join(folder, ext.ExternalDataInfo(t).location)
            for t in ext._get_all_tensors(proto)
            if ext.uses_external_data(t)
        }
    )
