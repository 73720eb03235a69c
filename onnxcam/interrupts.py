"""How Ctrl-C, SIGTERM and SIGHUP stop a command: the first one, the later ones, and the exit.

The first signal unwinds the main thread as Ctrl-C always does (SIGTERM and SIGHUP as `Terminated`, a
KeyboardInterrupt), so every `finally` runs: temporary files are removed and run's writer thread is joined.
Every later signal is ignored (SIG_IGN, which Python's exit keeps), because a second Ctrl-C used to cut that
cleanup short: it broke the join of a thread still inside OpenCV or ONNX Runtime, Python's exit went on
beside it, and when the thread came back for the interpreter it was ended mid-C++ ("terminate called without
an active exception", SIGABRT), or a traceback was printed and a temporary file stayed.

Signals someone chose to ignore (nohup, a background job's SIGINT) stay ignored; a handler someone else
installed is left alone. Python runs handlers in the main thread only, so only the main thread is interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
# signal -> the handler that means "not handled by anyone yet": only those are taken over
_UNHANDLED = {sig: signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL for sig in SIGNALS}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C (so every cleanup that Ctrl-C runs, runs); exit 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stop:
    """The signals taken over, and the first one received (None until then)."""

    def __init__(self):
        self.signum, self.previous = None, {}

    def handle(self, signum, frame):
        if self.signum is not None:  # a signal already pending when SIG_IGN was set
            return
        self.signum = signum
        ignore(self.previous)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


_active: Stop | None = None  # the taken-over handlers of this process, if any


def take_over() -> Stop | None:
    """Make the first signal stop the command and the later ones be ignored; None outside the main thread
    (which Python does not let set handlers). Where it is already done, the Stop in place."""
    global _active
    if threading.current_thread() is not threading.main_thread():
        return None
    if _active is not None:
        return _active
    stop = Stop()
    for sig in SIGNALS:
        if signal.getsignal(sig) is _UNHANDLED[sig]:
            stop.previous[sig] = signal.signal(sig, stop.handle)
    _active = stop
    return stop


@contextlib.contextmanager
def stop_on_signals():
    """take_over() while inside; the previous handlers come back after (unless it was already in place)."""
    global _active
    outer = _active
    stop = take_over()
    try:
        yield stop
    finally:
        if stop is not None and stop is not outer:
            stop.restore()
            _active = outer


def ignore(signals=SIGNALS) -> None:
    """Ignore these signals from now on (the command is over, or stopping): nothing cuts the exit short."""
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def held():
    """Ctrl-C, SIGTERM and SIGHUP wait until the block is done (the main thread only: Python runs signal
    handlers there, so no other thread is interrupted by them), then take effect as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught, previous = [], {}
    for sig in SIGNALS:
        try:
            previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
        except (OSError, ValueError):
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in caught[:1]:
            signal.raise_signal(signum)
