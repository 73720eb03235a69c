"""`onnxcam methods`: the available CAM methods, one line each."""

from __future__ import annotations

import click

import onnxcam


@click.command("methods")
def command():
    """List the CAM methods."""
    table = onnxcam.methods.METHODS
    width = max(map(len, table))
    for m in table.values():
        click.echo(f"{m.name:{width}}  [{m.needs}]  {m.summary}")
