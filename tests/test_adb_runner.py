"""The adb profiling runner and the benchmark_model output parser, with a fake `adb` (no phone, no TensorFlow).

Fixture outputs in tests/data/benchmark_model/ follow the format of google-ai-edge/LiteRT@f67457790c9c2ab67347d6fe53270e8d3df20868
tflite/tools/benchmark/benchmark_model.cc and tflite/profiling/profile_summary_formatter.cc, with the statistics
lines and op tables of tensorflow/tensorflow third_party/xla/xla/tsl/util/stats_calculator.{h,cc}; each file
names its source in its header.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploykit.errors import DeployKitError
from deploykit.profiling.adb import AdbRunner, tflite_inputs
from deploykit.profiling.base import ProfileSettings, get_runner
from deploykit.profiling.benchmark_model import parse_benchmark_output

DATA = Path(__file__).parent / "data" / "benchmark_model"
LITERT_OUTPUT = DATA / "litert_op_profiling.txt"
OLD_OUTPUT = DATA / "tflite_without_percentiles.txt"
FAILED_OUTPUT = DATA / "failed_model_load.txt"

# --- the parser ---------------------------------------------------------------------------------------------


def test_parser_reads_litert_output_with_percentiles_memory_and_op_tables():
    parsed = parse_benchmark_output(LITERT_OUTPUT.read_text())
    assert parsed["init_ms"] == pytest.approx(61.442)
    assert parsed["first_inference_ms"] == pytest.approx(46.629)
    assert parsed["warmup_avg_ms"] == pytest.approx(28.5946)
    assert parsed["inference"] == pytest.approx({
        "count": 20, "first_ms": 24.542, "curr_ms": 23.537, "min_ms": 23.092, "max_ms": 24.686, "avg_ms": 23.8777,
        "std_ms": 0.395, "p5_ms": 23.453, "median_ms": 23.829, "p95_ms": 24.686})
    assert parsed["warmup"]["count"] == 5
    assert parsed["memory_mb"] == pytest.approx({"init_delta": 38.5898, "overall_delta": 44.7383, "peak": 51.9219})
    assert parsed["model_size_mb"] == pytest.approx(17.5622)
    primary = parsed["op_tables"]["primary"]
    assert set(parsed["op_tables"]) == {"primary"}  # the initialization tables are not the runs'
    assert primary["runs"] == 20 and len(primary["nodes"]) == 12
    assert primary["nodes"][2] == {"type": "FULLY_CONNECTED", "avg_ms": 1.875, "times_called": 1,
                                   "name": "[functional_1/transformer_layer_0/self_attention/query/BiasAdd]:2"}
    assert primary["by_type"][0] == {"type": "FULLY_CONNECTED", "count": 5, "avg_ms": 19.934}


def test_parser_reads_older_output_without_percentiles_or_prefixes():
    parsed = parse_benchmark_output(OLD_OUTPUT.read_text())
    assert parsed["inference"]["median_ms"] is None and parsed["inference"]["p95_ms"] is None
    assert parsed["inference"]["avg_ms"] == pytest.approx(25.0777)
    # count=3 curr=46629(all same): every warm-up run took the same time
    assert parsed["warmup"] == pytest.approx({"count": 3, "first_ms": 46.629, "curr_ms": 46.629, "min_ms": 46.629,
                                              "max_ms": 46.629, "avg_ms": 46.629, "std_ms": 0.0, "p5_ms": None,
                                              "median_ms": None, "p95_ms": None})
    assert parsed["memory_mb"] == pytest.approx({"init_delta": 38.5898, "overall_delta": 44.7383, "peak": None})
    primary = parsed["op_tables"]["primary"]  # the '[start]' column is skipped by its header
    assert primary["nodes"][0] == {"type": "GATHER", "avg_ms": 0.041, "times_called": 1,
                                   "name": "[functional_1/token_embedding/GatherV2]:0"}
    assert primary["by_type"][0] == {"type": "FULLY_CONNECTED", "count": 3, "avg_ms": 5.521}


def test_parser_without_op_profiling_has_no_tables():
    text = LITERT_OUTPUT.read_text()
    without = text[:text.index("INFO: Profiling Info for Benchmark Initialization:")] + \
        text[text.index("INFO: Inference timings in us:"):]
    assert parse_benchmark_output(without)["op_tables"] is None


@pytest.mark.parametrize("text, message", [
    (FAILED_OUTPUT.read_text(), "Its first error: ERROR: Could not open"),
    ("Segmentation fault\n", "check that the binary is LiteRT"),
    ("\n".join(LITERT_OUTPUT.read_text().splitlines()[:30]), "'Inference timings in us: ...' line"),
])
def test_parser_rejects_failed_or_garbled_output(text, message):
    with pytest.raises(DeployKitError, match=re.escape(message)):
        parse_benchmark_output(text)


def test_parser_rejects_a_garbled_op_table():
    text = LITERT_OUTPUT.read_text().replace("\t    1.875\t", "\t    fast\t", 1)
    with pytest.raises(DeployKitError, match="'Run Order' table has a row deploykit cannot read"):
        parse_benchmark_output(text)


# --- the runner against a fake adb --------------------------------------------------------------------------

FAKE_ADB = '''#!{python}
"""A fake adb: logs its argv, answers from the files beside it; pushed files land in device/ (the phone's file
system), `pull` copies back from there, `rm -rf` removes there, and `sh SCRIPT` runs each benchmark_model line of a
pushed script as benchmark_model does its file I/O (inputs from --input_layer_value_files, the output tensors' raw
bytes to --output_filepath), with LiteRT's interpreter standing in for the phone's."""
import json, shlex, shutil, sys, time
from pathlib import Path
here = Path(__file__).parent
device = here / "device"
args = sys.argv[1:]
with open(here / "adb.log", "a") as log:
    log.write(json.dumps(args) + "\\n")
if args == ["devices"]:
    print("List of devices attached")
    print((here / "devices.txt").read_text(), end="")
    sys.exit(0)

def on_device(path):
    return device / path.lstrip("/")

def copy(source, target):
    if source.is_dir():
        shutil.copytree(source, target / source.name if target.is_dir() else target, dirs_exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)

def benchmark(arguments):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    flags = dict(argument[2:].split("=", 1) for argument in arguments[1:])
    interpreter = Interpreter(model_path=str(on_device(flags["graph"])), num_threads=int(flags["num_threads"]))
    interpreter.allocate_tensors()
    files = dict(item.rsplit(":", 1) for item in flags["input_layer_value_files"].split(","))
    for detail in interpreter.get_input_details():
        values = np.frombuffer(on_device(files[detail["name"].replace(":", "::")]).read_bytes(), detail["dtype"])
        interpreter.set_tensor(detail["index"], values.reshape(detail["shape"]))
    interpreter.invoke()
    with open(on_device(flags["output_filepath"]), "wb") as handle:
        for detail in interpreter.get_output_details():
            handle.write(interpreter.get_tensor(detail["index"]).tobytes())

command = args[2:]  # after -s SERIAL
if command[0] == "push":
    copy(Path(command[1]), on_device(command[2]))
    sys.exit(0)
if command[0] == "pull":
    copy(on_device(command[1]), Path(command[2]))
    sys.exit(0)
shell = command[1]
if shell.startswith("mkdir -p "):
    on_device(shlex.split(shell)[2]).mkdir(parents=True, exist_ok=True)
elif shell.startswith("rm -rf "):
    shutil.rmtree(on_device(shlex.split(shell)[2]), ignore_errors=True)
elif shell.startswith("sh "):
    for line in on_device(shlex.split(shell)[1]).read_text().splitlines()[1:]:
        benchmark(shlex.split(line))
if shell == "getprop":
    print("[ro.product.model]: [Pixel 8]\\n[ro.product.manufacturer]: [Google]\\n[ro.soc.model]: [Tensor G3]")
    print("[ro.board.platform]: [zuma]\\n[ro.build.version.release]: [14]\\n[ro.product.cpu.abi]: [arm64-v8a]")
elif shell.startswith("cat /proc/cpuinfo"):
    print("processor\\t: 0\\nBogoMIPS\\t: 49.15\\n\\nprocessor\\t: 1\\n\\nprocessor\\t: 2\\nMemTotal:        7812500 kB")
elif "benchmark_model --graph" in shell:
    mode = (here / "mode.txt").read_text().strip()
    if mode == "hang":
        time.sleep(30)
    print((here / "benchmark.txt").read_text(), end="")
    if mode == "fail":
        print("ERROR: Benchmarking failed.", file=sys.stderr)
        sys.exit(1)
elif shell.startswith("if [ -x"):
    print("present")
'''


def _tiny_tflite(path: Path) -> Path:
    """A real .tflite with two int32 inputs named by its signature; the converter puts token_ids first."""
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.int32, name="padding_mask"),
                                      tf.TensorSpec([1, 8], tf.int32, name="token_ids")])
        def serve(self, padding_mask, token_ids):
            return {"output": tf.cast(padding_mask * token_ids, tf.float32)}

    model = Model()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.serve.get_concrete_function()], model)
    path.write_bytes(converter.convert())
    return path


@pytest.fixture
def fake_adb(tmp_path):
    folder = tmp_path / "fake"
    folder.mkdir()
    script = folder / "adb"
    script.write_text(FAKE_ADB.replace("{python}", sys.executable))
    script.chmod(0o755)
    (folder / "devices.txt").write_text("R3CN80ABCDE\tdevice\n")
    (folder / "benchmark.txt").write_text(LITERT_OUTPUT.read_text())
    (folder / "mode.txt").write_text("ok")
    return folder


def _calls(fake: Path) -> list[list[str]]:
    log = fake / "adb.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _runner(fake: Path, **settings) -> AdbRunner:
    return get_runner({"name": "adb", "adb": str(fake / "adb"), **settings})


SAMPLE = {"padding_mask": np.ones((1, 4), dtype=np.int32), "token_ids": np.array([[2, 7, 9, 3]], dtype=np.int32)}
SETTINGS = ProfileSettings(runs=20, warmup=5, timeout_s=10)


def test_runner_pushes_runs_and_cleans_up(fake_adb, tmp_path):
    model = _tiny_tflite(tmp_path / "model.tflite")
    runner = _runner(fake_adb, benchmark_flags=["--use_gpu=true", "--gpu_precision_loss_allowed=true"])
    profile = runner.profile("litert", model, {}, SAMPLE, 4, SETTINGS)

    calls = _calls(fake_adb)
    assert calls[0] == ["devices"]
    assert all(call[:2] == ["-s", "R3CN80ABCDE"] for call in calls[1:])
    steps = [call[2:] for call in calls[1:]]
    remote = shlex.split(steps[0][1])[2]
    assert steps[0] == ["shell", f"mkdir -p {remote}"] and remote.startswith("/data/local/tmp/deploykit-")
    assert steps[1] == ["push", str(model), f"{remote}/model.tflite"]
    assert [step[0] for step in steps[2:4]] == ["push", "push"]
    assert [step[2] for step in steps[2:4]] == [f"{remote}/input-0.bin", f"{remote}/input-1.bin"]
    assert steps[4] == ["shell", "if [ -x /data/local/tmp/benchmark_model ]; then echo present; else echo absent; fi"]
    assert shlex.split(steps[5][1]) == [
        "/data/local/tmp/benchmark_model", f"--graph={remote}/model.tflite",
        "--input_layer=serving_default_token_ids:0,serving_default_padding_mask:0",
        "--input_layer_shape=1,4:1,4",
        f"--input_layer_value_files=serving_default_token_ids::0:{remote}/input-0.bin,"
        f"serving_default_padding_mask::0:{remote}/input-1.bin",
        "--num_threads=4", "--num_runs=20", "--warmup_runs=5", "--enable_op_profiling=true",
        "--report_peak_memory_footprint=true", "--use_gpu=true", "--gpu_precision_loss_allowed=true"]
    assert steps[6] == ["shell", f"rm -rf {remote}"] and len(steps) == 7

    assert profile["latency_ms"] == {"p50": 23.829, "p90": None, "p99": None, "mean": 23.8777, "min": 23.092,
                                     "runs": 20, "throughput_per_s": 41.88, "p95": 24.686, "max": 24.686,
                                     "std": 0.395}
    assert "p50 is its median" in profile["latency_note"] and "p90 and p99 are not measured" in profile["latency_note"]
    assert profile["peak_rss_mb"] == 51.9219 and profile["threads"] == 4
    assert profile["runtime"]["flags"] == ["--use_gpu=true", "--gpu_precision_loss_allowed=true"]
    ops = profile["op_profile"]
    assert ops["by_type"][0] == {"type": "FULLY_CONNECTED", "count": 5, "ms": 19.934}
    assert ops["top"][0]["name"] == "[functional_1/transformer_layer_0/feedforward_intermediate_dense/BiasAdd]:8"
    assert [row["ms"] for row in ops["top"]] == sorted((row["ms"] for row in ops["top"]), reverse=True)
    assert len(ops["top"]) == 12 and ops["runs"] == 20


def test_outputs_come_back_from_benchmark_model_one_run_per_row(fake_adb, tmp_path):
    """Fidelity on a phone: every row's inputs pushed as files, one benchmark_model run per row with the target's
    delegate flags and --output_filepath, the outputs pulled back in one call and read as the artifact's output; the
    phone's folder is removed afterwards."""
    model = _tiny_tflite(tmp_path / "model.tflite")
    runner = _runner(fake_adb, benchmark_flags=["--use_xnnpack=true"])
    ids = np.arange(24, dtype=np.int32).reshape(3, 8)
    mask = np.array([[1] * 8, [1] * 4 + [0] * 4, [0] * 8], dtype=np.int32)
    measured = runner.run_outputs("litert", model, {}, {"token_ids": ids, "padding_mask": mask}, 2, SETTINGS)
    assert measured["outputs"].dtype == np.float32 and np.array_equal(measured["outputs"], ids * mask)
    assert measured["runtime"]["flags"] == ["--use_xnnpack=true"]
    steps = [call[2:] for call in _calls(fake_adb)[1:]]
    script = next(step[1] for step in steps if step[0] == "shell" and step[1].startswith("sh "))
    remote = script.split()[1].rsplit("/rows/", 1)[0]
    assert ["pull", f"{remote}/out"] == next(step for step in steps if step[0] == "pull")[:2]
    assert sum(step[0] == "push" for step in steps) == 2  # the model and one folder of every row's files
    assert not (fake_adb / "device" / remote.lstrip("/")).exists()  # removed from the phone


