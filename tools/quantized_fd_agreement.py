"""How far the straight-through Grad-CAM of an int8 QOperator model agrees with finite differences of its
integer head, and how far those differences agree with themselves across step sizes.

    python tools/quantized_fd_agreement.py [--work ~/.cache/onnxcam-real-models]   # about 5 minutes on 2 cores

On tools/real_models.py's squeezenet_qop (chelsea, its top-1 class), at the QLinearConcat outputs fire7/concat
and fire8/concat, it prints the correlation of onnxcam's analytic map (the raw layer-resolution map) with
real_models.fd_gradcam at 1 to 12 quantization steps, with `gradients="fd"` (onnxcam's own differences), and of
each fd_gradcam map with the one at 3 steps (tests/test_real_models.py's reference): a reference that moves
with its step by as much as it differs from the analytic map cannot tell a rule's error from its own.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_models as rm  # noqa: E402
from onnxcam import Explainer  # noqa: E402

LAYERS = ("fire7/concat_1_quantized", "fire8/concat_1_quantized")  # QLinearConcat outputs
STEPS = (1, 2, 3, 6, 12)


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.expanduser("~/.cache/onnxcam-real-models"))
    args = parser.parse_args()
    rm.write_images(os.path.join(args.work, "images"))
    case = next(c for c in rm.cases(args.work, committed_only=True) if c.name == "squeezenet_qop")
    path = case.model()
    x = rm.winml_bgr8_tensor(rm.CHELSEA, np.float32)
    for tensor in LAYERS:
        layer = f"{tensor}/dequantized"  # the float twin onnxcam explains (model.quantized.add_float_twins)
        analytic = Explainer(path, layer=layer, device="cpu", gradients="analytic").explain(x, "gradcam")
        target = int(analytic.targets[0])
        fd = Explainer(path, layer=layer, device="cpu", gradients="fd").explain(x, "gradcam", target=target)
        refs = {s: rm.fd_gradcam(path, x, tensor, "pool10_1", target, steps=s)[0] for s in STEPS}
        print(f"{tensor} (class {target}): analytic vs onnxcam fd {correlation(analytic.raw[0], fd.raw[0]):.4f}")
        for s, ref in refs.items():
            print(
                f"  fd_gradcam {s:2d} steps: vs analytic {correlation(ref, analytic.raw[0]):.4f}, "
                f"vs onnxcam fd {correlation(ref, fd.raw[0]):.4f}, vs 3 steps {correlation(ref, refs[3]):.4f}"
            )


if __name__ == "__main__":
    main()
