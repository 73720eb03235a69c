"""Options and helpers shared by several commands (options, shape and message formatting, the progress bar)."""

from __future__ import annotations

import sys

import click

DEVICES = ("auto", "cpu", "cuda")  # mirrors onnxcam.runtime.DEVICES without importing onnxruntime


PRESET_NAMES = ("imagenet", "inception", "lite", "caffe", "unit", "raw")  # onnxcam.preprocess.PRESETS


def explainer_options(fn):
    """How to run the explainer: preprocessing preset, device, and where gradients come from."""
    for decorator in reversed((
        click.option("--preprocess", "preset", type=click.Choice(PRESET_NAMES),
                     help="Preprocessing preset. Default: the model's own (metadata), else imagenet."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
        click.option("--gradients", type=click.Choice(("auto", "analytic", "fd")), default="auto", show_default=True,
                     help="analytic: backward rules; fd: central differences of the head (channel-weight methods); "
                          "auto: analytic, else fd where a head op has no rule."),
    )):
        fn = decorator(fn)
    return fn


def model_options(fn):
    """How to read the model: which input, which output, which spatial size."""
    for decorator in reversed((
        click.option("--input", "input_name", metavar="NAME", help="The image input, when the model has several."),
        click.option("--output", "output_name", metavar="NAME", help="The scores output, when the model has several."),
        click.option("--input-size", nargs=2, type=click.IntRange(1, 16384), metavar="H W",
                     help="Spatial size for models whose input size is dynamic."),
    )):
        fn = decorator(fn)
    return fn


def model_args(kwargs: dict) -> dict:
    """Pop the model options out of a command's kwargs, as inspect_model / Explainer keywords."""
    return {
        "input_name": kwargs.pop("input_name"),
        "output_name": kwargs.pop("output_name"),
        "input_size": kwargs.pop("input_size") or None,
    }


def format_shape(dims) -> str:
    """[N, 1280, 7, 7]: a symbolic (None) dimension shows as N."""
    return "[" + ", ".join("N" if d is None else str(d) for d in dims) + "]"


def one_line(text) -> str:
    """A message as one line that cannot drive the terminal, whatever it quotes (a tensor name or a path may
    hold a newline or an escape sequence): control characters are written as Python escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


class Progress:
    """click's progress bar on stderr (a terminal only) over `count` items, its label naming the many-run loop
    under way inside a batch (Score-CAM's masked inputs, finite differences...). A single item gets a bar
    only when such a loop reports, unless `eager`."""

    LABEL = "explaining"

    def __init__(self, count: int, eager: bool = False):
        self.count, self.done, self.bar = count, 0, None
        self.enabled = _is_terminal(sys.stderr)
        if count > 1 or eager:
            self._open()

    def _open(self):
        if self.enabled and self.bar is None:
            self.bar = click.progressbar(length=self.count, label=self.LABEL, file=sys.stderr)
            self.bar.__enter__()
            self.bar.update(self.done)

    def update(self, n: int):
        self.done += n
        if self.bar is not None:
            self.bar.label = self.LABEL
            self.bar.update(n)

    def report(self, what: str, done: int, total: int):
        self._open()
        if self.bar is not None:
            self.bar.label = f"{self.LABEL} [{what} {done}/{total}]"
            self.bar.render_progress()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _is_terminal(stream) -> bool:
    return stream.isatty()
