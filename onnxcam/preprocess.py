"""Image loading, how an image is fit to the model's input, and the preprocessing presets exported models expect.

A preset is (mean, std, channel order) on 0..255 pixel values. An image is fit to the input size (no crop, so
every input pixel has a place in the heatmap) in one of two ways, `RESIZES`: "stretch", a plain resize, or
"letterbox", ultralytics' LetterBox (what its static-shape ONNX exports are fed): scaled to fit with its aspect
ratio kept, the rest padded grey. `Fit` holds that geometry for one image and maps boxes and maps back.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import tempfile
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from onnxcam.errors import ImageError, OnnxcamError
from onnxcam.names import DEFAULT_MAX_PIXELS, RESIZES, check_choice


@dataclass(frozen=True)
class Preset:
    mean: tuple
    std: tuple
    bgr: bool
    summary: str


PRESETS = {
    "imagenet": Preset(
        (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False, "torchvision: RGB, /255, ImageNet mean/std"
    ),
    "inception": Preset((127.5,) * 3, (127.5,) * 3, False, "TF/Keras: RGB, (x - 127.5) / 127.5"),
    "lite": Preset((127.0,) * 3, (128.0,) * 3, False, "EfficientNet-Lite: RGB, (x - 127) / 128"),
    "caffe": Preset((103.939, 116.779, 123.68), (1.0,) * 3, True, "Caffe/Keras-ResNet: BGR, minus ImageNet mean"),
    "unit": Preset((0.0,) * 3, (255.0,) * 3, False, "RGB, x / 255 (0..1)"),
    "raw": Preset((0.0,) * 3, (1.0,) * 3, False, "RGB, 0..255 as is"),
    "bgr": Preset((0.0,) * 3, (1.0,) * 3, True, "BGR, 0..255 as is (Windows ML Bgr8, NominalRange_0_255)"),
}


PAD = 114  # the grey of ultralytics' letterbox bands, on 0..255 pixel values


@dataclass(frozen=True)
class Fit:
    """Where one image (image_size = (h, w)) sits in the model's input (model_size = (H, W)): resized to `scaled`
    (h', w'), its top-left corner at (top, left); the rest of the input is padding."""

    resize: str
    model_size: tuple
    image_size: tuple
    scaled: tuple
    top: int = 0
    left: int = 0

    def place(self, rgb: np.ndarray) -> np.ndarray:
        """The image (uint8 HxWxC) as the model sees it, before normalization. Stretch shrinks with INTER_AREA;
        letterbox resizes as ultralytics does (INTER_LINEAR, only when the size changes) and pads with PAD."""
        (sh, sw), (h, w) = self.scaled, self.model_size
        if self.resize == "stretch":
            interpolation = cv2.INTER_AREA if rgb.shape[0] > h or rgb.shape[1] > w else cv2.INTER_LINEAR
            return cv2.resize(rgb, (w, h), interpolation=interpolation)
        if rgb.shape[:2] != (sh, sw):
            rgb = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_LINEAR)
        out = np.full((h, w, rgb.shape[2]), PAD, np.uint8)
        out[self.top : self.top + sh, self.left : self.left + sw] = rgb
        return out

    def box_to_image(self, box) -> list:
        """A box (x1, y1, x2, y2) in model-input pixels -> image pixels: ultralytics' scale_boxes (padding taken
        off, divided by each axis's gain, clipped to the image), then rounded and clipped to the last pixel."""
        (ih, iw), (sh, sw) = self.image_size, self.scaled
        x1, y1, x2, y2 = box
        xs = [min(max((x - self.left) * iw / sw, 0), iw) for x in (x1, x2)]
        ys = [min(max((y - self.top) * ih / sh, 0), ih) for y in (y1, y2)]
        return [int(min(round(v), limit - 1)) for v, limit in zip((xs[0], ys[0], xs[1], ys[1]), (iw, ih, iw, ih))]

    def map_to_image(self, heat: np.ndarray) -> np.ndarray:
        """A map at the model's input size -> the image's size: the padding cut away, the rest resized
        (cv2.resize's bilinear), so it lies on the picture as the input lay on the model."""
        (ih, iw), (sh, sw) = self.image_size, self.scaled
        inside = heat[self.top : self.top + sh, self.left : self.left + sw]
        return inside if inside.shape == (ih, iw) else cv2.resize(inside, (iw, ih))