def test_outputs_of_the_wrong_size_are_refused(fake_adb, tmp_path):
    from deploykit.profiling.adb import read_output

    output = {"dtype": np.dtype(np.float32), "shape": (1, 8), "scale": 0.0, "zero_point": 0}
    (tmp_path / "output-0.bin").write_bytes(b"\0" * 16)
    with pytest.raises(DeployKitError, match="holds 16 bytes, not the 32"):
        read_output(tmp_path / "output-0.bin", output)
    with pytest.raises(DeployKitError, match="wrote no output-1.bin"):
        read_output(tmp_path / "output-1.bin", output)


def test_runner_writes_the_token_ids_in_model_order(fake_adb, tmp_path, monkeypatch):
    model = _tiny_tflite(tmp_path / "model.tflite")
    pushed = {}
    import deploykit.profiling.adb as adb_module

    real_run_step = adb_module.run_step

    def capture(step, command, timeout_s, cwd=None):
        if command[3:4] == ["push"] and command[4].endswith(".bin"):
            pushed[Path(command[5]).name] = np.frombuffer(Path(command[4]).read_bytes(), dtype="<i4")
        return real_run_step(step, command, timeout_s, cwd)

    monkeypatch.setattr(adb_module, "run_step", capture)
    _runner(fake_adb).profile("litert", model, {}, SAMPLE, 2, SETTINGS)
    assert pushed["input-0.bin"].tolist() == [2, 7, 9, 3]  # token_ids is the model's first input
    assert pushed["input-1.bin"].tolist() == [1, 1, 1, 1]


