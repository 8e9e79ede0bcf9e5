"""Decoders on a device over SSH: timing, peak memory and generation run by the decoder worker in the device's runtime.

One session per job: a fresh temp folder on the device receives the worker (four stdlib/NumPy files) and each
artifact once, in a subfolder of its own (the candidate and its float32 baseline share a file name); every worker
run reads them there; the folder is removed afterwards, also after an error or Ctrl-C (`SshSession`).

adb devices do not run decoders: LiteRT's benchmark_model, which deploykit drives on phones, times one signature
per run and cannot carry a cache from prefill to decode, and phones have no Python for this worker.
"""

from __future__ import annotations

import json
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from deploykit.errors import DeployKitError
from deploykit.profiling.ssh import KILL_GRACE_S, REMOTE_MARGIN_S, SshRunner, SshSession

HERE = Path(__file__).parent
# Name on the device -> the file copied there (runtime.py and profile.py renamed: `profile` is a stdlib module).
WORKER_FILES = {"decoder_worker.py": HERE / "decoder_worker.py", "decoder_runtime.py": HERE / "runtime.py",
                "decoder_timing.py": HERE / "profile.py",
                "device_worker.py": HERE.parent / "profiling" / "device_worker.py"}
DEFAULT_TIMEOUT_S = 1800.0  # one worker run: a side-by-side timing of a 100M-parameter decoder on a Raspberry Pi


def decoder_runner(device: str, target, devices_file: str | None = None, trust_new_host: bool = False) -> SshRunner:
    """The ssh runner `--device` names for `target`, reached once now (an unreachable device fails before any work);
    adb devices are refused in one line."""
    from deploykit.profiling.devices import device_runner

    runner = decoder_device(device_runner(device, target, devices_file, trust_new_host))
    runner.cores()
    return runner


def folder_runner(folder: Path, device: str, devices_file: str | None = None,
                  trust_new_host: bool = False) -> SshRunner:
    """The device runner for a decoder build folder, checked against the target its report.json names."""
    from deploykit.target_loader import load_target
    from deploykit.user_files import read_json

    name = read_json(folder / "report.json", dict, untrusted=True).get("target")
    if not isinstance(name, str):
        raise DeployKitError(f"{folder}/report.json names no target; pass an OUT/<target> folder of a decoder build.")
    return decoder_runner(device, load_target(name), devices_file, trust_new_host)


def decoder_device(runner) -> SshRunner:
    """The runner if it can run decoders (ssh), else a one-line refusal saying what can."""
    if isinstance(runner, SshRunner):
        return runner
    raise DeployKitError(f"decoders cannot run on {runner.name} devices: LiteRT's benchmark_model times one signature "
                         "per run and cannot carry the KV cache from prefill to decode; use an ssh:// device with "
                         "Python 3.8+ and the runtime installed, or leave out --device to measure on this machine.")


class DeviceFolder:
    """The temp folder of one session on the device, holding the worker and the artifacts."""

    def __init__(self, runner: SshRunner, session: SshSession, folder: str, timeout_s: float):
        self.runner, self.session, self.folder, self.timeout_s = runner, session, folder, timeout_s

    def put(self, name: str, files: list[Path]) -> str:
        """Copy one artifact's files into a subfolder `name`; returns the subfolder's path relative to the folder."""
        self.session.run(f"mkdir {shlex.quote(f'{self.folder}/{name}')}")
        self.session.copy(files, f"{self.folder}/{name}", {})
        return name

    def run(self, request: dict, step: str, on_line: Callable[[str], None] | None = None) -> dict:
        """One worker run; its last stdout line parsed as JSON. `on_line` sees every line as it arrives."""
        self.session.copy([], self.folder, {"request.json": json.dumps(request)})
        command = self.runner.worker_command(self.folder, self.timeout_s, "decoder_worker.py")
        lines: list[str] = []

        def collect(text: str) -> None:
            lines.append(text)
            if on_line is not None:
                on_line(text)

        self.session.run_worker(command, self.timeout_s + KILL_GRACE_S + REMOTE_MARGIN_S,
                                f"{step} on {self.runner.device_name}", collect)
        try:
            return json.loads(lines[-1])
        except (IndexError, ValueError):
            raise DeployKitError(f"the decoder worker on {self.runner.device_name} answered something deploykit does "
                                 "not read; the device's worker and this deploykit may differ in version.") from None


