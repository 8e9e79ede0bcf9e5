"""The commands that read: `passes`, `targets`, `profile`, `report` and `verify`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from deploykit.cli.app import main, output, print_error
from deploykit.cli.build_options import PROFILE_DEFAULTS, device_options
from deploykit.cli.tables import summary_table
from deploykit.errors import DeployKitError, quoted
from deploykit.target_loader import list_targets, load_target



@main.command()
@click.argument("name", required=False)
def passes(name: str | None) -> None:
    """List the compression passes (or one pass's parameters: default, accepted values, search range, meaning).

    Use them with build --recipe "name:key=value,...", or in a recipe file.
    """
    from deploykit.passes.base import PASSES, pass_class

    if name is None:
        table = Table(title="deploykit passes (`deploykit passes NAME` explains one pass's parameters)")
        for column in ("pass", "what it does", "parameters (default)"):
            table.add_column(column)
        for pass_name in PASSES.names():
            kind = pass_class(pass_name)
            defaults = kind.Parameters().model_dump()
            table.add_row(pass_name, escape(kind.description),
                          escape(", ".join(f"{k}={defaults[k]}" for k in kind.Parameters.listed())))
        output.print(table)
        return
    kind = pass_class(name)
    parameters = kind.Parameters
    table = Table(title=f"{name}: {escape(kind.description)}")
    for column in ("parameter", "default", "accepts", "search range", "meaning"):
        table.add_column(column)
    space = parameters.search_space()
    for field_name, info in parameters.listed().items():
        searched = "–" if field_name not in space else " .. ".join(map(str, space[field_name]))
        table.add_row(field_name, escape(str(info.default)), escape(parameters.accepted(field_name)), searched,
                      escape(info.description or ""))
    output.print(table)


@main.group(invoke_without_command=True)
@click.pass_context
def targets(context: click.Context) -> None:
    """List the registered hardware targets (add more with DEPLOYKIT_TARGETS=folder)."""
    if context.invoked_subcommand is not None:
        return
    table = Table(title="deploykit targets")
    for column in ("name", "runtime", "precisions", "integer-only", "sparsity", "device compiler"):
        table.add_column(column, no_wrap=True)
    table.add_column("description")
    for target in list_targets():
        compiler = target.compiler or {}
        vendor = f" ({compiler['vendor']})" if "vendor" in compiler else ""
        table.add_row(
            target.name, target.runtime, ", ".join(target.precisions), "yes" if target.integer_only else "no",
            ", ".join(target.sparsity), f"{compiler.get('name', '–')}{vendor}", target.description,
        )
    output.print(table)


@targets.command("show")
@click.argument("name")
def targets_show(name: str) -> None:
    """Print one target's full profile as YAML."""
    import yaml

    click.echo(yaml.safe_dump(load_target(name).model_dump(), sort_keys=False, width=1000), nl=False)


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: as the build profiled it: the "
              "device's setting or the target's threads, within this machine's cores).")
@click.option("--runs", type=click.IntRange(min=1), default=PROFILE_DEFAULTS.runs, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=PROFILE_DEFAULTS.warmup, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=PROFILE_DEFAULTS.timeout_s, show_default=True,
              help="Seconds the profiling process may run before it is stopped.")
@click.option("--op-profile/--no-op-profile", default=PROFILE_DEFAULTS.op_profile, show_default=True,
              help="Also time each op with the runtime's profiler (extra runs after the timed ones).")
