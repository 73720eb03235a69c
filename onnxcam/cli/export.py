"""`onnxcam export MODEL -o OUT.onnx`: an ONNX model whose outputs include the heatmap."""

from __future__ import annotations

import os

import click

from onnxcam.cli.options import model_args, model_options

EXPORT_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")  # onnxcam.export.TERMS


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="The explained model to write.")
@click.option("-m", "--method", type=click.Choice(EXPORT_METHODS), default="gradcam", show_default=True)
@click.option("-l", "--layer", "layers", multiple=True, metavar="NAME",
              help="Target layer; repeat to average several. Default: the last conv-like layer.")
@click.option("--class-input", type=click.Choice(("optional", "required")), default="optional", show_default=True,
              help="optional: may be left unfed (top-1); required: a plain input, for clients such as "
                   "onnxruntime-node that cannot feed an optional one.")
@click.option("--format", "file_format", type=click.Choice(("onnx", "ort")), default="onnx", show_default=True,
              help="ort: ONNX Runtime's ORT format (mobile and minimal builds), optimized for the CPU; OUT must end in .ort.")
@model_options
def command(model, out, method, layers, class_input, file_format, **kwargs):
    """Write MODEL plus the METHOD heatmap as outputs: same inputs (and an optional class), one Run call."""
    from onnxcam.errors import OnnxcamError
    from onnxcam.export import MAP_OUTPUT, export, ort_format
    from onnxcam.model import inspect_model, load_model
    from onnxcam.surgery import TARGET_OUTPUT
    from onnxcam.writer import write_bytes

    if os.path.abspath(out) == os.path.abspath(model):
        raise OnnxcamError(f"refusing to overwrite the input model {model}; choose another -o path")
    if file_format == "ort" and not out.lower().endswith(".ort"):
        raise OnnxcamError(f"an ORT format model's name must end in .ort (ONNX Runtime knows the format by it): {out}")
    info = inspect_model(load_model(model), **model_args(kwargs))
    names = list(dict.fromkeys(info.resolve_layer(n).name for n in (layers or [None])))
    exported = export(info, names, method, class_input)
    write_bytes(out, ort_format(exported) if file_format == "ort" else exported.SerializeToString())
    h, w = info.size
    kind = "ORT format, " if file_format == "ort" else ""
    click.echo(f"wrote     {out}  ({os.path.getsize(out) / 1e6:.1f} MB, {kind}opset {info.opset}, IR {exported.ir_version})")
    click.echo(f"method    {method} at {', '.join(names)}")
    click.echo(f"outputs   {', '.join(o.name for o in info.model.graph.output)}, {MAP_OUTPUT} [N, {h}, {w}], {TARGET_OUTPUT} [N]")
