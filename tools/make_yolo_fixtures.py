"""Build models/detect/yolov8_tiny.onnx and tests/fixtures/detection/yolov8_tiny.npz: an ultralytics YOLOv8
detector with seeded weights, exported by ultralytics' own exporter, and the references onnxcam's detection
is checked against (computed here with torch, ultralytics and pytorch-grad-cam 1.5.7; the tests need none).

The network is YOLOv8n's YAML scaled to width 0.125 (the "t" scale below) with 20 classes named as Pascal VOC's,
so the ONNX file stays under 4 MB; ultralytics ships no weights, and nothing here downloads (YOLO_OFFLINE).
The class convolutions' biases are set to -2 (ultralytics initializes them to about -9 for 640-pixel COCO
training, which leaves a seeded network with no score above 1e-3), so a few anchors pass --conf 0.25.

References (all from the same PyTorch model the ONNX file was exported from; the script stops unless torch's
raw output equals ONNX Runtime's to < 1e-4):

    input            float32 [N, 3, 160, 160]: scikit-image photographs resized to 160x160, RGB / 255
                     (what onnxcam's plain-resize preprocessing makes of them)
    output           float32 [N, 24, A]: the raw head output (ONNX Runtime)
    conf, iou        the thresholds of the NMS references
    nms/boxes, nms/scores, nms/classes, nms/anchors, nms/images
                     ultralytics.utils.nms.non_max_suppression(output, conf, iou, return_idxs=True)
    output5          float32 [N, A, 5 + C]: the same detections in YOLOv5's layout (cx, cy, w, h,
                     objectness, class probabilities), objectness = sqrt(best class score), class
                     probabilities = class score / objectness (so objectness x class = the v8 score)
    nms5/...         ultralytics' NMS on objectness x class probabilities (what YOLOv5's NMS thresholds)
    neck             [3] the ONNX tensors that are the outputs of model.model[15], [18], [21] (the Detect
                     module's inputs), found by their ultralytics names
    grad/KIND/L      float32 [1, K, h, w]: torch autograd of a target of image 0 w.r.t. neck layer L, for
                     KIND "score" (the best detection's class score), "box" (the sum of its cx, cy, w, h)
                     and "class" (the sum of the class scores of that class's detections)
    target/anchor, target/class   the best detection of image 0
    eigencam/tutorial   [N, 160, 160] pytorch-grad-cam EigenCAM with target_layers=[model.model[-2]]
                     (its YOLO tutorial's choice: the last neck block)
    eigencam/neck    [N, 160, 160] the same with the three neck blocks

Run:  python tools/make_yolo_fixtures.py

`--letterbox` writes tests/fixtures/detection/yolov8_letterbox.npz from the committed model alone (no rebuild):
ultralytics' own `YOLO(onnx).predict` on non-square pictures (it letterboxes them: LetterBox(auto=False) for a
static ONNX), what onnxcam's automatic letterbox must reproduce:

    names                the pictures: coffee 201x301 (landscape, shrunk), astronaut cut to 2:3 at 241x161
                         (portrait, shrunk), coffee 97x145 (enlarged); odd paddings all
    image/NAME           uint8 [h, w, 3] RGB, the picture (PNG-lossless: predict read exactly these pixels)
    input/NAME           float32 [1, 3, 160, 160] the tensor ultralytics' predictor fed the model
    boxes/NAME, scores/NAME, classes/NAME   its detections (Results.boxes: xyxy in image pixels, conf, cls)
    conf, iou            predict's thresholds
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

os.environ["YOLO_OFFLINE"] = "1"  # ultralytics: never reach the network
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from onnxcam.preprocess import to_tensor  # noqa: E402
from torch_tools import import_torchvision  # noqa: E402

MODEL = ROOT / "models" / "detect" / "yolov8_tiny.onnx"
FIXTURE = ROOT / "tests" / "fixtures" / "detection" / "yolov8_tiny.npz"
SIZE = 160
IMAGES = ("astronaut", "chelsea", "coffee")
CALIBRATION = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field")
CONF, IOU = 0.25, 0.45
VOC = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()
NECK = (15, 18, 21)  # the YAML's P3, P4, P5 blocks: the Detect module's inputs

YAML = """
nc: 20
scales:
  t: [0.33, 0.125, 1024]
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 3, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 6, C2f, [256, True]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 6, C2f, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 3, C2f, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]]
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 3, C2f, [256]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 12], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 9], 1, Concat, [1]]
  - [-1, 3, C2f, [1024]]
  - [[15, 18, 21], 1, Detect, [nc]]
