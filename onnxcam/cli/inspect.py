"""`onnxcam inspect MODEL`: what onnxcam sees in a model, and the layers it can explain."""

from __future__ import annotations

import click

import onnxcam
from onnxcam import names
from onnxcam.cli.options import model_options


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--all", "show_all", is_flag=True, help="List every candidate layer, not only the last ones.")
@model_options
def command(model, show_all, model_args):
    """Show MODEL's image input, logits and candidate target layers."""
    info = onnxcam.model.inspect_model(onnxcam.model.load_model(model), **model_args)
    graph = info.model.graph
    click.echo(f"model       {model}  (opset {info.opset}, IR {info.model.ir_version}, {len(graph.node)} nodes)")
    click.echo(
        f"input       {info.input_name}  {names.format_shape(info.input_shape)}  {info.layout}  {info.input_dtype}"
    )
    for out in graph.output:
        click.echo(f"output      {out.name}  {names.format_shape(_dims(out))}")
    note = "" if info.logits_name == info.output_name else "  (before the output's softmax)"
    click.echo(f"logits      {info.logits_name}  {info.num_classes} classes{note}  ({info.head} head)")
    neck = f"  (detection head reads {', '.join(info.neck)})" if info.neck else ""
    click.echo(f"task        {info.task}  (output {names.format_shape(info.logits_shape)}){neck}")
    unknown = f"not recorded (run uses --preprocess, default {names.DEFAULT_PRESET})"
    click.echo(f"preprocess  {info.preprocess or unknown}")
    click.echo(
        f"resize      {info.resize or names.DEFAULT_RESIZE}  ({info.resize_source or 'default; run takes --resize'})"
    )
    names_in_model = f"{len(info.labels)} names in the model" if info.labels else None
    click.echo(f"labels      {names_in_model or 'none (run takes --labels FILE)'}")
    shown = info.layers if show_all else info.layers[-10:]
    hidden = len(info.layers) - len(shown)
    click.echo(f"\ncandidate layers ({len(info.layers)}{', last 10 shown; --all lists them all' if hidden else ''}):")
    width = max(len(layer.name) for layer in shown)
    click.echo(f"  {'tensor':{width}}  {'op':18}  shape")
    for layer in shown:
        tokens = layer.tokens
        grid = f"  tokens: {tokens.prefix} prefix + {tokens.height}x{tokens.width} grid" if tokens else ""
        click.echo(f"  {layer.name:{width}}  {layer.op:18}  {names.format_shape(layer.shape)}{grid}")
    if info.attention:
        click.echo(f"\nattention   {len(info.attention)} blocks' probabilities (attention-rollout, gradient-rollout)")
    click.echo(f"\nautomatic layer  {info.auto_layer.name}")


def _dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]
