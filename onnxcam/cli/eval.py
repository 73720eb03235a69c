"""`onnxcam eval MODEL IMAGES... --method M ...`: how faithful the maps are, and with ground-truth boxes,
how well they localize the object (definitions: onnxcam/metrics.py).

Per method, over all images: average drop and increase in confidence, deletion and insertion AUC,
and with --boxes the CAM localization accuracy, the pointing game and the energy in the box. Each
image's top-1 class is explained. Writes a table on the terminal and eval.json (summary, mean curves
and per-image values), eval.csv (the summary) and eval.curves.png (the mean deletion / insertion
curves) into --out.
"""

from __future__ import annotations

import os
import time

import click

from onnxcam.cli.options import Progress, explainer_options, format_shape, model_args, model_options

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pbm", ".pgm", ".ppm",
                    ".pnm", ".pam")
ROWS = 128  # perturbed inputs per ONNX Runtime run
OUTPUTS = ("eval.json", "eval.csv", "eval.curves.png")  # written into --out
COLUMNS = (  # (key, heading, format): the summary table, the CSV and the JSON, in this order
    ("localization", "loc. acc", "{:.1f}%"),
    ("pointing_game", "pointing", "{:.1f}%"),
    ("energy_in_box", "energy", "{:.1f}%"),
    ("average_drop", "avg drop", "{:.1f}%"),
    ("increase_in_confidence", "incr conf", "{:.1f}%"),
    ("deletion_auc", "deletion", "{:.3f}"),
    ("insertion_auc", "insertion", "{:.3f}"),
)


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-m", "--method", "methods", multiple=True, default=("gradcam",), show_default=True,
              help="CAM method; repeat for several ('onnxcam methods' lists them).")
@click.option("--boxes", type=click.Path(exists=True, dir_okay=False),
              help='Ground truth in image pixels: {"image.png": [[x0, y0, x1, y1], ...]} or a COCO-style '
                   "file (images, annotations with bbox [x, y, w, h]).")
@click.option("-o", "--out", type=click.Path(), default=".", show_default=True,
              help="Folder for eval.json, eval.csv and eval.curves.png.")
