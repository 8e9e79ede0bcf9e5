"""The `ssh` profiling runner: times artifacts on a remote device (Raspberry Pi, Jetson, NUC) over SSH.

Each profile opens a connection (paramiko: host key checked against known_hosts, key
or agent authentication), makes a fresh temp folder on the device, copies the
artifact, the request and the stdlib-only device worker there over SFTP, runs the
worker with the device's own Python and runtime under `timeout`, reads back one
JSON line, and removes the folder: also after a failure, a timeout or Ctrl-C.
"""

from __future__ import annotations

import shlex
import socket
import time
from pathlib import Path

from pydantic import Field

from deploykit.errors import DeployKitError
from deploykit.profiling.base import Inputs, ProfileRunner, ProfileSettings, RunnerSettings
from deploykit.profiling.worker_io import (WORKER_SCRIPT, outputs_limit, outputs_request, outputs_result, pair_result,
                                           worker_error, worker_request, worker_result)

# Seconds between the remote `timeout` sending TERM and KILL, and the extra wait for the connection to report it.
KILL_GRACE_S = 5
REMOTE_MARGIN_S = 15


class SshSettings(RunnerSettings):
    """A device reached over SSH (from `--device ssh://user@host[:port]` or a devices file entry)."""

    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str | None = Field(None, description="Login name; None: the local user's.")
    device: str | None = Field(None, description="The device's name (devices file), for reports and profiles/.")
    key: str | None = Field(None, description="Private key file; None: the SSH agent and ~/.ssh/id_*.")
    known_hosts: str = Field("~/.ssh/known_hosts", description="Host keys the device's key is checked against.")
    trust_new_host: bool = Field(False, description="Accept an unknown host key and record it in known_hosts.")
    python: str = Field("python3", description="The device's Python with the runtime installed (a command line).")
    threads: int | None = Field(None, ge=1, description="Threads on the device; None: the target's.")
    connect_timeout_s: float = Field(15.0, gt=0)
    remote_tmp: str = Field("/tmp", description="Folder on the device under which each run's temp folder is made.")


