"""`onnxcam run MODEL IMAGE...`: predict, explain, and write overlays (and .npy / .json on request).

Each image is fully explained in memory first and its files written after,
atomically, so a failure leaves no partial output for that image. A batch's
pictures are drawn, encoded and written on a background thread while the next
batch is explained.
"""

from __future__ import annotations

import os
import time

import click

from onnxcam.cli.options import Progress, explainer_options, format_shape, model_args, model_options, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm", ".npy")
MAX_PIXELS = 100_000_000  # onnxcam.preprocess.DEFAULT_MAX_PIXELS (not imported: --help stays instant)


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-m", "--method", default="gradcam", show_default=True, help="CAM method ('onnxcam methods' lists them).")
@click.option("--methods", metavar="A,B,...", help="Several methods: one side-by-side grid image per input.")
@click.option("-l", "--layer", "layers", multiple=True, metavar="NAME",
              help="Target layer (tensor or node name); repeat to average several. Default: the last conv-like layer.")
@click.option("-t", "--target", metavar="CLASS",
              help="Class to explain: an index, a class name, or top-K (one map per class). Default: the top-1 class.")
@click.option("--score", type=click.Choice(("logit", "probability")), default="logit", show_default=True,
              help="Explain the class's logit or its softmax probability.")
@click.option("--unit", metavar="LAYER:K[:I:J]",
              help="Explain feature map K (or neuron K, I, J) of LAYER instead of a class score.")
@click.option("--units", "unit_count", type=click.IntRange(1, 64),
              help="Also show the N channels that contribute most to the class (CAM paper, section 5).")
@click.option("--aug-smooth", is_flag=True, help="Average over horizontal flip x input scaling 0.9/1/1.1.")
@click.option("--eigen-smooth", is_flag=True, help="First principal component of the weighted activations.")
@click.option("--samples", default=25, show_default=True, type=click.IntRange(1, 1000),
              help="Noisy copies for smoothgrad and smoothgradcam++.")
@click.option("--noise", default=0.15, show_default=True, type=click.FloatRange(0, 10),
              help="Noise std as a fraction of the input's range (smoothgrad, smoothgradcam++).")
@click.option("--seed", default=0, show_default=True, help="Seed of the noise.")
@click.option("--box-threshold", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="Localization box: the largest region where the map is >= this fraction of its max.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="Class names, one per line.")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Output folder. Default: next to each image.")
@click.option("--npy", is_flag=True, help="Also write each heatmap (float32, model input size) as .npy.")
@click.option("--json", "as_json", is_flag=True, help="Also write a JSON summary.")
@click.option("--pictures", type=click.Choice(("png", "jpg", "none")), default="png", show_default=True,
              help="Format of the overlays, grids and saliency pictures; jpg encodes 10x faster, none draws "
                   "nothing and writes only the --npy maps and --json boxes (large folders).")
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 100), help="How many predictions to print.")
@click.option("--max-pixels", default=MAX_PIXELS, show_default=True, type=click.IntRange(1),
              help="Refuse images whose header declares more pixels (decompression bombs); raise it for huge images.")
@click.option("-b", "--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024),
              help="Images per run: memory is bounded by one batch; outputs stream to disk batch by batch.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", metavar="[ADDRESS]",
              help="Explain on the Ray cluster at ADDRESS (none: a local one) and write OUT/results.parquet "
                   "(needs onnxcam[ray]; IMAGE and --out may be URIs such as s3://bucket/dir).")
@click.option("--actors", type=click.IntRange(1), help="With --ray: actors, one explainer each. Default: one per "
                                                       "CPU of the cluster (per GPU with --gpus-per-actor).")
@click.option("--gpus-per-actor", type=click.FloatRange(0, 64, min_open=True),
              help="With --ray: GPUs per actor; a fraction shares a GPU and caps each actor's CUDA memory.")
