"""The `deploykit` command group: every error becomes one line and an exit code, never a traceback."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from deploykit.errors import DeployKitError
from deploykit.interrupts import Interrupted, interruptible

# Wide enough for the summary tables when output is piped (rich assumes 80 columns then).
_WIDTH = shutil.get_terminal_size((150, 24)).columns
console = Console(stderr=True, width=_WIDTH)
output = Console(width=_WIDTH)


class _Group(click.Group):
    """Turns bad input, bad options and interruptions into one line and an exit code, never a traceback."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False  # usage errors come back here instead of click's three-line block
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:
            error.show()  # the help text itself, as click prints it
            sys.exit(0)
        except click.ClickException as error:
            command = error.ctx.command_path if getattr(error, "ctx", None) else "deploykit"
            print_error(f"{error.format_message().rstrip('.')}; see '{command} --help'.")
            sys.exit(error.exit_code)
        except click.Abort:
            print_error("aborted.")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, context):
        try:
            with interruptible():
                return super().invoke(context)
        except DeployKitError as error:
            print_error(str(error))
            sys.exit(error.exit_code)
        except Interrupted as interruption:
            print_error(f"interrupted by {interruption.signal_name}; temporary and staging folders were removed and "
                   "earlier builds left as they were.")
            sys.exit(interruption.exit_code)


# A message longer than this quotes too much of some user value (a path, a recipe): its middle is cut.
MAX_ERROR_CHARACTERS = 600


def print_error(message: str) -> None:
    """One line on stderr; the message is plain text (it may quote user paths), never rich markup."""
    if len(message) > MAX_ERROR_CHARACTERS:
        half = MAX_ERROR_CHARACTERS // 2
        message = f"{message[:half]} […] {message[-half:]}"
    console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


@click.group(cls=_Group)
@click.version_option(package_name="deploykit")
def main() -> None:
    """Compress, export, validate and profile BERT-family text models for each hardware target.

    \b
    deploykit targets                      list the hardware registry
    deploykit passes                       list the compression passes for --recipe
    deploykit build --target intel-cpu     build the built-in default (MiniLM + bundled data)
    deploykit build ./my-bert --data reviews.jsonl --target mobile-npu,arm-cpu
    deploykit verify dist                  re-check a build's files and run its artifacts
    deploykit compare main/arm-cpu dist/arm-cpu   fail when the new build is slower, larger or less faithful
    deploykit ci init --provider gitlab    write a CI workflow that builds each target

    \b
    Exit codes: 0 success; 2 bad input or environment (one line on stderr);
    3 a gate missed (reports still written) or compare found a regression;
    4 verify found a mismatch; 5 a gate or compare's speed undecided (machine
    too busy to measure); 130 / 143 interrupted by Ctrl-C / SIGTERM.
    """


def optional_path(value: str | None) -> Path | None:
    return Path(value) if value is not None else None
