"""`onnxcam run MODEL IMAGE...`: predict, explain, and write overlays (and .npy / .json on request).

onnxcam.outputs explains each batch and builds each image's files and JSON record; this module prints them
and keeps going past bad images, listing every failure at the end."""

from __future__ import annotations

import time

import click

import onnxcam
from onnxcam import names
from onnxcam.cli import options
from onnxcam.cli.options import Progress, banner, one_line
from onnxcam.cli.report import report_option, write_reports
from onnxcam.errors import Interrupted, OnnxcamError


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@options.method_option()
@click.option("--methods", "grid", metavar="A,B,...", help="Several methods: one side-by-side grid image per input.")
@options.layer_option
@options.target_option()
@click.option(
    "--score",
    type=click.Choice(names.SCORES),
    default="logit",
    show_default=True,
    help="Explain the class's logit or its softmax probability.",
)
@click.option(
    "--unit",
    metavar="LAYER:K[:I:J]",
    help="Explain feature map K (or neuron K, I, J) of LAYER instead of a class score.",
)
@click.option(
    "--units",
    "unit_count",
    type=click.IntRange(1, 64),
    help="Also show the N channels that contribute most to the class (CAM paper, section 5).",
)
@click.option("--aug-smooth", is_flag=True, help="Average over horizontal flip x input scaling 0.9/1/1.1.")
@click.option("--eigen-smooth", is_flag=True, help="First principal component of the weighted activations.")
@click.option(
    "--samples",
    default=25,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Noisy copies for smoothgrad and smoothgradcam++.",
)
@click.option(
    "--noise",
    default=0.15,
    show_default=True,
    type=click.FloatRange(0, 10),
    help="Noise std as a fraction of the input's range (smoothgrad, smoothgradcam++).",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1), help="Seed of the noise.")