@device_options
def profile(artifact: str, **given) -> None:
    """Time a built ARTIFACT (a target folder from `deploykit build`, or its model.xml / model.tflite / model.onnx)
    on this machine, or on a device with --device.

    Runs batch 1 at the artifact's full sequence length in a fresh process and
    prints latency percentiles, throughput, peak memory and the slowest op types.
    """
    from deploykit.profiling.base import ProfileSettings, get_runner
    from deploykit.profiling.build_folder import build_target_of, profile_path, profiled_measurement
    from deploykit.profiling.devices import device_runner
    from deploykit.profiling.profiles import save_profile as save

    device, save_profile, threads = given["device"], given["save_profile"], given["threads"]
    if save_profile:
        from deploykit.output_paths import Output, check_outputs

        check_outputs([Output("--save-profile", Path(save_profile), "folder")], {"ARTIFACT": Path(artifact)})
    target = build_target_of(artifact) if device or save_profile else None
    runner = device_runner(device, target, given["devices_file"], given["trust_new_host"], given["benchmark_binary"]) \
        if device else get_runner("local")
    settings = ProfileSettings(runs=given["runs"], warmup=given["warmup"], timeout_s=given["timeout"],
                               op_profile=given["op_profile"])
    measured = profile_path(artifact, threads, settings, runner)
    latency = measured["latency_ms"]
    table = Table(title=f"{measured['artifact']} ({measured['backend']}, sequence length {measured['sequence_length']}, "
                  f"{measured['threads']} threads)")
    for column in ("p50 ms", "p90 ms", "p99 ms", "throughput /s", "peak RSS MB"):
        table.add_column(column)
    table.add_row(*(_number(latency[key], 2) for key in ("p50", "p90", "p99")), _number(latency["throughput_per_s"], 1),
                  _number(measured["peak_rss_mb"], 1))
    output.print(table)
    if measured.get("op_profile"):
        output.print(_op_table(measured["op_profile"]))
    if target is not None:
        described = runner.describe(target, measured["threads"])
        output.print(described["note"], highlight=False, markup=False)
        if save_profile:
            path = save(Path(save_profile), target.name, described, measured["runtime"], [profiled_measurement(measured)])
            output.print(f"Profile saved: {path}", highlight=False, markup=False)


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _op_table(op_profile: dict, rows: int = 8) -> Table:
    """The op types that took the most time per inference."""
    total = sum(row["ms"] for row in op_profile["by_type"]) or 1.0
    table = Table(title=f"Time by op type ({op_profile['source']})")
    for column in ("op type", "ops", "ms per inference", "share"):
        table.add_column(column)
    for row in op_profile["by_type"][:rows]:
        table.add_row(escape(row["type"]), str(row["count"]), f"{row['ms']:.3f}", f"{row['ms'] / total:.0%}")
    return table


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--html", "html", is_flag=True,
              help="Also write FOLDER/report.html: every target on one self-contained page with its plots.")
def report(folder, html) -> None:
    """Compare the targets built into FOLDER side by side (reads each FOLDER/<target>/report.json)."""
    from deploykit.user_files import read_json

    # Hidden folders are staging or leftovers, never targets; a link is never followed out of FOLDER, and each
    # report.json is read bounded (the folder may come from elsewhere).
    files = sorted(path / "report.json" for path in Path(folder).iterdir() if not path.name.startswith(".")
                   and path.is_dir() and not path.is_symlink() and os.path.lexists(path / "report.json"))
    reports = [read_json(path, dict, untrusted=True) for path in files]
    if not reports:
        raise DeployKitError(f"{folder} holds no <target>/report.json; pass the --out folder of a build.")
    try:
        table = summary_table(reports)
    except (KeyError, TypeError, ValueError) as error:
        raise DeployKitError(f"a report.json under {folder} is not as deploykit writes it ({type(error).__name__}: "
                             f"{quoted(str(error))}); rebuild that target.") from None
    output.print(table)
    if html:
        from jinja2 import UndefinedError

        from deploykit.report.html import write_html

        try:
            page = write_html(Path(folder) / "report.html", reports)
        except (KeyError, TypeError, ValueError, AttributeError, UndefinedError) as error:
            raise DeployKitError(f"a report.json under {folder} lacks what the HTML report needs "
                                 f"({type(error).__name__}: {quoted(str(error))}); rebuild that target.") from None
        except OSError as error:
            raise DeployKitError(f"cannot write {Path(folder) / 'report.html'} ({error.strerror}).") from None
        output.print(str(page), highlight=False, markup=False)


@main.command()
@click.argument("dist", type=click.Path(exists=True, file_okay=False))
def verify(dist) -> None:
    """Check that the build folders in DIST (a build's --out folder or one target folder) are what the build shipped.

    Every file's size and sha256 are compared with the folder's manifest.json, files the
    manifest does not list are reported, and the artifact is loaded with its runtime and
    run once on a full-length input made from the folder's tokenizer files. Exits with 4
    when any folder differs or its artifact does not run.
    """
    from deploykit.verify import build_folders, verify_folder

    failed = []
    for folder in build_folders(Path(dist)):
        check = verify_folder(folder)
        verdict = "[green]ok[/]" if check.passed else "[red]FAILED[/]"
        # soft_wrap: a path is never broken across lines (it stays whole to copy); the terminal wraps it if it must
        output.print(f"{escape(str(folder))}: {verdict} ({check.matched} files match the manifest)", highlight=False,
                     soft_wrap=True)
        for line in check.lines():
            output.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
        if not check.passed:
            failed.append(str(folder))
    if failed:
        print_error(f"{', '.join(failed)} {'does' if len(failed) == 1 else 'do'} not match what the build shipped; "
               "see above.")
        sys.exit(4)
