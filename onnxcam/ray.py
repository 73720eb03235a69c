"""Explain a Ray Data dataset of images: many machines, CPUs and GPUs, one Explainer per actor.

`explain_dataset(ds, model)` maps a dataset of images (a `path` column, with the file's `bytes`, a decoded
`image` or a model-ready `tensor` where the dataset has them) through a pool of actors. Each actor builds
one Explainer, once (its sessions come from the node's on-disk cache when it has them), and returns one row
per image and method (and class, with top-K): the record `onnxcam run --json` writes (outputs.Run.report),
flattened (`SCHEMA`); pictures and maps go to files as `run` writes them. Images are decoded
inside the actors with onnxcam's own loader; an image that cannot be read or explained is a row with its
error, never a failed job. Ray restarts an actor whose process dies and runs its batch again (Ray Data's
actor pools retry without limit), so every image comes out once.

`run_folder` is `onnxcam run MODEL DIR --ray`: it writes the rows as one Parquet table and counts them on a
progress bar as they stream back. Only this module imports ray (the `onnxcam[ray]` extra).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from onnxcam import names, outputs
from onnxcam.errors import ImageError, OnnxcamError, OutputError

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.fs
    import pyarrow.parquet as pq
    import ray
    import ray.data
except ImportError as exc:
    raise OnnxcamError(f"onnxcam.ray needs Ray Data and pyarrow ({exc}): pip install 'onnxcam[ray]'") from None
from onnxcam.explainer import Explainer
from onnxcam.preprocess import decode_image, load_image, load_tensor, max_file_size
from onnxcam.runtime import CPU, CUDA, PROVIDER_OPTIONS, cuda_available

TABLE = "results.parquet"  # the name of run_folder's table in the output folder
MAP_TYPES = ("float32", "float16", "uint8")  # uint8: round(map * 255)

_PREDICTION = pa.struct(
    [("class", pa.int64()), ("label", pa.string()), ("probability", pa.float64()), ("logit", pa.float64())]
)
# One row per image and explanation (method, and class with top-K): the fields of `onnxcam run --json`'s record
# (outputs.Run.report). An image that failed has its path, method and error, and nulls elsewhere.
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("error", pa.string()),
        ("model", pa.string()),
        ("layers", pa.list_(pa.string())),
        ("provider", pa.string()),
        ("preprocess", pa.string()),
        ("resize", pa.string()),  # preprocess.RESIZES: how each image was fit to the model's input
        ("score", pa.string()),
        ("predictions", pa.list_(_PREDICTION)),
        ("method", pa.string()),
        ("target", pa.struct([("class", pa.int64()), ("label", pa.string())])),
        ("gradients", pa.string()),
        ("box", pa.list_(pa.int64(), 4)),  # x0, y0, x1, y1, inclusive, in image pixels; null for a flat map
        # --boxes all: every region above the threshold (postprocess.Region.record); --masks: the mask file
        (
            "boxes",
            pa.list_(
                pa.struct(
                    [
                        ("box", pa.list_(pa.int64(), 4)),
                        ("area", pa.int64()),
                        ("peak", pa.float64()),
                        ("mean", pa.float64()),
                    ]
                )
            ),
        ),
        ("mask", pa.string()),
        ("flat", pa.bool_()),
        ("units", pa.list_(pa.struct([("channel", pa.int64()), ("contribution", pa.float64())]))),
        ("outputs", pa.list_(pa.string())),
        ("timings_s", pa.struct([("setup", pa.float64()), ("image", pa.float64())])),
    ]
)


@dataclass(frozen=True)
class Settings:
    """What every image of a job gets: the methods and classes, `onnxcam run`'s per-image options (by default
    no pictures or .npy files: rows only), whether rows keep the map, and class names for models without."""

    methods: tuple = (names.DEFAULT_METHOD,)
    target: names.Target = names.Target()
    options: outputs.RunOptions = outputs.RunOptions(pictures="none")
    maps: str | None = None  # keep each map (model input size) in its row as one of MAP_TYPES
    labels: tuple | None = None

    def check(self):
        if self.maps is not None:
            names.check_choice("map type", self.maps, MAP_TYPES)
        o = self.options
        if o.out is None and (o.pictures != "none" or o.npy or o.as_json):
            raise OnnxcamError("pictures, .npy maps and JSON files need an output folder (RunOptions.out)")


def explain_dataset(
    ds: ray.data.Dataset,
    model: str,
    settings: Settings = Settings(),
    *,
    explainer: dict | None = None,
    batch_size: int = 16,
    actors: int | tuple = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
) -> ray.data.Dataset:
    """A dataset of result rows (SCHEMA, plus a `map` column when settings.maps: [H, W] at the model's input
    size, zeros where the row has an error) for a dataset of images.

    model: a path every node can read. explainer: Explainer keywords (layer, device, preprocess_preset,
    resize, gradients, input_name, output_name, input_size). actors: a pool size, or (min, max) to autoscale.
    num_gpus: per actor; a fraction shares a GPU, and the actor's CUDA memory arena is capped at that
    fraction. Rows come in completion order. A block is the unit of work (and of retry): blocks of about
    batch_size rows spread the work over the actors.
    """
    settings.check()
    if "path" not in ds.columns():
        raise OnnxcamError(f"the dataset needs a 'path' column (it has {', '.join(ds.columns())})")
    pool = (
        ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1])
        if isinstance(actors, tuple)
        else ray.data.ActorPoolStrategy(size=actors)
    )
    return ds.map_batches(
        _Worker,
        fn_constructor_args=(model, settings, explainer or {}, num_gpus),
        batch_size=batch_size,
        batch_format="numpy",
        compute=pool,
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
    )


class _Worker:
    """One actor: one Explainer, built once; a batch of input rows in, a table of result rows out."""

    def __init__(self, model: str, settings: Settings, explainer: dict, num_gpus: float):
        started = time.perf_counter()
        ex = Explainer(
            model, providers=_providers(num_gpus), labels=settings.labels and list(settings.labels), **explainer
        )
        ex.info.require_task("onnxcam.ray", ("classify",))  # its rows are a classifier's (SCHEMA)
        self.run = _BatchRun(ex, model, list(settings.methods), settings.target, settings.options, [], started)
        self.settings = settings
        self.fs = _filesystem(settings.options.out)

    def __call__(self, batch: dict) -> pa.Table:
        paths = [str(p) for p in batch["path"]]
        self.run.batch, self.run.rows = batch, {p: i for i, p in reversed(list(enumerate(paths)))}
        try:
            items, failures = self.run.explain(paths)
        except OnnxcamError:  # one image's error (NaN scores, a tensor of the wrong shape) sank the batch
            items, failures = self.run.explain_each(paths)
        rows = [row for path, error in failures for row in self._failed(path, error)]
        for item in items:
            rows += self._rows(item)
        return self._table(rows)

    def _rows(self, item: outputs.ImageResult) -> list:
        """The image's record, as `onnxcam run --json` writes it, one row per explanation; its files written."""
        run = self.run
        try:
            report = run.report(item)
            written, error = self._write(report.files), None
        except OnnxcamError as exc:
            return self._failed(item.image, exc)
        shared = {
            "path": item.image,
            "error": error,
            "model": run.model,
            "layers": list(run.ex.layers),
            "provider": run.ex.provider,
            "preprocess": run.ex.preset,
            "resize": run.ex.resize,
            "score": run.opts.score,
            "predictions": report.predictions,
            "units": report.units,
            "outputs": written,
            "timings_s": {"setup": run.setup, "image": item.seconds},
        }
        return [
            {**shared, **entry, "map": _quantize(res.maps[0], self.settings.maps)}
            for entry, res in zip(report.explanations, item.explanations)
        ]

    def _write(self, files: dict) -> list:
        """Write {path: bytes}, all or none; returns the paths."""
        if self.fs is None:
            return outputs.write(files, [])
        for target, data in files.items():  # an object store: each object appears whole when its stream closes
            try:
                with self.fs[0].open_output_stream(_uri_path(target)) as f:
                    f.write(data)
            except OSError as exc:
                raise OutputError(f"cannot write {target}: {exc}") from None
        return list(files)

    def _failed(self, path: str, error: Exception) -> list:
        return [{"path": path, "error": str(error), "model": self.run.model, "method": m} for m in self.run.methods]

    def _table(self, rows: list) -> pa.Table:
        table = pa.Table.from_pylist([{k: v for k, v in row.items() if k != "map"} for row in rows], SCHEMA)
        if self.settings.maps is None:
            return table
        return table.append_column(
            "map", _tensor_column([row.get("map") for row in rows], self.run.ex.info.size, self.settings.maps)
        )


