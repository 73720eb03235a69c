"""Write examples/chelsea.png and examples/coffee.png from scikit-image's bundled data.

Both photographs ship inside the scikit-image wheel (CC0, see examples/README.md), so
the demo images need no download. They are kept at their original size; OpenCV writes
BGR, hence the channel flip.

    python tools/build_examples.py
"""

import pathlib

import cv2
import skimage.data

OUT = pathlib.Path(__file__).resolve().parent.parent / "examples"
IMAGES = {"chelsea": skimage.data.chelsea, "coffee": skimage.data.coffee}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, load in IMAGES.items():
        rgb = load()
        path = OUT / f"{name}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        print(f"wrote {path} {rgb.shape[1]}x{rgb.shape[0]}")


if __name__ == "__main__":
    main()
