"""`onnxcam run MODEL IMAGE...`: predict, explain, and write overlays (and .npy / .json on request)."""

from __future__ import annotations

import os
import time

import click

from onnxcam.cli.options import DEVICES, format_shape, model_args, model_options

PRESET_NAMES = ("imagenet", "inception", "lite", "caffe", "unit", "raw")  # onnxcam.preprocess.PRESETS


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-m", "--method", default="gradcam", show_default=True, help="CAM method ('onnxcam methods' lists them).")
@click.option("-l", "--layer", "layers", multiple=True, metavar="NAME",
              help="Target layer (tensor or node name); repeat to average several. Default: the last conv-like layer.")
@click.option("-t", "--target", metavar="CLASS", help="Class to explain: an index or a class name. Default: the top-1 class.")
@click.option("--preprocess", "preset", type=click.Choice(PRESET_NAMES),
              help="Preprocessing preset. Default: the model's own (metadata), else imagenet.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="Class names, one per line.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--gradients", type=click.Choice(("auto", "analytic", "fd")), default="auto", show_default=True,
              help="analytic: backward rules; fd: central differences of the head (channel-weight methods); "
                   "auto: analytic, else fd where a head op has no rule.")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Output folder. Default: next to each image.")
@click.option("--npy", is_flag=True, help="Also write the heatmap (float32, model input size) as .npy.")
@click.option("--json", "as_json", is_flag=True, help="Also write a JSON summary.")
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 100), help="How many predictions to print.")
@model_options
def command(model, images, method, layers, target, preset, labels, device, gradients, out, npy, as_json, top,
            **kwargs):
    """Explain the model's decision on each IMAGE (a picture, or a .npy input tensor)."""
    from onnxcam import Explainer
    from onnxcam.errors import OnnxcamError

    t0 = time.perf_counter()
    ex = Explainer(model, layer=list(layers) or None, device=device, preprocess_preset=preset, gradients=gradients,
                   **model_args(kwargs))
    if labels:
        with open(labels, encoding="utf-8") as f:
            ex.info.labels = [line.rstrip("\n") for line in f]
    setup = time.perf_counter() - t0
    target_index = _target_index(target, ex)
    if out:
        os.makedirs(out, exist_ok=True)
    click.echo(f"model     {model}")
    click.echo(f"provider  {ex.provider}")
    for name in ex.layers:
        layer = next(lay for lay in ex.info.layers if lay.name == name)
        click.echo(f"layer     {name}  {format_shape(layer.shape)}")
    click.echo(f"method    {method}")
    source = ex.gradient_source(method)
    if source:
        why = f" ({ex.missing_rule})" if ex.missing_rule and source != "analytic" else ""
        click.echo(f"gradients {source}{why}")
    failures = []
    for image in images:
        try:
            _explain_one(ex, model, image, method, target_index, out, npy, as_json, top, setup)
        except OnnxcamError as error:
            if len(images) == 1:
                raise
            failures.append((image, str(error)))
            click.echo(f"\n{image}\n  failed    {error}", err=True)
    if failures:
        summary = "; ".join(f"{path}: {why}" for path, why in failures)
        raise click.ClickException(f"{len(failures)} of {len(images)} images failed: {summary}")


def _target_index(target, ex):
    from onnxcam.errors import OnnxcamError

    if target is None:
        return None
    if target.lstrip("-").isdigit():
        return int(target)
    names = ex.info.labels or []
    if target not in names:
        raise OnnxcamError(f"unknown class name '{target}'; give a class index or an exact name from the labels")
    return names.index(target)


def _explain_one(ex, model, image, method, target, out, npy, as_json, top, setup):
    import numpy as np

    from onnxcam import postprocess
    from onnxcam.preprocess import load_image, load_tensor
    from onnxcam.writer import write_json, write_npy, write_png

    t0 = time.perf_counter()
    paths = _output_paths(image, method, out, npy, as_json)
    if image.lower().endswith(".npy"):
        x, rgb = load_tensor(image), None
    else:
        x = rgb = load_image(image)
    res = ex.explain(x, method=method, target=target)
    probs = _softmax(res.scores[0])
    order = np.argsort(-probs)[:top]
    cls = int(res.targets[0])
    predictions = [{"class": int(c), "label": ex.info.label(int(c)), "probability": float(probs[c]),
                    "logit": float(res.scores[0, c])} for c in order]
    click.echo(f"\n{image}")
    for rank, p in enumerate(predictions):
        head = f"top-{top}" if rank == 0 else ""
        click.echo(f"  {head:9} {p['probability']:6.1%}  {p['class']:>4}  {p['label']}")
    click.echo(f"  explain   {cls}  {ex.info.label(cls)}")
    if rgb is None:  # a tensor input has no picture: colour the map alone
        rgb = np.zeros((*res.maps.shape[1:], 3), np.uint8)
    write_png(paths["png"], postprocess.overlay(rgb, res.maps[0]))
    if npy:
        write_npy(paths["npy"], res.maps[0])
    if as_json:
        timings = {k: round(v, 6) for k, v in res.timings.items()}
        timings.update(total=round(time.perf_counter() - t0, 6), setup=round(setup, 6))
        write_json(paths["json"], {
            "image": image, "model": model, "method": method, "layers": res.layers, "provider": ex.provider,
            "gradients": res.gradients,
            "preprocess": ex.preset, "target": {"class": cls, "label": ex.info.label(cls)},
            "predictions": predictions, "timings_s": timings, "outputs": paths,
        })
    click.echo("  wrote     " + ", ".join(paths.values()))


def _output_paths(image, method, out, npy, as_json):
    """Where this image's outputs go; never onto the image itself."""
    from onnxcam.errors import OnnxcamError

    stem = os.path.splitext(os.path.basename(image))[0]
    folder = out or os.path.dirname(image) or "."
    kinds = ["png"] + (["npy"] if npy else []) + (["json"] if as_json else [])
    paths = {k: os.path.join(folder, f"{stem}.{method}.{k}") for k in kinds}
    if any(os.path.abspath(p) == os.path.abspath(image) for p in paths.values()):
        raise OnnxcamError(f"refusing to overwrite the input image {image}; choose another --out folder")
    return paths


def _softmax(z):
    import numpy as np

    e = np.exp(z - z.max())
    return e / e.sum()
