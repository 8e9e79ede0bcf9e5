"""`deploykit ci init`: write a CI workflow that builds each target, keeps the cache and the folders, and fails on a
missed gate.

    base.py    the settings, what every workflow holds, the provider registry and the YAML dumper
    github.py  GitHub Actions
    gitlab.py  GitLab CI

A new provider is one module here with a CIProvider subclass (or an entry point in
`deploykit.ci_providers`).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from deploykit.atomic_files import write_atomically
from deploykit.ci.base import (DEFAULT_INSTALL, DEFAULT_RUNNER_LABEL, PROVIDERS, WORKFLOW_OPTIONS, CIProvider,
                               DeviceJob, WorkflowSettings, get_provider)
from deploykit.errors import DeployKitError


def workflow_settings(targets: str, model: str | None = None, data: str | None = None, devices: tuple[str, ...] = (),
                      runner_label: str | None = None, install: str = DEFAULT_INSTALL, build_args: str = "",
                      command: str = "deploykit ci init") -> WorkflowSettings:
    """Check what `ci init` was given against the target registry, before anything is written.

    `devices`: `NAME` (the only target's device) or `TARGET=NAME`, names of the devices file CI reads.
    """
    from deploykit.backends.base import available_runtimes
    from deploykit.profiling.devices import DEVICE_NAME
    from deploykit.targets import load_target, resolve_targets

    resolved = resolve_targets(targets)
    if targets.strip() == "all":  # as `build --target all`: the targets deploykit can export for
        resolved = [target for target in resolved if target.runtime in available_runtimes()]
    names = tuple(dict.fromkeys(target.name for target in resolved))
    jobs = []
    for entry in devices:
        target, equals, device = entry.rpartition("=")
        if not equals:
            if len(names) != 1:
                raise DeployKitError(f"--device {entry!r}: with several targets say which one the device builds, "
                                     f"e.g. --device {names[0]}={entry}.")
            target = names[0]
        if not DEVICE_NAME.fullmatch(device):
            raise DeployKitError(f"--device {entry!r}: CI jobs name a device of the devices file (letters, digits, "
                                 "'.', '_' or '-'), e.g. --device lab-pi5 or --device arm-cpu=lab-pi5.")
        jobs.append(DeviceJob(load_target(target).name, device))
    if runner_label is not None and not jobs:
        raise DeployKitError("--runner-label names the self-hosted runner of the --device jobs; give --device too.")
    if not install.strip():
        raise DeployKitError("--install is empty; give the command that installs deploykit, e.g. 'pip install -e .'.")
    try:
        words = shlex.split(build_args)
    except ValueError as error:
        raise DeployKitError(f"--build-args {build_args!r} is not a shell word list ({error}).") from None
    repeated = sorted({word.split("=")[0] for word in words} & set(WORKFLOW_OPTIONS))
    if repeated:
        raise DeployKitError(f"--build-args sets {', '.join(repeated)}, which the workflow sets itself; use "
                             "--targets and --device instead.")
    return WorkflowSettings(targets=names, model=model, data=data, devices=tuple(dict.fromkeys(jobs)),
                            runner_label=runner_label or DEFAULT_RUNNER_LABEL, install=install.strip(),
                            build_args=build_args.strip(), command=command)


def write_workflow(provider: CIProvider, settings: WorkflowSettings, path: Path | None = None,
                   force: bool = False) -> Path:
    """Write the workflow (by default where the provider reads it), refusing to replace a file unless `force`."""
    path = Path(path or provider.default_path)
    if path.is_dir():
        raise DeployKitError(f"{path} is a folder; give --out a file name, e.g. {provider.default_path}.")
    text = provider.render(settings)
    try:
        return write_atomically(path, text, replace=force)
    except FileExistsError:
        raise DeployKitError(f"{path} exists; pass --force to replace it, or --out another file.") from None
    except OSError as error:
        raise DeployKitError(f"cannot write {path} ({error.strerror}).") from None


__all__ = ["PROVIDERS", "CIProvider", "DeviceJob", "WorkflowSettings", "get_provider", "workflow_settings",
           "write_workflow"]
