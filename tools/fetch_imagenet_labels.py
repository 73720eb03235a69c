"""Write models/imagenet_classes.txt: the 1000 ImageNet-1k class names, one per line.

Line i (0-based) is the name of logit i. The names are torchvision's
``_IMAGENET_CATEGORIES`` list (torchvision/models/_meta.py). torchvision is not
importable beside the pinned torch, so the wheel is only downloaded (a wheel is a
zip) and the list is read from the file's source with ``ast``.

    python tools/fetch_imagenet_labels.py
"""

import ast
import pathlib
import subprocess
import sys
import tempfile
import zipfile

TORCHVISION = "torchvision==0.29.1"
OUT = pathlib.Path(__file__).resolve().parent.parent / "models" / "imagenet_classes.txt"


def imagenet_categories(wheel: pathlib.Path) -> list[str]:
    """Return the literal value of ``_IMAGENET_CATEGORIES`` in the wheel's _meta.py."""
    source = zipfile.ZipFile(wheel).read("torchvision/models/_meta.py").decode()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_IMAGENET_CATEGORIES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError("_IMAGENET_CATEGORIES not found in torchvision/models/_meta.py")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", TORCHVISION, "-d", tmp], check=True
        )
        (wheel,) = pathlib.Path(tmp).glob("torchvision-*.whl")
        names = imagenet_categories(wheel)
    assert len(names) == 1000 and all(n and "\n" not in n for n in names)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(names)} classes; 285 = {names[285]!r}, 967 = {names[967]!r})")


if __name__ == "__main__":
    main()
