"""A cache of ready-to-load sessions, so a second run on the same model skips surgery and graph optimization.

An entry is ONNX Runtime's own optimized form of an augmented model, saved by the session that built it
and loaded later with optimizations off. Its key hashes the loaded model (`model_digest`: every field,
tensors' data and external data included, exactly what the session is built from) with everything that
shapes the augmented graph (layers, what is differentiated, input options), the onnxcam source (not just
its version: an edited checkout must not load graphs its old code built), ONNX Runtime and the providers
and CPU that produced it, so a stale entry is never found.

Integrity: each entry ends with an HMAC-SHA256 of its key and its bytes, made with a secret of this user's
kept outside the cache folder (`secret_path`, mode 0600). An entry is read once, and ONNX Runtime gets those
very bytes only if the HMAC matches: a damaged, truncated or edited entry, another key's entry copied over
it, or one written by another user into a shared folder is a miss, and is rebuilt. The cache is an
optimization, never a reason to fail: a cache folder that is full, read-only or missing, or no usable
secret, means sessions are built as if caching were off. Entries are written to a temporary file and
renamed into place: concurrent runs at worst build the same entry twice; the temporary file of a run
that was killed is removed by the next one (`writer.clean_stale`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import platform
import stat
import struct

import onnx
import onnxruntime as ort

from onnxcam import writer
from onnxcam.errors import ModelError
from onnxcam.runtime import make_session, session_options, with_options

ENV = "ONNXCAM_CACHE_DIR"  # a folder, or "off" to disable
TRAILER = b"onnxcam-hmac-1"  # then the 32-byte HMAC: the last bytes of an entry
_TAIL = len(TRAILER) + 32
# Messages that may hold tensors: walked field by field; any other message is small and hashed serialized.
_HOLDS_TENSORS = {
    "ModelProto",
    "GraphProto",
    "NodeProto",
    "AttributeProto",
    "FunctionProto",
    "TrainingInfoProto",
    "SparseTensorProto",
    "TensorProto",
}


def folder() -> str | None:
    """The cache folder: $ONNXCAM_CACHE_DIR, else $XDG_CACHE_HOME/onnxcam, else ~/.cache/onnxcam."""
    chosen = os.environ.get(ENV)
    if chosen == "off":
        return None
    if not chosen:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        chosen = os.path.join(base, "onnxcam")
    return chosen


def secret_path() -> str:
    """This user's HMAC secret: $XDG_STATE_HOME/onnxcam/cache.key, else ~/.local/state/onnxcam/cache.key
    (never inside the cache folder, which may be shared or synced)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "onnxcam", "cache.key")


def model_digest(model: onnx.ModelProto) -> str:
    """sha256 of a loaded model: every field of it, tensors' data (external data once loaded) included.

    The key of a model's entries: the explainer hashes the very ModelProto it builds sessions from, so no
    file can change between reading and hashing. Walked field by field rather than serialized, because
    protobuf refuses to serialize a message over 2 GB, and external data exists for such models."""
    h = hashlib.sha256()
    _hash_message(model, h)
    return h.hexdigest()


def _hash_message(message, h) -> None:
    for field, value in message.ListFields():
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        items = list(value) if repeated else [value]
        h.update(struct.pack("<IQ", field.number, len(items)))
        for item in items:
            if field.type == field.TYPE_MESSAGE and item.DESCRIPTOR.name in _HOLDS_TENSORS:
                _hash_message(item, h)
                h.update(b"\0end")
                continue
            if field.type == field.TYPE_MESSAGE:
                data = item.SerializeToString(deterministic=True)
            elif isinstance(item, bytes):
                data = item
            else:
                data = repr(item).encode()
            h.update(struct.pack("<Q", len(data)))
            h.update(data)


def describe(model_digest_: str, parts: dict, providers: list) -> bytes:
    """Everything an entry depends on, as bytes: what its name and its HMAC are made of."""
    return json.dumps(
        {
            "model": model_digest_,
            "parts": parts,
            "providers": providers,
            "cpu": _cpu(),
            "onnxcam": _source_digest(),
            "onnxruntime": ort.__version__,
        },
        sort_keys=True,
        default=str,
    ).encode()