@click.option(
    "--box-threshold",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Localization boxes and masks: the pixels where the map is >= this fraction of its max.",
)
@click.option(
    "--boxes",
    type=click.Choice(names.BOX_MODES),
    default="largest",
    show_default=True,
    help="Box the largest connected region (CAM), or every region (largest first) with its area, peak and mean.",
)
@click.option(
    "--masks", is_flag=True, help="Also write each map's thresholded pixels as a PNG mask (0/255, image size)."
)
@click.option(
    "--region",
    metavar="MASK",
    type=click.Path(dir_okay=False),
    help="Segmentation: explain the class's scores summed over this mask (a picture, nonzero = inside) "
    "instead of the pixels predicted as the class.",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False),
    help="Class names: text (one a line), a JSON list, or a JSON object {index: name}.",
)
@click.option(
    "--conf", type=click.FloatRange(0, 1), help="Detectors: keep detections scoring above this.  [default: 0.25]"
)
@click.option("--iou", type=click.FloatRange(0, 1), help="Detectors: NMS IoU threshold per class.  [default: 0.45]")
@click.option(
    "--max-det", type=click.IntRange(1, 10000), help="Detectors: at most this many per image.  [default: 300]"
)
@click.option(
    "--explain",
    "detection_target",
    type=click.Choice(names.DETECTION_TARGETS),
    help="Detectors: what each map explains: a detection's score, the sum over its class's detections, or its "
    "box coordinates.  [default: score]",
)
@click.option("-o", "--out", type=click.Path(), help="Output folder. Default: next to each image.")
@click.option("--npy", is_flag=True, help="Also write each heatmap (float32, model input size) as .npy.")
@click.option("--json", "as_json", is_flag=True, help="Also write a JSON summary.")
@click.option(
    "--pictures",
    type=click.Choice((*names.PICTURE_FORMATS, "none")),
    default="png",
    show_default=True,
    help="Format of the overlays, grids and saliency pictures; jpg encodes 10x faster, none draws "
    "nothing and writes only the --npy maps and --json boxes (large folders).",
)
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 100), help="How many predictions to print.")
@click.option(
    "--max-pixels",
    default=names.DEFAULT_MAX_PIXELS,
    show_default=True,
    type=click.IntRange(1),
    help="Refuse images whose header declares more pixels (decompression bombs); raise it for huge images.",
)
@click.option(
    "-b",
    "--batch-size",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Images per run: memory is bounded by one batch; outputs stream to disk batch by batch.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    metavar="[ADDRESS]",
    help="Explain on the Ray cluster at ADDRESS (none: a local one) and write OUT/results.parquet "
    "(needs onnxcam[ray]; IMAGE and --out may be URIs such as s3://bucket/dir).",
)
@click.option(
    "--actors",
    type=click.IntRange(1),
    help="With --ray: actors, one explainer each. Default: one per CPU of the cluster (per GPU with --gpus-per-actor).",
)
@click.option(
    "--gpus-per-actor",
    type=click.FloatRange(0, 64, min_open=True),
    help="With --ray: GPUs per actor; a fraction shares a GPU and caps each actor's CUDA memory.",
)
@options.scorecam_option
@report_option
@options.explainer_options
@options.resize_option
def command(
    model,
    images,
    methods,
    grid,
    layers,
    target,
    labels,
    unit,
    batch_size,
    report,
    explainer_args,
    ray_address,
    actors,
    gpus_per_actor,
    **run_options,
):
    """Explain the model's decision on each IMAGE (a picture, a folder of them, or a .npy input tensor)."""
    run_options["as_json"] |= report  # the report reads the JSON records
    if ray_address is not None:
        return _run_on_ray(**locals())  # the same options, by name
    started = time.perf_counter()
    opts = onnxcam.outputs.RunOptions(unit=names.parse_unit(unit), **run_options)
    paths = onnxcam.outputs.input_paths(images)
    explainer_args["input_size"] = explainer_args["input_size"] or onnxcam.outputs.tensor_shape(paths)
    if opts.pictures == "none" and not (opts.npy or opts.as_json or opts.masks):
        raise click.UsageError("--pictures none leaves nothing to write; add --npy, --json and/or --masks")
    onnxcam.outputs.check_distinct_outputs(paths, opts.out)
    methods = names.method_names([*methods, *([grid] if grid else [])])
    ex = onnxcam.Explainer(model, layer=list(layers) or None, labels=labels, **explainer_args)
    job = onnxcam.outputs.Run(
        ex, model, methods, names.parse_target(target, ex.info.labels, ex.num_classes), opts, paths, started
    )
    if opts.out:
        onnxcam.outputs.make_folder(opts.out)
    banner(model, ex, methods, pictures=not all(names.is_tensor_file(p) for p in paths))
    failures = []
    with Progress(len(paths)) as bar, onnxcam.outputs.Background() as background:
        ex.progress = bar.report
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            try:
                items, failed = job.explain(chunk)
            except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM / SIGHUP (interrupts.Terminated)
                where = (
                    f"at image {start + 1} of {len(paths)} ({chunk[0]})"
                    if len(chunk) == 1
                    else f"in images {start + 1}-{start + len(chunk)} of {len(paths)}"
                )
                how = f"stopped by {stop}" if hasattr(stop, "signum") else "interrupted (Ctrl-C)"
                error = Interrupted(f"{how} {where}; every file already written is complete (none is half-written)")
                error.exit_code = 128 + getattr(stop, "signum", 2)
                raise error from None
            except OnnxcamError:
                if len(paths) == 1:
                    raise
                items, failed = job.explain_each(chunk)
            failures += failed
            background.submit(lambda items=items: _report(job, items))
            bar.update(len(chunk))
        background.wait()
        failures += background.failures
    for image, error in failures:
        if len(paths) == 1:
            raise error
        click.echo(f"\n{image}\n  failed    {one_line(error)}", err=True)
    if report and len(failures) < len(paths):
        write_reports(onnxcam.outputs.output_path(path, "report.html", opts.out) for path in paths)
    if failures:
        summary = "; ".join(f"{one_line(path)}: {one_line(why)}" for path, why in failures)
        raise click.ClickException(f"{len(failures)} of {len(paths)} images failed: {summary}")


def _report(job, items) -> list:
    """Print and write each image's report; returns [(image, error)] for those whose outputs could not be made."""
    failures = []
    for item in items:
        try:
            report = job.report(item)
            _show(report, job.opts.top)
            report.write()
        except OnnxcamError as error:
            failures.append((item.image, error))
            continue
        if report.files:  # a detector that found nothing, without --json, has nothing to write
            click.echo("  wrote     " + ", ".join(report.files))
    return failures


