"""Child processes: a time limit, and one line naming the step and what ended it."""

import sys
from pathlib import Path

import pytest

import deploykit.profiling.device_worker
from deploykit.errors import DeployKitError
from deploykit.subprocesses import run_step


def test_a_child_past_its_limit_is_stopped_with_the_step_named():
    with pytest.raises(DeployKitError, match="profiling x did not finish within 0.5 s"):
        run_step("profiling x", [sys.executable, "-c", "import time; time.sleep(30)"], 0.5)


def test_a_child_killed_by_a_signal_is_reported_by_the_signal_name():
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(DeployKitError, match="converting was killed by SIGKILL .*out-of-memory"):
        run_step("converting", [sys.executable, "-c", suicide], 30)


def test_a_failing_child_gives_its_last_line():
    with pytest.raises(DeployKitError, match="step failed: ValueError: bad model"):
        run_step("step", [sys.executable, "-c", "raise ValueError('bad model')"], 30)


def test_a_missing_program_is_a_clear_error():
    with pytest.raises(DeployKitError, match="could not start"):
        run_step("step", ["/nonexistent/program"], 30)


def test_the_profiling_worker_does_not_import_from_the_working_directory(tmp_path, monkeypatch):
    """A `deploykit` folder (or numpy.py) in the user's working directory must not shadow the real packages."""
    (tmp_path / "numpy.py").write_text("raise SystemExit('shadowed numpy imported')")
    monkeypatch.chdir(tmp_path)
    worker = Path(deploykit.profiling.device_worker.__file__)
    done = run_step("worker import", [sys.executable, "-I", "-c", f"import runpy, numpy; runpy.run_path({str(worker)!r})"],
                    60)
    assert done.returncode == 0
