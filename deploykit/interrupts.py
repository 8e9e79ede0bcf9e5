"""Ctrl-C and SIGTERM end a command cleanly: cleanup runs, children are stopped, the exit code names the signal.

SIGTERM (what CI runners and `kill` send) is turned into the same exception as
Ctrl-C, so every `finally` and `with` block on the way out runs: temporary and
staging folders are removed, `subprocess.run` kills its child, and an earlier build
in the output folder stays as it was. Further signals during that cleanup are
ignored, so it is not cut short halfway.

The exception is raised wherever the main thread is, which may be inside a native
library's callback (TensorFlow's graph import calls back into Python): pybind11 then
replaces it with a RuntimeError ("MISMATCH of original and normalized active
exception types"). Whatever leaves the block after a signal arrived is therefore
turned back into `Interrupted`, so the exit code still names the signal.

Python drops an exception raised inside a finalizer (`__del__`, e.g. TensorFlow's as the
garbage collector frees a traced function) after printing "Exception ignored". A signal
landing there is delivered again a moment later, outside it; and a block that still ends
normally after a signal raises it on exit.

A process forked inside the block (a library's `multiprocessing.Process`, such as
OpenVINO's telemetry sender, which it terminates after a timeout) inherits the
handler; there the signal does what it would have done without deploykit, so the
child ends quietly instead of printing an `Interrupted` traceback.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)
# A signal that lands inside a finalizer is sent again after this long: finalizers free memory and return.
REDELIVERY_DELAY_S = 0.05


class Interrupted(KeyboardInterrupt):
    """A signal ended the command; `exit_code` is 128 + the signal's number, as shells report it."""

    def __init__(self, number: int):
        super().__init__(signal.Signals(number).name)
        self.signal_name = signal.Signals(number).name
        self.exit_code = 128 + number


_holding: list[bool] = []  # innermost last: True within held(), False within released()
_pending: list[Interrupted] = []  # a signal that arrived while held


@contextmanager
def held() -> Iterator[None]:
    """Signals arriving within the block are raised at its end, or at the start of a `released()` block inside it:
    for bookkeeping that must not stop halfway (a study recording a trial's state in its database)."""
    _holding.append(True)
    try:
        yield
    finally:
        _holding.pop()
    if _pending and not (_holding and _holding[-1]):
        raise _pending.pop()


@contextmanager
def released() -> Iterator[None]:
    """Within a `held()` block, the work that may be interrupted; a signal held until now is raised on entry."""
    _holding.append(False)
    try:
        if _pending:
            raise _pending.pop()
        yield
    finally:
        _holding.pop()


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` in the main thread (see held())."""

    received: list[Interrupted] = []
    owner = os.getpid()
    active = True

    def handler(number, frame):
        if os.getpid() != owner:  # a forked child: the default action (SIGTERM ends it, SIGINT raises)
            signal.signal(number, signal.SIG_DFL if number != signal.SIGINT else signal.default_int_handler)
            os.kill(os.getpid(), number)
            return
        if _in_finalizer(frame):  # Python would print the exception and drop it
            if not received:
                received.append(Interrupted(number))  # raised on exit if the block ends before the redelivery
            threading.Timer(REDELIVERY_DELAY_S, lambda: active and os.kill(owner, number)).start()
            return
        for handled in HANDLED:
            signal.signal(handled, signal.SIG_IGN)
        received.append(Interrupted(number))
        if _holding and _holding[-1]:
            _pending.append(received[0])
            return
        raise received[0]

    previous = {number: signal.signal(number, handler) for number in HANDLED}
    try:
        yield
        if received:  # raised where Python drops exceptions and carried on: the exit code still names the signal
            raise received[0]
    except Exception as error:  # the signal's exception, replaced on its way through native code
        if received:
            raise received[0] from error
        raise
    finally:
        active = False
        for number, action in previous.items():
            signal.signal(number, action)


def _in_finalizer(frame) -> bool:
    """Whether the interrupted code runs inside a `__del__`, where a raised exception is dropped."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False
