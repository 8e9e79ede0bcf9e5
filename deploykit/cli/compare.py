"""`deploykit compare`: whether a new encoder build regressed against an earlier one; a table, and CI's files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from deploykit.cli.app import main, optional_path, output, print_error
from deploykit.cli.build_options import PROFILE_DEFAULTS, measuring_device_options
from deploykit.compare import Thresholds
from deploykit.results import GATE_MISSED_EXIT_CODE, INCONCLUSIVE_EXIT_CODE

DEFAULTS = Thresholds()
STATUS_STYLES = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "inconclusive": "[yellow]inconclusive[/]",
                 "skipped": "[yellow]skipped[/]"}


@main.command("compare")
@click.argument("base", type=click.Path())
@click.argument("new", type=click.Path())
@click.option("--data", type=click.Path(dir_okay=False), help="JSONL/CSV whose held-out texts both artifacts run on "
              "(default: the bundled sentences).")
@click.option("--max-slowdown", type=click.FloatRange(min=0), default=DEFAULTS.max_slowdown, show_default=True,
              help="Fail when NEW is slower with confidence: the whole BASE/NEW speed-up interval below 1/(1+this).")
@click.option("--max-growth", type=click.FloatRange(min=0), default=DEFAULTS.max_growth, show_default=True,
              help="Fail when NEW's artifact is larger than BASE's by more than this share.")
@click.option("--max-cosine-drop", type=click.FloatRange(0, 2), default=DEFAULTS.max_cosine_drop, show_default=True,
              help="Fail when NEW's recorded cosine mean is lower than BASE's by more than this.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 100), default=DEFAULTS.max_accuracy_drop,
              show_default=True, help="Fail when NEW's recorded accuracy or agreement is lower than BASE's by more "
              "than this many percentage points.")
@click.option("--rounds", type=click.IntRange(min=2), default=PROFILE_DEFAULTS.paired.min_rounds, show_default=True,
              help="Alternating timing rounds at least (more while the per-round ratio is noisy).")
@click.option("--runs", type=click.IntRange(min=1), default=PROFILE_DEFAULTS.paired.runs, show_default=True,
              help="Timed inferences of each artifact per round.")
@click.option("--timing-budget", type=click.FloatRange(min=0), default=PROFILE_DEFAULTS.paired.budget_s,
              show_default=True, help="Seconds the timing may go on past --rounds while the ratio is noisy.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: as the build profiled it).")
@measuring_device_options
@click.option("--junit-xml", type=click.Path(dir_okay=False), help="Also write one JUnit testcase per check.")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Also write the comparison as JSON: each "
              "check's before, after, change, threshold and status, and the timing's speed-up, interval and device.")
def compare_command(base: str, new: str, **given) -> None:
    """Compare NEW, a target folder written by `deploykit build`, with BASE: an earlier build's target folder, or
    its report.json or summary.json (then speed comes from the recorded numbers only).

    \b
    speed     NEW and BASE timed side by side in alternating rounds on this machine (or --device)
    size      NEW's artifact bytes against BASE's
    fidelity  each build's recorded cosine, agreement and accuracy; NEW's outputs against BASE's on the same texts

    Exits with 0 when nothing regressed, 3 when a check failed, 5 when none failed but
    speed could not be measured (the machine was too busy), 2 on bad input.
    """
    from dataclasses import replace

    from deploykit.compare import compare
    from deploykit.output_paths import Output, check_outputs
    from deploykit.profiling.build_folder import build_target_of
    from deploykit.profiling.devices import device_runner

    junit_xml, summary_json = optional_path(given["junit_xml"]), optional_path(given["summary_json"])
    check_outputs([Output(option, path) for option, path in (("--junit-xml", junit_xml),
                                                             ("--summary-json", summary_json)) if path],
                  {"BASE": Path(base), "NEW": Path(new), "--data": optional_path(given["data"])})
    runner = device_runner(given["device"], build_target_of(new), given["devices_file"], given["trust_new_host"],
                           given["benchmark_binary"]) if given["device"] else None
    thresholds = Thresholds(given["max_slowdown"], given["max_growth"], given["max_cosine_drop"],
                            given["max_accuracy_drop"])
    paired = replace(PROFILE_DEFAULTS.paired, min_rounds=given["rounds"], runs=given["runs"],
                     max_rounds=max(given["rounds"], PROFILE_DEFAULTS.paired.max_rounds),
                     budget_s=given["timing_budget"])
    comparison = compare(base, new, runner=runner, data=given["data"], thresholds=thresholds,
                         settings=replace(PROFILE_DEFAULTS, paired=paired), threads=given["threads"])
    document = comparison.as_dict()
    output.print(comparison_table(document))
    for check in document["checks"]:
        output.print(f"{check['name']}: {check['message']}", highlight=False, markup=False, soft_wrap=True)
    _write(junit_xml, summary_json, document)
    if comparison.exit_code == GATE_MISSED_EXIT_CODE:
        failed = [check["name"] for check in document["checks"] if check["status"] == "fail"]
        print_error(f"NEW regressed against BASE: {', '.join(failed)}; see above.")
    elif comparison.exit_code == INCONCLUSIVE_EXIT_CODE:
        print_error("no check failed, but the machine was too busy to time NEW against BASE; rerun on a quieter "
                    "machine.")
    if comparison.exit_code:
        sys.exit(comparison.exit_code)


def _write(junit_xml: Path | None, summary_json: Path | None, document: dict) -> None:
    from deploykit.atomic_files import write_atomically
    from deploykit.errors import DeployKitError
    from deploykit.report.compare_junit import write_comparison_junit

    try:
        if junit_xml:
            write_comparison_junit(junit_xml, document)
        if summary_json:
            write_atomically(summary_json, json.dumps(document, indent=2) + "\n")
    except OSError as problem:
        raise DeployKitError(f"cannot write {problem.filename} ({problem.strerror}).") from None


def comparison_table(document: dict) -> Table:
    """One row per check: BASE, NEW, the change, the limit and the verdict."""
    table = Table(title=f"NEW {escape(document['new']['path'])} against BASE {escape(document['base']['path'])}")
    for column in ("check", "BASE", "NEW", "change", "limit", "status"):
        table.add_column(column)
    for check in document["checks"]:
        table.add_row(check["name"], *_cells(check), STATUS_STYLES[check["status"]])
    return table


def _cells(check: dict) -> tuple[str, str, str, str]:
    """BASE, NEW, change and limit in the check's own units: ms, bytes, or the recorded fidelity measures."""
    name, before, after, change, limit = (check[key] for key in ("name", "before", "after", "change", "threshold"))
    if name == "fidelity":
        limits = f"cosine −{limit['max_cosine_drop']:g}\naccuracy −{limit['max_accuracy_drop']:g} pt"
        return _measures(before, "{:.4f}"), _measures(after, "{:.4f}"), _measures(change, "{:+.4f}"), limits
    unit = " ms" if name == "speed" else " B"
    shown = [("–" if value is None else f"{value:,.3f}{unit}" if name == "speed" else f"{value:,}{unit}")
             for value in (before, after)]
    return shown[0], shown[1], "–" if change is None else f"{change:+.1%}", f"+{limit * 100:g}%"


def _measures(values: dict, form: str) -> str:
    """Recorded fidelity measures, one per line."""
    return "\n".join(f"{name} {form.format(value)}" for name, value in values.items()) or "–"
