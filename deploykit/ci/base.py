"""What every CI provider's workflow holds, and the provider registry.

The workflow is the same on every provider: install Python and deploykit, restore the
deploykit cache, build one target per job with `--junit-xml` and `--summary-json`,
verify the folder, show the report, keep the cache and the target folder, and fail the
job with the build's exit code (3: a gate missed). A provider module only says how its
CI spells that, as a document of plain dicts that is dumped to YAML.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import ClassVar

import yaml

from deploykit.registry import Registry

DEFAULT_INSTALL = "pip install deploykit"
PYTHON_VERSION = "3.11"  # deploykit's requires-python
OUT = "dist"  # the build's --out folder in the job
CACHE_FOLDER = ".deploykit-cache"  # $DEPLOYKIT_CACHE, inside the checkout so the providers' caches can keep it
JUNIT_XML = f"{OUT}/junit.xml"  # beside the target folders, not in them: their manifest lists what they hold
SUMMARY_JSON = f"{OUT}/summary.json"
DEFAULT_RUNNER_LABEL = "deploykit-devices"
# Options the workflow sets on `deploykit build` itself; --build-args may not repeat them.
WORKFLOW_OPTIONS = ("--target", "-t", "--out", "-o", "--junit-xml", "--summary-json", "--device")


@dataclass(frozen=True)
class DeviceJob:
    """A build of `target` profiled on the named device of the lab's devices file."""

    target: str
    device: str


@dataclass(frozen=True)
class WorkflowSettings:
    """Everything `deploykit ci init` was told; each provider renders the same settings."""

    targets: tuple[str, ...]
    model: str | None = None
    data: str | None = None
    devices: tuple[DeviceJob, ...] = ()
    runner_label: str = DEFAULT_RUNNER_LABEL
    install: str = DEFAULT_INSTALL
    build_args: str = ""
    command: str = "deploykit ci init"  # the command line that wrote the file, quoted in its header

    def build_command(self, device: bool) -> str:
        """The job's `deploykit build` line; the target (and device) come from the $TARGET (and $DEVICE) variables."""
        words = ["deploykit", "build"]
        if self.model:
            words.append(shlex.quote(self.model))
        if self.data:
            words += ["--data", shlex.quote(self.data)]
        words += ['--target "$TARGET"', "--out", OUT, "--junit-xml", JUNIT_XML, "--summary-json", SUMMARY_JSON]
        if device:
            words.append('--device "$DEVICE"')
        if self.build_args.strip():
            words.append(self.build_args.strip())
        return " ".join(words)

    @property
    def verify_command(self) -> str:
        return f'deploykit verify "{OUT}/$TARGET"'


class CIProvider:
    """One CI service. Subclasses register themselves under `name` (a module in deploykit/ci/ each)."""

    name: ClassVar[str]
    title: ClassVar[str]  # in messages: "GitHub Actions"
    default_path: ClassVar[str]  # where the provider reads its workflow, relative to the repository root

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        PROVIDERS.add(cls)

    def document(self, settings: WorkflowSettings) -> dict:
        """The workflow as plain dicts and lists, in the order it should read."""
        raise NotImplementedError

    def render(self, settings: WorkflowSettings) -> str:
        """The workflow file's text: a header saying how it was written, then the YAML."""
        header = (f"# {self.title} workflow written by `{settings.command}`.\n"
                  "# Edit it freely, or run that command again with --force to rewrite it.\n")
        return header + dump_yaml(self.document(settings))


PROVIDERS: Registry[CIProvider] = Registry("CI provider", "deploykit.ci", "deploykit.ci_providers")


def get_provider(name: str) -> CIProvider:
    return PROVIDERS.get(name)()


class _Dumper(yaml.SafeDumper):
    """Block style throughout, nested lists indented, multi-line scripts as `|` blocks, no anchors."""

    def ignore_aliases(self, data) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _string)


def dump_yaml(document: dict) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000, default_flow_style=False,
                     allow_unicode=True)