class _BatchRun(outputs.Run):
    """outputs.Run over one Ray batch: an image comes from its row (the file's bytes, a decoded picture, a
    tensor, or a local path or URI to read), not only from a local path."""

    batch: dict = {}
    rows: dict = {}  # path -> its row in the batch

    def _load(self, image: str) -> np.ndarray:
        batch, i, max_pixels = self.batch, self.rows[image], self.opts.max_pixels
        if "tensor" in batch:
            return _one_tensor(np.asarray(batch["tensor"][i]), image)
        if "image" in batch:
            rgb = np.asarray(batch["image"][i])
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise ImageError(f"{image}: an image must be HxWx3 uint8 RGB, got {rgb.dtype} {list(rgb.shape)}")
            return rgb
        if names.is_tensor_file(image):
            if "bytes" in batch or _is_uri(image):
                raise ImageError(
                    f"{image}: .npy input tensors are read from local paths only; give a 'tensor' column instead"
                )
            return _one_tensor(load_tensor(image), image)
        if "bytes" in batch:
            return decode_image(batch["bytes"][i], image, max_pixels)
        if _is_uri(image):
            return decode_image(_read_uri(image, max_file_size(max_pixels)), image, max_pixels)
        return load_image(image, max_pixels)


def run_folder(
    model: str,
    images: list,
    settings: Settings,
    *,
    address: str | None = None,
    explainer: dict | None = None,
    batch_size: int = 16,
    actors: int | None = None,
    num_gpus: float = 0,
    progress=None,
) -> tuple:
    """`onnxcam run MODEL DIR --ray`: explain `images` (paths every node reads, or URIs) on the cluster at
    `address` (None: a local one started here, or $RAY_ADDRESS) and write OUT/results.parquet (OUT:
    settings.options.out) whole, or nothing. actors: default one per CPU (per GPU with num_gpus) of the
    cluster. progress(n): called as n more images are done. Returns (the table's path, [(image, error)] of
    the images that failed)."""
    out = settings.options.out
    if out is None:
        raise OnnxcamError("run_folder needs an output folder (RunOptions.out) for its table")
    _refuse_overwriting(images, out)
    if not _is_uri(out):
        outputs.make_folder(out)
    started = not ray.is_initialized()
    if started:
        _quiet_init(address)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the caller's bar counts images: one bar for the whole job
        context.print_on_execution_start = False
        if actors is None:
            resources = ray.cluster_resources()
            actors = max(1, int(resources.get("GPU", 0) / num_gpus) if num_gpus else int(resources.get("CPU", 1)))
        blocks = max(1, -(-len(images) // batch_size))
        ds = ray.data.from_items([{"path": p} for p in images], override_num_blocks=blocks)
        results = explain_dataset(
            ds,
            model,
            settings,
            explainer=explainer,
            batch_size=batch_size,
            actors=min(actors, blocks),
            num_gpus=num_gpus,
        )
        return write_table(results, _join(out, TABLE), progress)
    finally:
        if started:
            ray.shutdown()


def write_table(results: ray.data.Dataset, path: str, progress=None) -> tuple:
    """Stream the result rows into one Parquet file at `path` (local or a URI), written whole or not at all.
    progress(n): n more images done (an image's rows come in one block). Returns (path, [(image, error)])."""
    fs = _filesystem(path)
    tmp = None if fs else os.path.join(os.path.dirname(path) or ".", f".onnxcam-{os.getpid()}-{TABLE}.tmp")
    writer, failures = None, []
    try:
        for table in results.iter_batches(batch_format="pyarrow", batch_size=None):
            if writer is None:
                writer = (
                    pq.ParquetWriter(tmp, table.schema)
                    if fs is None
                    else pq.ParquetWriter(_uri_path(path), table.schema, filesystem=fs[0])
                )
            writer.write_table(table)
            failed = table.filter(pc.is_valid(table["error"])).select(["path", "error"]).to_pylist()
            failures += list(dict.fromkeys((r["path"], r["error"]) for r in failed))
            if progress is not None:
                progress(len(pc.unique(table["path"])))
        if writer is not None:
            writer.close()
            writer = None
            if tmp:
                os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from None
    finally:
        if writer is not None:
            writer.close()
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return path, failures


def _refuse_overwriting(images: list, out: str) -> None:
    """No output may replace an input. Outputs are OUT/STEM.TAG...EXT (outputs.output_path) with STEM an input's
    stem: an input in OUT named so is refused, whatever the methods and classes (the workers see one batch
    of inputs each; this sees them all)."""
    folder = _real(out).rstrip("/")
    stems = {os.path.splitext(os.path.basename(i))[0] for i in images}
    for image in images:
        real = _real(image)
        parts = os.path.basename(real).split(".")
        if os.path.dirname(real) == folder and any(".".join(parts[:k]) in stems for k in range(1, len(parts) - 1)):
            raise OutputError(
                f"{image} lies in the output folder and is named like an output of another input, "
                "which could replace it; choose another output folder"
            )


def _quiet_init(address: str | None):
    """ray.init with Ray's own logs kept off the terminal: the progress bar and onnxcam's messages are what a
    user reads. Ray's C++ core logs at error level each actor it starts (Ray Data's constructor arguments sit
    in the object store), and says on stderr, while it starts, that its level was set: hide that too."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise OnnxcamError(f"cannot start or reach {where}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def list_images(uri: str) -> list:
    """The image files of a folder URI (s3://bucket/dir; not recursive; the suffixes of outputs.input_paths),
    sorted, or the URI of one file."""
    suffixes = names.IMAGE_SUFFIXES + (names.TENSOR_SUFFIX,)
    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    info = fs.get_file_info(root)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise ImageError(f"not found: {uri}")
    if info.type == pyarrow.fs.FileType.File:
        return [uri]
    base = uri.rstrip("/")
    found = sorted(
        f"{base}/{f.base_name}"
        for f in fs.get_file_info(pyarrow.fs.FileSelector(root))
        if f.type == pyarrow.fs.FileType.File and f.base_name.lower().endswith(suffixes)
    )
    if not found:
        raise ImageError(f"no images in {uri} (looked for {', '.join(suffixes)})")
    return found


def _providers(num_gpus: float):
    """None (the Explainer's device option decides) for CPU actors. A GPU actor runs on the GPU Ray gave it
    (Ray sets CUDA_VISIBLE_DEVICES: it is device 0 here); a fraction of a GPU caps ORT's memory arena."""
    if not num_gpus:
        return None
    if not cuda_available():
        raise OnnxcamError(f"the actor was given {num_gpus} GPU but {CUDA} cannot start on its node")
    options = {**PROVIDER_OPTIONS[CUDA], "device_id": 0}
    total = _gpu_memory() if num_gpus < 1 else None
    if total:
        options["gpu_mem_limit"] = int(num_gpus * total)
    return [(CUDA, options), CPU]


def _gpu_memory() -> int | None:
    """Bytes of memory of this actor's GPU, from nvidia-smi; None where it cannot tell."""
    ids = ray.get_gpu_ids()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", str(ids[0])],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return int(out.split()[0]) << 20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _one_tensor(x: np.ndarray, path: str) -> np.ndarray:
    if x.ndim == 4 and len(x) != 1:
        raise ImageError(f"{path} holds {len(x)} input tensors; give one per row")
    if x.dtype.kind != "f":
        raise ImageError(f"{path} holds {x.dtype} values; an input tensor must be floating point")
    return x


def _quantize(heat: np.ndarray, kind: str | None):
    if kind is None:
        return None
    return np.uint8(np.rint(heat * 255)) if kind == "uint8" else heat.astype(kind)


def _tensor_column(maps: list, size: tuple, kind: str) -> pa.Array:
    """Maps [H, W] as an Arrow fixed-shape tensor column, which Parquet keeps. A failed row's map is zeros,
    not null: Ray turns such a column into one NumPy array, which has no nulls."""
    kind = np.dtype(kind)
    value = pa.from_numpy_dtype(kind)
    flat = np.zeros((len(maps), size[0] * size[1]), kind)
    for i, m in enumerate(maps):
        if m is not None:
            flat[i] = m.reshape(-1)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), value), size[0] * size[1])
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value, list(size)), storage)


def _is_uri(path: str) -> bool:
    return "://" in path


def _filesystem(path: str | None):
    """(pyarrow filesystem, path in it) for a URI; None for a local path (written with onnxcam's writer)."""
    if path is None or not _is_uri(path):
        return None
    return pyarrow.fs.FileSystem.from_uri(path)


def _uri_path(uri: str) -> str:
    return pyarrow.fs.FileSystem.from_uri(uri)[1]


def _read_uri(uri: str, limit: int) -> bytes:
    """At most limit + 1 bytes of a file in any filesystem pyarrow reads (more is refused by the decoder)."""
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path) as f:
            return f.read(limit + 1)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ImageError(f"cannot read {uri}: {exc}") from None


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if _is_uri(folder) else os.path.join(folder, name)


def _real(path: str) -> str:
    return path if _is_uri(path) else os.path.realpath(path)
