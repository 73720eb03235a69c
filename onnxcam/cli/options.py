"""What the commands share: their common options (declared once each), the banner, the progress bar, and
message formatting. Vocabularies come from onnxcam.names, so declaring an option imports no library module."""

from __future__ import annotations

import functools
import sys

import click

from onnxcam import names


def _apply(fn, decorators):
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def model_options(fn):
    """How to read the model (which input, which output, which spatial size), passed to the command as one
    keyword, `model_args`: inspect_model's (and Explainer's) keyword arguments."""

    @functools.wraps(fn)
    def command(*args, input_name, output_name, input_size, task, **kwargs):
        model_args = dict(input_name=input_name, output_name=output_name, input_size=input_size or None, task=task)
        return fn(*args, model_args=model_args, **kwargs)

    return _apply(
        command,
        (
            click.option("--input", "input_name", metavar="NAME", help="The image input, when the model has several."),
            click.option(
                "--output", "output_name", metavar="NAME", help="The scores output, when the model has several."
            ),
            click.option(
                "--input-size",
                nargs=2,
                type=click.IntRange(1, 16384),
                metavar="H W",
                help="Spatial size for models whose input size is dynamic.",
            ),
            click.option(
                "--task",
                type=click.Choice(names.TASKS),
                help="What the model does. Default: chosen from the output's shape ([N, C]: classify; "
                "[N, C, H, W]: segment; [N, 4+C, A] or [N, A, 5+C]: detect).",
            ),
        ),
    )


def explainer_options(fn):
    """The model options, and how to run the explainer (preprocessing preset, device, where gradients come
    from), passed to the command as one keyword, `explainer_args`: Explainer's keyword arguments."""

    @functools.wraps(fn)
    def command(*args, model_args, preset, device, gradients, **kwargs):
        explainer_args = dict(model_args, preprocess_preset=preset, device=device, gradients=gradients)
        return fn(*args, explainer_args=explainer_args, **kwargs)

    return model_options(
        _apply(
            command,
            (
                click.option(
                    "--preprocess",
                    "preset",
                    type=click.Choice(names.PRESETS),
                    help=f"Preprocessing preset. Default: the model's own (metadata), else {names.DEFAULT_PRESET}.",
                ),
                click.option("--device", type=click.Choice(names.DEVICES), default="auto", show_default=True),
                click.option(
                    "--gradients",
                    type=click.Choice(names.GRADIENT_MODES),
                    default="auto",
                    show_default=True,
                    help="analytic: backward rules; fd: central differences of the head (channel-weight methods); "
                    "auto: analytic, else fd where a head op has no rule.",
                ),
            ),
        )
    )


def resize_option(fn):
    """--resize, passed on in `explainer_args` (Explainer's resize): for the commands that map maps and boxes back
    onto the image (eval's localization metrics assume a plain resize)."""

    @functools.wraps(fn)
    def command(*args, explainer_args, resize, **kwargs):
        return fn(*args, explainer_args={**explainer_args, "resize": resize}, **kwargs)

    return click.option(
        "--resize",
        type=click.Choice(names.RESIZES),
        help="How an image is fit to the model's input: stretch (a plain resize) or letterbox (ultralytics': aspect "
        "ratio kept, padded grey). Default: letterbox for ultralytics detectors (metadata), else stretch.",
    )(command)


layer_option = click.option(
    "-l",
    "--layer",
    "layers",
    multiple=True,
    metavar="NAME",
    help="Target layer (a tensor or node name, 'onnxcam inspect' lists them); repeat to average several. "
    "Default: the last conv-like layer.",
)


scorecam_option = click.option(
    "--scorecam-channels",
    type=click.IntRange(1),
    metavar="K",
    help="Score-CAM: score only the K channels of largest activation mass (an approximation, faster; default: all).",
)


def method_option(choices: tuple = names.METHODS):
    """-m/--method, the same grammar in every command: a method name or alias, repeated or comma-separated for
    several; names.method_names resolves the values (gradcam when none is given). A command that takes one
    method, or a subset, says so in `choices`."""
    what = "; repeat or comma-separate for several" if choices == names.METHODS else f": one of {', '.join(choices)}"
    return click.option(
        "-m",
        "--method",
        "methods",
        multiple=True,
        metavar="NAME",
        help=f"CAM method ('onnxcam methods' lists them){what}.  [default: {names.DEFAULT_METHOD}]",
    )


def target_option(top: bool = True):
    """-t/--target, parsed by names.parse_target."""
    what = ", or top-K (one map for each of the K best classes)" if top else ""
    return click.option(
        "-t",
        "--target",
        metavar="CLASS",
        help=f"Class to explain: an exact class name, a class index (index:N where the class names "
        f"are numbers){what}. Default: the top-1 class.",
    )


def banner(model: str, ex, methods=(), pictures: bool = True) -> None:
    """The lines each explaining command starts with: the model, where it runs, the layers, the preprocessing
    when it is a guess (for pictures: ready tensors get none), and each method with where its gradients come
    from and what finite differences will cost."""
    click.echo(f"model     {model}")
    click.echo(f"provider  {ex.provider}")
    for name in ex.layers:
        click.echo(f"layer     {name}  {names.format_shape(ex.info.resolve_layer(name).shape)}")
    if ex.preset_source == "assumed" and pictures:
        click.echo(
            f"preprocess {ex.preset} (assumed: the model records no preprocessing; if it was trained with "
            "another, give --preprocess)"
        )
    for name in methods:
        source = ex.gradient_source(name)
        cost = f"about {ex.fd_seconds:.1f} s an image" if ex.fd_seconds is not None else ""
        reasons = "; ".join(r for r in (ex.missing_rule, cost) if r)
        why = f" ({reasons})" if reasons and source == "finite differences" else ""
        click.echo(f"method    {name}" + (f"  gradients {source}{why}" if source else ""))


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
