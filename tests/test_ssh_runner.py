"""The ssh profiling runner against a real OpenSSH server on loopback, and the device-side worker's imports.

The server is Debian's openssh-server (the Makefile's setup installs it), started on a free
port with a generated host key and user key, and stopped afterwards. The "device" is this
machine: its Python is given as the device's Python, so the worker runs with the runtimes
installed here, exactly as it would on a Raspberry Pi with only `ai-edge-litert`.
"""

from __future__ import annotations

import ast
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from deploykit.cli import main
from deploykit.errors import DeployKitError
from deploykit.profiling import device_worker
from deploykit.profiling.base import RUNNERS, ProfileSettings
from deploykit.profiling.build_folder import profile_path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
QUICK = ["--runs", "3", "--warmup", "1", "--evaluation-samples", "10", "--calibration-samples", "10"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deploykit-test", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1:<free port> accepting one generated user key; yields its connection facts."""
    if not os.path.exists(SSHD):
        if os.environ.get("CI"):
            pytest.fail("openssh-server is missing: `make setup` installs it (apt-get install openssh-server)")
        pytest.skip("openssh-server is not installed; `make setup` installs it")
    folder = tmp_path_factory.mktemp("sshd")
    host_key = _keygen(folder / "host_key")
    user_key, wrong_key = _keygen(folder / "user_key"), _keygen(folder / "wrong_key")
    (folder / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", "LogLevel ERROR", "",
    ]))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"sshd did not start: {server.stderr.read()}")
            time.sleep(0.1)
    known_hosts = folder / "known_hosts"
    host_public = Path(f"{host_key}.pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
    yield {"port": port, "user": getpass.getuser(), "key": user_key, "wrong_key": wrong_key,
           "known_hosts": known_hosts, "folder": folder}
    server.terminate()
    server.wait(timeout=10)


def _runner(sshd, remote_tmp: Path, **settings):
    remote_tmp.mkdir(exist_ok=True)
    return RUNNERS.configured({"name": "ssh", "host": "127.0.0.1", "port": sshd["port"], "user": sshd["user"],
                               "key": str(sshd["key"]), "known_hosts": str(sshd["known_hosts"]),
                               "python": sys.executable, "remote_tmp": str(remote_tmp), "device": "loopback",
                               **settings}, "profiling: {name: ssh}")


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_classifier, labelled_data):
    """A LiteRT (arm-cpu) and an OpenVINO (intel-cpu) build of the tiny classifier, profiled locally."""
    out = tmp_path_factory.mktemp("built")
    result = CliRunner().invoke(main, ["build", str(tiny_classifier), "--target", "arm-cpu,intel-cpu", "--data",
                                       str(labelled_data), "--out", str(out), *QUICK])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("target, runtime", [("arm-cpu", "ai-edge-litert"), ("intel-cpu", "openvino")])
def test_profiles_an_artifact_on_the_device_and_removes_what_it_copied(sshd, built, tmp_path, target, runtime):
    runner = _runner(sshd, tmp_path / "remote")
    measured = profile_path(built / target, 2, ProfileSettings(runs=5, warmup=1), runner)
    assert measured["latency_ms"]["runs"] == 5 and 0 < measured["latency_ms"]["p50"] <= measured["latency_ms"]["p99"]
    assert measured["runtime"]["name"] == runtime and measured["runtime"]["version"]
    assert measured["device"]["cores"] == os.cpu_count() and measured["device"]["memory_mb"] > 0
    assert 0 < measured["peak_rss_mb"] < 2000
    if runtime == "openvino":  # per-node performance counters
        assert measured["op_profile"]["by_type"] and measured["op_profile"]["top"][0]["ms"] > 0
    assert list((tmp_path / "remote").iterdir()) == []  # the run's temp folder is gone
    described = runner.describe(built_target(built / target), 2)
    assert described["device"] == "loopback" and "over SSH" in described["note"] and runtime in described["note"]


def built_target(folder: Path):
    from deploykit.profiling.build_folder import build_target_of

    return build_target_of(folder)


