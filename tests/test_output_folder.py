"""Output folders: deploykit replaces only its own builds, atomically, and leaves everything else alone."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from deploykit.cli import main
from deploykit.output_folder import check_output, is_deploykit_build, new_staging, replace_folder
from deploykit.errors import DeployKitError
from deploykit.report.manifest import write_manifest

FAST = ["--runs", "2", "--warmup", "0", "--evaluation-samples", "10", "--calibration-samples", "10"]


def _build(model, data, out, *extra):
    return CliRunner().invoke(main, ["build", str(model), "--target", "arm-cpu", "--data", str(data), "--out", str(out),
                                     *FAST, *extra])


def _earlier_build(folder, content=b"old"):
    folder.mkdir(parents=True)
    (folder / "model.tflite").write_bytes(content)
    write_manifest(folder)
    return folder


def test_a_build_leaves_every_unrelated_file_byte_identical(tmp_path, tiny_classifier, labelled_data, snapshot):
    out = tmp_path / "out"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "cat.jpg").write_bytes(os.urandom(1000))
    (out / "notes.txt").write_text("mine")
    (out / ".hidden-config").write_text("mine too")
    _earlier_build(out / "intel-cpu")
    unrelated = snapshot(out)
    first = _build(tiny_classifier, labelled_data, out)
    second = _build(tiny_classifier, labelled_data, out)  # replaces the first build of arm-cpu
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    after = snapshot(out)
    assert {key: value for key, value in after.items() if not key.startswith("arm-cpu")} == unrelated
    assert is_deploykit_build(out / "arm-cpu") and not [p for p in os.listdir(out) if p.startswith(".arm-cpu")]


def test_a_user_folder_is_replaced_only_with_force(tmp_path, tiny_classifier, labelled_data):
    out = tmp_path / "out"
    (out / "arm-cpu").mkdir(parents=True)
    (out / "arm-cpu" / "thesis.tex").write_text("years of work")
    refused = _build(tiny_classifier, labelled_data, out)
    assert refused.exit_code == 2 and "pass --force" in refused.stderr
    assert (out / "arm-cpu" / "thesis.tex").read_text() == "years of work"
    forced = _build(tiny_classifier, labelled_data, out, "--force")
    assert forced.exit_code == 0, forced.output
    assert is_deploykit_build(out / "arm-cpu") and not (out / "arm-cpu" / "thesis.tex").exists()


def test_replacing_swaps_the_whole_folder_and_removes_the_old_one(tmp_path):
    final = _earlier_build(tmp_path / "arm-cpu", b"old")
    staging = new_staging(tmp_path, "arm-cpu")
    (staging / "model.tflite").write_bytes(b"new")
    write_manifest(staging)
    replace_folder(staging, final)
    assert (final / "model.tflite").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["arm-cpu"]


def test_staging_folders_of_dead_processes_are_cleared(tmp_path):
    stale = tmp_path / ".arm-cpu.partial-999999999-abc"  # no such process
    stale.mkdir()
    live = tmp_path / f".arm-cpu.partial-{os.getpid()}-abc"
    live.mkdir()
    staging = new_staging(tmp_path, "arm-cpu")
    assert not stale.exists() and live.exists() and staging.name.startswith(f".arm-cpu.partial-{os.getpid()}-")


def test_only_a_deploykit_manifest_marks_a_build(tmp_path):
    assert is_deploykit_build(_earlier_build(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text('{"name": "my web app"}')
    assert not is_deploykit_build(tmp_path / "b")
    with pytest.raises(DeployKitError, match="pass --force"):
        check_output(tmp_path, ["b"], force=False)
    check_output(tmp_path, ["a", "b", "c"], force=True)


def test_report_ignores_hidden_and_staging_folders(tmp_path, tiny_classifier, labelled_data):
    out = tmp_path / "out"
    assert _build(tiny_classifier, labelled_data, out).exit_code == 0
    leftover = out / ".arm-cpu.partial-1-x"
    leftover.mkdir()
    (leftover / "report.json").write_text("{")
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("arm-cpu") == 1
