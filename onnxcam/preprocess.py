"""Image loading and the preprocessing presets that exported classifiers expect.

A preset is (mean, std, channel order) on 0..255 pixel values; images are
resized straight to the model's input size (no crop), so every input pixel has
a place in the heatmap.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np

from onnxcam.errors import ImageError, OnnxcamError
from onnxcam.names import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Preset:
    mean: tuple
    std: tuple
    bgr: bool
    summary: str


PRESETS = {
    "imagenet": Preset((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False, "torchvision: RGB, /255, ImageNet mean/std"),
    "inception": Preset((127.5,) * 3, (127.5,) * 3, False, "TF/Keras: RGB, (x - 127.5) / 127.5"),
    "lite": Preset((127.0,) * 3, (128.0,) * 3, False, "EfficientNet-Lite: RGB, (x - 127) / 128"),
    "caffe": Preset((103.939, 116.779, 123.68), (1.0,) * 3, True, "Caffe/Keras-ResNet: BGR, minus ImageNet mean"),
    "unit": Preset((0.0,) * 3, (255.0,) * 3, False, "RGB, x / 255 (0..1)"),
    "raw": Preset((0.0,) * 3, (1.0,) * 3, False, "RGB, 0..255 as is"),
    "bgr": Preset((0.0,) * 3, (1.0,) * 3, True, "BGR, 0..255 as is (Windows ML Bgr8, NominalRange_0_255)"),
}


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
    size = os.path.getsize(path)
    if size == 0:
        raise ImageError(f"empty image file: {path}")
    if size > max(64 << 20, 16 * max_pixels):  # more bytes than any image of max_pixels needs
        raise ImageError(f"{path} is {size} bytes, too large for an image of at most {max_pixels} pixels; "
                         "raise --max-pixels if it is really one")
    data = np.fromfile(path, dtype=np.uint8)
    kind, width, height, alpha = image_size(data, path)
    if width * height > max_pixels:
        raise ImageError(
            f"{path} declares {width}x{height} pixels ({width * height}), more than the limit of {max_pixels}; "
            "raise it with --max-pixels if the image is genuine"
        )
    image, log = _decode(data, cv2.IMREAD_COLOR)  # applies EXIF orientation, drops alpha, 16-bit -> 8-bit
    if image is None and "CV_IO_MAX_IMAGE_PIXELS" in log:
        raise ImageError(f"{path} declares {width}x{height} pixels, more than OpenCV's own limit; set the "
                         "environment variable OPENCV_IO_MAX_IMAGE_PIXELS higher before starting onnxcam")
    if image is None:
        raise ImageError(f"not a readable image: {path} (a damaged or truncated {kind} file{log})")
    if alpha:
        image = _composite(data, image)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode(data: np.ndarray, flags: int):
    """cv2.imdecode with OpenCV's log silenced and libpng's direct stderr messages captured: a damaged
    file should make one clear error, not a screenful. Returns (image or None, '; decoder says ...')."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    level = log.getLogLevel() if log else None
    if log:
        log.setLogLevel(log.LOG_LEVEL_SILENT)
    error = ""
    try:
        with _CapturedStderr() as captured:
            try:
                image = cv2.imdecode(data, flags)
            except cv2.error as exc:  # e.g. above OpenCV's own pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS)
                image, error = None, str(exc).strip().splitlines()[-1]
    finally:
        if log:
            log.setLogLevel(level)
    said = " ".join(f"{captured.text} {error}".split())
    return image, f"; the decoder says: {said[:200]}" if said else ""


class _CapturedStderr:
    """Redirect file descriptor 2 (where libpng writes its errors itself) to a temporary file for the
    duration of a `with` block; `text` then holds what was written. Not thread-safe: fd 2 is process-wide."""

    def __enter__(self):
        self.text, self._saved = "", None
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # sys.stderr may be None or closed
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (some embedded interpreters): leave it be
            return self
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)
        self._saved = saved
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._file.seek(0)
            self.text = self._file.read(4096).decode(errors="replace")
            self._file.close()
        return False


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
    lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1],
    lambda a: a.swapaxes(0, 1), lambda a: a.swapaxes(0, 1)[:, ::-1], lambda a: a.swapaxes(0, 1)[::-1],
    lambda a: a.swapaxes(0, 1)[::-1, ::-1],
)


def image_size(data, path: str = "image") -> tuple:
    """(format, width, height, may have alpha) of an image file's bytes (or uint8 array), from its header
    alone: nothing is decoded. Raises ImageError for a format outside FORMATS or a header without a size."""
    view = memoryview(np.ascontiguousarray(data, dtype=np.uint8) if isinstance(data, np.ndarray) else data)
    try:
        found = _parse_header(view)
    except (struct.error, IndexError, ValueError, KeyError):
        found = None
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


_OTHER_SIGNATURES = ((b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
                     (b"#?RADIANCE", "Radiance HDR"), (b"#?RGBE", "Radiance HDR"), (b"PF", "PFM"),
                     (b"Pf", "PFM"), (b"\x59\xa6\x6a\x95", "Sun raster"), (b"\x76\x2f\x31\x01", "OpenEXR"))


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
        length, kind = struct.unpack(">I4s", b[pos:pos + 8])
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
        length = struct.unpack(">H", b[pos + 2:pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", b[pos + 5:pos + 9])
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


def _tiff_size(b: bytes):
    """Width and height of the first image (IFD) of a TIFF or BigTIFF file."""
    order = "<" if bytes(b[:2]) == b"II" else ">"
    big = struct.unpack(order + "H", b[2:4])[0] == 43
    if big:
        offset = struct.unpack(order + "Q", b[8:16])[0]
        count, entry, first = struct.unpack(order + "Q", b[offset:offset + 8])[0], 20, offset + 8
    else:
        offset = struct.unpack(order + "I", b[4:8])[0]
        count, entry, first = struct.unpack(order + "H", b[offset:offset + 2])[0], 12, offset + 2
    size = {}
    for i in range(min(count, 4096)):
        e = b[first + i * entry:first + (i + 1) * entry]
        tag, kind = struct.unpack(order + "HH", e[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or LONG8, stored in the entry itself
            value = e[12:] if big else e[8:]
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                return None
            size[tag] = struct.unpack(order + fmt, value[:struct.calcsize(fmt)])[0]
    if len(size) < 2:
        return None
    return "TIFF", size[256], size[257], True


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


def to_tensor(images: list, size: tuple, layout: str, channels: int, preset: str, dtype=np.float32) -> np.ndarray:
    """Resize RGB uint8 images to (height, width), normalize with the preset, stack in the model's layout."""
    if preset not in PRESETS:
        raise OnnxcamError(f"unknown preprocessing preset '{preset}'; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    h, w = size
    batch = []
    for rgb in images:
        interpolation = cv2.INTER_AREA if rgb.shape[0] > h or rgb.shape[1] > w else cv2.INTER_LINEAR
        x = cv2.resize(rgb, (w, h), interpolation=interpolation).astype(np.float32)
        mean, std = np.float32(p.mean), np.float32(p.std)
        if p.bgr:
            x = x[..., ::-1]
        if channels == 1:
            x, mean, std = x.mean(axis=2, keepdims=True), mean.mean(keepdims=True), std.mean(keepdims=True)
        batch.append((x - mean) / std)
    x = np.stack(batch)
    return np.ascontiguousarray(x if layout == "NHWC" else x.transpose(0, 3, 1, 2), dtype=dtype)