def test_runner_pushes_a_local_binary(fake_adb, tmp_path):
    model = _tiny_tflite(tmp_path / "model.tflite")
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    _runner(fake_adb, benchmark_binary=str(binary), op_profiling=False).profile("litert", model, {}, SAMPLE, 1, SETTINGS)
    steps = [call[2:] for call in _calls(fake_adb)[1:]]
    remote = shlex.split(steps[0][1])[2]
    assert ["push", str(binary), f"{remote}/benchmark_model"] in steps
    assert ["shell", f"chmod +x {remote}/benchmark_model"] in steps
    command = shlex.split(steps[-2][1])
    assert command[0] == f"{remote}/benchmark_model" and "--enable_op_profiling=false" in command


@pytest.mark.parametrize("mode, message", [("fail", "failed: ERROR: Benchmarking failed."),
                                           ("hang", "did not finish within 2 s")])
def test_runner_removes_the_folder_when_benchmark_model_fails_or_hangs(fake_adb, tmp_path, mode, message):
    model = _tiny_tflite(tmp_path / "model.tflite")
    (fake_adb / "mode.txt").write_text(mode)
    with pytest.raises(DeployKitError, match=re.escape(message)):
        _runner(fake_adb).profile("litert", model, {}, SAMPLE, 4, ProfileSettings(runs=20, warmup=5, timeout_s=2))
    steps = [call[2:] for call in _calls(fake_adb)[1:]]
    remote = shlex.split(steps[0][1])[2]
    assert steps[-1] == ["shell", f"rm -rf {remote}"]


