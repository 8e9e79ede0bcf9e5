"""`deploykit verify`: a build folder is checked against its manifest, and its artifact is run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_backbone_file, labelled_data) -> Path:
    """One arm-cpu build of the tiny encoder; tests change copies of it."""
    out = tmp_path_factory.mktemp("verify") / "dist"
    result = CliRunner().invoke(main, [
        "build", str(tiny_backbone_file), "--data", str(labelled_data), "--target", "arm-cpu", "--out", str(out),
        "--runs", "3", "--warmup", "0", "--evaluation-samples", "10", "--calibration-samples", "10"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def dist(built, tmp_path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "dist"))


def verify(path: Path):
    return CliRunner().invoke(main, ["verify", str(path)])


def test_an_untouched_build_passes_and_its_artifact_runs(dist):
    result = verify(dist)
    assert result.exit_code == 0, result.output
    assert f"{dist / 'arm-cpu'}: ok" in result.stdout
    assert "model.tflite ran with litert on a 1×" in result.stdout


def test_one_target_folder_can_be_verified_alone(dist):
    result = verify(dist / "arm-cpu")
    assert result.exit_code == 0, result.output


def test_a_changed_byte_is_reported_and_the_artifact_not_run(dist):
    model = dist / "arm-cpu" / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    result = verify(dist)
    assert result.exit_code == 4
    assert "changed: model.tflite:" in result.stdout and "the artifact was not run" in result.stdout
    assert result.stderr.count("error:") == 1


def test_a_missing_file_is_reported(dist):
    (dist / "arm-cpu" / "vocab.txt").unlink()
    result = verify(dist)
    assert result.exit_code == 4 and "missing: vocab.txt" in result.stdout


def test_a_file_the_manifest_does_not_list_is_reported(dist):
    (dist / "arm-cpu" / "notes.txt").write_text("added after the build\n")
    result = verify(dist)
    assert result.exit_code == 4 and "extra (not in the manifest): notes.txt" in result.stdout


def test_a_folder_without_a_build_is_bad_input(tmp_path):
    result = verify(tmp_path)
    assert result.exit_code == 2 and "holds no manifest.json" in result.stderr
