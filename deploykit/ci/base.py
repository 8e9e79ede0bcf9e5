"""What every CI provider's workflow holds, and the provider registry.

The workflow is the same on every provider: install Python and deploykit, restore the
deploykit cache, build one target per job with `--junit-xml` and `--summary-json`,
verify the folder, compare it with an earlier build when asked (`--compare-against`),
show the report, keep the cache and the target folder, and fail the job with the build's
or the comparison's exit code (3: a gate missed, or a regression). A provider module
only says how its CI spells that, as a document of plain dicts that is dumped to YAML.

The user's values (model, data, build options) reach the scripts only as environment
variables set in the workflow's env/variables, never as script text: neither the shell
nor the CI (GitHub's `${{ }}` expressions) reads them as code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import yaml

from deploykit.errors import DeployKitError
from deploykit.registry import Registry

DEFAULT_INSTALL = "pip install deploykit"
PYTHON_VERSION = "3.11"  # deploykit's requires-python
OUT = "dist"  # the build's --out folder in the job
CACHE_FOLDER = ".deploykit-cache"  # $DEPLOYKIT_CACHE, inside the checkout so the providers' caches can keep it
JUNIT_XML = f"{OUT}/junit.xml"  # beside the target folders, not in them: their manifest lists what they hold
SUMMARY_JSON = f"{OUT}/summary.json"
COMPARE_JUNIT_XML = f"{OUT}/compare.xml"  # `deploykit compare`'s checks, beside the build's gates
DEFAULT_RUNNER_LABEL = "deploykit-devices"
# Options the workflow sets on `deploykit build` itself; --build-args may not repeat them.
WORKFLOW_OPTIONS = ("--target", "-t", "--out", "-o", "--junit-xml", "--summary-json", "--device")
# The environment variables that carry the user's values to the build step.
MODEL_VARIABLE = "DEPLOYKIT_MODEL"
DATA_VARIABLE = "DEPLOYKIT_DATA"
BUILD_ARGS_VARIABLE = "DEPLOYKIT_BUILD_ARGS"
COMPARE_VARIABLE = "DEPLOYKIT_COMPARE_AGAINST"
# $DEPLOYKIT_BUILD_ARGS is expanded unquoted, to its words: `deploykit ci init` allows only words that word
# splitting keeps whole and that no glob changes. The script says so to shellcheck (and its reader).
_SPLIT_BUILD_ARGS = f"# shellcheck disable=SC2086 # ${BUILD_ARGS_VARIABLE} splits into the build's options\n"


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
    build_args: str = ""  # checked words, joined by single spaces
    compare_against: str | None = None  # an earlier build's --out folder: each target is compared with its folder
    command: str = "deploykit ci init"  # the command line that wrote the file, quoted in its header

    @property
    def variables(self) -> dict[str, str]:
        """The user's values by the environment variable the build step reads each from (those given only)."""
        values = {MODEL_VARIABLE: self.model, DATA_VARIABLE: self.data, BUILD_ARGS_VARIABLE: self.build_args,
                  COMPARE_VARIABLE: self.compare_against}
        return {name: value for name, value in values.items() if value}

    def build_command(self, device: bool) -> str:
        """The job's `deploykit build` script: every value comes from an environment variable ($TARGET, $DEVICE
        and the user's `variables`), so the script's text is the same whatever the user passed."""
        words = ["deploykit", "build"]
        if self.model:
            words.append(f'"${MODEL_VARIABLE}"')
        if self.data:
            words += ["--data", f'"${DATA_VARIABLE}"']
        words += ['--target "$TARGET"', "--out", OUT, "--junit-xml", JUNIT_XML, "--summary-json", SUMMARY_JSON]
        if device:
            words.append('--device "$DEVICE"')
        if not self.build_args:
            return " ".join(words)
        return _SPLIT_BUILD_ARGS + " ".join([*words, f"${BUILD_ARGS_VARIABLE}"])

    @property
    def verify_command(self) -> str:
        return f'deploykit verify "{OUT}/$TARGET"'

    def compare_command(self, device: bool) -> str | None:
        """The job's `deploykit compare` of the target's folder under --compare-against (read from its environment
        variable, as the build's values are) with the one just built; None without --compare-against."""
        if not self.compare_against:
            return None
        words = ["deploykit", "compare", f'"${COMPARE_VARIABLE}/$TARGET"', f'"{OUT}/$TARGET"', "--junit-xml",
                 COMPARE_JUNIT_XML]
        return " ".join([*words, '--device "$DEVICE"'] if device else words)


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
        """The workflow file's text: a header saying how it was written, then the YAML.

        The text is read back before it is returned: one that does not parse to the very document rendered (a value
        that broke out of the header comment or changed the YAML's structure) is refused, never written.
        """
        document = self.document(settings)
        header = (f"# {self.title} workflow written by `{printable(settings.command)}`.\n"
                  "# Edit it freely, or run that command again with --force to rewrite it.\n")
        text = header + dump_yaml(document)
        try:
            read_back = yaml.safe_load(text)
        except yaml.YAMLError:
            read_back = None
        if read_back != document:
            raise DeployKitError(f"the {self.title} workflow does not read back as the document deploykit rendered, "
                                 "so nothing was written; please report this with the command line.")
        return text

    def lint(self, text: str, settings: WorkflowSettings) -> None:
        """Refuse `text` when the provider's own linter, where one is installed, finds a problem; by default none."""


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


def printable(text: str) -> str:
    """`text` with each non-printable character escaped (\\n, \\u2028): it stays on one line of a YAML comment."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def dump_yaml(document: dict) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000, default_flow_style=False,
                     allow_unicode=True)
