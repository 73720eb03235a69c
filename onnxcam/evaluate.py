"""How faithful a method's maps are over a set of images, and with ground-truth boxes how well they localize
the object (`onnxcam eval`; the metric definitions are in metrics.py).

Per method, over all images: average drop and increase in confidence, deletion and insertion AUC, and with
boxes the CAM localization accuracy, the pointing game and the energy in the box. Each image's top-1 class is
explained. The model runs through `Explainer.logits`, so every input the explainer takes works here too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from onnxcam import chart, heads, metrics, names
from onnxcam.errors import ImageError, OnnxcamError
from onnxcam.outputs import write
from onnxcam.preprocess import load_image
from onnxcam.writer import json_bytes, picture_bytes

ROWS = 128  # perturbed inputs per model run
COLUMNS = (  # (key, heading, format): the summary table, the CSV and the JSON, in this order
    ("localization", "loc. acc", "{:.1f}%"),
    ("pointing_game", "pointing", "{:.1f}%"),
    ("energy_in_box", "energy", "{:.1f}%"),
    ("average_drop", "avg drop", "{:.1f}%"),
    ("increase_in_confidence", "incr conf", "{:.1f}%"),
    ("deletion_auc", "deletion", "{:.3f}"),
    ("insertion_auc", "insertion", "{:.3f}"),
)
FILES = ("eval.json", "eval.csv", "eval.curves.png")


@dataclass(frozen=True)
class EvalOptions:
    steps: int = metrics.STEPS  # deletion / insertion steps
    blur: float | None = None  # insertion's blur sigma in input pixels; None: side / 16
    tolerance: float = metrics.POINTING_TOLERANCE  # pointing game, image pixels
    box_threshold: float = metrics.BOX_THRESHOLD
    iou: float = metrics.IOU_THRESHOLD
    scorecam_channels: int | None = None  # Explainer.explain's: Score-CAM on the channels of largest mass only


def pictures(paths: list) -> list:
    """The inputs eval takes: existing picture files (their size maps the boxes), not input tensors."""
    for path in paths:
        if names.is_tensor_file(path):
            raise ImageError(f"{path}: eval needs pictures (their size maps the boxes), not input tensors")
        if not os.path.isfile(path):
            raise ImageError(f"image file not found: {path}")
    return paths


def read_boxes(path: str, images: list) -> dict:
    """{image path: [(x0, y0, x1, y1), ...]} in image pixels for the images that the file lists.

    The file is {"name": [[x0, y0, x1, y1], ...]} or COCO-style ({"images": [{"id", "file_name"}],
    "annotations": [{"image_id", "bbox": [x, y, w, h]}]}); a key matches an image by its path as
    given, its path relative to the file's folder, or its file name. A file that matches none of the images
    is a user error (its keys are likely of another form)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise OnnxcamError(f"cannot read the boxes file {path}: {exc}") from None
    try:
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            file_names = {im["id"]: im["file_name"] for im in data["images"]}
            table = {name: [] for name in file_names.values()}
            for a in data["annotations"]:
                x, y, w, h = (float(v) for v in a["bbox"])
                table[file_names[a["image_id"]]].append((x, y, x + w, y + h))
        elif isinstance(data, dict):
            table = {name: _box_list(value) for name, value in data.items()}
        else:
            raise ValueError("not a JSON object")
        for name, boxes in table.items():
            for b in boxes:
                try:
                    metrics.check_box(b)  # four finite numbers, x1 > x0, y1 > y0
                except ValueError as exc:
                    raise ValueError(f"'{name}': {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise OnnxcamError(
            f'{path} is neither {{"image.png": [[x0, y0, x1, y1], ...]}} nor COCO-style '
            f"(images, annotations with bbox [x, y, w, h]): {exc}"
        ) from None
    base = os.path.dirname(os.path.abspath(path))
    by_key = {os.path.normpath(k): v for k, v in table.items() if v}
    found = {}
    for image in images:
        for key in (os.path.normpath(image), os.path.relpath(os.path.abspath(image), base), os.path.basename(image)):
            if key in by_key:
                found[image] = by_key[key]
                break
    if images and not found:
        raise OnnxcamError(
            f"no image of the {len(images)} given has an entry in {path}; its keys must be the "
            "images' file names (or paths)"
        )
    return found


def _box_list(value) -> list:
    """[[x0, y0, x1, y1], ...] (or one box [x0, y0, x1, y1]) -> a list of float tuples."""
    if not value:
        return []
    boxes = value if isinstance(value[0], (list, tuple)) else [value]
    return [tuple(float(v) for v in b) for b in boxes]