@explainer_options
@model_options
def command(model, images, method, methods, layers, target, labels, device, gradients, preset, out, **kwargs):
    """Explain the model's decision on each IMAGE (a picture, a folder of them, or a .npy input tensor)."""
    from onnxcam import Explainer
    from onnxcam.errors import Interrupted, OnnxcamError, OutputError
    from onnxcam.explainer import method_named

    on_ray = {name: kwargs.pop(name) for name in ("ray_address", "actors", "gpus_per_actor")}
    if on_ray["ray_address"] is not None:
        return _run_on_ray(model, images, method, methods, layers, target, labels, device, gradients, preset, out,
                           kwargs, **on_ray)
    t0 = time.perf_counter()
    images = _expand(images)
    batch_size = kwargs.pop("batch_size")
    if kwargs["pictures"] == "none" and not (kwargs["npy"] or kwargs["as_json"]):
        raise click.UsageError("--pictures none leaves nothing to write; add --npy and/or --json")
    _check_distinct_outputs(images, out)
    ex = Explainer(model, layer=list(layers) or None, device=device, preprocess_preset=preset, gradients=gradients,
                   **model_args(kwargs))
    if labels:
        ex.info.labels = _read_labels(labels)
    names = [method_named(m.strip()).name for m in (methods.split(",") if methods else [method])]
    job = Job(ex, model, names, _parse_target(target, ex), _parse_unit(kwargs.pop("unit")), out, kwargs)
    job.inputs = {os.path.realpath(i) for i in images}
    job.setup = time.perf_counter() - t0
    if out:
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    click.echo(f"model     {model}")
    click.echo(f"provider  {ex.provider}")
    for name in ex.layers:
        layer = next(lay for lay in ex.info.layers if lay.name == name)
        click.echo(f"layer     {name}  {format_shape(layer.shape)}")
    for name in names:
        source = ex.gradient_source(name)
        why = f" ({ex.missing_rule})" if ex.missing_rule and source == "finite differences" else ""
        click.echo(f"method    {name}" + (f"  gradients {source}{why}" if source else ""))
    failures = []
    with Progress(len(images)) as bar, _Writer() as writer:
        ex.progress = bar.report
        job.writer = writer
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            try:
                failures += job.run(chunk)
            except KeyboardInterrupt:
                where = (f"at image {start + 1} of {len(images)} ({chunk[0]})" if len(chunk) == 1 else
                         f"in images {start + 1}-{start + len(chunk)} of {len(images)}")
                raise Interrupted(f"interrupted (Ctrl-C) {where}; every file already written is complete "
                                  "(none is half-written)") from None
            except OnnxcamError:
                if len(images) == 1:
                    raise
                failures += job.run_each(chunk)
            bar.update(len(chunk))
        writer.wait()
        failures += writer.failures
    for image, error in failures:
        if len(images) == 1:
            raise error
        click.echo(f"\n{image}\n  failed    {one_line(error)}", err=True)
    if failures:
        summary = "; ".join(f"{one_line(path)}: {one_line(why)}" for path, why in failures)
        raise click.ClickException(f"{len(failures)} of {len(images)} images failed: {summary}")


class _Writer:
    """One batch's reports (overlays drawn, pictures encoded, files written, lines printed) run on a background
    thread while the caller explains the next batch, so encoding overlaps ONNX Runtime. At most one batch
    waits, which bounds memory; reports keep their order. On Ctrl-C the batch under way is finished."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending = None
        self.failures = []  # (image, error) of images whose outputs could not be written

    def submit(self, report):
        """Run report() -> [(image, error)] once the previous batch's report is done."""
        self.wait()
        self.pending = self.pool.submit(report)

    def wait(self):
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.failures += pending.result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True)


