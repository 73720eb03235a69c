"""`onnxcam methods`: the available CAM methods, one line each."""

from __future__ import annotations

import click


@click.command("methods")
def command():
    """List the CAM methods."""
    from onnxcam.methods import METHODS

    width = max(map(len, METHODS))
    for m in METHODS.values():
        needs = m.needs
        click.echo(f"{m.name:{width}}  [{needs}]  {m.summary}")