class Evaluation:
    """Per-image metric values for each method, added one batch of images at a time."""

    def __init__(self, ex, methods: list, options: EvalOptions):
        ex.info.require_task("eval", ("classify",))  # its benchmarks score classes, one per image
        self.ex, self.methods, self.options = ex, methods, options
        self.rows = {m: [] for m in methods}  # per-image dicts
        self.curves = {m: {"deletion": [], "insertion": []} for m in methods}
        self.seconds = dict.fromkeys(methods, 0.0)
        self.failures = []  # (path, ImageError) of the pictures that could not be read: the rest go on

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """[M, C] class probabilities of the model for M input tensors (as its head gives them)."""
        return heads.probabilities(self.ex.logits(x), self.ex.head)

    def add(self, paths: list, truth: dict, progress=None) -> None:
        """Explain and measure a batch of pictures; progress(n) is called after each method's n images."""
        ex, opts, info = self.ex, self.options, self.ex.info
        images, readable = [], []
        for path in paths:
            try:
                images.append(load_image(path))
                readable.append(path)
            except ImageError as error:
                self.failures.append((path, error))
        if not readable:
            return
        paths = readable
        x = ex.prepare(images)
        rows = np.arange(len(x))
        item_layout = info.layout[1:]
        for method in self.methods:
            t0 = time.perf_counter()
            res = ex.explain(x, method=method, scorecam_channels=opts.scorecam_channels)
            self.seconds[method] += time.perf_counter() - t0
            heats = metrics.explanation_map(res.maps, res.saliency)
            y = heads.probabilities(res.scores, ex.head)[rows, res.targets]
            o = self.probabilities(metrics.masked_input(x, heats, info.layout))[rows, res.targets]
            for i, path in enumerate(paths):
                heat, target = heats[i], int(res.targets[i])
                deletion = metrics.deletion_inputs(x[i], heat, opts.steps, item_layout)
                insertion = metrics.insertion_inputs(x[i], heat, opts.steps, item_layout, opts.blur)
                probs = metrics.curve(self.probabilities, np.concatenate([deletion, insertion]), target, ROWS)
                del_curve, ins_curve = probs[: len(deletion)], probs[len(deletion) :]
                self.curves[method]["deletion"].append(del_curve)
                self.curves[method]["insertion"].append(ins_curve)
                row = {
                    "image": path,
                    "target": target,
                    "label": info.label(target),
                    "y": float(y[i]),
                    "o": float(o[i]),
                    "deletion_auc": metrics.auc(del_curve),
                    "insertion_auc": metrics.auc(ins_curve),
                    "flat": bool(res.flat[i]),
                }
                if path in truth:
                    row.update(self._localization(heat, truth[path], images[i].shape[:2], info.size))
                self.rows[method].append(row)
            if progress:
                progress(len(paths))

    def _localization(self, heat, boxes, image_size, input_size) -> dict:
        """Localization metrics of one map: boxes mapped to the model's input size (a straight resize). The
        pointing game's tolerance is in image pixels, so the map's peak is mapped back to the image rather than
        judged at the map's size (metrics.pointing_game)."""
        opts = self.options
        scaled = metrics.scale_boxes(boxes, image_size, input_size)
        found = metrics.cam_box(heat, opts.box_threshold)
        px, py = metrics.peak(heat)
        point = (px * image_size[1] / input_size[1], py * image_size[0] / input_size[0])
        return {
            "boxes": [list(b) for b in boxes],
            "cam_box": list(metrics.scale_boxes([found], input_size, image_size)[0]) if found else None,
            "iou": max((metrics.iou(found, b) for b in scaled), default=0.0) if found else 0.0,
            "localization": metrics.localization_hit(heat, scaled, opts.box_threshold, opts.iou),
            "pointing_game": metrics.point_in_boxes(point, boxes, opts.tolerance),
            "energy_in_box": metrics.energy_in_box(heat, scaled),
        }

    def summary(self) -> dict:
        """Per method: the metrics over all images (localization over the images with boxes) and mean curves."""
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

    def write(self, out: str, model: str, boxes: str | None, summary: dict) -> list:
        """Write eval.json (summary, mean curves, every image's values), eval.csv (the summary) and
        eval.curves.png (the mean curves) into the folder `out`; returns their paths."""
        keys = ["images", "images_with_boxes"] + [k for k, _, _ in COLUMNS] + ["flat_maps", "seconds_per_image"]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["method"] + keys)
        for method, s in summary.items():
            writer.writerow(
                [method] + ["" if s[k] is None else (round(s[k], 6) if isinstance(s[k], float) else s[k]) for k in keys]
            )
        ex, opts = self.ex, self.options
        report = {
            "model": model,
            "provider": ex.provider,
            "layers": ex.layers,
            "preprocess": ex.preset,
            "boxes": boxes,
            "options": dict(
                steps=opts.steps,
                blur=opts.blur,
                tolerance=opts.tolerance,
                box_threshold=opts.box_threshold,
                iou=opts.iou,
            ),
            "summary": summary,
            "images": self.rows,
        }
        data = (json_bytes(report), text.getvalue().encode(), picture_bytes(curves_image(summary, opts.steps)))
        inputs = [model, *([boxes] if boxes else []), *(row["image"] for rows in self.rows.values() for row in rows)]
        return write({os.path.join(out, name): content for name, content in zip(FILES, data)}, inputs)


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


def curves_image(summary: dict, steps: int) -> np.ndarray:
    """Mean deletion and insertion curves of every method, side by side, with a legend."""
    xs = np.linspace(0, 1, steps + 1)
    panels = []
    for kind in ("deletion", "insertion"):
        series = [(m, xs, s[f"{kind}_curve"]) for m, s in summary.items()]
        aucs = "lower" if kind == "deletion" else "higher"
        panels.append(
            chart.line_chart(
                series,
                f"{kind} (AUC: {aucs} is better)",
                f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}",
                "class probability",
            )
        )
    panels.append(chart.legend(list(summary), panels[0].shape[0]))
    return chart.side_by_side(panels)