def _expand(paths) -> list:
    """Image arguments with folders replaced by their image files (sorted, not recursive)."""
    from onnxcam.errors import ImageError

    out = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(path, f)))
        if not found:
            raise ImageError(f"no images in the folder {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
        out.extend(found)
    return out


class Job:
    """One `run` invocation: the same explainer, methods and options for every image."""

    def __init__(self, ex, model, methods, target, unit, out, opts):
        self.ex, self.model, self.methods, self.target, self.unit, self.out = ex, model, methods, target, unit, out
        self.opts = opts
        self.setup = 0.0
        self.inputs = set()  # real paths of every input of the run: no output may replace one
        self.writer = None  # a _Writer to report in the background; None: report before returning

    def run(self, images) -> list:
        """Explain a batch of images in one run per (method, class); returns [(image, error)] for those that
        could not be read. An error in the batched run itself propagates (the caller retries one by one)."""
        import numpy as np

        from onnxcam.errors import OnnxcamError
        from onnxcam.methods import softmax

        t0 = time.perf_counter()
        loaded, failures = [], []
        for image in images:
            try:
                loaded.append((image, *self._load(image)))
            except OnnxcamError as error:
                failures.append((image, error))
        if not loaded:
            return failures
        x = np.concatenate([self.ex.prepare(x) for _, x, _ in loaded])
        explain = dict(score=self.opts["score"], unit=self.unit, aug_smooth=self.opts["aug_smooth"],
                       eigen_smooth=self.opts["eigen_smooth"], samples=self.opts["samples"],
                       noise=self.opts["noise"], seed=self.opts["seed"])
        fixed = self.target if isinstance(self.target, int) else None
        first = self.ex.explain(x, method=self.methods[0], target=fixed, **explain)
        ranked = np.argsort(-first.scores, axis=1)
        ks = int(self.target[4:]) if isinstance(self.target, str) else 1  # top-K: one map per class
        targets = [first.targets] + [ranked[:, k] for k in range(1, ks)]
        if ks > 1:
            targets[0] = ranked[:, 0]
        results = [first if (m == self.methods[0] and k == 0) else self.ex.explain(x, method=m, target=t, **explain)
                   for m in self.methods for k, t in enumerate(targets)]
        units = self.ex.units(x, target=first.targets, count=self.opts["unit_count"]) if self.opts["unit_count"] else None
        seconds = (time.perf_counter() - t0) / len(loaded)
        reports = []
        for i, (image, _, rgb) in enumerate(loaded):
            if rgb is None:  # a tensor input has no picture: colour the maps alone
                rgb = np.zeros((*first.maps.shape[1:], 3), np.uint8)
            item_units = (units[0][i:i + 1], units[1][i:i + 1]) if units else None
            reports.append((image, softmax(first.scores[i]), [r.item(i) for r in results], item_units, rgb, seconds))
        if self.writer is None:
            return failures + self._report_all(reports)
        self.writer.submit(lambda: self._report_all(reports))
        return failures

    def _report_all(self, reports) -> list:
        """Report each image; returns [(image, error)] for those whose outputs could not be written."""
        from onnxcam.errors import OnnxcamError

        failures = []
        for report in reports:
            try:
                self._report(*report)
            except OnnxcamError as error:
                failures.append((report[0], error))
        return failures

    def run_each(self, images) -> list:
        """One image at a time, so one bad image (NaN, a flat model error) does not sink its batch."""
        from onnxcam.errors import OnnxcamError

        failures = []
        for image in images:
            try:
                failures += self.run([image])
            except OnnxcamError as error:
                failures.append((image, error))
        return failures

    def _load(self, image):
        """(model input or image, the RGB picture or None for a .npy tensor)."""
        from onnxcam.preprocess import load_image, load_tensor

        if image.lower().endswith(".npy"):
            return load_tensor(image), None
        rgb = load_image(image, max_pixels=self.opts["max_pixels"])
        return rgb, rgb

    def _report(self, image, probs, results, units, rgb, seconds):
        import numpy as np

        from onnxcam import postprocess, render
        from onnxcam.writer import json_bytes, npy_bytes, picture_bytes, write_files

        ex, opts = self.ex, self.opts
        order = np.argsort(-probs)[:opts["top"]]
        predictions = [{"class": int(c), "label": ex.info.label(int(c)), "probability": float(probs[c]),
                        "logit": float(results[0].scores[0, c])} for c in order]
        click.echo(f"\n{image}")
        for rank, p in enumerate(predictions):
            head = f"top-{opts['top']}" if rank == 0 else ""
            click.echo(f"  {head:9} {p['probability']:6.1%}  {p['class']:>4}  {p['label']}")

        several = len(results) > 1
        fmt = opts["pictures"]
        pictures = fmt != "none"
        files, entries, tiles, labels = {}, [], [], []
        h, w = rgb.shape[:2]
        for res in results:
            cls = int(res.targets[0])
            tag = f"{res.method}.c{cls}" if several and len(self.methods) == 1 else res.method
            heat = res.maps[0]
            flat = bool(res.flat[0])
            heat_on_image = _resize(heat, (h, w))  # for the box and the overlay alike
            found = None if flat else postprocess.box(heat_on_image, opts["box_threshold"])
            picture = render.overlay(rgb, heat_on_image, box=found) if pictures else None
            entry = {"method": res.method, "target": {"class": cls, "label": ex.info.label(cls)},
                     "gradients": res.gradients, "box": list(found) if found else None, "flat": flat}
            if flat:
                click.echo(f"Warning: flat map: {image} [{res.method}, class {cls}]: the map is zero everywhere "
                           "(all-zero gradients, or nothing supports this class at this layer); try another "
                           "--layer or --method", err=True)
            if pictures and len(self.methods) == 1:
                files[f"{tag}.{fmt}"] = ("picture", picture)
            tiles.append(picture)
            labels.append(f"{res.method}: {ex.info.label(cls)}")
            if pictures and res.saliency is not None:
                files[f"{tag}.saliency.{fmt}"] = ("picture", render.saliency_image(res.saliency[0]))
            if opts["npy"]:
                files[f"{tag}.npy"] = ("npy", heat)
            entries.append(entry)
            click.echo(f"  explain   {cls}  {ex.info.label(cls)}  [{res.method}]"
                       + (f"  box {list(found)}" if found else "  (flat map: no region)"))
        if pictures and len(self.methods) > 1:
            files[f"grid.{fmt}"] = ("picture", render.grid(tiles, labels))
        if units:
            targets, ranked = units
            if pictures:
                unit_tiles = [render.overlay(rgb, postprocess.scale_to(m[None], ex.info.size)[0]) for _, _, m in ranked[0]]
                files[f"units.{fmt}"] = ("picture", render.grid(unit_tiles, [f"unit {k}: {c:+.3f}" for k, c, _ in ranked[0]]))
            click.echo("  units     " + ", ".join(f"{k} ({c:+.3f})" for k, c, _ in ranked[0]))
        summary_tag = self.methods[0] if len(self.methods) == 1 else "grid"
        paths = {name: self._paths(image, *name.rsplit(".", 1)) for name in files}
        if opts["as_json"]:
            json_path = self._paths(image, summary_tag, "json")
            summary = {
                "image": image, "model": self.model, "layers": ex.layers, "provider": ex.provider,
                "preprocess": ex.preset, "score": opts["score"], "predictions": predictions, "explanations": entries,
                "units": [{"channel": k, "contribution": c} for k, c, _ in units[1][0]] if units else None,
                "timings_s": {"setup": round(self.setup, 6), "image": round(seconds, 6)},
                "outputs": list(paths.values()) + [json_path],
            }
        encode = {"picture": lambda data: picture_bytes(data, fmt), "npy": npy_bytes}
        encoded = {paths[name]: encode[kind](data) for name, (kind, data) in files.items()}
        if opts["as_json"]:
            encoded[json_path] = json_bytes(summary)
            paths["json"] = json_path
        write_files(encoded)  # all of this image's files, or none of them
        click.echo("  wrote     " + ", ".join(paths.values()))

    def _paths(self, image, tag, ext):
        """Where an output of this image goes; never onto the image itself."""
        from onnxcam.errors import OnnxcamError

        stem = os.path.splitext(os.path.basename(image))[0]
        path = os.path.join(self.out or os.path.dirname(image) or ".", f"{stem}.{tag}.{ext}")
        if os.path.realpath(path) in self.inputs | {os.path.realpath(image)}:
            raise OnnxcamError(f"refusing to overwrite the input {path} with an output of {image}; "
                               "choose another --out folder")
        return path


def _check_distinct_outputs(images, out):
    """Two inputs with the same name stem would write the same files: refuse before anything is written."""
    from onnxcam.errors import OnnxcamError

    seen = {}
    for image in images:
        folder = os.path.realpath(out or os.path.dirname(image) or ".")
        key = (folder, os.path.splitext(os.path.basename(image))[0])
        if key in seen and os.path.realpath(seen[key]) != os.path.realpath(image):
            raise OnnxcamError(f"{seen[key]} and {image} would write the same output files in {folder}; "
                               "rename one, or run them with different --out folders")
        seen.setdefault(key, image)


def _read_labels(path) -> list:
    from onnxcam.errors import OnnxcamError

    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise OnnxcamError(f"cannot read the labels file {path}: {exc}; it must be UTF-8 text, one name a line") from None


def _parse_target(target, ex):
    """None, a class index, or 'top-K'."""
    from onnxcam.errors import OnnxcamError

    if target is None:
        return None
    if target.startswith("top-") and target[4:].isdigit() and int(target[4:]) >= 1:
        return f"top-{min(int(target[4:]), ex.info.num_classes)}"
    if target.lstrip("-").isdigit():
        return int(target)
    names = ex.info.labels or []
    if target not in names:
        raise OnnxcamError(f"unknown class name '{target}'; give a class index, an exact name from the labels, or top-K")
    return names.index(target)


def _parse_unit(text):
    """'LAYER:K' or 'LAYER:K:I:J' -> (layer, k[, i, j]); the layer name may itself contain colons."""
    from onnxcam.errors import OnnxcamError

    if text is None:
        return None
    parts = text.split(":")
    for count in (3, 1):
        if len(parts) > count and all(p.isdigit() for p in parts[-count:]):
            return (":".join(parts[:-count]), *map(int, parts[-count:]))
    raise OnnxcamError(f"--unit takes LAYER:K or LAYER:K:I:J, got '{text}'")


def _resize(heat, size):
    import cv2

    return cv2.resize(heat, (size[1], size[0]))



def _run_on_ray(model, images, method, methods, layers, target, labels, device, gradients, preset, out, kwargs,
                ray_address, actors, gpus_per_actor):
    """`run --ray`: the images explained by onnxcam.ray on a cluster, their rows in one Parquet table (in place
    of --json files), pictures and --npy maps as without --ray. The model and options are checked here, before
    the cluster starts."""
    from onnxcam import Explainer
    from onnxcam import ray as on_ray
    from onnxcam.explainer import method_named

    if not out:
        raise click.UsageError("--ray needs --out: the folder (or URI) for results.parquet and the pictures")
    for option, given in (("--json", kwargs["as_json"]), ("--unit", kwargs["unit"]), ("--units", kwargs["unit_count"]),
                          ("--target top-K", target and target.startswith("top-"))):
        if given:
            raise click.UsageError(f"{option} does not go with --ray, which writes one row per image and method "
                                   "into OUT/results.parquet")
    images = [p for item in images
              for p in (on_ray.list_images(item, IMAGE_SUFFIXES) if "://" in item else _expand([item]))]
    _check_distinct_outputs(images, out)
    explainer = dict(layer=list(layers) or None, preprocess_preset=preset, gradients=gradients, **model_args(kwargs))
    ex = Explainer(model, providers=["CPUExecutionProvider"], **explainer)
    if labels:
        ex.info.labels = _read_labels(labels)
    names = [method_named(m.strip()).name for m in (methods.split(",") if methods else [method])]
    settings = on_ray.Settings(
        methods=tuple(names), target=_parse_target(target, ex), score=kwargs["score"], aug_smooth=kwargs["aug_smooth"],
        eigen_smooth=kwargs["eigen_smooth"], samples=kwargs["samples"], noise=kwargs["noise"], seed=kwargs["seed"],
        box_threshold=kwargs["box_threshold"], top=kwargs["top"], max_pixels=kwargs["max_pixels"],
        labels=tuple(ex.info.labels) if labels else None, out=out, pictures=kwargs["pictures"], npy=kwargs["npy"])
    click.echo(f"model     {model}")
    click.echo(f"layer     {', '.join(ex.layers)}")
    click.echo(f"method    {', '.join(names)}")
    click.echo(f"ray       {ray_address or 'local cluster'}")
    with Progress(len(images)) as bar:
        table, failures = on_ray.run_folder(model, images, out, settings, address=ray_address or None,
                                            explainer={**explainer, "device": device}, actors=actors,
                                            batch_size=kwargs["batch_size"], num_gpus=gpus_per_actor or 0,
                                            progress=bar.update)
    click.echo(f"wrote     {table}  ({len(images)} images)")
    for image, error in failures[:20]:
        click.echo(f"\n{image}\n  failed    {one_line(error)}", err=True)
    if failures:
        more = f"; and {len(failures) - 20} more (the table's error column lists them)" if len(failures) > 20 else ""
        summary = "; ".join(f"{one_line(path)}: {one_line(why)}" for path, why in failures[:20])
        raise click.ClickException(f"{len(failures)} of {len(images)} images failed: {summary}{more}")