class SshRunner(ProfileRunner):
    """A remote Linux device: measurements come from its CPU and its runtime, not from the build host."""

    name = "ssh"
    settings_class = SshSettings

    def __init__(self, settings: SshSettings):
        super().__init__(settings)
        self.facts: dict | None = None
        self.runtime: dict | None = None
        self._cores: int | None = None

    @property
    def address(self) -> str:
        user = f"{self.settings.user}@" if self.settings.user else ""
        return f"{user}{self.settings.host}:{self.settings.port}"

    @property
    def device_name(self) -> str:
        return self.settings.device or f"{self.settings.host}-{self.settings.port}"

    def threads(self, target) -> int:
        """The device's setting, else the target's thread count, never more than the device's cores.

        Asking the device for its cores also checks, before any export, that it can be reached.
        """
        cores = self.cores()
        return min(self.settings.threads or target.threads or cores, cores)

    def cores(self) -> int:
        if self._cores is None:
            with SshSession(self.settings) as session:
                answer = session.run("getconf _NPROCESSORS_ONLN").strip()
            self._cores = int(answer) if answer.isdigit() and int(answer) > 0 else 1
        return self._cores

    def describe(self, target, threads: int) -> dict:
        facts = self.facts or {}
        cpu = f"{facts.get('arch', '?')} {facts.get('cpu', '?')}"
        runtime = self.runtime or {}
        runtime_text = f"{runtime.get('name', '?')} {runtime.get('version') or ''}".strip()
        on_device = target.matches_host(cpu)
        note = (f"Measured on the device {self.device_name} over SSH ({self.address}: {cpu}, {facts.get('cores')} "
                f"cores, {facts.get('memory_mb')} MB, {facts.get('os', '?')}) with {runtime_text}, {threads} threads.")
        if target.host_match and not on_device:
            note += f" Its CPU does not match the target's device class ({target.device})."
        return {"runner": self.name, "device": self.device_name, "address": self.address, "host": cpu,
                "cores": facts.get("cores"), "threads": threads, "on_target_device": on_device, "note": note,
                "facts": facts, "runtime": runtime}

    def profile(self, backend: str, artifact: Path, runtime_config: dict, sample: Inputs, threads: int,
                settings: ProfileSettings) -> dict:
        from deploykit.backends.base import get_backend

        files = get_backend(backend).artifact_files(artifact)
        request = worker_request(backend, artifact.name, runtime_config, sample, threads, settings)
        with SshSession(self.settings) as session:
            folder = session.make_temp_folder()
            try:
                session.copy([WORKER_SCRIPT, *files], folder, {"request.json": request})
                stdout = session.run_worker(self.worker_command(folder, settings.timeout_s),
                                            settings.timeout_s + KILL_GRACE_S + REMOTE_MARGIN_S,
                                            f"profiling {artifact.name} on {self.device_name}")
            finally:
                session.remove(folder)
        profile = worker_result(stdout, threads)
        self.facts, self.runtime = profile["device"], profile["runtime"]
        return profile

    def profile_pair(self, backend: str, artifact: Path, runtime_config: dict, baseline: Path, baseline_config: dict,
                     sample: Inputs, threads: int, settings: ProfileSettings,
                     baseline_sample: Inputs | None = None) -> dict:
        from deploykit.backends.base import get_backend

        files = get_backend(backend).artifact_files
        with SshSession(self.settings) as session:
            folder = session.make_temp_folder()
            try:
                session.run(f"mkdir {shlex.quote(folder + '/baseline')}")
                session.copy(files(baseline), f"{folder}/baseline", {})
                request = worker_request(backend, artifact.name, runtime_config, sample, threads, settings,
                                         (f"baseline/{baseline.name}", baseline_config), baseline_sample)
                session.copy([WORKER_SCRIPT, *files(artifact)], folder, {"request.json": request})
                stdout = session.run_worker(self.worker_command(folder, settings.timeout_s),
                                            settings.timeout_s + KILL_GRACE_S + REMOTE_MARGIN_S,
                                            f"timing {artifact.name} against {baseline.name} on {self.device_name}")
            finally:
                session.remove(folder)
        return pair_result(stdout, settings.paired)

    def run_outputs(self, backend: str, artifact: Path, runtime_config: dict, inputs: Inputs, threads: int,
                    settings: ProfileSettings) -> dict:
        """The artifact run on the device on every row; its outputs come back as one .npy file over SFTP."""
        import tempfile

        from deploykit.backends.base import get_backend

        rows = len(next(iter(inputs.values())))
        request = outputs_request(backend, artifact.name, runtime_config, inputs, threads)
        with SshSession(self.settings) as session, tempfile.TemporaryDirectory(prefix="deploykit-outputs-") as local:
            folder = session.make_temp_folder()
            try:
                session.copy([WORKER_SCRIPT, *get_backend(backend).artifact_files(artifact)], folder,
                             {"request.json": request})
                stdout = session.run_worker(self.worker_command(folder, settings.timeout_s),
                                            settings.timeout_s + KILL_GRACE_S + REMOTE_MARGIN_S,
                                            f"running {artifact.name} on {rows} samples on {self.device_name}")
                received = Path(local) / "outputs.npy"
                session.fetch(f"{folder}/outputs.npy", received, outputs_limit(rows))
            finally:
                session.remove(folder)
            measured = outputs_result(stdout, received, rows)
        self.facts, self.runtime = measured["device"], measured["runtime"]
        return measured

    def worker_command(self, folder: str, timeout_s: float, script: str = WORKER_SCRIPT.name) -> str:
        """The shell command that runs `script` on request.json in `folder` with the device's Python under
        `timeout`; it first prints the shell's PID (SshSession.run_worker keeps it to kill an interrupted run)."""
        python = shlex.split(self.settings.python)
        return (f"cd {shlex.quote(folder)} && echo $$ && exec timeout -k {KILL_GRACE_S} "
                f"{timeout_s:g} {shlex.join(python)} -I {script} request.json")