def test_an_unknown_host_is_refused_unless_trusted(sshd, built, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    with pytest.raises(DeployKitError, match="is not in .*known_hosts.*--trust-new-host"):
        profile_path(built / "arm-cpu", 1, ProfileSettings(runs=1, warmup=0),
                     _runner(sshd, tmp_path / "remote", known_hosts=str(known_hosts)))
    profile_path(built / "arm-cpu", 1, ProfileSettings(runs=1, warmup=0, op_profile=False),
                 _runner(sshd, tmp_path / "remote", known_hosts=str(known_hosts), trust_new_host=True))
    recorded = known_hosts.read_text().split()
    assert recorded[0] == f"[127.0.0.1]:{sshd['port']}" and recorded[1:] == sshd["known_hosts"].read_text().split()[1:]


def test_a_changed_host_key_is_refused(sshd, built, tmp_path):
    other = Path(f"{_keygen(tmp_path / 'other_host')}.pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd['port']} {other[0]} {other[1]}\n")
    with pytest.raises(DeployKitError, match="does not match the one in"):
        profile_path(built / "arm-cpu", 1, ProfileSettings(runs=1, warmup=0),
                     _runner(sshd, tmp_path / "remote", known_hosts=str(known_hosts), trust_new_host=True))


def test_a_wrong_key_is_refused_with_a_clear_message(sshd, built, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(DeployKitError, match="refused the key .*wrong_key; add the public key"):
        profile_path(built / "arm-cpu", 1, ProfileSettings(runs=1, warmup=0),
                     _runner(sshd, tmp_path / "remote", key=str(sshd["wrong_key"])))


def test_a_device_without_the_runtime_names_the_package(sshd, built, tmp_path):
    # -S: the device's Python without site-packages, i.e. with the standard library only.
    runner = _runner(sshd, tmp_path / "remote", python=f"{sys.executable} -S")
    with pytest.raises(DeployKitError, match="LiteRT runtime is not installed .* pip install ai-edge-litert"):
        profile_path(built / "arm-cpu", 1, ProfileSettings(runs=1, warmup=0), runner)
    assert list((tmp_path / "remote").iterdir()) == []


def test_a_hung_device_reaches_the_timeout_and_is_cleaned_up(sshd, built, tmp_path):
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 120\n")
    hang.chmod(0o755)
    runner = _runner(sshd, tmp_path / "remote", python=str(hang))
    started = time.monotonic()
    with pytest.raises(DeployKitError, match="did not finish within the profiling timeout"):
        profile_path(built / "arm-cpu", 1, ProfileSettings(runs=1, warmup=0, timeout_s=2), runner)
    assert time.monotonic() - started < 30
    assert list((tmp_path / "remote").iterdir()) == []


def test_ctrl_c_mid_copy_still_removes_the_remote_folder(sshd, built, tmp_path, monkeypatch):
    from deploykit.profiling import ssh

    real_copy = ssh.SshSession.copy

    def interrupted_copy(self, files, folder, texts):
        real_copy(self, files[:1], folder, {})  # the worker is on the device, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(ssh.SshSession, "copy", interrupted_copy)
    with pytest.raises(KeyboardInterrupt):
        profile_path(built / "arm-cpu", 1, ProfileSettings(runs=1, warmup=0), _runner(sshd, tmp_path / "remote"))
    assert list((tmp_path / "remote").iterdir()) == []


def test_build_and_profile_on_a_device_through_the_cli(sshd, tiny_classifier, labelled_data, tmp_path, monkeypatch):
    """`deploykit build --device ssh://...` and `deploykit profile DIST/arm-cpu --device NAME` (devices file)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(sshd["key"], home / ".ssh" / "id_ed25519")
    shutil.copy(sshd["known_hosts"], home / ".ssh" / "known_hosts")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    out, profiles = tmp_path / "out", tmp_path / "profiles"
    url = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}?python={sys.executable}"
    built = CliRunner().invoke(main, ["build", str(tiny_classifier), "--target", "arm-cpu", "--data",
                                      str(labelled_data), "--out", str(out), "--device", url, "--save-profile",
                                      str(profiles), *QUICK])
    assert built.exit_code == 0, built.output
    report = json.loads((out / "arm-cpu" / "report.json").read_text())
    measured_on = report["measured_on"]
    assert measured_on["runner"] == "ssh" and measured_on["address"] == f"{sshd['user']}@127.0.0.1:{sshd['port']}"
    assert measured_on["facts"]["cores"] == os.cpu_count() and measured_on["runtime"]["name"] == "ai-edge-litert"
    markdown = (out / "arm-cpu" / "report.md").read_text()
    assert "over SSH" in markdown and "ai-edge-litert" in markdown
    saved = json.loads((profiles / "arm-cpu" / f"127.0.0.1-{sshd['port']}.json").read_text())
    assert {m["label"] for m in saved["measurements"]} == {"fp32 baseline", "dynamic-int8"}
    assert saved["measurements"][0]["architecture"]["layers"] == 1

    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"devices": {"lab-loopback": {
        "address": f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}", "target": "arm-cpu", "python": sys.executable,
        "threads": 1}}}))
    profiled = CliRunner().invoke(main, ["profile", str(out / "arm-cpu"), "--device", "lab-loopback", "--devices",
                                         str(devices), "--runs", "3", "--warmup", "0"])
    assert profiled.exit_code == 0, profiled.output
    assert "Measured on the device lab-loopback over SSH" in profiled.output and "p50 ms" in profiled.output
    wrong = CliRunner().invoke(main, ["profile", str(out / "arm-cpu"), "--device", "lab-loopback", "--devices",
                                      str(devices.with_name("missing.yaml"))])
    assert wrong.exit_code == 2 and "missing.yaml" in wrong.stderr


def test_the_device_worker_imports_only_the_standard_library_and_the_runtime(built, tmp_path):
    """Statically (its import statements) and at run time (every module loaded while it times an artifact)."""
    tree = ast.parse(Path(device_worker.__file__).read_text())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}
    runtime_packages = {"litert": {"ai_edge_litert", "numpy"}, "openvino": {"openvino", "numpy"}}
    for backend, folder in (("litert", "arm-cpu"), ("openvino", "intel-cpu")):
        artifact = next(p for p in (built / folder).iterdir() if p.suffix in (".tflite", ".xml"))
        request = tmp_path / "request.json"
        request.write_text(json.dumps({"backend": backend, "artifact": str(artifact), "runtime_config": {},
                                       "inputs": {"token_ids": {"dtype": "int32", "shape": [1, 16], "values": [2] * 16},
                                                  "padding_mask": {"dtype": "int32", "shape": [1, 16], "values": [1] * 16}},
                                       "threads": 1, "runs": 2, "warmup": 0, "op_profile": True}))
        # Every import statement the worker executes (lazy ones included) is recorded by its own name; what the
        # runtime then imports for itself is the runtime's business, but never deploykit, TensorFlow or Keras.
        probe = (f"import builtins, runpy, sys; sys.argv = ['device_worker.py', {str(request)!r}]\n"
                 "worker, direct, real = %r, set(), builtins.__import__\n"
                 "def spy(name, globals=None, locals=None, fromlist=(), level=0):\n"
                 "    if globals and globals.get('__file__') == worker and level == 0:\n"
                 "        direct.add(name.split('.')[0])\n"
                 "    return real(name, globals, locals, fromlist, level)\n"
                 "builtins.__import__ = spy\n"
                 "try:\n    runpy.run_path(worker, run_name='__main__')\nexcept SystemExit as end:\n    assert not end.code\n"
                 "loaded = {m.split('.')[0] for m in sys.modules}\n"
                 "print(sorted(direct - set(sys.stdlib_module_names)), sorted(loaded & {'deploykit', 'tensorflow', "
                 "'keras'}), file=sys.stderr)" % device_worker.__file__)
        done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        direct, forbidden = ast.literal_eval(done.stderr.strip().splitlines()[-1].replace("] [", "], ["))
        assert set(direct) == runtime_packages[backend] and forbidden == []


def test_a_paired_timing_on_the_device_copies_both_and_removes_them(sshd, built, tmp_path):
    import numpy as np

    from deploykit.profiling.base import PairedTiming

    runner = _runner(sshd, tmp_path / "remote")
    artifact = next(p for p in (built / "intel-cpu").iterdir() if p.suffix == ".xml")  # with its .bin beside it
    sample = {"token_ids": np.full((1, 16), 2, np.int32), "padding_mask": np.ones((1, 16), np.int32)}
    settings = ProfileSettings(warmup=1, paired=PairedTiming(runs=3, min_rounds=4, max_rounds=4))
    paired = runner.profile_pair("openvino", artifact, {}, artifact, {}, sample, 1, settings)
    assert paired["rounds"] == 4 and paired["runtime"]["name"] == "openvino" and paired["speedup"] > 0
    assert list((tmp_path / "remote").iterdir()) == []
