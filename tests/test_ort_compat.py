"""README's compatibility policy on the oldest release in its table: an exported model loads on every ONNX
Runtime that loads the original, and gives the same map there. onnxruntime 1.16.3 is installed from PyPI into
a throwaway virtual environment by tools/ort_compat.py (the full table: `python tools/ort_compat.py`)."""

import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import ort_compat  # noqa: E402

OLDEST = "1.16.3"  # supports opsets up to 19 and IR up to 9


def test_exports_load_on_the_oldest_release_exactly_where_their_originals_do(tmp_path):
    jobs = ort_compat.prepare(str(tmp_path), ["demo", "demo@21"], methods=["gradcam"])
    column = ort_compat.run_in_venv(OLDEST, str(tmp_path), jobs)
    if column.get("error", "").startswith("pip could not install"):
        pytest.skip(column["error"])
    assert "error" not in column, column["error"]
    assert column["version"] == OLDEST
    cells = [column["results"][job["row"]] for job in jobs]
    demo, demo_gradcam, demo_ort, new, new_gradcam = cells
    assert demo == "loads"
    assert isinstance(demo_gradcam, float) and demo_gradcam <= 1e-5
    assert isinstance(demo_ort, float) and demo_ort <= 1e-5  # the ORT format, written by the installed release
    # opset 21 / IR 10: the release refuses the original, and so the explained model, which keeps both
    assert new.startswith("no:") and new_gradcam.startswith("no:")