@contextmanager
def device_folder(runner: SshRunner, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DeviceFolder]:
    with SshSession(runner.settings) as session:
        folder = session.make_temp_folder()
        try:
            session.copy([], folder, {name: path.read_text(encoding="utf-8") for name, path in WORKER_FILES.items()})
            yield DeviceFolder(runner, session, folder, timeout_s)
        finally:
            session.remove(folder)


def where(runner: SshRunner, answer: dict, threads: int) -> dict:
    """What the worker said about the device, as the report's `measured_on`; kept on the runner for describe()."""
    facts = answer.get("device", {})
    runner.facts, runner.runtime = facts, {"name": answer.get("runtime", "?")}
    return {"runner": runner.name, "device": runner.device_name, "address": runner.address,
            "host": f"{facts.get('arch', '?')} {facts.get('cpu', '?')}", "cores": facts.get("cores"),
            "threads": threads, "runtime": answer.get("runtime"), "facts": facts}


def device_threads(runner: SshRunner, threads: int | None) -> int:
    """Threads asked for, else the device's setting, else all its cores; never more than its cores."""
    cores = runner.cores()
    return min(threads or runner.settings.threads or cores, cores)


_DONE = object()


def generate_on_device(runner: SshRunner, runtime: str, files: list[Path], settings: dict, prompt_ids: list[int],
                       max_new_tokens: int, sampling, stop_ids: frozenset[int], threads: int | None) -> Iterator[int]:
    """Token ids as the device's worker produces them (the SSH session runs in a thread; tokens stream through a
    queue). `files`: the artifact's files, the one its runtime opens first."""
    import queue
    import threading

    produced: queue.Queue = queue.Queue()
    count = device_threads(runner, threads)

    def work() -> None:
        try:
            with device_folder(runner) as remote:
                name = remote.put("artifact", files)
                request = {"mode": "generate", "runtime": runtime, "threads": count,
                           "artifacts": {"artifact": {"file": f"{name}/{files[0].name}", "settings": settings}},
                           "prompt": prompt_ids, "max_new_tokens": max_new_tokens, "stop_ids": sorted(stop_ids),
                           "sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k,
                                        "seed": sampling.seed}}
                answer = remote.run(request, "generating", lambda line: _token(line, produced))
                where(runner, answer, count)
        except BaseException as error:  # noqa: BLE001 - handed to the consuming thread, which raises it
            produced.put(error)
        produced.put(_DONE)

    thread = threading.Thread(target=work, name="deploykit-device-generate", daemon=True)
    thread.start()
    while (item := produced.get()) is not _DONE:
        if isinstance(item, BaseException):
            raise item
        yield int(item)
    thread.join()


def _token(line: str, produced) -> None:
    """A streamed token line ({"token": id}) onto the queue; the worker's last line (its summary) is not one."""
    try:
        token = json.loads(line).get("token")
    except (ValueError, AttributeError):
        return
    if isinstance(token, int):
        produced.put(token)


def time_on_device(runner: SshRunner, runtime: str, artifacts: dict[str, tuple[list[Path], dict]], vocabulary: int,
                   plan, baseline: str | None, threads: int, prompt_length: int, log) -> dict:
    """Each artifact's peak memory (a worker run each), then all timed side by side in alternating rounds (one
    worker run): the same measurements as on the build host, from the device's runtime. `artifacts`: name ->
    (files, runtime settings). Returns the timing with `memory` and `measured_on`."""
    from dataclasses import asdict

    with device_folder(runner) as remote:
        with log.step("device_copy", f"copying {', '.join(artifacts)} to {runner.device_name}"):
            entries = {name: {"file": f"{remote.put(name, files)}/{files[0].name}", "settings": settings}
                       for name, (files, settings) in artifacts.items()}
        request = {"runtime": runtime, "threads": threads}
        with log.step("memory", f"peak memory of {', '.join(artifacts)} on {runner.device_name}, each in a fresh "
                                f"process ({prompt_length}-token prompt)"):
            memory = {name: remote.run({**request, "mode": "memory", "artifacts": {name: entry},
                                        "prompt_length": prompt_length, "decode_steps": plan.decode_steps},
                                       f"measuring the memory of {name}")
                      for name, entry in entries.items()}
        with log.step("timing", f"timing {', '.join(artifacts)} side by side on {runner.device_name} "
                                f"({plan.rounds} alternating rounds)"):
            answer = remote.run({**request, "mode": "time", "artifacts": entries, "plan": asdict(plan),
                                 "vocabulary": vocabulary, "baseline": baseline}, "timing")
    timing = {key: answer[key] for key in ("rounds", "decode_steps", "artifacts")}
    return {**timing, "memory": memory, "measured_on": where(runner, answer, threads)}