@click.option("-b", "--batch-size", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Images explained per run.")
@click.option("--steps", default=32, show_default=True, type=click.IntRange(2, 4096),
              help="Deletion / insertion steps (the curves have steps + 1 points).")
@click.option("--blur", type=click.FloatRange(0, min_open=True), metavar="SIGMA",
              help="Insertion starts from the input blurred with this sigma (input pixels). Default: side / 16.")
@click.option("--tolerance", default=15.0, show_default=True, type=click.FloatRange(0),
              help="Pointing game tolerance, in image pixels.")
@click.option("--box-threshold", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="CAM localization: the largest region where the map is >= this fraction of its max.")
@click.option("--iou", "iou_threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="CAM localization is correct at this IoU with a true box or more.")
@click.option("-l", "--layer", "layers", multiple=True, metavar="NAME",
              help="Target layer (tensor or node name); repeat to average several. Default: the last conv-like layer.")
@explainer_options
@model_options
def command(model, images, methods, boxes, out, batch_size, steps, blur, tolerance, box_threshold, iou_threshold,
            layers, preset, device, gradients, **kwargs):
    """Measure the faithfulness (and with --boxes, the localization) of each method's maps over IMAGES
    (image files, or folders of them)."""
    from onnxcam import Explainer
    from onnxcam.errors import OnnxcamError
    from onnxcam.explainer import method_named
    from onnxcam.writer import check_target

    paths = expand_images(images)
    inputs = [model, *([boxes] if boxes else []), *paths]
    for name in OUTPUTS:  # before the work: the report never replaces an input (the boxes file, an image)
        check_target(os.path.join(out, name), inputs)
    names = list(dict.fromkeys(method_named(m).name for m in methods))
    truth = read_boxes(boxes, paths) if boxes else {}
    if boxes and not truth:
        raise OnnxcamError(f"no image of the {len(paths)} given has an entry in {boxes}; its keys must be the "
                           "images' file names (or paths)")
    ex = Explainer(model, layer=list(layers) or None, device=device, preprocess_preset=preset, gradients=gradients,
                   **model_args(kwargs))
    click.echo(f"model     {model}")
    click.echo(f"provider  {ex.provider}")
    for name in ex.layers:
        layer = next(lay for lay in ex.info.layers if lay.name == name)
        click.echo(f"layer     {name}  {format_shape(layer.shape)}")
    click.echo(f"images    {len(paths)}" + (f" ({len(truth)} with boxes from {boxes})" if boxes else ""))
    options = dict(steps=steps, blur=blur, tolerance=tolerance, box_threshold=box_threshold, iou=iou_threshold)
    evaluation = Evaluation(ex, names, options)
    with Progress(len(paths) * len(names), eager=True) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            evaluation.add(chunk, truth, bar)
    summary = evaluation.summary()
    click.echo("")
    for line in table(summary):
        click.echo(line)
    click.echo("  localization: CAM box (>= {:g} of max) with IoU >= {:g}; pointing: peak within {:g} px of a box; "
               "energy: map sum inside the boxes".format(box_threshold, iou_threshold, tolerance) if truth else
               "  (no --boxes: no localization metrics)")
    click.echo("  avg drop, deletion: lower is better; incr conf, insertion and the localization metrics: higher")
    written = write_outputs(out, model, ex, summary, evaluation, options, boxes, inputs)
    click.echo("wrote     " + ", ".join(written))


def expand_images(items) -> list:
    """Files as given; a folder: its image files (by extension), sorted. Missing paths: an ImageError."""
    from onnxcam.errors import ImageError

    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f)))
            if not found:
                raise ImageError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder {item}")
            paths.extend(found)
        elif os.path.isfile(item):
            if item.lower().endswith(".npy"):
                raise ImageError(f"{item}: eval needs pictures (their size maps the boxes), not input tensors")
            paths.append(item)
        else:
            raise ImageError(f"image file not found: {item}")
    return paths