def fit(resize: str, model_size: tuple, image_size: tuple) -> Fit:
    """How an image of image_size (h, w) is fit to model_size (H, W) by `resize` (one of RESIZES). Letterbox is
    ultralytics' LetterBox(auto=False, scaleup=True, center=True): r = min(H / h, W / w), each side rounded
    (at least 1 pixel), the padding split with round(d / 2 -+ 0.1)."""
    check_choice("resize", resize, RESIZES)
    (mh, mw), (h, w) = tuple(model_size), tuple(image_size)
    if resize == "stretch":
        return Fit(resize, (mh, mw), (h, w), (mh, mw))
    r = min(mh / h, mw / w)
    sh, sw = max(round(h * r), 1), max(round(w * r), 1)
    return Fit(resize, (mh, mw), (h, w), (sh, sw), round((mh - sh) / 2 - 0.1), round((mw - sw) / 2 - 0.1))


# Images with more pixels than this are refused unless the caller raises the limit (`--max-pixels`):
# a few-kilobyte PNG may declare 50000 x 50000 pixels and decode to gigabytes.
# The formats whose size `image_size` reads from the header; anything else is refused before decoding.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WebP", "TIFF", "PNM")
BACKGROUND = 255  # transparent pixels are composited over white, as a viewer shows them


def load_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An HxWx3 uint8 RGB array.

    The header is read first (no decoding): files that are not PNG / JPEG / BMP / GIF / WebP / TIFF /
    PNM, or that declare more than `max_pixels` pixels, are refused before any pixel is allocated.
    Then: EXIF orientation applied, grayscale and palette images expanded to RGB, 16-bit scaled to
    8-bit, and an alpha channel composited over white (what an image viewer shows).
    """
    if not os.path.isfile(path):
        raise ImageError(f"image file not found: {path}")
    _check_file_size(os.path.getsize(path), path, max_pixels)
    return decode_image(np.fromfile(path, dtype=np.uint8), path, max_pixels)


def max_file_size(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """More bytes than any image file of max_pixels needs: larger files are refused unread."""
    return max(64 << 20, 16 * max_pixels)


def _check_file_size(size: int, path: str, max_pixels: int) -> None:
    if size == 0:
        raise ImageError(f"empty image file: {path}")
    if size > max_file_size(max_pixels):
        raise ImageError(
            f"{path} is {size} bytes, too large for an image of at most {max_pixels} pixels; "
            "raise --max-pixels if it is really one"
        )


def decode_image(data, path: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """load_image for the bytes of an image file read elsewhere (an object store, a Ray dataset); `path`
    names it in errors."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    _check_file_size(data.size, path, max_pixels)
    kind, width, height, alpha = image_size(data, path)
    if width * height > max_pixels:
        raise ImageError(
            f"{path} declares {width}x{height} pixels ({width * height}), more than the limit of {max_pixels}; "
            "raise it with --max-pixels if the image is genuine"
        )
    image, log = _decode(data, cv2.IMREAD_COLOR)  # applies EXIF orientation, drops alpha, 16-bit -> 8-bit
    if image is None and "CV_IO_MAX_IMAGE_PIXELS" in log:
        raise ImageError(
            f"{path} declares {width}x{height} pixels, more than OpenCV's own limit; set the "
            "environment variable OPENCV_IO_MAX_IMAGE_PIXELS higher before starting onnxcam"
        )
    if image is None:
        raise ImageError(f"not a readable image: {path} (a damaged or truncated {kind} file{log})")
    if alpha:
        image = _composite(data, image)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode(data: np.ndarray, flags: int):
    """cv2.imdecode with OpenCV's log silenced and the decoders' direct stderr messages (libpng, libjpeg)
    captured: a damaged file should make one clear error, not a screenful. Returns (image or None,
    '; the decoder says ...')."""
    error = ""
    with quiet_opencv(), _CapturedStderr() as captured:
        try:
            image = cv2.imdecode(data, flags)
        except cv2.error as exc:  # e.g. above OpenCV's own pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS)
            image, error = None, str(exc).strip().splitlines()[-1]
    said = " ".join(f"{captured.text} {error}".split())
    return image, f"; the decoder says: {said[:200]}" if said else ""


