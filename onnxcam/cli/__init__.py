"""The `onnxcam` command line: one module per command; each parses its options, calls the library and prints.

Command modules import the library as `import onnxcam` and use `onnxcam.<module>` when they run: the package
imports a submodule on first use (onnxcam/__init__.py), so `onnxcam --help` loads no ONNX, ONNX Runtime or
OpenCV, and option choices come from onnxcam.names."""

from __future__ import annotations

import sys

import click

from onnxcam import interrupts
from onnxcam.cli import eval, export, inspect, methods, report, run, sanity
from onnxcam.cli.options import one_line
from onnxcam.errors import Interrupted, OnnxcamError


class _UserError(click.ClickException):
    """A library error shown as one line, with the error class's exit code."""

    def __init__(self, error: OnnxcamError):
        super().__init__(one_line(error))
        self.exit_code = error.exit_code


class _Group(click.Group):
    def __call__(self, *args, **kwargs):
        """The program itself (the console script, `python -m onnxcam`; CliRunner calls main instead): signals
        are taken over before the command line is parsed, and once the command is over, stopped or not, they
        are ignored, so that nothing cuts the exit short (see onnxcam.interrupts)."""
        stop, status = interrupts.take_over(), None
        try:
            status = self.main(*args, **kwargs)  # returns only with standalone_mode=False
        except SystemExit as done:
            status = done.code
        finally:
            interrupts.ignore()
        if stop is not None and stop.signum is not None:  # also when it came before the command ran
            status = 128 + stop.signum
        sys.exit(status)

    def invoke(self, ctx):
        try:
            with interrupts.stop_on_signals():  # SIGTERM / SIGHUP unwind like Ctrl-C: no temporary file stays
                return super().invoke(ctx)
        except OnnxcamError as error:
            raise _UserError(error) from None
        except interrupts.Terminated as stop:  # shells expect 128 + the signal's number
            error = Interrupted(f"stopped by {stop}; files already written are complete")
            error.exit_code = 128 + stop.signum
            raise _UserError(error) from None
        except KeyboardInterrupt:  # click would print "Aborted!" and exit 1; shells expect 130 for Ctrl-C
            raise _UserError(Interrupted("interrupted (Ctrl-C); files already written are complete")) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxcam")
def main():
    """Explain ONNX image classifiers with CAM / Grad-CAM heatmaps."""


for _module in (run, inspect, export, methods, eval, sanity, report):
    main.add_command(_module.command)