class SshSession:
    """One verified SSH connection: run commands, copy files, remove the temp folder, kill a remote worker."""

    def __init__(self, settings: SshSettings):
        self.settings = settings
        self.client = None
        self.worker_pid: str | None = None

    def __enter__(self) -> "SshSession":
        import paramiko

        settings = self.settings
        known_hosts = Path(settings.known_hosts).expanduser()
        client = paramiko.SSHClient()
        if known_hosts.is_file():
            client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(_RecordNewHost(known_hosts) if settings.trust_new_host
                                           else paramiko.RejectPolicy())
        where = f"{settings.host}:{settings.port}"
        try:
            client.connect(settings.host, settings.port, username=settings.user, key_filename=_key(settings.key),
                           look_for_keys=settings.key is None, allow_agent=True, timeout=settings.connect_timeout_s,
                           banner_timeout=settings.connect_timeout_s, auth_timeout=settings.connect_timeout_s)
        except paramiko.BadHostKeyException:
            client.close()
            raise DeployKitError(f"the host key of {where} does not match the one in {known_hosts} (the device was "
                                 "reinstalled, or someone is in between); check it, then remove the old line with "
                                 f"`ssh-keygen -f {known_hosts} -R '[{settings.host}]:{settings.port}'`.") from None
        except paramiko.AuthenticationException:
            client.close()
            key = f"the key {settings.key}" if settings.key else "the SSH agent's and ~/.ssh's keys"
            raise DeployKitError(f"{settings.user or 'the local user'}@{where} refused {key}; add the public key to "
                                 "the device's ~/.ssh/authorized_keys or name the right one with key: in the "
                                 "devices file.") from None
        except paramiko.SSHException as error:
            client.close()
            if "not found in known_hosts" in str(error):
                raise DeployKitError(f"{where} is not in {known_hosts}, so its identity cannot be checked; verify its "
                                     "fingerprint and add it (ssh-keyscan), or pass --trust-new-host to accept and "
                                     "record it.") from None
            raise DeployKitError(f"SSH to {where} failed: {error}.") from None
        except (OSError, socket.timeout) as error:
            client.close()
            reason = "timed out" if isinstance(error, socket.timeout) else (error.strerror or str(error))
            raise DeployKitError(f"cannot connect to {where} ({reason}); check that the device is on and runs an SSH "
                                 "server, and the address and port.") from None
        self.client = client
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()

    def run(self, command: str, timeout_s: float = 60.0) -> str:
        """Run a shell command on the device; its stdout, or a DeployKitError with its last stderr line."""
        status, stdout, stderr = self._execute(command, timeout_s)
        if status != 0:
            raise DeployKitError(f"`{command}` failed on {self.settings.host}: {_last_line(stderr or stdout)}")
        return stdout

    def run_worker(self, command: str, timeout_s: float, step: str, on_line=None) -> str:
        """The worker's stdout; its first line is the remote shell's PID, kept so an interrupted run can be killed.
        `on_line` gets each later line as it arrives (a worker that streams)."""
        lines = []

        def line(text: str) -> None:
            if not lines:
                self._remember_pid(text)
            elif on_line is not None:
                on_line(text)
            lines.append(None)

        try:
            status, stdout, stderr = self._execute(command, timeout_s, on_line=line)
        except BaseException:
            self._kill_worker()
            raise
        if status in (124, 137):  # coreutils `timeout`: past the profiling timeout (137: killed after the grace)
            raise DeployKitError(f"{step} did not finish within the profiling timeout and was stopped; raise "
                                 "--profile-timeout if the device is just slow.")
        if status == 127:
            raise DeployKitError(f"{step}: the device has no `{self.settings.python}` (or no `timeout`); install "
                                 "Python 3.8+ there or set python: in the devices file.")
        if status != 0:
            message = worker_error(stderr) or _last_line(stderr or stdout)
            raise DeployKitError(f"{step} failed: {message}")
        return stdout.split("\n", 1)[1] if "\n" in stdout else ""

    def make_temp_folder(self) -> str:
        pattern = f"{self.settings.remote_tmp.rstrip('/')}/deploykit-XXXXXXXX"
        return self.run(f"mktemp -d {shlex.quote(pattern)}").strip()

    def copy(self, files: list[Path], folder: str, texts: dict[str, str]) -> None:
        """Copy files (by name) and write texts into the remote folder, over one SFTP session."""
        with self.client.open_sftp() as sftp:
            for path in files:
                sftp.put(str(path), f"{folder}/{path.name}")
            for name, text in texts.items():
                with sftp.open(f"{folder}/{name}", "w") as handle:
                    handle.write(text.encode())

    def fetch(self, remote: str, local: Path, max_bytes: int) -> None:
        """Copy one regular file of the run's temp folder back (the worker's outputs), refused unread when it is a
        link or larger than `max_bytes`: the device is not trusted to send only what was asked for."""
        import stat

        with self.client.open_sftp() as sftp:
            info = sftp.lstat(remote)
            if not stat.S_ISREG(info.st_mode or 0) or (info.st_size or 0) > max_bytes:
                raise DeployKitError(f"{self.settings.host} sent back {remote} as {info.st_size} bytes or not as a "
                                     f"plain file (at most {max_bytes} expected); check the device's worker.")
            sftp.get(remote, str(local))

    def remove(self, folder: str) -> None:
        """Remove the run's temp folder; never raises (it runs while another error may be on its way out)."""
        try:
            self._execute(f"rm -rf {shlex.quote(folder)}", 30)
        except Exception:  # noqa: BLE001 - a lost connection must not hide the error that brought us here
            pass

    def _remember_pid(self, line: str) -> None:
        self.worker_pid = line.strip() if line.strip().isdigit() else None

    def _kill_worker(self) -> None:
        """TERM the remote `timeout` (it passes the signal to the worker) after Ctrl-C or a lost wait."""
        if self.worker_pid:
            try:
                self._execute(f"kill -TERM {self.worker_pid}", 10)
            except Exception:  # noqa: BLE001 - best effort: `timeout` ends the worker anyway
                pass

    def _execute(self, command: str, timeout_s: float, on_line=None) -> tuple[int, str, str]:
        """Run `command`, reading both streams until it exits or `timeout_s` passes (then a DeployKitError);
        `on_line` gets each complete stdout line as it arrives."""
        channel = self.client.get_transport().open_session()
        channel.settimeout(0.2)
        channel.exec_command(command)
        stdout, stderr = bytearray(), bytearray()
        deadline = time.monotonic() + timeout_s
        reported = 0  # bytes of stdout already passed to on_line
        try:
            while True:
                while channel.recv_ready():
                    stdout += channel.recv(65536)
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(65536)
                while on_line is not None and (end := stdout.find(b"\n", reported)) >= 0:
                    on_line(stdout[reported:end].decode(errors="replace"))
                    reported = end + 1
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    raise DeployKitError(f"`{command}` on {self.settings.host} did not answer within {timeout_s:g} s; "
                                         "check the device and the connection.")
                time.sleep(0.02)
            return channel.recv_exit_status(), stdout.decode(errors="replace"), stderr.decode(errors="replace")
        finally:
            channel.close()


class _RecordNewHost:
    """--trust-new-host: accept an unknown host's key and append it to known_hosts (trust on first use)."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname: str, key) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with self.known_hosts.open("a") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def _key(path: str | None) -> str | None:
    if path is None:
        return None
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise DeployKitError(f"the SSH key {path} does not exist; fix key: in the devices file.")
    return str(resolved)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no output"
