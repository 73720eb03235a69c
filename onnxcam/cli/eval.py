"""`onnxcam eval MODEL IMAGES... --method M ...`: how faithful the maps are, and with ground-truth boxes, how
well they localize the object (onnxcam.evaluate; definitions: onnxcam/metrics.py).

Prints one row per method and writes eval.json (summary, mean curves and per-image values), eval.csv (the
summary) and eval.curves.png (the mean deletion / insertion curves) into --out."""

from __future__ import annotations

import os

import click

import onnxcam
from onnxcam import names
from onnxcam.cli.options import (
    Progress,
    banner,
    explainer_options,
    layer_option,
    method_option,
    one_line,
    scorecam_option,
)
from onnxcam.cli.report import report_option, write_reports


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@method_option()
@click.option(
    "--boxes",
    type=click.Path(exists=True, dir_okay=False),
    help='Ground truth in image pixels: {"image.png": [[x0, y0, x1, y1], ...]} or a COCO-style '
    "file (images, annotations with bbox [x, y, w, h]).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(),
    default=".",
    show_default=True,
    help="Folder for eval.json, eval.csv and eval.curves.png.",
)
@click.option(
    "-b", "--batch-size", default=16, show_default=True, type=click.IntRange(1, 4096), help="Images explained per run."
)
@click.option(
    "--steps",
    default=32,
    show_default=True,
    type=click.IntRange(2, 4096),
    help="Deletion / insertion steps (the curves have steps + 1 points).",
)
@click.option(
    "--blur",
    type=click.FloatRange(0, min_open=True),
    metavar="SIGMA",
    help="Insertion starts from the input blurred with this sigma (input pixels). Default: side / 16.",
)
@click.option(
    "--tolerance",
    default=15.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Pointing game tolerance, in image pixels.",
)
@click.option(
    "--box-threshold",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="CAM localization: the largest region where the map is >= this fraction of its max.",
)
@click.option(
    "--iou",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="CAM localization is correct at this IoU with a true box or more.",
)
@layer_option
@scorecam_option
@report_option
@explainer_options
def command(model, images, methods, boxes, out, batch_size, layers, report, explainer_args, **options):
    """Measure the faithfulness (and with --boxes, the localization) of each method's maps over IMAGES
    (image files, or folders of them)."""
    evaluate = onnxcam.evaluate
    paths = evaluate.pictures(onnxcam.outputs.input_paths(images, tensors=False))
    methods = names.method_names(methods)
    truth = evaluate.read_boxes(boxes, paths) if boxes else {}
    files = [os.path.join(out, name) for name in evaluate.FILES]  # checked before the work, not after it
    onnxcam.outputs.refuse_inputs(files, [model, *([boxes] if boxes else []), *paths])
    ex = onnxcam.Explainer(model, layer=list(layers) or None, **explainer_args)
    banner(model, ex, methods)
    click.echo(f"images    {len(paths)}" + (f" ({len(truth)} with boxes from {boxes})" if boxes else ""))
    evaluation = evaluate.Evaluation(ex, methods, evaluate.EvalOptions(**options))
    with Progress(len(paths) * len(methods), eager=True) as bar:
        for start in range(0, len(paths), batch_size):
            evaluation.add(paths[start : start + batch_size], truth, bar.update)
    if evaluation.failures and len(evaluation.failures) == len(paths):
        raise evaluation.failures[0][1]
    summary = evaluation.summary()
    click.echo("")
    for line in evaluate.table(summary):
        click.echo(line)
    click.echo(
        "  localization: CAM box (>= {box_threshold:g} of max) with IoU >= {iou:g}; pointing: peak within "
        "{tolerance:g} px of a box; energy: map sum inside the boxes".format(**options)
        if truth
        else "  (no --boxes: no localization metrics)"
    )
    click.echo("  avg drop, deletion: lower is better; incr conf, insertion and the localization metrics: higher")
    written = evaluation.write(out, model, boxes, summary)
    click.echo("wrote     " + ", ".join(written))
    if report:
        write_reports(written)
    if evaluation.failures:  # as run does: the rest was evaluated, the failures are listed, exit 1
        listed = "; ".join(f"{one_line(path)}: {one_line(why)}" for path, why in evaluation.failures)
        raise click.ClickException(f"{len(evaluation.failures)} of {len(paths)} images failed: {listed}")
