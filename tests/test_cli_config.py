"""`build`/`search` options as data: grouped in --help, read from --config (YAML or a report.json), echoed in
report.json so that a build repeats from its report."""

from __future__ import annotations

import json

from click.testing import CliRunner

from deploykit.cli import main
from deploykit.cli.build import build, search
from deploykit.cli.build_options import SECTIONS
from deploykit.report.manifest import sha256_of


def run(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_every_build_and_search_option_sits_in_a_help_section():
    for command in (build, search):
        names = {param.name for param in command.params if param.param_type_name == "option"}
        placed = {name for section in SECTIONS.values() for name in section}
        assert names <= placed, names - placed
    text = run("build", "--help").output
    assert "Gates options:" in text and "Profiling options:" in text
    assert text.split("Other options:")[1].split() == ["--help", "Show", "this", "message", "and", "exit."]
    assert text.index("--max-accuracy-drop") > text.index("Gates options:") > text.index("--out")


def test_a_config_file_sets_options_and_flags_win(tmp_path, tiny_classifier, labelled_data):
    config = tmp_path / "build.yaml"
    config.write_text(f"target: arm-cpu\ndata: {labelled_data}\nruns: 2\nwarmup: 0\nevaluation-samples: 20\n"
                      f"calibration_samples: 20\nout: {tmp_path / 'from-config'}\nmax-accuracy-drop: 100\n")
    first = run("build", tiny_classifier, "--config", config, "--out", tmp_path / "dist")
    assert first.exit_code == 0, first.output
    assert not (tmp_path / "from-config").exists()  # --out on the command line wins
    report = json.loads((tmp_path / "dist" / "arm-cpu" / "report.json").read_text())
    options = report["options"]
    assert options["runs"] == 2 and options["evaluation_samples"] == 20 and options["target_names"] == "arm-cpu"
    assert report["data"]["evaluation_samples"] == 20 and report["plan"]  # the values reached the build
    # The report repeats the build: same options, same artifact bytes.
    again = run("build", "--config", tmp_path / "dist" / "arm-cpu" / "report.json", "--out", tmp_path / "again",
                "--no-cache")
    assert again.exit_code == 0, again.output
    repeated = json.loads((tmp_path / "again" / "arm-cpu" / "report.json").read_text())
    assert {k: v for k, v in repeated["options"].items() if k not in ("out", "no_cache")} == \
        {k: v for k, v in options.items() if k not in ("out", "no_cache")}
    assert sha256_of(tmp_path / "again" / "arm-cpu" / repeated["artifact"]["path"]) == \
        sha256_of(tmp_path / "dist" / "arm-cpu" / report["artifact"]["path"])


def test_bad_config_files_are_one_line_errors(tmp_path):
    cases = {
        "unknown.yaml": ("max-acuracy-drop: 1\n", "is not an option of"),
        "list.yaml": ("- runs\n", "must hold a mapping"),
        "nested.yaml": ("runs: {a: 1}\n", "must be a number, text"),
        "typed.yaml": ("runs: many\n", "runs"),
        "notes.txt": ("runs: 1\n", "is not a .yaml"),
        "trusting.yaml": ("trust-new-host: true\n", "command line only"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        result = run("build", "--config", path, "--out", tmp_path / "dist")
        assert result.exit_code == 2, (name, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (name, result.stderr)
        assert not (tmp_path / "dist").exists()