def entry_path(model_digest_: str, parts: dict, providers: list) -> str | None:
    """Where the session for this model and these choices lives (None when caching is off)."""
    root = folder()
    if root is None:
        return None
    name = hashlib.sha256(describe(model_digest_, parts, providers)).hexdigest()[:32]
    return os.path.join(root, name + ".onnx")


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
    """The session for `key` (everything that shapes the graph, `model_digest` of the model as "model") from
    the cache, else a new session of build() (an onnx.ModelProto), whose optimized form is saved for next time.
    key None (a model given in memory) or caching off or no usable secret: always built."""
    path = entry_path(key["model"], key, providers) if key is not None else None
    secret = _secret() if path else None
    if secret is None:
        return make_session(build(), providers)
    description = describe(key["model"], key, providers)
    session = load(path, providers, secret, description)
    if session is not None:
        return session
    model = build()
    tmp = _temp(path)
    try:
        session = _build_saving(model, providers, tmp)
        if tmp:
            commit(tmp, path, secret, description)
    finally:
        writer.discard(tmp)
    return session


def has_entry(key: dict, providers: list) -> bool:
    """Whether a session for `key` is cached (no graph surgery is needed to know what it computes)."""
    path = entry_path(key["model"], key, providers)
    return path is not None and _secret() is not None and os.path.isfile(path)


def _build_saving(model, providers, tmp):
    """A session of `model` that also writes its optimized form to tmp; if that fails (a full disk, a folder
    gone read-only), the session is built again without saving, so the cache never makes a run fail."""
    if tmp is None:
        return make_session(model, providers)
    options = session_options()
    options.optimized_model_filepath = tmp
    try:
        return make_session(model, providers, options)
    except ModelError:
        return make_session(model, providers)


def load(path: str, providers: list, secret: bytes, description: bytes):
    """The cached session, or None if there is none, or its HMAC does not match (damaged, edited, foreign),
    or ONNX Runtime cannot load it: it is then rebuilt. The entry is read once; ORT gets the bytes checked."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size <= _TAIL:
                return None
            data = f.read(st.st_size - _TAIL)
            tail = f.read(_TAIL + 1)
    except OSError:
        return None
    if len(tail) != _TAIL or not tail.startswith(TRAILER):
        return None
    if not hmac.compare_digest(tail[len(TRAILER) :], _mac(secret, description, data)):
        return None
    options = session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # optimized already
    try:
        return ort.InferenceSession(data, options, providers=with_options(providers))
    except Exception:
        return None


def _mac(secret: bytes, description: bytes, data: bytes) -> bytes:
    h = hmac.new(secret, hashlib.sha256(description).digest(), hashlib.sha256)
    h.update(data)
    return h.digest()


def _temp(path: str) -> str | None:
    """A temporary file in the cache folder for ORT to write the optimized model to; None when the folder
    cannot be created or written (caching is best effort). Left-over ones of killed runs are removed first."""
    root = os.path.dirname(path)
    try:
        os.makedirs(root, exist_ok=True)
        writer.clean_stale(root)
        return writer.temp_file(root)
    except OSError:
        return None


def commit(tmp: str, path: str, secret: bytes, description: bytes) -> None:
    """Seal a finished entry with its HMAC and move it into place; an empty or unwritable one is dropped."""
    try:
        with open(tmp, "r+b") as f:
            data = f.read()
            if not data:
                return
            f.write(TRAILER + _mac(secret, description, data))
        os.replace(tmp, path)
    except OSError:
        pass


@functools.cache
def _secret_at(path: str) -> bytes | None:
    """The 32-byte secret at `path`, made on first use; None if it cannot be made, or is not a private regular
    file of this user (then anyone who can read it could forge entries)."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        if not os.path.lexists(path):
            tmp = writer.temp_file(os.path.dirname(path))  # 0600
            try:
                with open(tmp, "wb") as f:
                    f.write(os.urandom(32))
                os.link(tmp, path)  # fails if another process made it first: theirs is used
            except FileExistsError:
                pass
            finally:
                writer.discard(tmp)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            secret = f.read(33)
    except OSError:
        return None
    private = stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077
    return secret if private and len(secret) == 32 else None


def _secret() -> bytes | None:
    return _secret_at(secret_path())
