"""A localization benchmark with known ground truth: one shape on a real photograph or texture.

Each image (96x96 RGB) holds one object of a class in CLASSES (circle, square, triangle,
cross, star) with a random colour, size, rotation and position, pasted over a random crop of a
photograph or texture bundled with scikit-image, plus 1-2 distractor strokes (random curved
lines, of no class). Only the shape carries the class. For every object the generator keeps its
mask, its box, and the image without it (the same background and strokes), so a benchmark can
check that the object is what the model looks at.

Sample i of a seed depends only on (seed, i): sets are reproducible one image at a time.

    python tools/make_shapes.py OUT --count 500 --seed 3                       # any 500 images
    python tools/make_shapes.py OUT --count 500 --seed 3 --model models/shapes/shapes_cnn.onnx

With --model only images whose true-class probability drops when the object is removed (its
pixels replaced by the background they covered) are kept, until --count are kept. OUT gets
shape_NNNNN.png, masks/shape_NNNNN.png, boxes.json ({"shape_NNNNN.png": [[x0, y0, x1, y1]]}, in
pixel-edge coordinates: pixels x0..x1-1), coco.json (COCO-style: images, annotations with bbox
[x, y, w, h] and category_id, categories) and labels.json ({"shape_NNNNN.png": "circle"}).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "cross", "star")
SIZE = 96
RADIUS = (11, 21)  # circumradius of the object, pixels
SUPERSAMPLE = 4  # masks are drawn at 4x and averaged down: anti-aliased edges
MIN_CONTRAST = 70.0  # RGB distance between the object's colour and the background it covers
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel")
TEXTURES = ("brick", "grass", "gravel", "camera", "coins", "moon", "clock", "text", "page")


@dataclass
class Sample:
    image: np.ndarray  # [S, S, 3] uint8 RGB, with the object
    clean: np.ndarray  # the same image without the object
    mask: np.ndarray  # [S, S] bool: the object's pixels (alpha >= 0.5)
    box: tuple  # (x0, y0, x1, y1), pixel edges: the mask's pixels are x0..x1-1, y0..y1-1
    label: int


@functools.cache
def backgrounds() -> tuple:
    """The source pictures: colour photographs as they are, grey textures as RGB (tinted per crop)."""
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        photos = [np.ascontiguousarray(getattr(skimage.data, n)()[..., :3]) for n in PHOTOS]
        textures = [np.ascontiguousarray(getattr(skimage.data, n)()) for n in TEXTURES]
    return tuple(photos), tuple(textures)


def background(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    photos, textures = backgrounds()
    pool = photos + textures
    source = pool[rng.integers(len(pool))]
    h, w = source.shape[:2]
    side = int(rng.integers(size, min(h, w) + 1))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = cv2.resize(source[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
    if crop.ndim == 2:  # a grey texture: a random tint
        tint = rng.uniform(0.4, 1.0, 3)
        crop = np.uint8(np.clip(crop[..., None] * tint, 0, 255))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def outline(label: int, radius: float, angle: float) -> np.ndarray:
    """[P, 2] polygon of a shape centred at 0 with the given circumradius, rotated by angle (radians);
    a circle is a 64-gon."""
    name = CLASSES[label]
    if name == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return radius * np.stack([np.cos(t), np.sin(t)], 1)
    if name == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        points = radius * np.stack([np.cos(t), np.sin(t)], 1)
    elif name == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        points = radius * np.stack([np.cos(t), np.sin(t)], 1)
    elif name == "cross":  # a plus sign, arms a third of its width
        a, b = radius / np.sqrt(1 + 1 / 9), radius / np.sqrt(1 + 1 / 9) / 3
        points = np.array(
            [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)]
        )
    else:  # a five-pointed star
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
        points = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def alpha_of(polygon: np.ndarray, size: int = SIZE) -> np.ndarray:
    """[size, size] float32 coverage in [0, 1] of a polygon (pixel (i, j) spans [j, j+1] x [i, i+1])."""
    big = np.zeros((size * SUPERSAMPLE, size * SUPERSAMPLE), np.uint8)
    points = np.round(polygon * SUPERSAMPLE * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(big, [points], 255, lineType=cv2.LINE_8, shift=4)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def strokes(rng: np.random.Generator, image: np.ndarray) -> None:
    """1-2 distractors of no class: curved lines (quadratic Bezier curves) in random colours."""
    size = image.shape[0]
    for _ in range(int(rng.integers(1, 3))):
        p0, p1, p2 = rng.uniform(0, size, (3, 2))
        t = np.linspace(0, 1, 24)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.polylines(
            image,
            [np.round(curve * 16).astype(np.int32)],
            False,
            colour,
            thickness=int(rng.integers(1, 4)),
            lineType=cv2.LINE_AA,
            shift=4,
        )


def sample(seed: int, index: int, size: int = SIZE, clutter: float = 1.0) -> Sample:
    """Sample `index` of the set `seed`: it depends on (seed, index) only. clutter < 1 fades the
    background towards its mean colour (easier images, for training; the benchmark uses 1)."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(CLASSES)))
    clean = background(rng, size)
    if clutter != 1.0:
        mean = clean.reshape(-1, 3).mean(axis=0)
        clean = np.uint8(np.clip(np.rint(mean + clutter * (clean - mean)), 0, 255))
    strokes(rng, clean)
    radius = rng.uniform(*RADIUS) * size / SIZE
    centre = rng.uniform(radius, size - radius, 2)
    alpha = alpha_of(outline(label, radius, rng.uniform(0, 2 * np.pi)) + centre, size)
    mask = alpha >= 0.5
    covered = clean[mask].astype(np.float32).mean(axis=0)
    for _ in range(50):  # a colour that stands out from what it covers
        colour = rng.integers(0, 256, 3).astype(np.float32)
        if np.linalg.norm(colour - covered) >= MIN_CONTRAST:
            break
    shade = 1 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, size)[None, :, None]  # a slight gradient
    fill = np.clip(colour * shade, 0, 255)
    image = np.uint8(np.clip(np.rint(clean * (1 - alpha[..., None]) + fill * alpha[..., None]), 0, 255))
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return Sample(image=image, clean=clean, mask=mask, box=box, label=label)