_quiet_lock = threading.Lock()
_quiet_count = [0, None]  # blocks inside quiet_opencv, the log level to restore after the last


@contextlib.contextmanager
def quiet_opencv():
    """OpenCV's own log (its "[ERROR:0@...]" lines) silenced while inside, from any thread: the level is
    process-wide, so it is set by the first block to enter and restored by the last to leave."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:
        yield
        return
    with _quiet_lock:
        if _quiet_count[0] == 0:
            _quiet_count[1] = log.getLogLevel()
            log.setLogLevel(log.LOG_LEVEL_SILENT)
        _quiet_count[0] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_count[0] -= 1
            if _quiet_count[0] == 0:
                log.setLogLevel(_quiet_count[1])


_capture_lock = threading.Lock()


class _CapturedStderr:
    """Redirect file descriptor 2 (where libpng and libjpeg write their messages themselves) to a temporary
    file for the duration of a `with` block; `text` then holds what was written.

    fd 2 is process-wide, so one capture runs at a time (a lock), and while it lasts Python's sys.stderr, if
    it writes to fd 2, is replaced by a stand-in that writes to the real stderr: what other threads print
    meanwhile (run's writer thread: the flat-map warnings) reaches the terminal instead of the capture."""

    def __enter__(self):
        self.text, self._saved, self._stand_in = "", None, None
        _capture_lock.acquire()
        try:
            self._start()
        except BaseException:
            _capture_lock.release()
            raise
        return self

    def _start(self):
        stream = sys.stderr
        try:
            stream.flush()
            on_fd2 = stream.fileno() == 2
        except (OSError, ValueError, AttributeError):  # sys.stderr may be None, closed, or not a file
            on_fd2 = False
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (some embedded interpreters): leave it be
            return
        self._file = tempfile.TemporaryFile()
        if on_fd2:
            self._stand_in = sys.stderr = _StderrStandIn(stream, saved)
        os.dup2(self._file.fileno(), 2)
        self._saved = saved

    def __exit__(self, *exc):
        try:
            if self._saved is not None:
                os.dup2(self._saved, 2)
                if self._stand_in is not None:
                    sys.stderr = self._stand_in.release()
                os.close(self._saved)
                self._file.seek(0)
                self.text = self._file.read(4096).decode(errors="replace")
                self._file.close()
        finally:
            _capture_lock.release()
        return False


class _StderrStandIn:
    """sys.stderr during a capture: text goes straight to a duplicate of the real fd 2; once released (a
    thread may still hold it), to the original stream again."""

    def __init__(self, original, fd: int):
        self._original, self._fd, self._lock = original, fd, threading.Lock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            if self._fd is not None:
                data = text.encode(getattr(self._original, "encoding", None) or "utf-8", "backslashreplace")
                while data:
                    data = data[os.write(self._fd, data) :]
                return len(text)
        return self._original.write(text)

    def flush(self) -> None:
        if self._fd is None:
            self._original.flush()

    def release(self):
        """Stop writing to the duplicate (it is about to be closed); returns the original stream."""
        with self._lock:
            self._fd = None
        return self._original

    def __getattr__(self, name):
        return getattr(self._original, name)


def _composite(data: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Composite the alpha channel (read with IMREAD_UNCHANGED, which ignores EXIF orientation) over white,
    in the orientation that IMREAD_COLOR gave `color`."""
    full, _ = _decode(data, cv2.IMREAD_UNCHANGED)
    if full is None or full.ndim != 3 or full.shape[2] not in (2, 4) or full.dtype not in (np.uint8, np.uint16):
        return color
    scale = 257.0 if full.dtype == np.uint16 else 1.0
    alpha = full[..., -1:].astype(np.float32) / (255.0 * scale)
    stored = full[..., :-1]
    stored = cv2.cvtColor(stored, cv2.COLOR_GRAY2BGR) if stored.shape[2] == 1 else stored
    stored = (stored >> 8).astype(np.uint8) if full.dtype == np.uint16 else stored
    # EXIF orientation: the transform under which the unoriented pixels match the oriented ones
    turns = [t for t in _DIHEDRAL if t(stored).shape == color.shape and np.array_equal(t(stored), color)]
    turns = turns or [t for t in _DIHEDRAL[:1] if stored.shape == color.shape]
    if not turns:
        return color
    alpha = turns[0](alpha[..., 0])[..., None]
    return np.uint8(np.clip(np.rint(color * alpha + BACKGROUND * (1.0 - alpha)), 0, 255))


_DIHEDRAL = (
    lambda a: a,
    lambda a: a[:, ::-1],
    lambda a: a[::-1],
    lambda a: a[::-1, ::-1],
    lambda a: a.swapaxes(0, 1),
    lambda a: a.swapaxes(0, 1)[:, ::-1],
    lambda a: a.swapaxes(0, 1)[::-1],
    lambda a: a.swapaxes(0, 1)[::-1, ::-1],
)


def image_size(data, path: str = "image") -> tuple:
    """(format, width, height, may have alpha) of an image file's bytes (or uint8 array), from its header
    alone: nothing is decoded. Raises ImageError for a format outside FORMATS or a header without a size."""
    view = memoryview(np.ascontiguousarray(data, dtype=np.uint8) if isinstance(data, np.ndarray) else data)
    try:
        found = _parse_header(view)
    except (struct.error, IndexError, ValueError, KeyError, TypeError):
        found = None
    except _Refused as refused:
        raise ImageError(f"{path} is refused before decoding: {refused}") from None
    if found is None:
        head = bytes(view[:16])
        known = next((k for sig, k in _OTHER_SIGNATURES if head.startswith(sig)), None)
        if known:
            raise ImageError(f"{path}: {known} images are not supported; convert it to PNG or JPEG")
        raise ImageError(f"not a readable image: {path} (not a {', '.join(FORMATS)} file, or its header is damaged)")
    kind, width, height, alpha = found
    if width <= 0 or height <= 0:
        raise ImageError(f"not a readable image: {path} (its {kind} header declares {width}x{height} pixels)")
    return kind, width, height, alpha


_OTHER_SIGNATURES = (
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"#?RGBE", "Radiance HDR"),
    (b"PF", "PFM"),
    (b"Pf", "PFM"),
    (b"\x59\xa6\x6a\x95", "Sun raster"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
)


def _parse_header(b: memoryview):
    head = bytes(b[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        width, height, _, color_type = struct.unpack(">IIBB", b[16:26])
        return "PNG", width, height, color_type in (4, 6) or _png_has_trns(b)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(b)
    if head.startswith(b"BM"):
        header = struct.unpack("<I", b[14:18])[0]
        if header == 12:  # OS/2 BITMAPCOREHEADER
            width, height = struct.unpack("<HH", b[18:22])
        else:
            width, height = struct.unpack("<ii", b[18:26])
        return "BMP", abs(width), abs(height), False  # 32-bit BMPs mostly leave alpha unused (zero)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", b[6:10])
        return "GIF", width, height, True
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp_size(b)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_size(b)
    if len(head) > 2 and head[:1] == b"P" and head[1:2] in b"1234567":
        return _pnm_size(b)
    return None


def _png_has_trns(b: bytes) -> bool:
    """Whether a tRNS chunk (palette or colour-key transparency) comes before the image data."""
    pos = 8
    while pos + 8 <= len(b):
        length, kind = struct.unpack(">I4s", b[pos : pos + 8])
        if kind in (b"tRNS", b"IDAT", b"IEND"):
            return kind == b"tRNS"
        pos += 12 + length
    return True  # not enough header to tell: check the decoded image


def _jpeg_size(b: bytes):
    pos = 2
    while pos + 4 <= len(b):
        if b[pos] != 0xFF:
            return None
        marker = b[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            pos += 2
            continue
        length = struct.unpack(">H", b[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", b[pos + 5 : pos + 9])
            return "JPEG", width, height, False
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _webp_size(b: bytes):
    chunk = bytes(b[12:16]).decode("latin-1")
    if chunk == "VP8X":
        flags = b[20]
        width = 1 + int.from_bytes(b[24:27], "little")
        height = 1 + int.from_bytes(b[27:30], "little")
        return "WebP", width, height, bool(flags & 0x10)
    if chunk == "VP8L" and b[20] == 0x2F:
        bits = int.from_bytes(b[21:25], "little")
        return "WebP", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), bool(bits >> 28 & 1)
    if chunk == "VP8 " and bytes(b[23:26]) == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", b[26:30])
        return "WebP", width & 0x3FFF, height & 0x3FFF, False
    return None


# What a TIFF header may ask the decoder to allocate besides width x height: a tile's pixels (a 64x64 image may
# declare 16384x16384 tiles), samples per pixel and bits per sample, the number of strips, tiles and pages.
TIFF_MAX_TILE_PIXELS = 1 << 20  # or 4 x the image's pixels where that is more
TIFF_MAX_SAMPLES = 16
TIFF_MAX_BITS = 64
TIFF_MAX_PAGES = 1024


class _Refused(Exception):
    """A header that declares what onnxcam will not decode; the message says what."""


def _tiff_size(b: bytes):
    """Width and height of the first image (IFD) of a TIFF or BigTIFF file, after checking every image's
    tile size, samples, bits and block counts, and the number of images, against the TIFF_MAX_* bounds."""
    order = "<" if bytes(b[:2]) == b"II" else ">"
    big = struct.unpack(order + "H", b[2:4])[0] == 43
    offset = struct.unpack(order + ("Q" if big else "I"), b[8:16] if big else b[4:8])[0]
    first, seen = None, set()
    while offset:
        if offset in seen:
            raise _Refused("its TIFF directories form a loop")
        seen.add(offset)
        if len(seen) > TIFF_MAX_PAGES:
            raise _Refused(f"it declares more than {TIFF_MAX_PAGES} TIFF pages")
        tags, offset = _tiff_directory(b, offset, order, big)
        if 256 not in tags or 257 not in tags:
            return None
        _check_tiff_page(tags)
        first = first or (tags[256][1], tags[257][1])
    if first is None:
        return None
    return "TIFF", first[0], first[1], True


def _tiff_directory(b, offset: int, order: str, big: bool) -> tuple:
    """({tag: (count, first value or None)}, next directory's offset) of the directory at `offset`."""
    count_fmt, entry, value_at = ("Q", 20, 12) if big else ("H", 12, 8)
    size = struct.calcsize(count_fmt)
    count = struct.unpack(order + count_fmt, b[offset : offset + size])[0]
    start = offset + size
    tags = {}
    for i in range(min(count, 4096)):
        e = b[start + i * entry : start + (i + 1) * entry]
        tag, kind = struct.unpack(order + "HH", e[:4])
        n = struct.unpack(order + ("Q" if big else "I"), e[4:value_at])[0]
        fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
        value = None
        if fmt and n >= 1:
            where, at = e, value_at  # the values are in the entry if they fit, else at the offset it holds
            if n * struct.calcsize(fmt) > entry - value_at:
                where, at = b, struct.unpack(order + ("Q" if big else "I"), e[value_at:entry])[0]
            value = struct.unpack(order + fmt, where[at : at + struct.calcsize(fmt)])[0]
        tags[tag] = (n, value)
    end = start + count * entry
    following = struct.unpack(order + ("Q" if big else "I"), b[end : end + (8 if big else 4)])[0]
    return tags, following


def _check_tiff_page(tags: dict) -> None:
    width, height = tags[256][1], tags[257][1]
    if width is None or height is None:
        raise ValueError("no size")
    samples = tags.get(277, (1, 1))[1] or 1
    bits = tags.get(258, (1, 8))[1] or 8
    if samples > TIFF_MAX_SAMPLES or bits > TIFF_MAX_BITS:
        raise _Refused(
            f"its TIFF header declares {samples} samples of {bits} bits a pixel (onnxcam reads at most "
            f"{TIFF_MAX_SAMPLES} of {TIFF_MAX_BITS})"
        )
    planes = samples if tags.get(284, (1, 1))[1] == 2 else 1  # PlanarConfiguration 2: one plane per sample
    if 322 in tags or 323 in tags:
        tile_w, tile_h = tags.get(322, (1, 0))[1] or 0, tags.get(323, (1, 0))[1] or 0
        limit = max(TIFF_MAX_TILE_PIXELS, 4 * width * height)
        if tile_w <= 0 or tile_h <= 0 or tile_w * tile_h > limit:
            raise _Refused(
                f"its TIFF header declares {tile_w}x{tile_h} pixel tiles for a {width}x{height} image "
                f"(at most {limit} pixels a tile)"
            )
        blocks = -(-width // tile_w) * -(-height // tile_h) * planes
        counted = (324, 325)
    else:
        rows = min(tags.get(278, (1, height))[1] or height, height) or 1
        blocks = -(-height // rows) * planes
        counted = (273, 279)
    for tag in counted:
        if tags.get(tag, (0, None))[0] > blocks:
            raise _Refused(
                f"its TIFF header lists {tags[tag][0]} data blocks where a {width}x{height} image has {blocks}"
            )


def _pnm_size(b: bytes):
    text = bytes(b[:4096]).decode("latin-1")
    if text[1] == "7":  # PAM: WIDTH / HEIGHT lines
        fields = dict(line.split(None, 1) for line in text.splitlines()[1:] if " " in line.strip())
        return "PNM", int(fields["WIDTH"]), int(fields["HEIGHT"]), True
    tokens = []
    for line in text[2:].splitlines():
        tokens += line.split("#", 1)[0].split()
        if len(tokens) >= 2:
            return "PNM", int(tokens[0]), int(tokens[1]), False
    return None


def load_tensor(path: str) -> np.ndarray:
    """A ready input tensor saved with np.save (pickles refused: a .npy may come from anywhere)."""
    if not os.path.isfile(path):
        raise ImageError(f"input tensor file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ImageError(f"empty input tensor file: {path}")
    try:
        # mmap: the header cannot make us allocate more than the file holds
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # ValueError, EOFError, zipfile.BadZipFile, ...: the file is not a .npy
        raise ImageError(f"not a readable .npy tensor: {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, np.ndarray):  # an .npz archive
        loaded.close()
        raise ImageError(f"{path} is an .npz archive; save one tensor with np.save")
    x = np.array(loaded)
    if x.dtype.kind != "f":
        raise ImageError(f"{path} holds {x.dtype} values; an input tensor must be floating point")
    return x


# Integer image inputs take the pixels themselves (such models, TFLite conversions typically, normalize
# inside the graph): dtype -> the offset added to the 0..255 value. int8 follows TFLite's rule, pixel - 128.
INTEGER_INPUTS = {np.dtype(np.uint8): 0, np.dtype(np.int8): -128}


def to_tensor(
    images: list, size: tuple, layout: str, channels: int, preset: str, dtype=np.float32, resize: str = "stretch"
) -> np.ndarray:
    """Fit RGB uint8 images to (height, width) by `resize` (RESIZES), normalize with the preset, stack in the
    model's layout.
    A uint8 or int8 input gets the pixels (in the preset's channel order) without the preset's mean and std:
    0..255, or pixel - 128; any other non-float input dtype is refused, naming it."""
    check_choice("preprocessing preset", preset, PRESETS)
    dtype = np.dtype(dtype)
    integer = dtype in INTEGER_INPUTS
    if dtype.kind != "f" and not integer:
        raise OnnxcamError(
            f"the model's image input is {dtype}; onnxcam feeds images to float, uint8 (pixels "
            "0..255) or int8 (pixel - 128) inputs only; pass a ready input tensor instead"
        )
    p = PRESETS[preset]
    batch = []
    for rgb in images:
        x = fit(resize, size, rgb.shape[:2]).place(rgb).astype(np.float32)
        mean, std = (
            (np.float32(-INTEGER_INPUTS[dtype]), np.float32(1)) if integer else (np.float32(p.mean), np.float32(p.std))
        )
        if p.bgr:
            x = x[..., ::-1]
        if channels == 1:
            x, mean, std = x.mean(axis=2, keepdims=True), mean.mean(keepdims=True), std.mean(keepdims=True)
        batch.append((x - mean) / std)
    x = np.stack(batch)
    x = x if layout == "NHWC" else x.transpose(0, 3, 1, 2)
    if integer:
        x = np.rint(x)
    return np.ascontiguousarray(x, dtype=dtype)
