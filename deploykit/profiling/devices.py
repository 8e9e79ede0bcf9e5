"""Devices: `--device ssh://user@host[:port]`, `--device adb://SERIAL`, or a name from a devices file.

A URL may carry a devices-file entry's fields as a query:
`ssh://pi@10.0.0.5?python=/home/pi/venv/bin/python&threads=4`.

A devices file (`devices.yaml` in the working directory, `$DEPLOYKIT_DEVICES`, or
`--devices FILE`) names the lab's machines so CI can say `--device lab-pi5`:

    devices:
      lab-pi5:
        address: ssh://pi@10.0.0.5
        target: arm-cpu                  # builds for other targets refuse this device
        python: /home/pi/venv/bin/python # the device's Python with its runtime
        threads: 4
        key: ~/.ssh/lab_ed25519          # relative paths are relative to this file
      pixel-8:
        address: adb://39181FDJH000XY
        target: mobile-npu
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploykit.errors import DeployKitError, quoted
from deploykit.profiling.base import ProfileRunner, RUNNERS
from deploykit.user_files import parse_yaml, read_text

DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_DEVICES_FILE = Path("devices.yaml")


class DeviceEntry(BaseModel):
    """One device of a devices file; every field but `address` is optional."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="ssh://user@host[:port] or adb://SERIAL")
    target: str | None = Field(None, description="The target this device is an instance of.")
    python: str | None = Field(None, description="ssh: the device's Python (a command line), default python3.")
    threads: int | None = Field(None, ge=1, le=4096)
    key: str | None = Field(None, description="ssh: private key file.")
    known_hosts: str | None = Field(None, description="ssh: known_hosts file, default ~/.ssh/known_hosts.")
    benchmark_binary: str | None = Field(None, description="adb: a local benchmark_model binary to push.")


class DevicesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: dict[str, DeviceEntry]


def devices_file_path(given: str | Path | None) -> Path | None:
    """`--devices`, else $DEPLOYKIT_DEVICES, else ./devices.yaml when it exists."""
    if given is not None:
        return Path(given)
    if os.environ.get("DEPLOYKIT_DEVICES"):
        return Path(os.environ["DEPLOYKIT_DEVICES"])
    return DEFAULT_DEVICES_FILE if DEFAULT_DEVICES_FILE.is_file() else None


def read_devices(path: Path) -> dict[str, DeviceEntry]:
    document = parse_yaml(read_text(path), f"devices file {path}")
    try:
        devices = DevicesFile.model_validate(document).devices
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise DeployKitError(f"{path} is not a devices file ({problems}); see `deploykit build --help`.") from None
    for name in devices:
        if not DEVICE_NAME.fullmatch(name):
            raise DeployKitError(f"{path}: device name {quoted(name)} must be letters, digits, '.', '_' or '-'.")
    return devices


def device_runner(device: str, target, devices_file: str | Path | None = None, trust_new_host: bool = False,
                  benchmark_binary: str | None = None) -> ProfileRunner:
    """The profiling runner for `--device` when building or profiling `target`."""
    name, entry, base = None, None, Path.cwd()
    if "://" in device:
        entry = _entry_from_url(device)
    else:
        path = devices_file_path(devices_file)
        if path is None:
            raise DeployKitError(f"--device {quoted(device)} is neither ssh://user@host[:port] nor adb://SERIAL, and there "
                                 "is no devices file to look it up in; pass --devices FILE or a URL.")
        devices = read_devices(path)
        if device not in devices:
            raise DeployKitError(f"{path} names no device {quoted(device)}; it has {', '.join(sorted(devices)) or 'none'}.")
        name, entry, base = device, devices[device], path.parent
        if entry.target is not None and entry.target != target.name:
            raise DeployKitError(f"device {name!r} belongs to target {entry.target}, not {target.name}; build --target "
                                 f"{entry.target}, or give another device.")
    return RUNNERS.configured(_runner_settings(name, entry, base, target, trust_new_host, benchmark_binary),
                              "profiling: {name: ssh}")


def _entry_from_url(device: str) -> DeviceEntry:
    """An ad-hoc device: the URL without its query, the query's fields as a devices-file entry's."""
    address = _split(device)
    fields = parse_qs(address.query, keep_blank_values=True)
    repeated = [key for key, values in fields.items() if len(values) > 1]
    if repeated:
        raise DeployKitError(f"--device {quoted(device)} gives {', '.join(repeated)} more than once; give each once.")
    try:
        return DeviceEntry(address=address._replace(query="").geturl(), **{k: v[0] for k, v in fields.items()})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise DeployKitError(f"--device {quoted(device)}: {problems} (a URL's query takes the fields of a devices-file "
                             "entry: python, threads, key, known_hosts, benchmark_binary).") from None


def _split(address: str):
    """urlsplit with a one-line error: an unclosed IPv6 bracket (`ssh://pi@[::1:22`) raises inside it."""
    try:
        return urlsplit(address)
    except ValueError as error:
        raise DeployKitError(f"--device {quoted(address)} is not a device address ({error}); write "
                             "ssh://user@host[:port], ssh://user@[::1]:port or adb://SERIAL.") from None


def _runner_settings(name: str | None, entry: DeviceEntry, base: Path, target, trust_new_host: bool,
                     benchmark_binary: str | None) -> dict:
    address = _split(entry.address)
    local_file = lambda value: str(base / Path(value).expanduser()) if value else None  # noqa: E731
    if address.scheme == "ssh":
        try:
            port = 22 if address.port is None else address.port
        except ValueError:  # not a number, or above 65535
            port = 0
        if not address.hostname or not 1 <= port <= 65535 or address.path not in ("", "/"):
            raise DeployKitError(f"{quoted(entry.address)} is not an SSH address; write ssh://user@host or "
                                 "ssh://user@host:port (port 1 to 65535).")
        settings = {"name": "ssh", "host": address.hostname, "port": port, "device": name,
                    "user": unquote(address.username) if address.username else None,
                    "trust_new_host": trust_new_host, "threads": entry.threads, "key": local_file(entry.key)}
        if entry.known_hosts:
            settings["known_hosts"] = local_file(entry.known_hosts)
        if entry.python:
            settings["python"] = entry.python
        return settings
    if address.scheme == "adb":
        serial = address.netloc or None
        settings = {"name": "adb", "serial": serial, "device": name,
                    "benchmark_binary": benchmark_binary or local_file(entry.benchmark_binary),
                    "benchmark_flags": list(target.benchmark_model_flags)}
        return settings
    raise DeployKitError(f"--device {quoted(entry.address)}: deploykit reaches devices over ssh:// and adb://; write "
                         "ssh://user@host[:port] or adb://SERIAL.")