def batch(seed: int, start: int, count: int, size: int = SIZE, clutter=None) -> list:
    """Samples start .. start + count - 1 of set `seed`; clutter: one value per sample, or None (all 1)."""
    clutter = np.ones(count) if clutter is None else clutter
    return [sample(seed, i, size, float(c)) for i, c in zip(range(start, start + count), clutter)]


def kept_by_drop(model: str, samples: list) -> np.ndarray:
    """bool [n]: the model's probability of the true class is lower once the object is removed."""
    probs = _probabilities(model, [s.image for s in samples] + [s.clean for s in samples])
    labels = np.array([s.label for s in samples])
    n = len(samples)
    return probs[np.arange(n), labels] > probs[n + np.arange(n), labels]


@functools.cache
def _model(path: str):
    """(Explainer, an ONNX Runtime session that outputs the logits) for a model file."""
    import onnxruntime as ort

    from onnxcam import Explainer
    from onnxcam.surgery import augment

    ex = Explainer(path, device="cpu")
    model = augment(ex.info, [], gradients=False)
    return ex, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _probabilities(model: str, images: list) -> np.ndarray:
    ex, session = _model(model)
    z = session.run([ex.info.logits_name], {ex.info.input_name: ex.prepare(images)})[0].astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def write_set(folder: str, seed: int, count: int, model: str | None = None, size: int = SIZE, chunk: int = 64) -> dict:
    """Write `count` images of set `seed` (with `model`: only those whose score drops without the object).
    Returns {"written": count, "candidates": how many were generated}."""
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    boxes, labels, coco_images, coco_annotations = {}, {}, [], []
    index, looked = 0, 0
    while len(boxes) < count:
        samples = batch(seed, index, chunk, size)
        keep = kept_by_drop(model, samples) if model else np.ones(len(samples), bool)
        for offset, (s, k) in enumerate(zip(samples, keep)):
            if not k or len(boxes) >= count:
                continue
            looked = index + offset + 1
            name = f"shape_{index + offset:05d}.png"
            cv2.imwrite(os.path.join(folder, name), s.image[..., ::-1])
            cv2.imwrite(os.path.join(folder, "masks", name), np.uint8(s.mask) * 255)
            boxes[name] = [list(s.box)]
            labels[name] = CLASSES[s.label]
            image_id = len(coco_images) + 1
            coco_images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            x0, y0, x1, y1 = s.box
            coco_annotations.append(
                {
                    "id": image_id,
                    "image_id": image_id,
                    "category_id": s.label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(s.mask.sum()),
                    "iscrowd": 0,
                }
            )
        index += chunk
    coco = {
        "images": coco_images,
        "annotations": coco_annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)],
    }
    for name, obj in (("boxes.json", boxes), ("labels.json", labels), ("coco.json", coco)):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(obj, f, indent=1)
    return {"written": len(boxes), "candidates": looked}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--model", help="keep only images whose true-class probability drops without the object")
    args = parser.parse_args()
    done = write_set(args.out, args.seed, args.count, args.model)
    print(
        f"wrote {done['written']} images to {args.out} (seed {args.seed}, "
        f"{done['candidates']} generated{', filtered by ' + args.model if args.model else ''})"
    )


if __name__ == "__main__":
    main()
