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
@model_options
def command(model, out, method, layers, class_input, **kwargs):
    """Write MODEL plus the METHOD heatmap as outputs: same inputs (and an optional class), one Run call."""
    from onnxcam.errors import OnnxcamError
    from onnxcam.export import MAP_OUTPUT, export
    from onnxcam.model import inspect_model, load_model
    from onnxcam.surgery import TARGET_OUTPUT
    from onnxcam.writer import check_target, write_bytes

    if os.path.abspath(out) == os.path.abspath(model):
        raise OnnxcamError(f"refusing to overwrite the input model {model}; choose another -o path")
    info = inspect_model(load_model(model), **model_args(kwargs))
    protected = [model] + _external_files(model)
    check_target(out, protected)  # before the work: never the model, its data, a device node
    names = list(dict.fromkeys(info.resolve_layer(n).name for n in (layers or [None])))
    exported = export(info, names, method, class_input)
    write_bytes(out, exported.SerializeToString(), protected)
    h, w = info.size
    click.echo(f"wrote     {out}  ({os.path.getsize(out) / 1e6:.1f} MB, opset {info.opset}, IR {exported.ir_version})")
    click.echo(f"method    {method} at {', '.join(names)}")
    click.echo(f"outputs   {', '.join(o.name for o in info.model.graph.output)}, {MAP_OUTPUT} [N, {h}, {w}], {TARGET_OUTPUT} [N]")


def _external_files(model: str) -> list:
    """The external data files the model at `model` names (load_model has checked they are inside its folder)."""
    import onnx
    from onnx import external_data_helper as ext

    proto = onnx.load(model, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(model))
    return sorted({os.path.join(folder, ext.ExternalDataInfo(t).location)
                   for t in ext._get_all_tensors(proto) if ext.uses_external_data(t)})
