"""What `onnxcam run` makes of each image: its explanations (every method, every class asked for), the
per-image JSON record, the overlays and maps, and where they go; plus the rules every command's outputs
follow (inputs read from folders the same way, no output replacing an input, folders created once).

Each image is explained in memory first and its files written after, atomically and all or none
(writer.write_files), so a failure leaves no partial output for that image. `Background` draws, encodes and
writes one batch while the caller explains the next.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from onnxcam import heads, names, postprocess, render
from onnxcam.errors import ImageError, OnnxcamError, OutputError
from onnxcam.preprocess import load_image, load_tensor
from onnxcam.writer import json_bytes, npy_bytes, picture_bytes, write_files


@dataclass(frozen=True)
class RunOptions:
    """How `run` explains each image and what it writes (the command's options, typed)."""

    out: str | None = None  # output folder; None: next to each image
    pictures: str = "png"  # names.PICTURE_FORMATS, or "none"
    npy: bool = False
    as_json: bool = False
    top: int = 5  # predictions listed
    box_threshold: float = 0.2  # boxes and masks: pixels >= this fraction of the map's max
    boxes: str = "largest"  # names.BOX_MODES: the largest region's box, or every region's (postprocess.boxes)
    masks: bool = False  # also write each map's thresholded pixels as a PNG mask (0 / 255, image size)
    max_pixels: int = names.DEFAULT_MAX_PIXELS
    unit_count: int | None = None  # the N channels that contribute most to the class, as a picture
    # Explainer.explain keywords
    score: str = "logit"
    unit: tuple | None = None
    aug_smooth: bool = False
    eigen_smooth: bool = False
    samples: int = 25
    noise: float = 0.15
    seed: int = 0
    scorecam_channels: int | None = None
    # detectors (None: the Explainer's defaults)
    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None
    detection_target: str | None = None
    region: str | None = None  # segmentation: a mask picture, nonzero = the region explained

    def explain_args(self) -> dict:
        return dict(
            region=self.region,
            score=self.score,
            unit=self.unit,
            aug_smooth=self.aug_smooth,
            eigen_smooth=self.eigen_smooth,
            samples=self.samples,
            noise=self.noise,
            seed=self.seed,
            scorecam_channels=self.scorecam_channels,
            conf=self.conf,
            iou=self.iou,
            max_det=self.max_det,
            detection_target=self.detection_target,
        )

    def __post_init__(self):
        names.check_choice("box mode", self.boxes, names.BOX_MODES)


@dataclass
class ImageResult:
    """One image as explained in its batch."""

    image: str
    rgb: np.ndarray  # the picture the overlays are drawn on (black for a tensor input)
    probabilities: np.ndarray | None  # [C] (segmentation: the fraction of pixels predicted as each class; None
    # for a detector: its detections are in the explanations)
    explanations: list  # an Explanation of this image alone per (method, class)
    units: list | None  # [(channel, contribution, activation map)], the most contributing first
    seconds: float  # this image's share of its batch's time


@dataclass
class Report:
    """What `run` shows and writes for one image: files are encoded, the JSON record among them."""

    image: str
    predictions: list  # [{"class", "label", "probability", "logit"}], best first
    explanations: list  # [{"method", "target": {"class", "label"}, "gradients", "box", "flat"}, + "boxes", "mask"]
    units: list | None  # [{"channel", "contribution"}]
    files: dict = field(default_factory=dict)  # path -> bytes
    detect: bool = False  # a detector's: predictions are its detections, boxes in image pixels

    def write(self) -> None:
        write_files(self.files)  # all of this image's files, or none of them


class Run:
    """One `onnxcam run`: the same explainer, methods, target and options for every image."""

    def __init__(
        self, ex, model: str, methods: list, target: names.Target, opts: RunOptions, inputs: list, started: float
    ):
        self.ex, self.model, self.methods, self.target, self.opts = ex, model, methods, target, opts
        if ex.info.task == "detect" and target.top > 1:
            raise OnnxcamError(
                "--target top-K ranks the classes of a classifier or a segmentation; a detector explains each "
                "detection above --conf (at most --max-det of them)"
            )
        if opts.unit_count:
            ex.info.require_task("--units", ("classify", "segment"))  # the channels behind one class score
        self.inputs = inputs  # every input of the run: no output may replace one
        self.setup = time.perf_counter() - started

    def explain(self, images: list) -> tuple:
        """([ImageResult], [(image, error)]) for a batch, in one run per (method, class); images that cannot
        be read are failures. An error of the batched run itself propagates (retry with `explain_each`)."""
        t0 = time.perf_counter()
        loaded, failures = [], []
        for image in images:
            try:
                loaded.append((image, self._load(image)))
            except OnnxcamError as error:
                failures.append((image, error))
        if not loaded:
            return [], failures
        ex, args = self.ex, self.opts.explain_args()
        tensors = [ex.prepare(data) for _, data in loaded]
        x = np.concatenate(tensors)
        # a .npy of N rows is N images, named a[0].npy ... a[N-1].npy (their outputs: a[0].gradcam.png ...)
        loaded = [
            (image if len(t) == 1 else "{0}[{2}]{1}".format(*os.path.splitext(image), j), data)
            for (image, data), t in zip(loaded, tensors)
            for j in range(len(t))
        ]
        first = ex.explain(x, method=self.methods[0], target=self.target.index, **args)
        detect = ex.info.task == "detect"  # one map per detection: the detections choose the classes
        if detect or self.target.top == 1:
            targets = [self.target.index if detect else first.targets]
        else:
            ranked = np.argsort(-first.scores, axis=1)
            targets = [ranked[:, k] for k in range(self.target.top)]
        results = [
            first if (m == self.methods[0] and k == 0) else ex.explain(x, method=m, target=t, **args)
            for m in self.methods
            for k, t in enumerate(targets)
        ]
        units = ex.units(x, target=first.targets, count=self.opts.unit_count)[1] if self.opts.unit_count else None
        seconds = (time.perf_counter() - t0) / len(loaded)
        segment = ex.info.task == "segment"  # its scores are already the pixel fraction of each class
        items = []
        for i, (image, data) in enumerate(loaded):
            rgb = data if data.dtype == np.uint8 else blank_picture(first.maps.shape[1:])
            items.append(
                ImageResult(
                    image,
                    rgb,
                    None
                    if detect
                    else first.scores[i]
                    if segment
                    else heads.probabilities(first.scores[i : i + 1], ex.head)[0],
                    [r.item(i) for r in results],
                    units[i] if units else None,
                    seconds,
                )
            )
        return items, failures

    def explain_each(self, images: list) -> tuple:
        """`explain` one image at a time, so one bad image (NaN, a flat model error) does not sink its batch."""
        items, failures = [], []
        for image in images:
            try:
                done, failed = self.explain([image])
            except OnnxcamError as error:
                done, failed = [], [(image, error)]
            items += done
            failures += failed
        return items, failures

    def _load(self, image: str) -> np.ndarray:
        """The picture (RGB uint8) or, for a .npy file, the ready input tensor."""
        if names.is_tensor_file(image):
            return load_tensor(image)
        return load_image(image, max_pixels=self.opts.max_pixels)

    def report(self, item: ImageResult) -> Report:
        """The image's predictions, boxes, pictures, maps and JSON record, named and encoded."""
        if item.probabilities is None:
            return self._detections_report(item)
        ex, opts = self.ex, self.opts
        label = ex.info.label
        probabilities = item.probabilities
        best = np.argsort(-probabilities, kind="stable")[: opts.top]
        if ex.info.task == "segment":  # the classes on the most pixels
            predictions = [
                {"class": int(c), "label": label(int(c)), "fraction": float(probabilities[c])}
                for c in best
                if probabilities[c] > 0
            ]
        else:
            logits = heads.class_score(item.explanations[0].scores[[0] * len(best)], best, "logit", ex.head)
            predictions = [
                {"class": int(c), "label": label(int(c)), "probability": float(probabilities[c]), "logit": float(z)}
                for c, z in zip(best, logits)
            ]
        report = Report(item.image, predictions, [], None)
        one_method, pictures, fmt = len(self.methods) == 1, opts.pictures != "none", opts.pictures
        several_classes = len(item.explanations) > len(self.methods)
        files, tiles, captions = {}, [], []
        h, w = item.rgb.shape[:2]
        fit = ex.fit((h, w))
        for res in item.explanations:
            cls, heat, flat = int(res.targets[0]), res.maps[0], bool(res.flat[0])
            tag = f"{res.method}.c{cls}" if several_classes else res.method
            heat_on_image = fit.map_to_image(heat)  # for the boxes, the mask and the overlay alike
            regions = [] if flat else postprocess.boxes(heat_on_image, opts.box_threshold, every=opts.boxes == "all")
            entry = {
                "method": res.method,
                "target": {"class": cls, "label": label(cls)},
                "gradients": res.gradients,
                "box": list(regions[0].box) if regions else None,
                "flat": flat,
            }
            if opts.boxes == "all":
                entry["boxes"] = [r.record() for r in regions]
            if opts.masks:
                on = np.zeros((h, w), bool) if flat else postprocess.mask(heat_on_image, opts.box_threshold)
                files[f"{tag}.mask.png"] = picture_bytes(np.uint8(on) * 255, "png")
                entry["mask"] = self._path(item.image, f"{tag}.mask.png")
            if res.region is not None:  # segmentation: the class's share of the pixels, and the region explained
                entry["target"]["fraction"] = float(res.scores[0, cls])
                entry["region"] = {
                    "source": opts.region or "predicted",
                    "pixels": int(res.region[0].sum()),
                    "fraction": float(res.region[0].mean()),
                }
            report.explanations.append(entry)
            if pictures:
                tiles.append(render.overlay(item.rgb, heat_on_image, boxes=[r.box for r in regions]))
                captions.append(f"{res.method}: {label(cls)}")
                if one_method:
                    files[f"{tag}.{fmt}"] = picture_bytes(tiles[-1], fmt)
                if res.saliency is not None:
                    files[f"{tag}.saliency.{fmt}"] = picture_bytes(render.saliency_image(res.saliency[0]), fmt)
            if opts.npy:
                files[f"{tag}.npy"] = npy_bytes(heat)
        if pictures and not one_method:
            files[f"grid.{fmt}"] = picture_bytes(render.grid(tiles, captions), fmt)
        if item.units is not None:
            report.units = [{"channel": k, "contribution": c} for k, c, _ in item.units]
            if pictures:
                unit_tiles = [
                    render.overlay(
                        item.rgb, fit.map_to_image(postprocess.normalize_and_resize(m[None], ex.info.size)[0])
                    )
                    for _, _, m in item.units
                ]
                unit_captions = [f"unit {k}: {c:+.3f}" for k, c, _ in item.units]
                files[f"units.{fmt}"] = picture_bytes(render.grid(unit_tiles, unit_captions), fmt)
        report.files = {self._path(item.image, name): data for name, data in files.items()}
        if opts.as_json:
            self._add_record(item, report, score=opts.score, predictions=report.predictions, units=report.units)
        return report

    def _detections_report(self, item: ImageResult) -> Report:
        """A detector's report: its detections (boxes in image pixels) and, per method, one map per detection
        target (`IMAGE.METHOD.dK.png`, the box drawn with its label and score)."""
        ex, opts = self.ex, self.opts
        fit = ex.fit(item.rgb.shape[:2])
        fmt, files, report = opts.pictures, {}, Report(item.image, [], [], None, detect=True)

        def listed(d):
            box = fit.box_to_image(d.box)
            return {"class": d.cls, "label": ex.info.label(d.cls), "score": d.score, "box": box, "anchor": d.anchor}

        seen = {}
        for res in item.explanations:
            for k, dets in enumerate(res.detections):
                found = [listed(d) for d in dets]
                seen.update((d["anchor"], d) for d in found)
                cls, tag = int(res.targets[k]), f"{res.method}.d{k}"
                entry = {
                    "method": res.method,
                    "target": {"class": cls, "label": ex.info.label(cls)},
                    "detections": found,
                    "gradients": res.gradients,
                    "flat": bool(res.flat[k]),
                    "map": self._path(item.image, f"{tag}.{fmt}") if opts.pictures != "none" else None,
                }
                report.explanations.append(entry)
                if opts.pictures != "none":
                    picture = render.overlay(item.rgb, fit.map_to_image(res.maps[k]))
                    for d in found:
                        render.labelled_box(picture, d["box"], f"{d['label']} {d['score']:.2f}")
                    files[f"{tag}.{fmt}"] = picture_bytes(picture, fmt)
                if opts.npy:
                    files[f"{tag}.npy"] = npy_bytes(res.maps[k])
        report.predictions = sorted(seen.values(), key=lambda d: -d["score"])
        report.files = {self._path(item.image, name): data for name, data in files.items()}
        if opts.as_json:
            self._add_record(
                item, report, task="detect", explain=opts.detection_target or "score", detections=report.predictions
            )
        return report

    def _add_record(self, item: ImageResult, report: Report, **fields) -> None:
        """Add the image's JSON record (`run --json`) to its files: what every task's record holds, and `fields`."""
        ex = self.ex
        path = self._path(item.image, f"{self.methods[0] if len(self.methods) == 1 else 'grid'}.json")
        record = {
            "image": item.image,
            "model": self.model,
            **fields,
            "layers": ex.layers,
            "provider": ex.provider,
            "preprocess": ex.preset,
            "resize": ex.resize,
            "explanations": report.explanations,
            "timings_s": {"setup": round(self.setup, 6), "image": round(item.seconds, 6)},
            "outputs": [*report.files, path],
        }
        report.files[path] = json_bytes(record)

    def _path(self, image: str, name: str) -> str:
        path = output_path(image, name, self.opts.out)
        refuse_inputs([path], [*self.inputs, image])
        return path


class Background:
    """Reports (pictures drawn and encoded, files written, lines printed) run on a background thread while the
    caller explains the next batch, so encoding overlaps ONNX Runtime. At most one batch waits, which bounds
    memory; reports keep their order. On Ctrl-C the batch under way is finished."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending = None
        self.failures = []  # (image, error) of images whose outputs could not be written

    def submit(self, report) -> None:
        """Run report() -> [(image, error)] once the previous batch's report is done."""
        self.wait()
        self.pending = self.pool.submit(report)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.failures += pending.result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.pool.shutdown(wait=True)
        except KeyboardInterrupt:  # the first Ctrl-C, while waiting: wait again (the later ones are ignored)
            self.pool.shutdown(wait=True)
            raise


def input_paths(items, tensors: bool = True) -> list:
    """Input arguments with each folder replaced by its pictures (names.IMAGE_SUFFIXES, and .npy input tensors
    when `tensors`), sorted, not recursive. Other paths stay as given: reading them says what is wrong."""
    suffixes = names.IMAGE_SUFFIXES + ((names.TENSOR_SUFFIX,) if tensors else ())
    paths = []
    for item in items:
        if not os.path.isdir(item):
            paths.append(item)
            continue
        found = sorted(
            os.path.join(item, f)
            for f in os.listdir(item)
            if f.lower().endswith(suffixes) and os.path.isfile(os.path.join(item, f)) and not is_own_output(f)
        )
        if not found:
            raise ImageError(f"no images in the folder {item} (looked for {', '.join(suffixes)})")
        paths.extend(found)
    return paths


def tensor_shape(paths: list) -> tuple | None:
    """The shape of the first ready input tensor (.npy) among `paths`, read from its header: it fixes a model's
    dynamic spatial size as --input-size does for pictures. None without one (or unreadable: reading it later
    says why)."""
    for path in paths:
        if names.is_tensor_file(path):
            try:
                shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            except Exception:  # not a .npy after all: its own read reports it
                return None
            return shape if len(shape) == 4 else None
    return None


# The middle parts of the names onnxcam writes (STEM.TAG.ext: img.gradcam.png, img.gradcam.c3.saliency.jpg,
# img.gradcam.mask.png, img.gradcam.d0.png, img.grid.png, img.sanity.maps.png, eval.curves.png): a folder's files
# named so are its outputs, not inputs.
_OWN_TAGS = {*names.METHODS, "saliency", "mask", "grid", "units", "sanity", "maps", "curves"}


def is_own_output(file_name: str) -> bool:
    """Whether a file name is one that onnxcam writes (a folder given as input skips those: a second run in
    the same folder must not explain the first one's overlays)."""
    tags = file_name.lower().split(".")[1:-1]
    return bool(tags) and all(t in _OWN_TAGS or re.fullmatch("[cd][0-9]+", t) for t in tags)


def output_path(image: str, name: str, out: str | None) -> str:
    """`IMAGE-stem.NAME` in the folder `out`, or next to the image."""
    stem = os.path.splitext(os.path.basename(image))[0]
    return os.path.join(out or os.path.dirname(image) or ".", f"{stem}.{name}")


def refuse_inputs(paths, inputs, option: str = "--out folder") -> None:
    """No output replaces an input: a user error naming the first output path that would."""
    real = {os.path.realpath(i) for i in inputs}
    for path in paths:
        if os.path.realpath(path) in real:
            raise OnnxcamError(f"refusing to overwrite the input {path}; choose another {option}")


def check_distinct_outputs(images: list, out: str | None) -> None:
    """Two inputs with the same name stem would write the same files: refuse before anything is written."""
    seen = {}
    for image in images:
        folder = os.path.realpath(out or os.path.dirname(image) or ".")
        key = (folder, os.path.splitext(os.path.basename(image))[0])
        if key in seen and os.path.realpath(seen[key]) != os.path.realpath(image):
            raise OnnxcamError(
                f"{seen[key]} and {image} would write the same output files in {folder}; "
                "rename one, or run them with different --out folders"
            )
        seen.setdefault(key, image)


def write(files: dict, inputs: list, option: str = "--out folder") -> list:
    """Write {path: bytes}, all or none, into folders created as needed; none may replace an input. Returns
    the paths."""
    refuse_inputs(files, inputs, option)
    for folder in dict.fromkeys(os.path.dirname(path) or "." for path in files):
        make_folder(folder)
    write_files(files, inputs)  # also refuses an input under another name (a link), and non-regular files
    return list(files)


def blank_picture(size: tuple) -> np.ndarray:
    """A black RGB picture of (height, width): what the maps of an input tensor are drawn over."""
    return np.zeros((*size, 3), np.uint8)


def make_folder(path: str) -> None:
    """Create an output folder (and its parents) unless it exists."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {path}: {exc.strerror or exc}") from None
