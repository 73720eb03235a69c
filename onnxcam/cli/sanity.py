"""`onnxcam sanity MODEL IMAGE --method M`: the model randomization test (Adebayo et al. 2018, onnxcam.sanity).

Prints each step's Spearman rank correlation of the map with the trained model's map and each method's
verdict; writes IMAGE-stem.sanity.png (the curves), .sanity.maps.png (the maps at each step) and .sanity.json.
Deterministic for a given --seed."""

from __future__ import annotations

import sys

import click

import onnxcam
from onnxcam import names
from onnxcam.cli.options import banner, explainer_options, layer_option, method_option, target_option
from onnxcam.cli.report import report_option, write_reports
from onnxcam.errors import OnnxcamError


@click.command("sanity")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("image", type=click.Path(dir_okay=False))
@method_option()
@click.option(
    "--steps",
    default=10,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Cumulative re-initialization steps (the logits layer alone, then blocks down to the input).",
)
@click.option(
    "--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1), help="Seed of the random weights."
)
@target_option(top=False)
@layer_option
@click.option("-o", "--out", type=click.Path(), help="Output folder. Default: next to the image.")
@report_option
@explainer_options
def command(model, image, methods, steps, seed, target, layers, out, report, explainer_args):
    """Check that each method's map depends on the model's weights (model randomization test)."""
    sanity = onnxcam.sanity
    methods = names.method_names(methods)
    proto = onnxcam.model.load_model(model)
    ex = onnxcam.Explainer(proto, layer=list(layers) or None, **explainer_args)
    chosen = names.parse_target(target, ex.info.labels, ex.num_classes)
    if chosen.top != 1:
        raise OnnxcamError(f"sanity explains one class; give a class name or index, not {target}")
    is_tensor = names.is_tensor_file(image)
    x = onnxcam.preprocess.load_tensor(image) if is_tensor else onnxcam.preprocess.load_image(image)
    plan = sanity.cascade(proto, steps)
    banner(model, ex, methods, pictures=not is_tensor)
    click.echo(f"image     {image}")
    kinds = ", ".join(sorted({op for s in plan for op in s.ops}))
    click.echo(
        f"steps     {len(plan)} cumulative re-initializations of {sum(len(s.nodes) for s in plan)} layers "
        f"({kinds}), logits first, seed {seed}"
    )

    def progress(k, n):
        if sys.stderr.isatty():
            click.echo(f"\rstep {k}/{n}", err=True, nl=k == n)

    results = sanity.randomization_test(
        proto,
        x,
        methods,
        steps=steps,
        seed=seed,
        layer=ex.layers,
        target=chosen.index,
        progress=progress,
        **explainer_args,
    )
    label = ex.info.label(results[0].target)
    click.echo(f"class     {results[0].target}  {label}")
    click.echo("")
    width = max(len(r.method) for r in results)
    labels = ["none (the trained model)"] + [("" if k == 1 else "+ ") + s.label for k, s in enumerate(plan, 1)]
    column = min(64, max(len("re-initialized (cumulative)"), *map(len, labels)))
    click.echo(
        f"{'step':>4}  {'re-initialized (cumulative)':{column}}" + "".join(f"  {r.method:>{width}}" for r in results)
    )
    for k, text in enumerate(labels):
        cells = "".join(f"  {sanity.correlation_text(r.correlations[k]):>{width}}" for r in results)
        click.echo(f"{k:>4}  {_short(text, column):{column}}{cells}")
    click.echo("")
    for r in results:
        for k, why in r.errors.items():
            click.echo(f"Warning: {r.method}, step {k}: {why}", err=True)
        click.echo(r.verdict())

    rgb = x if not is_tensor else onnxcam.outputs.blank_picture(results[0].maps[0].shape)
    files = sanity.report_files(results, model, image, rgb, seed, label)
    written = onnxcam.outputs.write(
        {onnxcam.outputs.output_path(image, name, out): data for name, data in files.items()}, [image]
    )
    click.echo("wrote     " + ", ".join(written))
    if report:
        write_reports(written)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]
