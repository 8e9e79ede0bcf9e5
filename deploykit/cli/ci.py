"""`deploykit ci init`: write a CI workflow that builds, verifies and reports every target."""

from __future__ import annotations

import click

from deploykit.cli.app import main, optional_path, output



@main.group()
def ci() -> None:
    """Continuous integration: write a workflow that builds, verifies and reports every target."""


@ci.command("init")
@click.option("--provider", default="github", show_default=True,
              help="CI service: github (.github/workflows/deploykit.yml) or gitlab (.gitlab-ci.yml).")
@click.option("--targets", default="intel-cpu", show_default=True,
              help="Targets to build, one job each: comma-separated names, or 'all' (every target with an exporter).")
@click.option("--model", help="MODEL for `deploykit build`, as a path in the repository (default: the built-in one).")
@click.option("--data", help="--data for `deploykit build`, as a path in the repository.")
@click.option("--device", "devices", multiple=True, metavar="[TARGET=]NAME",
              help="Also build TARGET profiled on the device NAME of the devices file (devices.yaml in the repository "
              "or $DEPLOYKIT_DEVICES), on a self-hosted runner that reaches it. Repeatable; TARGET= may be left out "
              "with one target.")
@click.option("--runner-label", help="Label of the self-hosted runner that runs the --device jobs (default: "
              "deploykit-devices; GitHub runs-on: [self-hosted, LABEL], GitLab tags: [LABEL]).")
@click.option("--install", default="pip install deploykit", show_default=True,
              help="Command that installs deploykit in the job, e.g. 'pip install -e .' in deploykit's own "
              "repository or 'pip install -r requirements.txt'.")
@click.option("--build-args", default="", help="More `deploykit build` options, as shell words, e.g. "
              "'--max-accuracy-drop 1 --precision int8'; each word of letters, digits and _ . , : = / + @ % - "
              "(a complex recipe goes in a recipe file: --recipe FILE).")
@click.option("--compare-against", metavar="DIR", help="Also compare each target's build with DIR/<target>, an "
              "earlier build's --out folder in the repository (`deploykit compare`); a regression fails the job.")
@click.option("--out", type=click.Path(dir_okay=False), help="Workflow file to write (default: where the provider "
              "reads it).")
@click.option("--force", is_flag=True, help="Replace the file when it exists.")
def ci_init(provider: str, targets: str, devices: tuple[str, ...], out: str | None, force: bool, **values) -> None:
    """Write a CI workflow: per target, install deploykit, restore the deploykit cache, build with --junit-xml and
    --summary-json, verify, compare with an earlier build (--compare-against), show report.md, save the cache and
    keep the target folder; a missed gate or a regression fails the job.
    """
    import shlex

    from deploykit.ci import get_provider, workflow_settings, write_workflow

    chosen = get_provider(provider)
    given = [("--provider", provider), ("--targets", targets), ("--model", values["model"]), ("--data", values["data"]),
             *(("--device", device) for device in devices), ("--runner-label", values["runner_label"]),
             ("--install", values["install"]), ("--build-args", values["build_args"] or None),
             ("--compare-against", values["compare_against"])]
    command = " ".join(["deploykit ci init", *(f"{flag} {shlex.quote(value)}" for flag, value in given if value)])
    settings = workflow_settings(targets, devices=devices, command=command, **values)
    path = write_workflow(chosen, settings, optional_path(out), force)
    jobs = ", ".join([*settings.targets, *(f"{job.target} on {job.device}" for job in settings.devices)])
    output.print(f"{path}: {chosen.title} workflow, one job per target ({jobs}).", highlight=False, markup=False,
                 soft_wrap=True)
