"""`deploykit verify`: a build folder is checked against its manifest, and its artifact is run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
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


# ---- a folder from elsewhere: verify, report and profile read it bounded and never leave it ------------------------

@pytest.fixture
def time_limit():
    """Each hostile case must end by itself: a hang (a FIFO read, a regex backtracking) fails the test instead."""
    def expired(signum, frame):
        raise TimeoutError("the command did not finish within 60 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def tamper(folder: Path, edit) -> None:
    """Edit report.json and list its new bytes in the manifest, as an attacker who rewrites both would."""
    report_file = folder / "report.json"
    report = json.loads(report_file.read_text())
    edit(report)
    report_file.write_text(json.dumps(report))
    relist(folder)


def relist(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        path = folder / entry["path"]
        if path.is_file() and not path.is_symlink():
            entry["bytes"] = path.stat().st_size
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def one_error(result) -> str:
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("outside", ["../../elsewhere/model.tflite", "ABSOLUTE"])
def test_verify_never_runs_an_artifact_report_json_points_outside_the_folder(dist, tmp_path, time_limit, outside):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(dist / "arm-cpu" / "model.tflite", elsewhere / "model.tflite")
    path = str(elsewhere / "model.tflite") if outside == "ABSOLUTE" else outside
    tamper(dist / "arm-cpu", lambda report: report["artifact"].update(path=path))
    result = verify(dist)
    assert result.exit_code == 4, result.output
    assert "ran with" not in result.stdout and "leaves" in result.stdout
    one_error(result)


def test_verify_never_follows_a_link_named_as_the_artifact(dist, tmp_path, time_limit):
    (tmp_path / "elsewhere.tflite").write_bytes((dist / "arm-cpu" / "model.tflite").read_bytes())
    (dist / "arm-cpu" / "evil.tflite").symlink_to(tmp_path / "elsewhere.tflite")
    tamper(dist / "arm-cpu", lambda report: report["artifact"].update(path="evil.tflite"))
    result = verify(dist)
    assert result.exit_code == 4 and "ran with" not in result.stdout
    assert "extra (not in the manifest): evil.tflite" in result.stdout


@pytest.mark.parametrize("name", ["manifest.json", "report.json", "unlisted.bin"])
def test_a_fifo_in_the_folder_is_a_finding_not_a_hang(dist, time_limit, name):
    path = dist / "arm-cpu" / name
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    result = verify(dist)
    assert result.exit_code == 4, result.output
    assert "FIFO" in result.stdout or "extra (not in the manifest): unlisted.bin" in result.stdout
    one_error(result)


def test_a_manifest_linked_to_an_endless_device_is_refused_unread(dist, time_limit):
    (dist / "arm-cpu" / "manifest.json").unlink()
    (dist / "arm-cpu" / "manifest.json").symlink_to("/dev/zero")
    result = verify(dist)
    assert result.exit_code == 4 and "symbolic link" in result.stdout
    one_error(result)


def test_a_huge_sparse_file_is_compared_by_size_and_never_hashed(dist, time_limit, monkeypatch):
    import deploykit.verify

    hashed = []
    monkeypatch.setattr(deploykit.verify, "_sha256", lambda path, size: hashed.append(path.name) or "0" * 64)
    with open(dist / "arm-cpu" / "model.tflite", "r+b") as handle:
        handle.truncate(1 << 40)  # 1 TB, sparse: no disk used
    result = verify(dist)
    assert result.exit_code == 4 and f"model.tflite: {1 << 40} bytes; the manifest says" in result.stdout
    assert "model.tflite" not in hashed


@pytest.mark.parametrize("entry, words", [
    ('{"path": "model.tflite", "bytes": 1e999, "sha256": "%s"}' % ("0" * 64), "not a byte count"),
    ('{"path": "model.tflite", "bytes": %s, "sha256": "%s"}' % ("9" * 5000, "0" * 64), "5000 digits"),
    ('{"path": "../../etc/passwd", "bytes": 1, "sha256": "%s"}' % ("0" * 64), "leaves the folder"),
    ('{"path": "model.tflite", "bytes": 1, "sha256": ["x"]}', "not 64 hex digits"),
    ("[" * 20_000 + "]" * 20_000, "too deeply"),
])
def test_a_hostile_manifest_is_one_finding(dist, time_limit, entry, words):
    (dist / "arm-cpu" / "manifest.json").write_text('{"files": [%s]}' % entry)
    result = verify(dist)
    assert result.exit_code == 4, result.output
    assert words in result.stdout and "is not as deploykit writes it" in result.stdout
    one_error(result)


def test_report_reads_no_report_json_through_a_link_or_a_fifo(dist, tmp_path, time_limit):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "report.json").write_text('{"target": "outside"}')
    (dist / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    (dist / "arm-cpu" / "report.json").unlink()
    os.mkfifo(dist / "arm-cpu" / "report.json")
    result = CliRunner().invoke(main, ["report", str(dist)])
    assert result.exit_code == 2 and "not a regular file (a FIFO)" in one_error(result)


def test_a_target_name_from_report_json_never_steers_save_profile_out_of_its_folder(dist, tmp_path, time_limit):
    tamper(dist / "arm-cpu", lambda report: report["target_profile"].update(name="../../escaped"))
    profiles = tmp_path / "profiles"
    result = CliRunner().invoke(main, ["profile", str(dist / "arm-cpu"), "--runs", "1", "--warmup", "0",
                                       "--save-profile", str(profiles)])
    assert result.exit_code == 2 and "holds no valid target_profile" in one_error(result)
    assert not profiles.exists() and not (tmp_path / "escaped").exists()


def test_a_backtracking_host_match_from_report_json_is_refused_not_run(dist, tmp_path, time_limit):
    tamper(dist / "arm-cpu", lambda report: report["target_profile"].update(host_match="(a+)+$"))
    result = CliRunner().invoke(main, ["profile", str(dist / "arm-cpu"), "--runs", "1", "--warmup", "0",
                                       "--save-profile", str(tmp_path / "profiles")])
    assert result.exit_code == 2 and "holds no valid target_profile" in one_error(result)
