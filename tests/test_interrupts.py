"""Ctrl-C, twice, on a real `onnxcam` process (issue 14's last case): exit 130, one line, nothing left behind.

A second Ctrl-C used to break the main thread's wait for run's writer thread; Python's exit then went on
while that thread was inside OpenCV, and it was ended there: "terminate called without an active exception",
SIGABRT (exit 134). onnxcam.interrupts ignores every signal after the first. tools/sigint_trials.py sends
signals at random moments over many runs; these tests pin the two ways, without timing assertions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest

from conftest import CHELSEA, DEMO, ROOT
from test_hostile2 import patched_cli, temporaries


@pytest.fixture
def folder(tmp_path):
    """Eight large pictures: enough work (overlays resized and PNG-encoded) to still be running when the
    signals come, on any machine."""
    images = tmp_path / "images"
    images.mkdir()
    big = cv2.resize(cv2.imread(CHELSEA), (1200, 800))
    for i in range(8):
        cv2.imwrite(str(images / f"img{i}.png"), big)
    return images


def environment(tmp_path) -> dict:
    return dict(os.environ, ONNXCAM_CACHE_DIR=str(tmp_path / "cache"), XDG_STATE_HOME=str(tmp_path / "state"))


def assert_stopped_cleanly(code: int, stderr: str, *folders) -> None:
    assert code == 130, (code, stderr)  # not -6 / 134 (SIGABRT), not -2 (killed by the second SIGINT)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: interrupted (Ctrl-C)"), stderr
    for folder in folders:
        assert temporaries(folder) == [], folder


def assert_complete(out) -> None:
    for name in os.listdir(out):
        if name.endswith(".png"):
            assert cv2.imread(str(out / name)) is not None, name
        elif name.endswith(".json"):
            json.loads((out / name).read_text())


def test_two_quick_ctrl_c_on_a_run_exit_130_with_one_line_and_no_temporary_file(tmp_path, folder):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxcam", "run", DEMO, folder, "--batch-size", "1", "--json", "--out", out],
        cwd=ROOT,
        env=environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:  # the banner: the session is built, the images are next
            if line.startswith("model"):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.1)  # not merged with the first: it comes while the run stops
                proc.send_signal(signal.SIGINT)
                break
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert_stopped_cleanly(proc.returncode, stderr, out, tmp_path / "cache")
    assert_complete(out)


def test_a_second_ctrl_c_while_the_writer_thread_is_in_opencv_does_not_abort(tmp_path, folder):
    """Deterministic: the writer thread sends the two SIGINTs itself, from a helper thread, and stays inside
    OpenCV meanwhile (each call releases the interpreter and takes it back). Before the fix: exit 134."""
    patch = """
        import os, signal, threading, time
        import numpy as np
        import onnxcam.outputs
        real = onnxcam.outputs.picture_bytes

        def interrupt_twice():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGINT)

        def picture_bytes(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread() and not hasattr(picture_bytes, "sent"):
                import cv2
                picture_bytes.sent = threading.Thread(target=interrupt_twice, daemon=True)
                picture_bytes.sent.start()
                noise = np.random.default_rng(0).random((300, 300), dtype=np.float32)
                while picture_bytes.sent.is_alive():
                    cv2.GaussianBlur(noise, (5, 5), 1)
                for _ in range(1000):  # still in OpenCV while the main thread stops
                    cv2.GaussianBlur(noise, (5, 5), 1)
            return real(*args, **kwargs)

        onnxcam.outputs.picture_bytes = picture_bytes
    """
    out = tmp_path / "out"
    done = patched_cli(patch, "run", DEMO, folder, "--batch-size", "1", "--out", out, env=environment(tmp_path))
    assert_stopped_cleanly(done.returncode, done.stderr, out, tmp_path / "cache")
    assert_complete(out)
