"""The target registry: built-in profiles, user folders, and clear errors for bad files."""

import pytest

from deploykit.errors import DeployKitError
from deploykit.targets import TARGETS_ENV
from deploykit.target_loader import list_targets, load_target, resolve_targets

BUILT_IN = {"intel-cpu", "arm-cpu", "mobile-npu", "mobile-npu-hexagon", "mobile-npu-mediatek", "edge-tpu", "nvidia-gpu"}


def test_every_built_in_target_validates():
    assert BUILT_IN <= {t.name for t in list_targets()}


def test_integer_only_targets_run_int8_only():
    for name in ("mobile-npu", "edge-tpu"):
        target = load_target(name)
        assert target.integer_only and target.precisions[0] == "int8" and target.static_shapes


def test_unknown_target_names_the_closest_ones():
    with pytest.raises(DeployKitError, match="Did you mean intel-cpu"):
        load_target("intel-cpux")


def test_extra_folder_adds_a_target(tmp_path, monkeypatch):
    (tmp_path / "tiny-npu.yaml").write_text(
        "description: test\ndevice: test board\nruntime: litert\nprecisions: [int8]\n"
        "integer_only: true\n"
    )
    monkeypatch.setenv(TARGETS_ENV, str(tmp_path))
    assert load_target("tiny-npu").integer_only
    assert "tiny-npu" in {t.name for t in list_targets()}


def test_malformed_yaml_is_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "broken.yaml").write_text("description: [unclosed\n")
    monkeypatch.setenv(TARGETS_ENV, str(tmp_path))
    with pytest.raises(DeployKitError, match="not readable YAML") as error:
        load_target("broken")
    assert "\n" not in str(error.value)


def test_invalid_field_names_the_field(tmp_path, monkeypatch):
    (tmp_path / "odd.yaml").write_text("description: x\ndevice: y\nruntime: cuda\nprecisions: [int8]\n")
    monkeypatch.setenv(TARGETS_ENV, str(tmp_path))
    with pytest.raises(DeployKitError, match="runtime"):
        load_target("odd")


def test_integer_only_target_must_list_int8_only(tmp_path, monkeypatch):
    (tmp_path / "npu.yaml").write_text(
        "description: x\ndevice: y\nruntime: litert\nprecisions: [fp16]\ninteger_only: true\n"
    )
    monkeypatch.setenv(TARGETS_ENV, str(tmp_path))
    with pytest.raises(DeployKitError, match="integer_only"):
        load_target("npu")


def test_missing_targets_folder_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv(TARGETS_ENV, str(tmp_path / "nope"))
    with pytest.raises(DeployKitError, match="not a folder"):
        list_targets()


def test_comma_list_and_all():
    assert [t.name for t in resolve_targets("arm-cpu, intel-cpu")] == ["arm-cpu", "intel-cpu"]
    assert {t.name for t in resolve_targets("all")} >= BUILT_IN


def test_profiling_threads_never_exceed_host_cores(monkeypatch):
    from deploykit.profiling.base import get_runner

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    target = load_target("arm-cpu")
    assert get_runner(target.profiling).threads(target) == 2


def test_hidden_files_and_editor_locks_are_not_targets(tmp_path, monkeypatch):
    (tmp_path / "..yaml").write_text("description: d\ndevice: d\nruntime: litert\nprecisions: [fp32]\n")
    (tmp_path / ".#lab.yaml").symlink_to("user@host.1234:1700000000")  # an Emacs lock: a dangling link
    (tmp_path / "lab.yaml").write_text("description: d\ndevice: d\nruntime: litert\nprecisions: [fp32]\n")
    monkeypatch.setenv(TARGETS_ENV, str(tmp_path))
    names = {target.name for target in list_targets()}
    assert "lab" in names and not any(name.startswith(".") or name == "" for name in names)


def test_a_user_folder_overrides_a_built_in_target(tmp_path, monkeypatch):
    (tmp_path / "arm-cpu.yaml").write_text("description: mine\ndevice: d\nruntime: litert\nprecisions: [fp32]\n")
    monkeypatch.setenv(TARGETS_ENV, str(tmp_path))
    assert load_target("arm-cpu").description == "mine"
