"""A cache of ready-to-load sessions, so a second run on the same model skips surgery and graph optimization.

An entry is ONNX Runtime's own optimized form of an augmented model, saved by the
session that built it and loaded later with optimizations off. The key hashes the
model file's bytes with everything that shapes the augmented graph (layers, what is
differentiated, input options) and with the onnxcam source (not just its version: an
edited checkout must not load graphs its old code built), ONNX Runtime and provider
set that produced it, so a stale entry is never found. Entries are written to a temporary
file and renamed into place: concurrent runs at worst build the same entry twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile

import onnxruntime as ort

from onnxcam.runtime import make_session, session_options, with_options

ENV = "ONNXCAM_CACHE_DIR"  # a folder, or "off" to disable


def folder() -> str | None:
    """The cache folder: $ONNXCAM_CACHE_DIR, else $XDG_CACHE_HOME/onnxcam, else ~/.cache/onnxcam."""
    chosen = os.environ.get(ENV)
    if chosen == "off":
        return None
    if not chosen:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        chosen = os.path.join(base, "onnxcam")
    return chosen


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def entry_path(model_digest: str, parts: dict, providers: list) -> str | None:
    """Where the session for this model and these choices lives (None when caching is off)."""
    root = folder()
    if root is None:
        return None
    description = json.dumps({"model": model_digest, "parts": parts, "providers": providers, "cpu": _cpu(),
                              "onnxcam": _source_digest(), "onnxruntime": ort.__version__}, sort_keys=True, default=str)
    return os.path.join(root, hashlib.sha256(description.encode()).hexdigest()[:32] + ".onnx")


@functools.cache
def _source_digest() -> str:
    """A hash of onnxcam's Python files (about 0.1 MB, read once a process)."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for folder_, _, files in sorted(os.walk(root)):
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder_, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def _cpu() -> str:
    """The CPU's feature flags: ORT's fully optimized graphs use blocked layouts sized for this CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.machine() + platform.processor()


def cached_session(key: dict | None, providers: list, build) -> ort.InferenceSession:
    """The session for `key` (everything that shapes the graph, the model's digest included) from the cache,
    else a new session of build() (an onnx.ModelProto), whose optimized form is saved for next time. key None
    (a model given in memory) or caching off: always built."""
    path = entry_path(key["model"], key, providers) if key is not None else None
    session = load(path, providers) if path else None
    if session is not None:
        return session
    model = build()
    options, tmp = save_options(path) if path else (None, None)
    try:
        session = make_session(model, providers, options)
    except BaseException:
        discard(tmp)
        raise
    commit(tmp, path)
    return session


def has_entry(key: dict, providers: list) -> bool:
    """Whether a session for `key` is cached (no graph surgery is needed to know what it computes)."""
    path = entry_path(key["model"], key, providers)
    return path is not None and os.path.isfile(path)


def load(path: str, providers: list):
    """The cached session, or None if there is none (or it cannot be loaded: it is then rebuilt)."""
    if not os.path.isfile(path):
        return None
    options = session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # optimized already
    try:
        return ort.InferenceSession(path, options, providers=with_options(providers))
    except Exception:
        return None


def save_options(path: str) -> tuple:
    """(session options that make ORT write its optimized model, the temporary file it writes to), or
    (None, None) when the cache folder is not writable: caching is best effort."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".onnxcam-", suffix=".onnx")
    except OSError:
        return None, None
    os.close(fd)
    options = session_options()
    options.optimized_model_filepath = tmp
    return options, tmp


def commit(tmp: str | None, path: str) -> None:
    """Move a finished entry into place (an empty one is dropped)."""
    if tmp and os.path.isfile(tmp) and os.path.getsize(tmp) > 0:
        try:
            os.replace(tmp, path)
        except OSError:
            discard(tmp)
    else:
        discard(tmp)


def discard(tmp: str | None) -> None:
    if tmp and os.path.exists(tmp):
        os.unlink(tmp)
