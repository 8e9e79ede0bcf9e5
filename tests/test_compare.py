"""`deploykit compare`: a new encoder build against an earlier one, through the command line, on a tiny encoder."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.cli import main

QUICK = ["--runs", "3", "--warmup", "0", "--evaluation-samples", "10", "--calibration-samples", "10"]
# Few, short timing rounds: the pairs below differ by far more than timing noise, or are not timed at all.
QUICK_TIMING = ["--rounds", "3", "--runs", "5", "--timing-budget", "1"]
SHORT, LONG = 16, 256  # sequence lengths 16-fold apart: far beyond the noise of timing a tiny model


@pytest.fixture(scope="module")
def long_encoder_file(tmp_path_factory, vocabulary) -> Path:
    """conftest's tiny encoder, but taking up to LONG tokens (its own takes 32)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("long-encoder")
    keras_hub.models.BertBackbone(vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=32,
                                  intermediate_dim=64, max_sequence_length=LONG).save(folder / "encoder.keras")
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    return folder / "encoder.keras"


@pytest.fixture(scope="module")
def builds(tmp_path_factory, long_encoder_file, labelled_data) -> dict[str, Path]:
    """arm-cpu target folders: BASE (dynamic-int8, length SHORT, with its summary.json), the same build again, one at
    length LONG and one at fp32. They share the session's cache, so the repeated exports are read back."""
    root = tmp_path_factory.mktemp("compare")
    variants = {"base": ["--summary-json", str(root / "base-summary.json")], "again": [],
                "longer": ["--sequence-length", str(LONG)], "fp32": ["--precision", "fp32"]}
    folders = {}
    for name, args in variants.items():
        result = CliRunner().invoke(main, ["build", str(long_encoder_file), "--data", str(labelled_data), "--target",
                                           "arm-cpu", "--out", str(root / name), "--sequence-length", str(SHORT),
                                           "--precision", "dynamic-int8", *QUICK, *args])
        assert result.exit_code == 0, result.output
        folders[name] = root / name / "arm-cpu"
    folders["summary"] = root / "base-summary.json"
    return folders


def compare(base: Path, new: Path, tmp_path: Path, *args: str, data: Path | None = None):
    """`deploykit compare BASE NEW` with --summary-json and --junit-xml in tmp_path; the result and the summary."""
    summary, junit = tmp_path / "comparison.json", tmp_path / "comparison.xml"
    arguments = ["compare", str(base), str(new), "--summary-json", str(summary), "--junit-xml", str(junit),
                 *QUICK_TIMING, *(["--data", str(data)] if data else []), *args]
    result = CliRunner().invoke(main, arguments)
    document = json.loads(summary.read_text()) if summary.exists() else None
    return result, document


def statuses(document: dict) -> dict[str, str]:
    return {check["name"]: check["status"] for check in document["checks"]}


def test_two_builds_of_the_same_inputs_pass(builds, tmp_path, labelled_data):
    result, document = compare(builds["base"], builds["again"], tmp_path, data=labelled_data)
    assert result.exit_code == 0, result.output
    assert statuses(document) == {"speed": "pass", "size": "pass", "fidelity": "pass"}
    assert "byte for byte: not timed" in result.stdout  # the same files are not timed: that would measure noise only
    outputs = document["outputs"]
    assert outputs["texts"] == 60 and outputs["cosine_mean"] == pytest.approx(1.0) and outputs["agreement"] == 1.0
    suite = ElementTree.parse(tmp_path / "comparison.xml").getroot()
    assert [case.get("name") for case in suite.iter("testcase")] == ["speed", "size", "fidelity"]
    assert suite.get("failures") == "0" and suite.get("skipped") == "0"


def test_a_longer_sequence_length_is_timed_each_at_its_own_length_and_is_slower(builds, tmp_path, labelled_data):
    """Length LONG against SHORT: both loaded in one worker, each timed on its own full-length input in alternating
    rounds (one thread: on 2 busy cores a second thread makes every round look contended). The ratio is asserted, and the verdict follows the
    timing: on a machine whose cores another process holds it is `inconclusive` by design (exit 5 alone, 3 here
    since the longer build's position table also makes it larger)."""
    result, document = compare(builds["base"], builds["longer"], tmp_path, "--threads", "1", data=labelled_data)
    assert result.exit_code == 3, result.output
    timing = document["timing"]
    assert timing["sequence_lengths"] == {"base": SHORT, "new": LONG}
    assert timing["method"] == "alternating rounds in one worker" and timing["rounds"] >= 3
    speed = next(check for check in document["checks"] if check["name"] == "speed")
    assert speed["details"]["interval"][1] < 1 / 1.05 and speed["change"] > 0.05
    assert speed["status"] == ("inconclusive" if timing["inconclusive"] else "fail")