"""


def build(folder: pathlib.Path):
    """The seeded YOLO and its ONNX export (ultralytics' exporter), in `folder`."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    (folder / "yolov8t.yaml").write_text(YAML)
    yolo = YOLO(str(folder / "yolov8t.yaml"))
    calibrate(yolo.model)
    yolo.model.names = dict(enumerate(VOC))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        path = folder / yolo.export(format="onnx", imgsz=SIZE, opset=17, simplify=False, dynamic=False)
    finally:
        os.chdir(cwd)
    return yolo.model.eval(), path


def calibrate(net) -> None:
    """BatchNorm statistics from photographs (fresh ones leave activations near 1e-10 by the last neck block), and
    class biases that let about 1% of the anchors score above 0.4 on them."""
    pictures = [getattr(skimage.data, name)() for name in CALIBRATION]
    x = torch.from_numpy(to_tensor(pictures, (SIZE, SIZE), "NCHW", 3, "unit"))
    x = torch.cat([x, x.flip(3)])
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one batch gives its own statistics
    branches = net.model[-1].cv3
    with torch.no_grad():
        net.train()
        net(x)
        net.eval()
        for branch in branches:
            branch[-1].bias.zero_()
        scores = net(x)[0][:, 4:].amax(1)
        logits = torch.log(scores / (1 - scores))
        shift = float(torch.quantile(logits.flatten(), 0.99)) - float(np.log(0.4 / 0.6))
        for branch in branches:
            branch[-1].bias.fill_(-shift)


def inputs() -> np.ndarray:
    return to_tensor([getattr(skimage.data, name)() for name in IMAGES], (SIZE, SIZE), "NCHW", 3, "unit")


def v5_layout(output: np.ndarray) -> np.ndarray:
    """[N, 4 + C, A] -> [N, A, 5 + C] with objectness sqrt(best score) and class probabilities score / objectness."""
    boxes, scores = output[:, :4], output[:, 4:]
    objectness = np.sqrt(scores.max(axis=1, keepdims=True))
    return np.concatenate([boxes, objectness, scores / objectness], axis=1).transpose(0, 2, 1).astype(np.float32)


def ultralytics_nms(prediction: np.ndarray, prefix: str) -> dict:
    from ultralytics.utils.nms import non_max_suppression

    kept, anchors = non_max_suppression(torch.from_numpy(prediction), CONF, IOU, return_idxs=True)
    rows = [(i, d, a) for i, (det, idx) in enumerate(zip(kept, anchors)) for d, a in zip(det.numpy(), idx.numpy())]
    return {
        f"{prefix}/images": np.int64([i for i, _, _ in rows]),
        f"{prefix}/boxes": np.float32([d[:4] for _, d, _ in rows]).reshape(-1, 4),
        f"{prefix}/scores": np.float32([d[4] for _, d, _ in rows]),
        f"{prefix}/classes": np.int64([d[5] for _, d, _ in rows]),
        f"{prefix}/anchors": np.int64([a for _, _, a in rows]),
    }


def gradients(net, x: torch.Tensor, refs: dict) -> dict:
    """Torch autograd of image 0's targets w.r.t. the neck blocks' outputs."""
    saved = {}
    hooks = [net.model[i].register_forward_hook(lambda m, inp, out, i=i: saved.__setitem__(i, out)) for i in NECK]
    found = {}
    try:
        first = refs["nms/images"] == 0
        best = int(np.argmax(np.where(first, refs["nms/scores"], -1)))
        anchor, cls = int(refs["nms/anchors"][best]), int(refs["nms/classes"][best])
        same = first & (refs["nms/classes"] == cls)
        found["target/anchor"], found["target/class"] = np.int64(anchor), np.int64(cls)
        for kind in ("score", "box", "class"):
            y = net(x[:1])[0][0]
            if kind == "score":
                target = y[4 + cls, anchor]
            elif kind == "box":
                target = y[:4, anchor].sum()
            else:
                target = sum(y[4 + cls, int(a)] for a in refs["nms/anchors"][same])
            grads = torch.autograd.grad(target, [saved[i] for i in NECK])
            for i, g in zip(NECK, grads):
                found[f"grad/{kind}/{i}"] = g.numpy().astype(np.float32)
    finally:
        for h in hooks:
            h.remove()
    return found


def eigencam(net, x: torch.Tensor) -> dict:
    """pytorch-grad-cam's EigenCAM as its YOLO tutorial calls it (the wrapper returns the raw head output)."""
    import_torchvision()
    from pytorch_grad_cam import EigenCAM

    class Raw(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)[0]

    wrapped = Raw(net)
    out = {}
    for key, layers in (("tutorial", [net.model[-2]]), ("neck", [net.model[i] for i in NECK])):
        with EigenCAM(wrapped, layers) as cam:
            out[f"eigencam/{key}"] = np.float32(cam(x, targets=None))
    return out


LETTERBOX_FIXTURE = ROOT / "tests" / "fixtures" / "detection" / "yolov8_letterbox.npz"


def letterbox_pictures() -> dict:
    import cv2

    def shrink(rgb, w, h):
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)

    return {
        "coffee_201x301": shrink(skimage.data.coffee(), 301, 201),
        "astronaut_241x161": shrink(skimage.data.astronaut()[:, 85:426], 161, 241),
        "coffee_97x145": shrink(skimage.data.coffee(), 145, 97),
    }


