"""User-facing errors. Anything else that escapes is a bug and keeps its traceback.

Each class carries the process exit code the CLI uses for it, so scripts can
tell a bad model from a bad image without parsing messages.
"""


class OnnxcamError(Exception):
    """A problem with what the user gave us; the message says what and how to fix it."""

    exit_code = 1


class ModelError(OnnxcamError):
    """The ONNX file is missing, unreadable, or not an image classifier we can explain."""

    exit_code = 3


class ImageError(OnnxcamError):
    """An input image is missing, unreadable or unusable."""

    exit_code = 4


class UnsupportedOpError(ModelError):
    """An op between the target layer and the class score has no backward rule (or not for its shapes).
    reason: the short form, for the line that says why gradients fall back to finite differences."""

    def __init__(self, message: str, op: str, node: str, reason: str | None = None):
        super().__init__(message)
        self.op, self.node = op, node
        self.reason = reason or f"no backward rule for {op} (node '{node}')"

    def with_hint(self, hint: str) -> "UnsupportedOpError":
        """The same error with how to go on, in the words of the command that met it."""
        return UnsupportedOpError(f"{self}. {hint[0].upper()}{hint[1:]}", self.op, self.node, self.reason)


class OutputError(OnnxcamError):
    """An output cannot be written: the folder is not writable, the disk is full, or it would replace an input."""

    exit_code = 5


class Interrupted(OnnxcamError):
    """The user pressed Ctrl-C; the files already written are complete (the CLI exits 130, as shells expect)."""

    exit_code = 130
