"""Fidelity measured where the model runs: a build with an SSH device (the loopback sshd of test_ssh_runner) runs
the evaluation samples through the artifact on the device, and its gates use the outputs that came back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from deploykit.cli import main
from tests.test_ssh_runner import QUICK, sshd  # noqa: F401  (sshd: the module's own server)


def _device_python(folder: Path, change: str | None) -> tuple[str, Path]:
    """A 'device Python' that logs each command line, runs this Python, then applies `change` (Python code on the
    array `a`) to the outputs.npy the worker left: a device whose kernels compute differently from the host's."""
    log, shim = folder / "device-python.log", folder / "device-python"
    after = (f'if [ -f outputs.npy ]; then {sys.executable} -c "import numpy as np; a = np.load(\'outputs.npy\'); '
             f'np.save(\'outputs.npy\', ({change}).astype(\'float32\'))"; fi\n') if change else ""
    shim.write_text(f'#!/bin/sh\necho "$@" >> {log}\n{sys.executable} "$@"\nstatus=$?\n{after}exit $status\n')
    shim.chmod(0o755)
    return str(shim), log


def _build(sshd, model: Path, data: Path, out: Path, python: str, *extra: str):  # noqa: F811
    url = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}?python={python}&key={sshd['key']}" \
          f"&known_hosts={sshd['known_hosts']}"
    result = CliRunner().invoke(main, ["build", str(model), "--target", "arm-cpu", "--data", str(data), "--out",
                                       str(out), "--device", url, "--precision", "dynamic-int8", *QUICK, *extra])
    return result, json.loads((out / "arm-cpu" / "report.json").read_text())


def test_fidelity_comes_from_outputs_computed_on_the_device(sshd, tiny_classifier, labelled_data, tmp_path):  # noqa: F811
    """The device's 'runtime' swaps the two logits of every row: the report's fidelity, accuracy and gates follow the
    device (agreement 0, a missed gate), the host's own figures stand beside them, and the difference is a finding.
    The same build validated on the host passes: it was the device's outputs, not the host's, that decided."""
    python, log = _device_python(tmp_path, "a[:, ::-1]")
    result, report = _build(sshd, tiny_classifier, labelled_data, tmp_path / "device", python)
    assert result.exit_code == 3, result.output
    where = report["fidelity_measured_on"]
    assert where["where"] == "device" and where["device"] == f"127.0.0.1-{sshd['port']}"
    assert where["runtime"]["name"] == "ai-edge-litert"
    assert report["metrics"]["fidelity"]["agreement"] == 0.0 and where["host"]["fidelity"]["agreement"] == 1.0
    assert where["device_minus_host"]["agreement"] == -1.0 and where["beyond_tolerance"]
    assert not report["gates"]["passed"]
    assert "differs from the build host beyond 0.01" in (tmp_path / "device" / "arm-cpu" / "report.md").read_text()
    ran = log.read_text().splitlines()
    assert sum(line.endswith("-I device_worker.py request.json") for line in ran) == len(ran) >= 4  # 2 outputs, timings

    on_host, report = _build(sshd, tiny_classifier, labelled_data, tmp_path / "host", python, "--validate-on", "host")
    assert on_host.exit_code == 0, on_host.output
    assert report["fidelity_measured_on"] == {"where": "host"} and report["metrics"]["fidelity"]["agreement"] == 1.0


def test_host_and_device_agree_when_the_runtime_is_the_same(sshd, tiny_backbone_file, labelled_data, tmp_path):  # noqa: F811
    python, _ = _device_python(tmp_path, None)
    result, report = _build(sshd, tiny_backbone_file, labelled_data, tmp_path / "out", python)
    assert result.exit_code == 0, result.output
    where = report["fidelity_measured_on"]
    assert where["where"] == "device" and not where["beyond_tolerance"]
    assert np.allclose(list(where["device_minus_host"].values()), 0, atol=1e-6) and "cosine_mean" in where["device_minus_host"]
    assert report["metrics"]["fidelity"]["cosine_mean"] == where["host"]["fidelity"]["cosine_mean"]