def test_an_fp32_build_where_base_is_int8_is_caught_as_larger(builds, tmp_path, labelled_data):
    result, document = compare(builds["base"], builds["fp32"], tmp_path, data=labelled_data)
    assert result.exit_code == 3, result.output
    size = next(check for check in document["checks"] if check["name"] == "size")
    assert size["status"] == "fail" and size["after"] > size["before"] * 1.01 and size["threshold"] == 0.01
    assert "NEW regressed against BASE: size" in result.stderr and result.stderr.count("error:") == 1
    assert document["timing"]["method"] == "alternating rounds in one worker"  # one length: side by side
    failures = [case for case in ElementTree.parse(tmp_path / "comparison.xml").iter("testcase")
                if case.find("failure") is not None]
    assert [case.get("name") for case in failures] == ["size"]


def test_a_larger_limit_lets_the_fp32_build_pass_its_size(builds, tmp_path, labelled_data, monkeypatch):
    """--max-growth is the size check's limit; and with speed undecided (a timing that says the machine was too
    busy) and nothing failed, the exit code is 5."""
    from deploykit.profiling.local import LocalRunner

    busy = {"speedup": 1.0, "interval": [0.9, 1.1], "rounds": 3, "rounds_ms": [[1.0, 1.0]] * 3,
            "inconclusive": True, "runtime": {}, "device": {}}
    monkeypatch.setattr(LocalRunner, "profile_pair", lambda *args, **kwargs: busy)
    result, document = compare(builds["base"], builds["fp32"], tmp_path, "--max-growth", "1", data=labelled_data)
    assert result.exit_code == 5, result.output
    assert statuses(document) == {"speed": "inconclusive", "size": "pass", "fidelity": "pass"}
    assert "too busy" in result.stderr and result.stderr.count("error:") == 1


def test_base_as_a_report_json_compares_the_recorded_numbers(builds, tmp_path):
    report = Path(shutil.copy(builds["base"] / "report.json", tmp_path / "report.json"))
    result, document = compare(report, builds["fp32"], tmp_path)
    assert result.exit_code == 3, result.output
    assert document["base"]["kind"] == "report.json" and document["timing"] is None and document["outputs"] is None
    speed = next(check for check in document["checks"] if check["name"] == "speed")
    assert "from the recorded runs only" in speed["message"]
    assert speed["status"] == "skipped"  # separate timings are reported, never judged
    assert statuses(document)["size"] == "fail"


def test_base_as_a_summary_json_leaves_speed_unjudged(builds, tmp_path):
    """A summary.json keeps no timed runs: speed is skipped (said, not failed), size and fidelity still compared."""
    result, document = compare(builds["summary"], builds["again"], tmp_path)
    assert result.exit_code == 0, result.output
    assert statuses(document) == {"speed": "skipped", "size": "pass", "fidelity": "pass"}
    assert "not judged" in result.stdout


def decoder_folder(folder: Path) -> Path:
    """What marks a decoder build folder: its generation.json, and a report.json of task generation."""
    folder.mkdir()
    (folder / "generation.json").write_text('{"task": "generation", "model": "model.tflite"}')
    (folder / "report.json").write_text('{"task": "generation", "target": "arm-cpu"}')
    return folder


@pytest.mark.parametrize("make_base, message", [
    (lambda tmp: tmp, "holds no report.json; pass a target folder written by `deploykit build`"),
    (lambda tmp: decoder_folder(tmp / "decoder"), "compare handles encoder builds; BASE"),
    (lambda tmp: decoder_folder(tmp / "decoder") / "report.json", "compare handles encoder builds; BASE"),
    (lambda tmp: tmp / "missing", "is not a folder nor a file"),
], ids=["not a build", "decoder folder", "decoder report", "missing"])
def test_bad_input_is_one_line_and_exit_code_2(builds, tmp_path, make_base, message):
    result, document = compare(make_base(tmp_path), builds["again"], tmp_path)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr
    assert document is None


def test_a_decoder_as_new_is_refused(builds, tmp_path):
    result, _ = compare(builds["base"], decoder_folder(tmp_path / "decoder"), tmp_path)
    assert result.exit_code == 2 and "compare handles encoder builds; NEW" in result.stderr


def test_an_artifact_changed_since_its_build_is_refused(builds, tmp_path):
    new = Path(shutil.copytree(builds["again"], tmp_path / "changed"))
    model = new / "model.tflite"
    model.write_bytes(model.read_bytes() + b"\0")
    result, _ = compare(builds["base"], new, tmp_path)
    assert result.exit_code == 2 and "is not the file its report.json recorded" in result.stderr


def test_the_library_call_gives_the_same_checks(builds, labelled_data):
    import deploykit as dk

    comparison = dk.compare(builds["base"], builds["again"], data=labelled_data)
    assert comparison.exit_code == 0 and [check.name for check in comparison.checks] == ["speed", "size", "fidelity"]