def read_boxes(path: str, images: list) -> dict:
    """{image path: [(x0, y0, x1, y1), ...]} in image pixels for the images that the file lists.

    The file is {"name": [[x0, y0, x1, y1], ...]} or COCO-style ({"images": [{"id", "file_name"}],
    "annotations": [{"image_id", "bbox": [x, y, w, h]}]}); a key matches an image by its path as
    given, its path relative to the file's folder, or its file name."""
    import json

    from onnxcam.errors import OnnxcamError
    from onnxcam.metrics import check_box

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise OnnxcamError(f"cannot read the boxes file {path}: {exc}") from None
    try:
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            names = {im["id"]: im["file_name"] for im in data["images"]}
            table = {name: [] for name in names.values()}
            for a in data["annotations"]:
                x, y, w, h = (float(v) for v in a["bbox"])
                table[names[a["image_id"]]].append((x, y, x + w, y + h))
        elif isinstance(data, dict):
            table = {name: _box_list(value) for name, value in data.items()}
        else:
            raise ValueError("not a JSON object")
        for name, boxes in table.items():
            for b in boxes:
                try:
                    check_box(b)
                except ValueError as exc:
                    raise ValueError(f"'{name}': {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise OnnxcamError(f"{path} is neither {{\"image.png\": [[x0, y0, x1, y1], ...]}} nor COCO-style "
                           f"(images, annotations with bbox [x, y, w, h]): {exc}") from None
    base = os.path.dirname(os.path.abspath(path))
    by_key = {os.path.normpath(k): v for k, v in table.items() if v}
    found = {}
    for image in images:
        for key in (os.path.normpath(image), os.path.relpath(os.path.abspath(image), base), os.path.basename(image)):
            if key in by_key:
                found[image] = by_key[key]
                break
    return found


def _box_list(value) -> list:
    """[[x0, y0, x1, y1], ...] (or one box [x0, y0, x1, y1]) -> a list of float tuples."""
    if not value:
        return []
    boxes = value if isinstance(value[0], (list, tuple)) else [value]
    return [tuple(float(v) for v in b) for b in boxes]


class Evaluation:
    """Per-image metric values for each method, added one batch of images at a time."""

    def __init__(self, ex, methods: list, options: dict):
        import numpy as np

        from onnxcam.runtime import make_session
        from onnxcam.surgery import augment

        self.ex, self.methods, self.options = ex, methods, options
        self.rows = {m: [] for m in methods}  # per-image dicts
        self.curves = {m: {"deletion": [], "insertion": []} for m in methods}
        self.seconds = {m: 0.0 for m in methods}
        self._session = make_session(augment(ex.info, [], gradients=False), ex.providers)
        self._np = np

    def probabilities(self, x):
        """[M, C] softmax of the model's logits for a batch of input tensors (any M: fixed batches are padded)."""
        from onnxcam.methods import softmax

        np, info = self._np, self.ex.info
        fixed = info.input_shape[0]
        size = fixed or ROWS
        out = []
        for start in range(0, len(x), size):
            part = x[start:start + size]
            if fixed and len(part) < fixed:
                part = np.concatenate([part, np.repeat(part[-1:], fixed - len(part), axis=0)])
            logits = self._session.run([info.logits_name], {info.input_name: np.ascontiguousarray(part)})[0]
            out.append(softmax(logits.reshape(len(part), -1))[:len(x[start:start + size])])
        return np.concatenate(out)

    def add(self, paths: list, truth: dict, bar) -> None:
        from onnxcam import metrics
        from onnxcam.methods import softmax
        from onnxcam.preprocess import load_image

        np, ex, opts = self._np, self.ex, self.options
        images = [load_image(p) for p in paths]
        x = ex.prepare(images)
        layout = ex.info.layout
        size = ex.info.size
        for method in self.methods:
            t0 = time.perf_counter()
            res = ex.explain(x, method=method)
            self.seconds[method] += time.perf_counter() - t0
            targets = res.targets
            heats = metrics.explanation_map(res.maps, res.saliency)
            y = softmax(res.scores)[np.arange(len(x)), targets]
            o = self.probabilities(metrics.masked_input(x, heats, layout))[np.arange(len(x)), targets]
            for i, path in enumerate(paths):
                heat, target = heats[i], int(targets[i])
                item = layout[1:]
                deletion = metrics.deletion_inputs(x[i], heat, opts["steps"], item)
                insertion = metrics.insertion_inputs(x[i], heat, opts["steps"], item, opts["blur"])
                probs = self.probabilities(np.concatenate([deletion, insertion]))[:, target]
                del_curve, ins_curve = probs[:len(deletion)], probs[len(deletion):]
                self.curves[method]["deletion"].append(del_curve)
                self.curves[method]["insertion"].append(ins_curve)
                row = {"image": path, "target": target, "label": ex.info.label(target), "y": float(y[i]),
                       "o": float(o[i]), "deletion_auc": metrics.auc(del_curve),
                       "insertion_auc": metrics.auc(ins_curve), "flat": bool(res.flat[i])}
                if path in truth:
                    row.update(self._localization(heat, truth[path], images[i].shape[:2], size))
                self.rows[method].append(row)
            bar.update(len(paths))

    def _localization(self, heat, boxes, image_size, input_size) -> dict:
        """Localization metrics of one map: boxes mapped to the model's input size (a straight resize);
        the pointing game's tolerance is in image pixels (the map's peak is mapped back)."""
        from onnxcam import metrics

        opts = self.options
        scaled = metrics.scale_boxes(boxes, image_size, input_size)
        found = metrics.cam_box(heat, opts["box_threshold"])
        best = max((metrics.iou(found, b) for b in scaled), default=0.0) if found else 0.0
        px, py = metrics.peak(heat)
        point = (px * image_size[1] / input_size[1], py * image_size[0] / input_size[0])
        return {
            "boxes": [list(b) for b in boxes],
            "cam_box": list(metrics.scale_boxes([found], input_size, image_size)[0]) if found else None,
            "iou": best,
            "localization": bool(found is not None and best >= opts["iou"]),
            "pointing_game": metrics.point_in_boxes(point, boxes, opts["tolerance"]),
            "energy_in_box": metrics.energy_in_box(heat, scaled),
        }

    def summary(self) -> dict:
        """Per method: the metrics over all images (localization over the images with boxes) and mean curves."""
        from onnxcam import metrics

        np = self._np
        out = {}
        for method, rows in self.rows.items():
            y = np.array([r["y"] for r in rows])
            o = np.array([r["o"] for r in rows])
            located = [r for r in rows if "localization" in r]
            s = {
                "images": len(rows),
                "images_with_boxes": len(located),
                "localization": 100.0 * np.mean([r["localization"] for r in located]) if located else None,
                "pointing_game": 100.0 * np.mean([r["pointing_game"] for r in located]) if located else None,
                "energy_in_box": 100.0 * np.mean([r["energy_in_box"] for r in located]) if located else None,
                "average_drop": metrics.average_drop(y, o),
                "increase_in_confidence": metrics.increase_in_confidence(y, o),
                "deletion_auc": float(np.mean([r["deletion_auc"] for r in rows])),
                "insertion_auc": float(np.mean([r["insertion_auc"] for r in rows])),
                "flat_maps": int(sum(r["flat"] for r in rows)),
                "seconds_per_image": self.seconds[method] / max(1, len(rows)),
                "deletion_curve": np.mean(self.curves[method]["deletion"], axis=0).tolist(),
                "insertion_curve": np.mean(self.curves[method]["insertion"], axis=0).tolist(),
            }
            out[method] = {k: (float(v) if isinstance(v, np.floating) else v) for k, v in s.items()}
        return out


def table(summary: dict) -> list:
    """The summary as aligned text lines."""
    width = max(len("method"), *map(len, summary))
    head = f"{'method':{width}}" + "".join(f"  {h:>9}" for _, h, _ in COLUMNS) + "      s/img"
    lines = [head]
    for method, s in summary.items():
        cells = "".join(f"  {'-' if s[k] is None else fmt.format(s[k]):>9}" for k, _, fmt in COLUMNS)
        flat = f"  ({s['flat_maps']} flat)" if s["flat_maps"] else ""
        lines.append(f"{method:{width}}{cells}  {s['seconds_per_image']:9.4f}{flat}")
    return lines


def curves_image(summary: dict, steps: int):
    """Mean deletion and insertion curves of every method, side by side, with a legend."""
    import numpy as np

    from onnxcam import chart

    xs = np.linspace(0, 1, steps + 1)
    panels = []
    for kind in ("deletion", "insertion"):
        series = [(m, xs, s[f"{kind}_curve"]) for m, s in summary.items()]
        aucs = "lower" if kind == "deletion" else "higher"
        panels.append(chart.line_chart(series, f"{kind} (AUC: {aucs} is better)",
                                       f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}",
                                       "class probability"))
    panels.append(chart.legend(list(summary), panels[0].shape[0]))
    return chart.side_by_side(panels)


def write_outputs(out, model, ex, summary, evaluation, options, boxes, inputs=()) -> list:
    import csv
    import io

    from onnxcam.errors import OutputError
    from onnxcam.writer import json_bytes, picture_bytes, write_files

    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    keys = ["images", "images_with_boxes"] + [k for k, _, _ in COLUMNS] + ["flat_maps", "seconds_per_image"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["method"] + keys)
    for method, s in summary.items():
        writer.writerow([method] + ["" if s[k] is None else (round(s[k], 6) if isinstance(s[k], float) else s[k])
                                    for k in keys])
    report = {
        "model": model, "provider": ex.provider, "layers": ex.layers, "preprocess": ex.preset,
        "boxes": boxes, "options": options, "summary": summary,
        "images": {m: rows for m, rows in evaluation.rows.items()},
    }
    paths = {os.path.join(out, name): data for name, data in zip(OUTPUTS, (
        json_bytes(report), text.getvalue().encode(), picture_bytes(curves_image(summary, options["steps"]))))}
    write_files(paths, inputs)
    return list(paths)


