"""Child processes of a build: each has a time limit and fails with a one-line error naming its step."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from deploykit.errors import DeployKitError


def run_step(step: str, command: list[str], timeout_s: float, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """Run `command` to completion, capturing its output; a timeout, a signal or a non-zero exit is a DeployKitError.

    On any exception in the caller (Ctrl-C, SIGTERM turned into KeyboardInterrupt) `subprocess.run`
    kills the child before re-raising, so no child outlives the build.
    """
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=cwd,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeployKitError(f"{step} did not finish within {timeout_s:g} s and was stopped; raise the step's "
                             "timeout if the machine is just slow.") from None
    except OSError as error:
        raise DeployKitError(f"{step} could not start ({error.strerror}: {command[0]}).") from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise DeployKitError(f"{step} was killed by {name}{_hint(name)}.")
    if done.returncode != 0:
        raise DeployKitError(f"{step} failed: {last_line(done)}")
    return done


def last_line(done: subprocess.CompletedProcess) -> str:
    """The last non-blank line of a finished process's stderr (or stdout), for a one-line error."""
    lines = [line.strip() for line in f"{done.stdout}\n{done.stderr}".splitlines() if line.strip()]
    return lines[-1][:500] if lines else f"exit status {done.returncode}, no output"


def _hint(name: str) -> str:
    return {"SIGKILL": " (often the kernel's out-of-memory killer: free memory or use a smaller model)",
            "SIGSEGV": " (a crash inside the runtime)"}.get(name, "")


def in_fresh_process(step: str, function, *arguments):
    """`function(*arguments)` in a fresh (spawned) Python process, which hands its memory back when it ends; its
    exceptions come back as they were raised. A process that dies without a result is a one-line error naming
    `step`. `function` must be importable at module level."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(function, *arguments).result()
        except BrokenProcessPool:
            raise DeployKitError(f"{step} ended without a result (killed, most often for lack of memory); free "
                                 "memory or build one target at a time.") from None
