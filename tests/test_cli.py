"""The command line: bad input gets one clear line, a non-zero exit code and no files under --out."""

import json

import pytest
from click.testing import CliRunner

from deploykit.cli import main


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


def assert_clean_failure(result, out, message):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_targets_lists_the_registry():
    result = run("targets")
    assert result.exit_code == 0
    for name in ("intel-cpu", "arm-cpu", "mobile-npu", "edge-tpu", "nvidia-gpu"):
        assert name in result.stdout


def test_passes_lists_every_pass_with_its_defaults():
    result = run("passes")
    assert result.exit_code == 0
    for name in ("distill", "prune", "factorize", "trim-vocab", "qat", "hidden_steps=500", "unseen=nearest"):
        assert name in result.stdout


def test_bad_recipe_fails_before_any_work(tmp_path):
    out = tmp_path / "dist"
    result = run("build", "--recipe", "trim-vocab,distill", "--out", str(out))
    assert_clean_failure(result, out, "put it before trim-vocab")


def test_structural_recipe_on_a_plain_keras_model_fails_before_any_work(tmp_path, labelled_data, vocabulary):
    import keras

    token_ids = keras.Input((16,), dtype="int32", name="token_ids")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(len(vocabulary), 8)(token_ids))
    path = tmp_path / "plain.keras"
    keras.Model(token_ids, keras.layers.Dense(2)(pooled)).save(path)
    (tmp_path / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    out = tmp_path / "dist"
    result = run("build", str(path), "--data", str(labelled_data), "--target", "arm-cpu", "--recipe", "distill",
                 "--out", str(out))
    assert_clean_failure(result, out, "need a keras-hub BertBackbone")


def test_targets_show_prints_one_profile():
    result = run("targets", "show", "mobile-npu")
    assert result.exit_code == 0 and "integer_only: true" in result.stdout


def test_unknown_target_suggests_close_names(tmp_path):
    result = run("build", "--target", "arm-cpux", "--out", str(tmp_path / "out"))
    assert_clean_failure(result, tmp_path / "out", "Did you mean arm-cpu")


def test_nonexistent_model(tmp_path, labelled_data):
    out = tmp_path / "out"
    result = run("build", str(tmp_path / "nope"), "--data", str(labelled_data), "--out", str(out))
    assert_clean_failure(result, out, "does not exist")


def test_corrupt_model(tmp_path, labelled_data):
    broken = tmp_path / "broken.keras"
    broken.write_text("garbage")
    out = tmp_path / "out"
    result = run("build", str(broken), "--data", str(labelled_data), "--out", str(out))
    assert_clean_failure(result, out, "could not load")


@pytest.mark.parametrize("content, message", [('{"sentence": "a"}\n{"sentence": "b"}\n', "no 'text' column"), ("", "no rows")])
def test_bad_data(tmp_path, tiny_classifier, content, message):
    data = tmp_path / "d.jsonl"
    data.write_text(content)
    out = tmp_path / "out"
    result = run("build", str(tiny_classifier), "--data", str(data), "--out", str(out))
    assert_clean_failure(result, out, message)


def test_malformed_target_yaml(tmp_path, tiny_classifier, labelled_data):
    folder = tmp_path / "targets"
    folder.mkdir()
    (folder / "lab-board.yaml").write_text("runtime: litert\nprecisions: int8: x\n")
    out = tmp_path / "out"
    result = run("build", str(tiny_classifier), "--target", "lab-board", "--data", str(labelled_data),
                 "--out", str(out), env={"DEPLOYKIT_TARGETS": str(folder)})
    assert_clean_failure(result, out, "lab-board.yaml")


def test_sequence_length_beyond_the_model(tmp_path, tiny_classifier, labelled_data):
    out = tmp_path / "out"
    result = run("build", str(tiny_classifier), "--data", str(labelled_data), "--sequence-length", "4096",
                 "--out", str(out))
    assert_clean_failure(result, out, "--sequence-length between")


def test_precision_the_backend_lacks(tmp_path, tiny_classifier, labelled_data):
    out = tmp_path / "out"
    result = run("build", str(tiny_classifier), "--target", "arm-cpu", "--precision", "bf16",
                 "--data", str(labelled_data), "--out", str(out))
    assert_clean_failure(result, out, "not available on the litert backend")


def test_nvidia_gpu_precision_it_cannot_export(tmp_path, tiny_classifier, labelled_data):
    out = tmp_path / "out"
    result = run("build", str(tiny_classifier), "--target", "nvidia-gpu", "--precision", "fp8",
                 "--data", str(labelled_data), "--out", str(out))
    assert_clean_failure(result, out, "precision 'fp8' is not available on the tensorrt backend")


def test_missed_gate_exits_3_with_report(tmp_path, tiny_backbone_file, labelled_data):
    out = tmp_path / "out"
    result = run("build", str(tiny_backbone_file), "--target", "arm-cpu", "--data", str(labelled_data),
                 "--out", str(out), "--min-cosine", "1.0", "--precision", "dynamic-int8", "--runs", "3", "--warmup", "0",
                 "--evaluation-samples", "10", "--calibration-samples", "10")
    assert result.exit_code == 3, result.output
    assert "quality gate missed for arm-cpu" in result.stderr
    report = json.loads((out / "arm-cpu" / "report.json").read_text())
    assert report["gates"]["passed"] is False


def test_report_and_profile_read_a_build_folder(tmp_path, tiny_classifier, labelled_data):
    out = tmp_path / "out"
    built = run("build", str(tiny_classifier), "--target", "arm-cpu", "--data", str(labelled_data), "--out", str(out),
                "--runs", "3", "--warmup", "0", "--evaluation-samples", "10", "--calibration-samples", "10")
    assert built.exit_code == 0, built.output
    compared = run("report", str(out))
    assert compared.exit_code == 0 and "arm-cpu" in compared.stdout and "dynamic-int8" in compared.stdout
    profiled = run("profile", str(out / "arm-cpu" / "model.tflite"), "--runs", "5", "--warmup", "1")
    assert profiled.exit_code == 0 and "p50 ms" in profiled.stdout


def test_profile_rejects_files_it_cannot_run(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"x")
    result = run("profile", str(model))
    assert result.exit_code == 2 and "not an artifact deploykit can run" in result.stderr


def test_report_of_an_empty_folder(tmp_path):
    result = run("report", str(tmp_path))
    assert result.exit_code == 2 and "holds no <target>/report.json" in result.stderr


def test_integer_only_target_refuses_precisions_it_does_not_list(tmp_path, tiny_classifier, labelled_data):
    out = tmp_path / "out"
    result = run("build", str(tiny_classifier), "--target", "edge-tpu", "--precision", "a16w8",
                 "--data", str(labelled_data), "--out", str(out))
    assert_clean_failure(result, out, "integer-only graphs in int8")


def test_qat_options_reach_the_plan(tmp_path, tiny_classifier, labelled_data):
    out = tmp_path / "out"
    result = run("build", str(tiny_classifier), "--target", "mobile-npu", "--data", str(labelled_data), "--out", str(out),
                 "--qat-steps", "3", "--qat-learning-rate", "3e-5", "--qat-range-learning-rate", "2e-4",
                 "--runs", "3", "--warmup", "0", "--evaluation-samples", "10", "--calibration-samples", "10")
    assert result.exit_code in (0, 3), result.output
    report = json.loads((out / "mobile-npu" / "report.json").read_text())
    step = next(s for s in report["plan"] if s["step"] == "qat")
    assert (step["steps"], step["learning_rate"], step["range_learning_rate"]) == (3, 3e-5, 2e-4)


def test_bad_qat_parameter(tmp_path, tiny_classifier, labelled_data):
    out = tmp_path / "out"
    result = run("build", str(tiny_classifier), "--target", "mobile-npu", "--data", str(labelled_data), "--out", str(out),
                 "--qat-steps", "0")
    assert_clean_failure(result, out, "'--qat-steps': 0 is not in the range")
