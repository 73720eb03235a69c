"""`onnxcam report OUT_DIR`: report.html over an output folder of `run --json`, `eval` and `sanity`."""

from __future__ import annotations

import os

import click

import onnxcam

# run, eval and sanity: the same page over their output folder once they are done
report_option = click.option(
    "--report", is_flag=True, help="Also write report.html over the output folder (as `onnxcam report` does)."
)


@click.command("report")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
def command(out_dir):
    """Write OUT_DIR/report.html (OUT_DIR: an output folder of run --json, eval or sanity): every image's overlay, predictions and box, with filters, sorting and a detail
    view, and eval's and sanity's tables and curves; one self-contained file that fetches nothing."""
    echo_written(onnxcam.report.write_report(out_dir))


def write_reports(files) -> None:
    """report.html in the folder of each file written (run without --out writes next to each image)."""
    for folder in dict.fromkeys(os.path.dirname(f) or "." for f in files):
        echo_written(onnxcam.report.write_report(folder))


def echo_written(written) -> None:
    """The line every command that writes a report prints."""

    def count(n, what):
        return f"{n} {what}{'s' * (n != 1)}"

    parts = [count(written.images, "image")] if written.images or not (written.evaluation or written.sanity) else []
    parts += [f"{written.problems} with problems"] if written.problems else []
    parts += ["eval"] if written.evaluation else []
    parts += [count(written.sanity, "sanity check")] if written.sanity else []
    parts += [count(written.notices, "notice")] if written.notices else []
    click.echo(f"wrote     {written.path} ({', '.join(parts)})")