def letterbox_references() -> None:
    """ultralytics' predict on the committed ONNX model, on non-square pictures (see the module's docstring)."""
    import cv2
    from ultralytics import YOLO

    yolo = YOLO(str(MODEL), task="detect")
    refs = {"conf": np.float32(CONF), "iou": np.float32(IOU)}
    pictures = letterbox_pictures()
    with tempfile.TemporaryDirectory() as tmp:
        for name, rgb in pictures.items():
            path = os.path.join(tmp, f"{name}.png")
            cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            found = yolo.predict(path, conf=CONF, iou=IOU, device="cpu", verbose=False)[0].boxes
            fed = yolo.predictor.preprocess([cv2.imread(path)])
            assert tuple(fed.shape) == (1, 3, SIZE, SIZE), fed.shape
            refs[f"image/{name}"] = rgb
            refs[f"input/{name}"] = fed.numpy().astype(np.float32)
            refs[f"boxes/{name}"] = found.xyxy.numpy().astype(np.float32).reshape(-1, 4)
            refs[f"scores/{name}"] = found.conf.numpy().astype(np.float32)
            refs[f"classes/{name}"] = found.cls.numpy().astype(np.int64)
            print(f"{name} {rgb.shape[0]}x{rgb.shape[1]}: {len(found)} detections; best {refs[f'boxes/{name}'][:1]}")
    refs["names"] = np.array(list(pictures))
    np.savez_compressed(LETTERBOX_FIXTURE, **refs)
    print(f"wrote {LETTERBOX_FIXTURE.relative_to(ROOT)} ({LETTERBOX_FIXTURE.stat().st_size} bytes)")


def main() -> None:
    if "--letterbox" in sys.argv[1:]:
        return letterbox_references()
    with tempfile.TemporaryDirectory() as tmp:
        net, exported = build(pathlib.Path(tmp))
        MODEL.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(exported, MODEL)
    model = onnx.load(str(MODEL))
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    batch = inputs()
    output = np.concatenate([session.run(None, {"images": batch[i : i + 1]})[0] for i in range(len(batch))])
    x = torch.from_numpy(batch)
    with torch.no_grad():
        reference = net(x)[0].numpy()
    # boxes in input pixels (up to SIZE) compared relative to SIZE, scores as they are
    gap = float(np.abs((reference - output) / np.float32([SIZE] * 4 + [1] * (output.shape[1] - 4))[:, None]).max())
    print(f"torch vs ONNX Runtime raw output: max |diff| {gap:.2e} (boxes / {SIZE})")
    if gap > 1e-4:
        raise SystemExit("the torch model and the ONNX export disagree; fixtures not written")
    tensors = {o for node in model.graph.node for o in node.output}
    neck = [f"/model.{i}/cv2/act/Mul_output_0" for i in NECK]
    assert all(n in tensors for n in neck), neck
    refs = {
        "input": batch,
        "output": output,
        "images": np.array(IMAGES),
        "conf": np.float32(CONF),
        "iou": np.float32(IOU),
        "neck": np.array(neck),
        "output5": v5_layout(output),
    }
    refs.update(ultralytics_nms(output, "nms"))
    five = refs["output5"]
    refs.update(
        ultralytics_nms(
            np.concatenate([five[..., :4], five[..., 4:5] * five[..., 5:]], axis=2).transpose(0, 2, 1), "nms5"
        )
    )
    refs.update(gradients(net, x, refs))
    refs.update(eigencam(net, x))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **refs)
    print(f"detections per image: {np.bincount(refs['nms/images'], minlength=len(IMAGES)).tolist()}")
    print(f"wrote {MODEL.relative_to(ROOT)} ({MODEL.stat().st_size} bytes), {FIXTURE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
