"""`onnxcam sanity MODEL IMAGE --method M`: the model randomization test (Adebayo et al. 2018).

Re-initializes the weights from the logits down, block by block and cumulatively, recomputes the
map for the same class at each step, and prints its Spearman rank correlation with the trained
model's map. A method passes when the correlation ends below 0.5: its map depends on what the model
learned. Writes IMAGE-stem.sanity.png (the curves), .sanity.maps.png (the maps at each step) and
.sanity.json. Deterministic for a given --seed.
"""

from __future__ import annotations

import os
import sys

import click

from onnxcam.cli.options import explainer_options, format_shape, model_args, model_options



@click.command("sanity")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-m", "--method", "methods", multiple=True, default=("gradcam",), show_default=True,
              help="CAM method; repeat to test several on the same randomized models.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Cumulative re-initialization steps (the logits layer alone, then blocks down to the input).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1), help="Seed of the random weights.")
@click.option("-t", "--target", type=int, metavar="CLASS", help="Class index to explain. Default: the top-1 class.")
@click.option("-l", "--layer", "layers", multiple=True, metavar="NAME",
              help="Target layer (tensor or node name). Default: the last conv-like layer.")
@click.option("-o", "--out", type=click.Path(), help="Output folder. Default: next to the image.")
@explainer_options
@model_options
def command(model, image, methods, steps, seed, target, layers, preset, device, gradients, out, **kwargs):
    """Check that each method's map depends on the model's weights (model randomization test)."""
    import numpy as np

    from onnxcam import render
    from onnxcam.errors import OutputError
    from onnxcam.explainer import method_named
    from onnxcam.model import inspect_model, load_model
    from onnxcam.preprocess import load_image, load_tensor
    from onnxcam.sanity import cascade, randomization_test
    from onnxcam.writer import json_bytes, picture_bytes, write_files

    names = list(dict.fromkeys(method_named(m).name for m in methods))
    proto = load_model(model)
    options = dict(device=device, preprocess_preset=preset, gradients=gradients, **model_args(kwargs))
    x = load_tensor(image) if image.lower().endswith(".npy") else load_image(image)
    plan = cascade(proto, steps)
    total = sum(len(s.nodes) for s in plan)
    info = inspect_model(proto, input_name=options["input_name"], output_name=options["output_name"],
                         input_size=options["input_size"])
    click.echo(f"model     {model}")
    click.echo(f"image     {image}")
    for name in layers or [None]:
        layer = info.resolve_layer(name)
        click.echo(f"layer     {layer.name}  {format_shape(layer.shape)}")
    kinds = ", ".join(sorted({op for s in plan for op in s.ops}))
    click.echo(f"steps     {len(plan)} cumulative re-initializations of {total} layers ({kinds}), "
               f"logits first, seed {seed}")

    def progress(k, n):
        if sys.stderr.isatty():
            click.echo(f"\rstep {k}/{n}", err=True, nl=k == n)

    results = randomization_test(proto, x, names, steps=steps, seed=seed, layer=list(layers) or None,
                                 target=target, progress=progress, **options)
    click.echo(f"class     {results[0].target}  {info.label(results[0].target)}")
    click.echo("")
    width = max(len(r.method) for r in results)
    labels = ["none (the trained model)"] + [("" if k == 1 else "+ ") + s.label for k, s in enumerate(plan, 1)]
    column = min(64, max(len("re-initialized (cumulative)"), *map(len, labels)))
    heading = "".join(f"  {r.method:>{width}}" for r in results)
    click.echo(f"{'step':>4}  {'re-initialized (cumulative)':{column}}{heading}")
    for k, label in enumerate(labels):
        cells = "".join(f"  {_fmt(r.correlations[k]):>{width}}" for r in results)
        click.echo(f"{k:>4}  {_short(label, column):{column}}{cells}")
    click.echo("")
    for r in results:
        for k, why in r.errors.items():
            click.echo(f"Warning: {r.method}, step {k}: {why}", err=True)
        click.echo(r.verdict())

    stem = os.path.splitext(os.path.basename(image))[0]
    folder = out or os.path.dirname(image) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None
    rgb = x if x.dtype == np.uint8 else np.zeros((*results[0].maps[0].shape, 3), np.uint8)
    files = {
        os.path.join(folder, f"{stem}.sanity.png"): picture_bytes(curves_image(results, len(plan))),
        os.path.join(folder, f"{stem}.sanity.maps.png"): picture_bytes(maps_image(results, rgb, render)),
        os.path.join(folder, f"{stem}.sanity.json"): json_bytes({
            "model": model, "image": image, "seed": seed, "class": results[0].target,
            "label": info.label(results[0].target), "pass_below": 0.5,
            "steps": [{"step": k, "nodes": s.nodes, "initializers": s.initializers} for k, s in enumerate(plan, 1)],
            "methods": {r.method: {"spearman": [None if c != c else round(c, 6) for c in r.correlations],
                                   "final": r.final, "passed": r.passed, "verdict": r.verdict(),
                                   "errors": {str(k): v for k, v in r.errors.items()}} for r in results},
        }),
    }
    _check_not_input(files, image)
    write_files(files, [model, image])
    click.echo("wrote     " + ", ".join(files))


def curves_image(results, steps: int):
    import numpy as np

    from onnxcam import chart

    xs = np.arange(steps + 1)
    lowest = min([0.0] + [c for r in results for c in r.correlations if c == c])
    series = [(r.method, xs, r.correlations) for r in results]
    ticks = [(k, str(k)) for k in range(0, steps + 1, max(1, steps // 10))]
    low = min(-0.25, np.floor(lowest * 4) / 4)
    plot = chart.line_chart(series, "model randomization: rank correlation with the trained model's map",
                            "cumulative re-initialization step (0: trained, 1: logits layer, ...)",
                            "Spearman", ylim=(low, 1.0), size=(380, 640), xticks=ticks, markers=True,
                            yticks=int(round((1.0 - low) / 0.25)) + 1)
    return chart.side_by_side([plot, chart.legend([r.method for r in results], plot.shape[0], width=180)])


def maps_image(results, rgb, render):
    """One row per method: the overlay at each step."""
    import cv2
    import numpy as np

    rows = []
    for r in results:
        tiles = [render.overlay(rgb, cv2.resize(m, (rgb.shape[1], rgb.shape[0]))) for m in r.maps]
        labels = [f"{r.method}: trained" if k == 0 else f"step {k}: {_fmt(c)}" for k, c in enumerate(r.correlations)]
        rows.append(render.grid(tiles, labels, height=128))
    width = max(row.shape[1] for row in rows)
    return np.vstack([np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows])


def _check_not_input(files, image):
    from onnxcam.errors import OnnxcamError

    for path in files:
        if os.path.realpath(path) == os.path.realpath(image):
            raise OnnxcamError(f"refusing to overwrite the input {image}; choose another --out folder")


def _fmt(value) -> str:
    return "flat" if value is None or value != value else f"{value:.3f}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
