"""The `deploykit` command: thin click commands that call the API and print with rich.

    app.py            the command group; errors as one line and an exit code
    build.py          `build` and `search`
    build_options.py  their options: sections in --help, --config files, BuildOptions
    inspection.py     `passes`, `targets`, `profile`, `report`, `verify`
    ci.py             `ci init`
    compare.py        `compare`: a new build against an earlier one
    generation.py     `build`'s decoder path and options, `generate`
    tables.py         the tables they print

Exit codes (stable, for CI): 0 success, 2 bad input or environment (one-line
message), 3 a build finished but missed a quality gate (its report, --junit-xml and
--summary-json are still written) or `compare` found a regression, 4 `verify` found a
folder that differs from its manifest or an artifact that does not run, 5 a build's
gate or `compare`'s speed check could not be decided on a busy machine, 130 / 143
interrupted by Ctrl-C / SIGTERM (temporary and staging folders removed, earlier
builds unchanged).
"""

from deploykit.cli import ci, compare, generation, inspection  # noqa: F401  (their commands register on `main`)
from deploykit.cli.app import main
from deploykit.cli.build import build, search

main.add_command(build)
main.add_command(search)

__all__ = ["main"]
