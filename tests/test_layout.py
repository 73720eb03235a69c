"""The package's shape: `import onnxcam` and the command line's option declarations load no heavy library, the
command line reaches the library through its public modules only, and module-level imports form no cycle."""

import ast
import os
import subprocess
import sys

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "onnxcam")
HEAVY = ("onnx", "onnxruntime", "onnx_graphsurgeon", "cv2", "numpy")


def _loaded_after(code: str) -> list:
    """The heavy modules loaded by a fresh interpreter (in the repository root) after running code."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])


def test_import_onnxcam_and_the_help_load_no_heavy_module():
    assert _loaded_after("import onnxcam, onnxcam.names") == []
    help_of = (
        "from onnxcam.cli import main\ntry:\n    main([{}'--help'], prog_name='onnxcam')\nexcept SystemExit:\n    pass"
    )
    assert _loaded_after(help_of.format("")) == []
    for command in ("run", "eval", "sanity", "export", "inspect", "methods"):
        assert _loaded_after(help_of.format(f"'{command}', ")) == [], command


def test_public_names_still_import():
    import onnxcam

    assert onnxcam.Explainer.__module__ == "onnxcam.explainer" and onnxcam.Explanation.__name__ == "Explanation"
    assert issubclass(onnxcam.UnsupportedOpError, onnxcam.ModelError)
    assert issubclass(onnxcam.ImageError, onnxcam.OnnxcamError)
    assert set(onnxcam.__all__) <= set(dir(onnxcam)) and onnxcam.__version__


def _modules():
    """{module name: ast} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                with open(path, encoding="utf-8") as source:
                    found[name] = ast.parse(source.read())
    return found


def _top_level_imports(name: str, tree, modules) -> set:
    """The package's modules that `name` imports when it is imported (statements at module level)."""
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:  # a submodule, else a name of the module
            out |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            }
    return {m for m in out if m in modules and m != name}


def test_the_command_line_never_reaches_into_surgery_or_runtime():
    for name, tree in _modules().items():
        if not name.startswith("onnxcam.cli"):
            continue
        text = ast.unparse(tree)
        for inner in ("onnxcam.surgery", "onnxcam.runtime", "onnxcam.sessions", "onnxcam.cache"):
            assert inner not in text, (name, inner)


def test_module_level_imports_form_no_cycle():
    modules = _modules()
    graph = {name: _top_level_imports(name, tree, modules) for name, tree in modules.items()}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
