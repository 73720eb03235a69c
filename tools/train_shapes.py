"""Train models/shapes/shapes_cnn.onnx: a small CNN with a GAP head on tools/make_shapes.py images.

    conv3x3/2 (16) -> conv3x3 (32) -> maxpool -> conv3x3 (48) -> maxpool -> conv3x3 (64) -> conv3x3 (96)
    (each conv: BatchNorm, ReLU) -> global average pooling -> linear (5 classes)

96x96 RGB in, `imagenet` preprocessing (onnxcam's own `to_tensor`, so training sees exactly
what onnxcam feeds), the last feature map is 12x12. Training set: seed 1 (6000 images, with a
clutter curriculum, see EASY / RAMP / HARD; batches rotated by a multiple of 90 degrees and
flipped at random); test set: seed 2 (TEST images, full clutter). About 7-8 minutes on 2 idle
CPU cores; torch is used here only, never by onnxcam itself.

    python tools/train_shapes.py                # writes models/shapes/shapes_cnn.onnx, prints the accuracy

Exported with opset 17, a dynamic batch, BatchNorm folded into the convolutions, IR version 8,
metadata `onnxcam.preprocess` = imagenet and `onnxcam.labels` = the class names.
"""

from __future__ import annotations

import io
import os
import pathlib
import sys
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_shapes  # noqa: E402
from onnxcam.preprocess import to_tensor  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "shapes" / "shapes_cnn.onnx"
SEED = 0  # torch and numpy (initialization, batches, augmentation)
TRAIN_SEED, TEST_SEED = 1, 2  # make_shapes sets
TEST = 1000
# A curriculum: the network first learns shapes on faded backgrounds (clutter 0: the crop's mean
# colour, strokes kept), then on more and more of the real clutter. Without it the loss stays at
# chance (ln 5) for well over 1000 steps. Training images: EASY with clutter 0, RAMP with clutter
# rising from 0 to 1, HARD with clutter 1 (the benchmark's images).
EASY, RAMP, HARD = 1500, 1500, 3000
PHASES = (700, 1400)  # steps drawing from EASY, then EASY + RAMP; after that 60% of each batch from HARD
STEPS, DECAY, BATCH, LR = 3000, 2000, 32, 1e-3  # constant LR, cosine decay to 0 from step DECAY
WIDTHS = (16, 32, 48, 64, 96)


def conv(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def network() -> nn.Module:
    a, b, c, d, e = WIDTHS
    return nn.Sequential(
        *conv(3, a, 2),
        *conv(a, b),
        nn.MaxPool2d(2),
        *conv(b, c),
        nn.MaxPool2d(2),
        *conv(c, d),
        *conv(d, e),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(e, len(make_shapes.CLASSES)),
    )


def dataset(seed: int, count: int, clutter=None):
    samples = make_shapes.batch(seed, 0, count, clutter=clutter)
    x = to_tensor([s.image for s in samples], (make_shapes.SIZE,) * 2, "NCHW", 3, "imagenet")
    return torch.from_numpy(x), torch.tensor([s.label for s in samples])


def batch_indices(step: int, generator: torch.Generator) -> torch.Tensor:
    """The curriculum: which training images a step draws from."""
    if step < PHASES[0]:
        return torch.randint(0, EASY, (BATCH,), generator=generator)
    idx = torch.randint(0, EASY + RAMP, (BATCH,), generator=generator)
    if step >= PHASES[1]:
        hard = torch.randint(EASY + RAMP, EASY + RAMP + HARD, (BATCH,), generator=generator)
        idx = torch.where(torch.rand(BATCH, generator=generator) < 0.6, hard, idx)
    return idx


def learning_rate(step: int) -> float:
    if step < DECAY:
        return LR
    return LR * 0.5 * (1 + np.cos(np.pi * (step - DECAY) / (STEPS - DECAY)))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random flip and rotation by a multiple of 90 degrees per batch: the classes do not change."""
    k = int(torch.randint(4, (1,), generator=generator))
    x = torch.rot90(x, k, (2, 3))
    return torch.flip(x, (3,)) if torch.rand(1, generator=generator) < 0.5 else x


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def export(net: nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, make_shapes.SIZE, make_shapes.SIZE),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            training=torch.onnx.TrainingMode.EVAL,
            do_constant_folding=True,
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(buf.getvalue()), strict_mode=True)
    proto.ir_version = 8  # onnx >= 1.23 writes IR 14, which ONNX Runtime 1.31 cannot load
    proto.producer_name, proto.producer_version = "onnxcam tools/train_shapes.py", ""
    del proto.metadata_props[:]
    helper.set_model_props(
        proto,
        {
            "onnxcam.preprocess": "imagenet",
            "onnxcam.labels": "\n".join(make_shapes.CLASSES),
            "onnxcam.source": f"tools/train_shapes.py: seed {SEED}, trained on tools/make_shapes.py set {TRAIN_SEED} "
            f"({EASY + RAMP + HARD} images, {STEPS} steps of {BATCH})",
        },
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(OUT), help=f"where to write the model (default: {OUT.relative_to(ROOT)})")
    out = pathlib.Path(parser.parse_args().out).resolve()
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.time()
    clutter = np.concatenate([np.zeros(EASY), np.linspace(0, 1, RAMP), np.ones(HARD)])
    x_train, y_train = dataset(TRAIN_SEED, EASY + RAMP + HARD, clutter)
    x_test, y_test = dataset(TEST_SEED, TEST)
    print(f"generated {len(x_train)} + {TEST} images in {time.time() - t0:.0f} s")

    net = network()
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(SEED)
    running = np.log(len(make_shapes.CLASSES))
    net.train()
    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        idx = batch_indices(step, generator)
        loss = nn.functional.cross_entropy(net(augment(x_train[idx], generator)), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running = 0.98 * running + 0.02 * float(loss.detach())
        if (step + 1) % 500 == 0:
            print(
                f"step {step + 1}: loss {running:.3f}, test accuracy {accuracy(net, x_test, y_test):.1%} "
                f"({time.time() - t0:.0f} s)"
            )
            net.train()

    proto = export(net)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"input": x_test[i : i + 256].numpy()})[0] for i in range(0, TEST, 256)])
    with torch.no_grad():
        reference = torch.cat([net(x_test[i : i + 256]) for i in range(0, TEST, 256)]).numpy()
    onnx_accuracy = float((logits.argmax(1) == y_test.numpy()).mean())
    print(
        f"wrote {out} ({out.stat().st_size} bytes); ONNX Runtime vs torch max |diff| "
        f"{np.abs(logits - reference).max():.1e}; test accuracy (ONNX, {TEST} images, set {TEST_SEED}) "
        f"{onnx_accuracy:.1%}; {time.time() - t0:.0f} s in all"
    )


if __name__ == "__main__":
    main()
