"""The `local` profiling runner: times the artifact on this machine's CPU, each in its own worker process."""

from __future__ import annotations

import os
import sys
import tempfile
import platform
import re
from pathlib import Path

from deploykit.backends.base import Inputs
from deploykit.profiling.base import ProfileRunner, ProfileSettings
from deploykit.profiling.worker_io import (WORKER_SCRIPT, outputs_request, outputs_result, pair_result, worker_request,
                                           worker_result)
from deploykit.subprocesses import run_step


class LocalRunner(ProfileRunner):
    """This machine. A target's `host_match` regex says when this host is an instance of its device class."""

    name = "local"
    facts: dict | None = None  # the worker's account of this host, once it has run

    @property
    def device_name(self) -> str:
        """This host's CPU and core count, e.g. `x86-64-amd-epyc-2-cores`: what was measured, not a target's name."""
        return f"{slug(host_description())}-{os.cpu_count()}-cores"

    def threads(self, target) -> int:
        """The target's thread count, never more than this host's cores (oversubscription only adds noise)."""
        cores = os.cpu_count() or 1
        return min(target.threads or cores, cores)

    def describe(self, target, threads: int) -> dict:
        host = host_description()
        on_device = target.matches_host(host)
        if on_device:
            note = f"Measured on this host ({host}, {threads} threads), which is an instance of the target's device class."
        else:
            note = (f"Measured on this host ({host}, {threads} threads), not on the target's device ({target.device}): "
                    "ratios between artifact and baseline carry over better than absolute latencies.")
        return {"runner": self.name, "device": self.device_name, "host": host, "cores": os.cpu_count(),
                "threads": threads, "on_target_device": on_device, "note": note, "facts": self.facts}

    def profile(self, backend: str, artifact: Path, runtime_config: dict, sample: Inputs, threads: int,
                settings: ProfileSettings) -> dict:
        profile = profile_artifact(backend, artifact, runtime_config, sample, threads, settings)
        self.facts = profile["device"]
        return profile

    def profile_pair(self, backend: str, artifact: Path, runtime_config: dict, baseline: Path, baseline_config: dict,
                     sample: Inputs, threads: int, settings: ProfileSettings,
                     baseline_sample: Inputs | None = None) -> dict:
        request = worker_request(backend, str(artifact.resolve()), runtime_config, sample, threads, settings,
                                 (str(baseline.resolve()), baseline_config), baseline_sample)
        stdout = _run_worker(f"timing {artifact.name} against {baseline.name}", request, settings)
        return pair_result(stdout, settings.paired)

    def run_outputs(self, backend: str, artifact: Path, runtime_config: dict, inputs: Inputs, threads: int,
                    settings: ProfileSettings) -> dict:
        request = outputs_request(backend, str(artifact.resolve()), runtime_config, inputs, threads)
        rows = len(next(iter(inputs.values())))
        return _run_worker(f"running {artifact.name} on {rows} samples", request, settings,
                           lambda stdout, folder: outputs_result(stdout, folder / "outputs.npy", rows))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def host_description() -> str:
    """'<arch> <cpu model name>' of this machine, e.g. 'x86_64 AMD EPYC 9654'."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {model}".strip()


def profile_artifact(
    backend: str, artifact: Path, runtime_config: dict, sample: Inputs, threads: int, settings: ProfileSettings
) -> dict:
    """Latency summary, peak RSS, runtime and device facts of one artifact on a batch-1 sample, in a fresh process."""
    request = worker_request(backend, str(artifact.resolve()), runtime_config, sample, threads, settings)
    return worker_result(_run_worker(f"profiling {artifact.name} on {backend}", request, settings), threads)


def _run_worker(step: str, request: str, settings: ProfileSettings, read=None):
    """The worker's stdout for one request, run in a fresh process inside a temp folder; with `read`, what
    read(stdout, folder) makes of it and the files the worker wrote there, before the folder goes."""
    with tempfile.TemporaryDirectory(prefix="deploykit-profile-") as folder:
        request_path = Path(folder) / "request.json"
        request_path.write_text(request)
        # -I: the worker sees neither the caller's working directory nor PYTHON* variables on its path.
        done = run_step(step, [sys.executable, "-I", str(WORKER_SCRIPT), str(request_path)], settings.timeout_s,
                        cwd=folder)
        return read(done.stdout, Path(folder)) if read is not None else done.stdout
