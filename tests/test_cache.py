"""The session cache: a second Explainer on the same file skips surgery, and a bad entry is rebuilt."""

import os
import shutil

import numpy as np
import onnx
import pytest

import onnxcam.sessions
from conftest import CHELSEA, DEMO
from onnxcam import Explainer, cache


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXCAM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entries(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".onnx")) if folder.exists() else []


def test_second_run_skips_surgery_and_agrees(fresh_cache, monkeypatch):
    first = Explainer(DEMO, device="cpu").explain(CHELSEA, method="gradcam")
    assert len(_entries(fresh_cache)) == 1
    assert not [f for f in os.listdir(fresh_cache) if f.startswith(".onnxcam-")]  # no temporary left

    def no_surgery(*args, **kwargs):
        raise AssertionError("surgery ran although the session was cached")

    monkeypatch.setattr(onnxcam.sessions, "augment", no_surgery)
    monkeypatch.setattr(onnxcam.sessions, "maps_model", no_surgery)
    second = Explainer(DEMO, device="cpu").explain(CHELSEA, method="gradcam")
    assert np.array_equal(first.maps, second.maps) and list(first.targets) == list(second.targets)
    with pytest.raises(AssertionError, match="surgery ran"):  # another layer is another entry
        Explainer(DEMO, layer="/_blocks.10/Add_output_0", device="cpu").explain(CHELSEA)


def test_a_corrupt_entry_is_rebuilt(fresh_cache):
    Explainer(DEMO, device="cpu").explain(CHELSEA)
    (entry,) = _entries(fresh_cache)
    (fresh_cache / entry).write_bytes(b"garbage")
    again = Explainer(DEMO, device="cpu").explain(CHELSEA)
    assert again.targets[0] == 285
    assert (fresh_cache / entry).stat().st_size > 1000


def test_cache_off_and_unwritable(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXCAM_CACHE_DIR", "off")
    assert Explainer(DEMO, device="cpu").explain(CHELSEA).targets[0] == 285
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("ONNXCAM_CACHE_DIR", str(blocker / "cache"))
    assert Explainer(DEMO, device="cpu").explain(CHELSEA).targets[0] == 285


def test_a_changed_model_file_is_a_new_entry(fresh_cache, tmp_path):
    copy = tmp_path / "demo.onnx"
    shutil.copy(DEMO, copy)
    Explainer(str(copy), device="cpu").explain(CHELSEA)
    model = onnx.load(str(copy))
    model.doc_string = "edited"  # same graph, different file content
    onnx.save(model, str(copy))
    Explainer(str(copy), device="cpu").explain(CHELSEA)
    assert len(_entries(fresh_cache)) == 2


def test_edited_onnxcam_source_is_a_new_entry(fresh_cache, monkeypatch):
    """A checkout whose surgery code changed must not load graphs the old code built (same version string)."""
    before = cache.entry_path("model", {"layers": ["a"]}, ["CPUExecutionProvider"])
    assert before == cache.entry_path("model", {"layers": ["a"]}, ["CPUExecutionProvider"])
    monkeypatch.setattr(cache, "_source_digest", lambda: "edited")
    assert cache.entry_path("model", {"layers": ["a"]}, ["CPUExecutionProvider"]) != before
