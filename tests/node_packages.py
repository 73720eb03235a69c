"""tests/node's npm packages (onnxruntime-node 1.30.0, pinned by package-lock.json), installed on first
use where `npm ci` was not run: a fresh clone's test command must pass as it is."""

import os
import shutil
import subprocess

from conftest import ROOT

NODE_DIR = os.path.join(ROOT, "tests", "node")
ONNXRUNTIME_NODE = os.path.join(NODE_DIR, "node_modules", "onnxruntime-node")


def install() -> str | None:
    """Make sure tests/node/node_modules holds onnxruntime-node; None when it does, else why it cannot."""
    if os.path.isdir(ONNXRUNTIME_NODE):
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed, and tests/node/node_modules is missing"
    # --ignore-scripts: the package's binaries are in its tarball; its install script only fetches extras.
    try:
        done = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return "`npm ci` in tests/node took more than 10 minutes"
    if done.returncode != 0 or not os.path.isdir(ONNXRUNTIME_NODE):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"`npm ci --ignore-scripts` in tests/node failed (exit {done.returncode}): {tail[0]}"
    return None


def library() -> str | None:
    """The libonnxruntime.so.1 that onnxruntime-node ships for this machine, or None."""
    import platform

    arch = {"x86_64": "x64", "AMD64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    folder = os.path.join(ONNXRUNTIME_NODE, "bin")
    for napi in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, napi, "linux", arch or "", "libonnxruntime.so.1")
        if os.path.isfile(path):
            return path
    return None
