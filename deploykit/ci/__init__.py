"""`deploykit ci init`: write a CI workflow that builds each target, keeps the cache and the folders, and fails on a
missed gate.

    base.py    the settings, what every workflow holds, the provider registry and the YAML dumper
    github.py  GitHub Actions
    gitlab.py  GitLab CI

A new provider is one module here with a CIProvider subclass (or an entry point in
`deploykit.ci_providers`).
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

from deploykit.atomic_files import write_atomically
from deploykit.ci.base import (DEFAULT_INSTALL, DEFAULT_RUNNER_LABEL, PROVIDERS, WORKFLOW_OPTIONS, CIProvider,
                               DeviceJob, WorkflowSettings, get_provider)
from deploykit.errors import DeployKitError, quoted

# Characters no value may bring into a workflow: controls (a line break would start a YAML key, or end the header
# comment), format characters (bidi overrides hide text) and the line and paragraph separators, which YAML 1.1
# readers take for line breaks.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
RUNNER_LABEL = re.compile(r"[A-Za-z0-9._-]+")
# What a --build-args word may hold: word splitting of the unquoted $DEPLOYKIT_BUILD_ARGS keeps it whole and the
# shell neither globs nor expands it.
BUILD_ARG_WORD = re.compile(r"[A-Za-z0-9_.,:=/+@%-]+")


def workflow_settings(targets: str, model: str | None = None, data: str | None = None, devices: tuple[str, ...] = (),
                      runner_label: str | None = None, install: str = DEFAULT_INSTALL, build_args: str = "",
                      command: str = "deploykit ci init", compare_against: str | None = None) -> WorkflowSettings:
    """Check what `ci init` was given against the target registry, before anything is written.

    `devices`: `NAME` (the only target's device) or `TARGET=NAME`, names of the devices file CI reads.
    `compare_against`: an earlier build's --out folder in the repository; each job compares its target with it.
    """
    from deploykit.backends.base import available_runtimes
    from deploykit.profiling.devices import DEVICE_NAME
    from deploykit.target_loader import load_target, resolve_targets

    given = [("--targets", targets), ("--model", model), ("--data", data), *(("--device", entry) for entry in devices),
             ("--runner-label", runner_label), ("--install", install), ("--build-args", build_args),
             ("--compare-against", compare_against)]
    for flag, value in given:
        if value is not None:
            check_text(flag, value)
    for flag, value, command_name in (("--model", model, "build"), ("--compare-against", compare_against, "compare")):
        if value and value.startswith("-"):
            raise DeployKitError(f"{flag} {quoted(value)} starts with '-', so `deploykit {command_name}` would read it "
                                 f"as an option; give it as {quoted('./' + value)}.")
    resolved = resolve_targets(targets)
    if targets.strip() == "all":  # as `build --target all`: the targets deploykit can export for
        resolved = [target for target in resolved if target.runtime in available_runtimes()]
    names = tuple(dict.fromkeys(target.name for target in resolved))
    jobs = []
    for entry in devices:
        target, equals, device = entry.rpartition("=")
        if not equals:
            if len(names) != 1:
                raise DeployKitError(f"--device {quoted(entry)}: with several targets say which one the device builds, "
                                     f"e.g. --device {quoted(f'{names[0]}={entry}')}.")
            target = names[0]
        if not DEVICE_NAME.fullmatch(device):
            raise DeployKitError(f"--device {quoted(entry)}: CI jobs name a device of the devices file (letters, "
                                 "digits, '.', '_' or '-'), e.g. --device lab-pi5 or --device arm-cpu=lab-pi5.")
        jobs.append(DeviceJob(load_target(target).name, device))
    if runner_label is not None and not jobs:
        raise DeployKitError("--runner-label names the self-hosted runner of the --device jobs; give --device too.")
    if runner_label and not RUNNER_LABEL.fullmatch(runner_label):
        raise DeployKitError(f"--runner-label {quoted(runner_label)} is not a runner label (letters, digits, '.', '_' "
                             "or '-'), e.g. --runner-label lab-pi5.")
    if not install.strip():
        raise DeployKitError("--install is empty; give the command that installs deploykit, e.g. 'pip install -e .'.")
    return WorkflowSettings(targets=names, model=model, data=data, devices=tuple(dict.fromkeys(jobs)),
                            runner_label=runner_label or DEFAULT_RUNNER_LABEL, install=install.strip(),
                            build_args=" ".join(build_words(build_args)), command=command,
                            compare_against=compare_against or None)


def check_text(flag: str, value: str) -> None:
    """Refuse what no value may bring into a workflow: a control character, or `${{`, which GitHub Actions evaluates
    (with the job's token) wherever it stands, in env values and run: scripts alike."""
    unsafe = next((char for char in value if unicodedata.category(char) in UNSAFE_CATEGORIES), None)
    if unsafe is not None:
        raise DeployKitError(f"{flag} {quoted(value)} holds the control character {unsafe!r}; give it on one line, "
                             "without control characters.")
    if "${{" in value:
        raise DeployKitError(f"{flag} {quoted(value)} holds '${{{{', which GitHub Actions would evaluate as an "
                             "expression; give the value itself.")


def build_words(build_args: str) -> list[str]:
    """--build-args as words the workflow can pass through one environment variable, expanded unquoted: each is
    checked against BUILD_ARG_WORD, and none may set an option the workflow sets itself."""
    try:
        words = shlex.split(build_args)
    except ValueError as error:
        raise DeployKitError(f"--build-args {quoted(build_args)} is not a shell word list ({error}).") from None
    for word in words:
        if not BUILD_ARG_WORD.fullmatch(word):
            raise DeployKitError(f"--build-args word {quoted(word)} holds a character the workflow cannot pass safely "
                                 "(only letters, digits and _ . , : = / + @ % - are allowed); put a complex recipe "
                                 "in a recipe file and pass its path, e.g. --build-args '--recipe recipe.yaml'.")
    # --name=value and -xvalue name the same options as --name value and -x value
    options = {word.split("=")[0] if word.startswith("--") else word[:2] for word in words}
    repeated = sorted(options & set(WORKFLOW_OPTIONS))
    if repeated:
        raise DeployKitError(f"--build-args sets {', '.join(repeated)}, which the workflow sets itself; use "
                             "--targets and --device instead.")
    return words


def write_workflow(provider: CIProvider, settings: WorkflowSettings, path: Path | None = None,
                   force: bool = False) -> Path:
    """Write the workflow (by default where the provider reads it), refusing to replace a file unless `force`.

    Only a text that read back as rendered and that the provider's linter passed is written.
    """
    path = Path(path or provider.default_path)
    if path.is_dir():
        raise DeployKitError(f"{path} is a folder; give --out a file name, e.g. {provider.default_path}.")
    text = provider.render(settings)
    provider.lint(text, settings)
    try:
        return write_atomically(path, text, replace=force)
    except FileExistsError:
        raise DeployKitError(f"{path} exists; pass --force to replace it, or --out another file.") from None
    except OSError as error:
        raise DeployKitError(f"cannot write {path} ({error.strerror}).") from None


__all__ = ["PROVIDERS", "CIProvider", "DeviceJob", "WorkflowSettings", "get_provider", "workflow_settings",
           "write_workflow"]
