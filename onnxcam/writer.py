"""Atomic output files: a set of files is written all or nothing, and never onto what it must not replace.

Each file goes to a temporary file in its target folder first; once every file of the set is staged, they
are renamed into place, and if one rename fails (a name too long for the file system, a folder that went
away) the renamed ones are rolled back to what was there before. Ctrl-C, SIGTERM and SIGHUP are held off
for the few renames, so a run stopped at any point leaves the old set or the new one, never half of either
(files are not fsynced: that guards against power loss, at a disk flush per file, which a folder of
thousands cannot afford). Temporary files are named after the host and process that made them: one left by
a process that no longer runs (killed with SIGKILL) is removed the next time onnxcam writes to that folder.

A target that is not a regular file (a folder, a device node, a pipe), or that is one of the run's inputs
(`protected`: the model and its external data, the images, a boxes file, through any name), is refused.
A new file gets the umask's permissions, a replaced regular file keeps its own (without setuid, setgid or
sticky bits); a symbolic link at a target name is replaced, its target's permissions are never copied.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import stat
import tempfile
import threading
import time
from typing import TYPE_CHECKING

from onnxcam import interrupts
from onnxcam.errors import OnnxcamError, OutputError

if TYPE_CHECKING:
    import numpy as np

TEMP_PREFIX = ".onnxcam-"
# A temporary file whose name does not say which local process made it (another host's, an older onnxcam's)
# is removed only when it is older than this.
STALE_SECONDS = 24 * 3600
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(r"\.onnxcam-(?:([0-9a-f]{8})-(\d+)-)?.*\.tmp\Z")


def check_target(path: str, protected=()) -> None:
    """Refuse an output path that exists and is not a regular file (OutputError), or that is one of the
    `protected` paths, the inputs of the run, under that name or another: a symbolic or hard link (OnnxcamError)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, pipe or socket"
        raise OutputError(f"refusing to replace {path}: it is {kind}, not a regular file; choose another output path")
    for other in protected:
        try:
            same = os.path.samestat(st, os.stat(other))
        except OSError:
            continue
        if same:  # a user error (exit 1, as README promises), not a failure to write
            raise OnnxcamError(
                f"refusing to overwrite the input {other} with the output {path}; choose another output path"
            )


def write_files(files: dict, protected=()) -> None:
    """Write {path: bytes}, all or nothing: every file staged, then each renamed into place (see the module)."""
    for path in files:
        check_target(path, protected)
    for folder in {os.path.dirname(os.path.abspath(p)) for p in files}:
        clean_stale(folder)
    staged, backups, renamed = {}, {}, []
    try:
        for path, data in files.items():
            staged[path] = _stage(path, data)
        with interrupts.held():
            try:
                for path, tmp in staged.items():
                    backups[path] = _backup(path)
                    _replace(tmp, path)
                    renamed.append(path)
            except BaseException:
                _roll_back(renamed, backups)
                raise
    finally:  # an error or an interrupt: no temporary file stays behind
        for tmp in [*staged.values(), *backups.values()]:
            discard(tmp)


def write_bytes(path: str, data: bytes, protected=()) -> None:
    write_files({path: data}, protected)


# picture format -> OpenCV encoder parameters. PNG is lossless; JPEG (quality 95) encodes an overlay about
# 10x faster (0.9 against 10 ms for 451 x 300 pixels), which shows in folder throughput.
# (OpenCV and NumPy are imported on first use: the CLI imports this module for every command, --help too.)
PICTURE_FORMATS = {"png": {}, "jpg": {"IMWRITE_JPEG_QUALITY": 95}}
MAX_SIDE = {"jpg": 65500}  # libjpeg's limit on either side


def picture_bytes(rgb: np.ndarray, fmt: str = "png") -> bytes:
    """The picture (RGB, or [H, W] grey: a mask) encoded (OpenCV's own log silenced: a failure is one
    OutputError, not a screenful)."""
    import cv2
    import numpy as np

    from onnxcam.preprocess import quiet_opencv

    h, w = rgb.shape[:2]
    if max(h, w) > MAX_SIDE.get(fmt, max(h, w)):
        raise OutputError(
            f"a {w}x{h} picture cannot be a {fmt.upper()} file (at most {MAX_SIDE[fmt]} pixels a side); "
            "use --pictures png"
        )
    with quiet_opencv():
        try:
            params = [v for name, value in PICTURE_FORMATS[fmt].items() for v in (getattr(cv2, name), value)]
            pixels = np.ascontiguousarray(rgb)
            pixels = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(f".{fmt}", pixels, params)
        except cv2.error:
            ok = False
    if not ok:
        raise OutputError(f"OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} {fmt.upper()} picture")
    return buf.tobytes()


def npy_bytes(array: np.ndarray) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def temp_file(folder: str) -> str:
    """A new, empty, private (0600) temporary file in `folder`, named after this host and process so that
    `clean_stale` can tell when it is left over. Raises OSError."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-", suffix=".tmp")
    os.close(fd)
    return tmp


_cleaned = set()
_cleaned_lock = threading.Lock()


def clean_stale(folder: str) -> None:
    """Remove the temporary files that killed onnxcam processes left in `folder` (once per folder and process):
    those of this host whose process is gone, and any older than STALE_SECONDS. Only regular files of ours."""
    with _cleaned_lock:
        if folder in _cleaned:
            return
        _cleaned.add(folder)
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return
    now = time.time()
    for name in names:
        match = _TEMP_NAME.match(name)
        if not match:
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            continue
        host, pid = match.groups()
        gone = host == _HOST and not _process_alive(int(pid))
        if gone or now - st.st_mtime > STALE_SECONDS:
            discard(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _stage(path: str, data: bytes) -> str:
    """A complete temporary copy of `data` next to `path`, with the permissions `path` should get."""
    try:
        tmp = temp_file(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600 files; outputs get the usual permissions
    except BaseException as exc:
        discard(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return tmp


def _backup(path: str) -> str | None:
    """A second name (a hard link) for the file at `path`, so that a rollback can put it back; None if there is
    none. Where hard links are not supported, the file is moved aside instead."""
    if not os.path.lexists(path):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    backup = os.path.join(folder, f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-{os.urandom(6).hex()}.tmp")
    try:
        os.link(path, backup, follow_symlinks=False)
    except OSError:
        try:
            os.rename(path, backup)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return backup


def _roll_back(renamed: list, backups: dict) -> None:
    """Put back what was at each renamed path before (or nothing, where nothing was)."""
    for path in reversed(renamed):
        try:
            if backups.get(path):
                os.replace(backups[path], path)
            else:
                os.unlink(path)
        except OSError:
            pass


def _replace(tmp: str, path: str) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def discard(path: str | None) -> None:
    """Remove a file if it is there (a temporary one: no error if it is gone or cannot be removed)."""
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _read_umask() -> int:
    """The process umask, read once at import: os.umask can only be read by setting it, which must not happen
    while another thread (run's background writer, the session cache) creates files."""
    umask = os.umask(0o22)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _mode_for(path: str) -> int:
    """A replaced regular file keeps its permission bits; anything else (nothing there, a symbolic link) gives
    0666 less the umask, as open() would. Never setuid, setgid or sticky."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return st.st_mode & 0o777
    return 0o666 & ~_UMASK