def test_runner_removes_the_folder_on_keyboard_interrupt(fake_adb, tmp_path, monkeypatch):
    model = _tiny_tflite(tmp_path / "model.tflite")
    runner = _runner(fake_adb)
    monkeypatch.setattr(AdbRunner, "_binary", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        runner.profile("litert", model, {}, SAMPLE, 4, SETTINGS)
    steps = [call[2:] for call in _calls(fake_adb)[1:]]
    assert steps[-1] == ["shell", f"rm -rf {shlex.split(steps[0][1])[2]}"]


@pytest.mark.parametrize("devices, settings, message", [
    ("", {}, "no Android device is attached"),
    ("A1\tdevice\nB2\tdevice\n", {}, "several Android devices are attached (A1 (device), B2 (device)); name one"),
    ("A1\tunauthorized\n", {}, "accept the 'Allow USB debugging?' prompt"),
    ("A1\toffline\n", {}, "is offline"),
    ("A1\tdevice\n", {"serial": "B2"}, "no Android device 'B2' is attached (attached: A1 (device))"),
])
def test_runner_device_errors(fake_adb, tmp_path, devices, settings, message):
    (fake_adb / "devices.txt").write_text(devices)
    with pytest.raises(DeployKitError, match=re.escape(message)):
        _runner(fake_adb, **settings).profile("litert", _tiny_tflite(tmp_path / "m.tflite"), {}, SAMPLE, 4, SETTINGS)
    assert _calls(fake_adb) == [["devices"]]  # nothing was pushed


def test_runner_picks_the_named_device_among_several(fake_adb, tmp_path):
    (fake_adb / "devices.txt").write_text("A1\tdevice\nB2\tdevice\n")
    _runner(fake_adb, serial="B2").profile("litert", _tiny_tflite(tmp_path / "m.tflite"), {}, SAMPLE, 4, SETTINGS)
    assert {tuple(call[:2]) for call in _calls(fake_adb)[1:]} == {("-s", "B2")}


def test_runner_rejects_other_artifacts_and_bad_flags(fake_adb, tmp_path):
    with pytest.raises(DeployKitError, match="runs LiteRT .tflite artifacts"):
        _runner(fake_adb).profile("openvino", tmp_path / "model.xml", {}, SAMPLE, 4, SETTINGS)
    with pytest.raises(DeployKitError, match="must each look like --name=value"):
        _runner(fake_adb, benchmark_flags=["--use_gpu=true", "--use_nnapi=true; reboot"])
    assert _calls(fake_adb) == []


def test_runner_needs_the_adb_client(tmp_path):
    with pytest.raises(DeployKitError, match="apt-get install adb"):
        get_runner({"name": "adb", "adb": str(tmp_path / "no-adb")}).serial()


def test_describe_reads_the_device_once(fake_adb):
    runner = _runner(fake_adb)
    target = type("Target", (), {"threads": None, "device": "Pixel 8"})()
    described = runner.describe(target, runner.threads(target))
    assert described["host"] == "Pixel 8 (Tensor G3, Android 14)" and described["cores"] == 3
    assert described["threads"] == 4 and described["on_target_device"] is True
    assert described["note"].startswith("Measured on the Android device R3CN80ABCDE (Pixel 8 (Tensor G3, Android 14))")
    assert described["facts"]["memory_mb"] == 7629 and described["facts"]["abi"] == "arm64-v8a"
    runner.describe(target, 4)
    assert len(_calls(fake_adb)) == 3  # devices, getprop, /proc


def test_tflite_inputs_reads_the_signature_names(tmp_path):
    assert tflite_inputs(_tiny_tflite(tmp_path / "m.tflite")) == [
        {"tensor": "serving_default_token_ids:0", "name": "token_ids", "dtype": np.dtype("int32")},
        {"tensor": "serving_default_padding_mask:0", "name": "padding_mask", "dtype": np.dtype("int32")}]
    (tmp_path / "bad.tflite").write_bytes(b"\x00\x00")
    with pytest.raises(DeployKitError, match="is not a readable .tflite model"):
        tflite_inputs(tmp_path / "bad.tflite")


@pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb is not installed")
def test_the_real_adb_client_runs():
    done = subprocess.run(["adb", "version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "Android Debug Bridge" in done.stdout