def _show(report, top: int) -> None:
    click.echo(f"\n{report.image}")
    if report.detect:
        return _show_detections(report)
    for rank, p in enumerate(report.predictions):
        head = ("pixels" if "fraction" in p else f"top-{top}") if rank == 0 else ""
        click.echo(f"  {head:9} {p.get('probability', p.get('fraction')):6.1%}  {p['class']:>4}  {p['label']}")
    for e in report.explanations:
        cls, label, method = e["target"]["class"], e["target"]["label"], e["method"]
        if e["flat"]:
            click.echo(
                f"Warning: flat map: {report.image} [{method}, class {cls}]: the map is zero everywhere "
                "(all-zero gradients, or nothing supports this class at this layer); try another "
                "--layer or --method",
                err=True,
            )
        found = (
            "  (flat map: no region)"
            if not e["box"]
            else f"  boxes: {len(e['boxes'])}"
            if "boxes" in e
            else f"  box {e['box']}"
        )
        region = f"  region {e['region']['source']} ({e['region']['fraction']:.1%})" if "region" in e else ""
        click.echo(f"  explain   {cls}  {label}  [{method}]{region}{found}")
        for r in e.get("boxes", []):
            click.echo(f"  {'':9} box {r['box']}  area {r['area']}  peak {r['peak']:.3f}  mean {r['mean']:.3f}")
    if report.units is not None:
        click.echo("  units     " + ", ".join(f"{u['channel']} ({u['contribution']:+.3f})" for u in report.units))


def _show_detections(report) -> None:
    """A detector's image: each detection, then each map with what it explains."""
    if not report.predictions:
        click.echo("  no detection above --conf")
    for d in report.predictions:
        click.echo(f"  detect    {d['score']:6.1%}  {d['class']:>4}  {d['label']}  box {d['box']}")
    for e in report.explanations:
        flat = "  (flat map)" if e["flat"] else ""
        boxes = " ".join(str(d["box"]) for d in e["detections"])
        click.echo(f"  explain   {e['target']['class']}  {e['target']['label']}  {boxes}  [{e['method']}]{flat}")


def _run_on_ray(
    model,
    images,
    methods,
    grid,
    layers,
    target,
    labels,
    unit,
    batch_size,
    report,
    explainer_args,
    ray_address,
    actors,
    gpus_per_actor,
    run_options,
):
    """`run --ray`: the same options, the images explained by onnxcam.ray on a cluster; their records go into one
    Parquet table in --out, their files are written as without --ray. The model and options are checked here,
    before the cluster starts."""
    from onnxcam import ray as on_ray  # needs the ray extra; says so otherwise

    opts = onnxcam.outputs.RunOptions(unit=names.parse_unit(unit), **run_options)
    if not opts.out:
        raise click.UsageError("--ray needs --out: the folder (or URI) for results.parquet and the pictures")
    if report and "://" in opts.out:
        raise click.UsageError("--report with --ray needs a local --out folder (the report reads the JSON records)")
    paths = [
        p
        for item in images
        for p in (on_ray.list_images(item) if "://" in item else onnxcam.outputs.input_paths([item]))
    ]
    onnxcam.outputs.check_distinct_outputs(paths, opts.out)
    methods = names.method_names([*methods, *([grid] if grid else [])])
    ex = onnxcam.Explainer(model, layer=list(layers) or None, labels=labels, **{**explainer_args, "device": "cpu"})
    ex.info.require_task("run --ray", ("classify",))
    settings = on_ray.Settings(
        tuple(methods),
        names.parse_target(target, ex.info.labels, ex.num_classes),
        opts,
        labels=tuple(ex.info.labels) if labels else None,
    )
    click.echo(f"model     {model}")
    click.echo(f"layer     {', '.join(ex.layers)}")
    click.echo(f"method    {', '.join(methods)}")
    click.echo(f"ray       {ray_address or 'a local cluster'}")
    with Progress(len(paths)) as bar:
        table, failures = on_ray.run_folder(
            model,
            paths,
            settings,
            address=ray_address or None,
            actors=actors,
            explainer=dict(explainer_args, layer=list(layers) or None),
            batch_size=batch_size,
            num_gpus=gpus_per_actor or 0,
            progress=bar.update,
        )
    click.echo(f"wrote     {table}  ({len(paths)} images)")
    if report and len(failures) < len(paths):
        write_reports(onnxcam.outputs.output_path(path, "report.html", opts.out) for path in paths)
    for image, error in failures[:20]:
        click.echo(f"\n{image}\n  failed    {one_line(error)}", err=True)
    if failures:
        more = f"; and {len(failures) - 20} more (the table's error column)" if len(failures) > 20 else ""
        summary = "; ".join(f"{one_line(path)}: {one_line(why)}" for path, why in failures[:20])
        raise click.ClickException(f"{len(failures)} of {len(paths)} images failed: {summary}{more}")
