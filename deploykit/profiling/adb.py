"""The `adb` profiling runner: times a .tflite on an Android phone with LiteRT's `benchmark_model`, over adb.

A phone's latency depends on its SoC, thermal state and delegates, so a laptop's numbers say little about it;
benchmark_model is the tool LiteRT ships for this and accepts the delegate flags a target declares
(`--use_gpu=true`, `--use_nnapi=true`, vendor NPU delegates). Every adb call goes through `run_step`, so each
has a time limit and fails with one line; the folder pushed to the phone is removed whatever happens.
"""

from __future__ import annotations

import re
import secrets
import shlex
import shutil
import tempfile
from pathlib import Path

import numpy as np

from deploykit.errors import DeployKitError
from deploykit.profiling.base import Inputs, ProfileRunner, ProfileSettings, RunnerSettings
from deploykit.profiling.benchmark_model import parse_benchmark_output
from deploykit.subprocesses import run_step

ADB_COMMAND_TIMEOUT_S = 30.0  # `devices`, `getprop`, `mkdir`, `rm`: answered at once by a healthy device
TOP_OPS = 20
FLAG = re.compile(r"--[A-Za-z0-9_]+=\S+")
# Input types benchmark_model reads from raw value files (the inputs a BERT model may take).
FILE_INPUT_DTYPES = {np.dtype(t) for t in (np.float32, np.int32, np.int64, np.int16, np.int8)}


class AdbSettings(RunnerSettings):
    """Which phone, which benchmark_model, which delegate flags."""

    serial: str | None = None  # None: the only attached device
    device: str | None = None  # the devices file's name for it (reports and profiles/)
    benchmark_binary: str | None = None  # a local benchmark_model build to push; None: the one at device_binary
    device_binary: str = "/data/local/tmp/benchmark_model"
    benchmark_flags: list[str] = []  # delegate flags, verbatim: --use_gpu=true, --use_nnapi=true, ...
    op_profiling: bool = True
    adb: str = "adb"


class AdbRunner(ProfileRunner):
    """An Android phone reached over adb; the artifact runs in LiteRT's benchmark_model on it."""

    name = "adb"
    settings_class = AdbSettings

    def __init__(self, settings: AdbSettings):
        super().__init__(settings)
        bad = [flag for flag in settings.benchmark_flags if not FLAG.fullmatch(flag)]
        if bad:
            raise DeployKitError(f"adb runner benchmark_flags must each look like --name=value; got {bad}.")
        self._serial: str | None = None
        self._facts: dict | None = None

    def threads(self, target) -> int:
        """The target's thread count; 4 otherwise (the big cores of a typical phone)."""
        return target.threads or 4

    def describe(self, target, threads: int) -> dict:
        facts = self.device_facts()
        soc = facts["soc"] or "unknown SoC"
        host = f"{facts['model']} ({soc}, Android {facts['android']})"
        flags = " ".join(self.settings.benchmark_flags) or "no delegate flags"
        note = (f"Measured on the Android device {facts['serial']} ({host}) with benchmark_model over adb, "
                f"{threads} threads, {flags}.")
        return {"runner": self.name, "device": self.device_name, "host": host, "cores": facts["cores"],
                "threads": threads, "on_target_device": True, "note": note, "facts": facts}

    @property
    def device_name(self) -> str:
        """The devices file's name for the phone, else its model and serial, e.g. `pixel-8-r3cn80abcde`."""
        if self.settings.device:
            return self.settings.device
        facts = self.device_facts()
        return re.sub(r"[^a-z0-9]+", "-", f"{facts['model']} {facts['serial']}".lower()).strip("-")

    def profile(self, backend: str, artifact: Path, runtime_config: dict, sample: Inputs, threads: int,
                settings: ProfileSettings) -> dict:
        _check_litert(backend, artifact)
        inputs = model_inputs(artifact, sample)
        output = self._in_temp_folder(lambda serial, remote: self._benchmark(serial, remote, artifact, inputs,
                                                                           threads, settings))
        return self._result(output, threads, settings)

    def run_outputs(self, backend: str, artifact: Path, runtime_config: dict, inputs: Inputs, threads: int,
                    settings: ProfileSettings) -> dict:
        """The artifact's output on every row, computed on the phone by benchmark_model with the target's delegate
        flags: one run per row (`--num_runs=1`, that row's inputs from files), each writing its output tensor's raw
        bytes to a file (`--output_filepath`, LiteRT's tflite/tools/benchmark/benchmark_tflite_model.cc), all
        pulled back at once."""
        _check_litert(backend, artifact)
        output = tflite_output(artifact)
        rows = len(next(iter(inputs.values())))
        per_row = [model_inputs(artifact, {name: values[i:i + 1] for name, values in inputs.items()})
                   for i in range(rows)]
        with tempfile.TemporaryDirectory(prefix="deploykit-adb-outputs-") as local:
            self._in_temp_folder(lambda serial, remote: self._run_rows(serial, remote, artifact, per_row, threads,
                                                                       settings, Path(local)))
            values = [read_output(Path(local) / "out" / f"output-{number}.bin", output) for number in range(rows)]
        return {"outputs": np.stack(values).astype(np.float32),
                "runtime": {"name": "benchmark_model", "binary": self.settings.benchmark_binary
                            or self.settings.device_binary, "flags": list(self.settings.benchmark_flags)},
                "device": self.device_facts()}

    def _in_temp_folder(self, work):
        """work(serial, remote folder) on the phone; the folder is removed afterwards, also after a failure."""
        serial = self.serial()
        remote = f"/data/local/tmp/deploykit-{secrets.token_hex(4)}"
        try:
            result = work(serial, remote)
        except BaseException as error:
            try:
                self._remove(serial, remote)
            except DeployKitError as cleanup_error:  # the first error is the one to report
                error.add_note(str(cleanup_error))
            raise
        self._remove(serial, remote)
        return result

    # --- the device -----------------------------------------------------------------------------------------

    def serial(self) -> str:
        """The phone's serial: the configured one, or the only attached device; checked once."""
        if self._serial is None:
            self._serial = self._pick_device()
        return self._serial

    def _pick_device(self) -> str:
        if shutil.which(self.settings.adb) is None:
            raise DeployKitError(f"the adb client {self.settings.adb!r} is not installed; install it "
                                 "(`apt-get install adb`, or Android platform-tools) or set the runner's `adb:` path.")
        listed = run_step("listing Android devices (adb devices)", [self.settings.adb, "devices"],
                          ADB_COMMAND_TIMEOUT_S).stdout
        states = dict(line.split("\t", 1) for line in listed.splitlines() if line.count("\t") == 1)
        if self.settings.serial is not None:
            if self.settings.serial not in states:
                raise DeployKitError(f"no Android device {self.settings.serial!r} is attached (attached: "
                                     f"{_listing(states)}); plug it in or fix the runner's `serial:`.")
            serial = self.settings.serial
        elif not states:
            raise DeployKitError("no Android device is attached to adb; plug the phone in with USB debugging on "
                                 "(Settings > Developer options) and check `adb devices`.")
        elif len(states) > 1:
            raise DeployKitError(f"several Android devices are attached ({_listing(states)}); "
                                 "name one with `serial:` in the target's profiling block.")
        else:
            (serial,) = states
        state = states[serial]
        if state == "unauthorized":
            raise DeployKitError(f"Android device {serial} has not authorized this computer; unlock it and accept "
                                 "the 'Allow USB debugging?' prompt, then retry.")
        if state == "offline":
            raise DeployKitError(f"Android device {serial} is offline; reconnect its cable or run `adb reconnect`.")
        if state != "device":
            raise DeployKitError(f"Android device {serial} is in state {state!r}, not ready for adb; "
                                 "boot it normally (and check udev permissions on Linux), then retry.")
        return serial

    def device_facts(self) -> dict:
        """Model, SoC, Android release, ABI, cores and memory of the phone, read once."""
        if self._facts is None:
            serial = self.serial()
            props = dict(re.findall(r"^\[(.+?)\]: \[(.*)\]\s*$",
                                    self._adb(serial, "reading the device's properties", "shell", "getprop").stdout,
                                    flags=re.MULTILINE))
            proc = self._adb(serial, "reading the device's /proc/cpuinfo and /proc/meminfo",
                             "shell", shlex.join(["cat", "/proc/cpuinfo", "/proc/meminfo"])).stdout
            hardware = re.search(r"^Hardware\s*:\s*(.+)$", proc, flags=re.MULTILINE)
            memory_kb = re.search(r"^MemTotal:\s*(\d+) kB", proc, flags=re.MULTILINE)
            cores = len(re.findall(r"^processor\s*:", proc, flags=re.MULTILINE))
            self._facts = {
                "serial": serial,
                "model": props.get("ro.product.model", "unknown model"),
                "manufacturer": props.get("ro.product.manufacturer"),
                "soc": props.get("ro.soc.model") or props.get("ro.board.platform")
                or (hardware.group(1).strip() if hardware else None),
                "android": props.get("ro.build.version.release", "?"),
                "abi": props.get("ro.product.cpu.abi"),
                "cores": cores or None,
                "memory_mb": round(int(memory_kb.group(1)) / 1024) if memory_kb else None,
            }
        return self._facts

    def _adb(self, serial: str, step: str, *arguments: str, timeout_s: float = ADB_COMMAND_TIMEOUT_S):
        return run_step(step, [self.settings.adb, "-s", serial, *arguments], timeout_s)

    def _remove(self, serial: str, remote: str) -> None:
        self._adb(serial, f"removing {remote} from the device", "shell", shlex.join(["rm", "-rf", remote]))

    # --- one benchmark --------------------------------------------------------------------------------------

    def _benchmark(self, serial: str, remote: str, artifact: Path, inputs: list[dict], threads: int,
                   settings: ProfileSettings) -> str:
        """Push the model, its inputs (and the binary), run benchmark_model; its stdout and stderr."""
        self._adb(serial, f"creating {remote} on the device", "shell", shlex.join(["mkdir", "-p", remote]))
        self._adb(serial, f"pushing {artifact.name} to the device", "push", str(artifact), f"{remote}/model.tflite",
                  timeout_s=settings.timeout_s)
        with tempfile.TemporaryDirectory(prefix="deploykit-adb-") as folder:
            for number, entry in enumerate(inputs):
                local = Path(folder) / f"input-{number}.bin"
                local.write_bytes(entry["values"].tobytes())
                entry["remote"] = f"{remote}/{local.name}"
                self._adb(serial, f"pushing the input {entry['tensor']} to the device", "push", str(local),
                          entry["remote"])
        binary = self._binary(serial, remote, settings)
        command = [binary, *self.benchmark_arguments(f"{remote}/model.tflite", inputs, threads, settings)]
        done = self._adb(serial, f"benchmark_model on {artifact.name}", "shell", shlex.join(command),
                         timeout_s=settings.timeout_s)
        return f"{done.stdout}\n{done.stderr}"

    def _run_rows(self, serial: str, remote: str, artifact: Path, per_row: list[list[dict]], threads: int,
                  settings: ProfileSettings, local: Path) -> None:
        """Push the model, every row's input files and a script of one benchmark_model run per row; run it; pull
        the output files into `local`/out."""
        self._adb(serial, f"creating {remote} on the device", "shell", shlex.join(["mkdir", "-p", f"{remote}/out"]))
        self._adb(serial, f"pushing {artifact.name} to the device", "push", str(artifact), f"{remote}/model.tflite",
                  timeout_s=settings.timeout_s)
        binary = self._binary(serial, remote, settings)
        once = ProfileSettings(runs=1, warmup=0, op_profile=False)
        rows = local / "rows"
        rows.mkdir()
        lines = ["set -e"]
        for number, inputs in enumerate(per_row):
            for index, entry in enumerate(inputs):
                name = f"input-{number}-{index}.bin"
                (rows / name).write_bytes(entry["values"].tobytes())
                entry["remote"] = f"{remote}/rows/{name}"
            lines.append(shlex.join([binary, *self.benchmark_arguments(f"{remote}/model.tflite", inputs, threads, once),
                                     f"--output_filepath={remote}/out/output-{number}.bin"]))
        (rows / "run.sh").write_text("\n".join(lines) + "\n")
        self._adb(serial, f"pushing {len(per_row)} samples to the device", "push", str(rows), remote,
                  timeout_s=settings.timeout_s)
        self._adb(serial, f"running {artifact.name} on {len(per_row)} samples on the device", "shell",
                  shlex.join(["sh", f"{remote}/rows/run.sh"]), timeout_s=settings.timeout_s)
        self._adb(serial, "pulling the outputs from the device", "pull", f"{remote}/out", str(local),
                  timeout_s=settings.timeout_s)

    def _binary(self, serial: str, remote: str, settings: ProfileSettings) -> str:
        """The benchmark_model to run: the pushed local build, or the one already on the device."""
        if self.settings.benchmark_binary is not None:
            local = Path(self.settings.benchmark_binary)
            if not local.is_file():
                raise DeployKitError(f"benchmark_binary {str(local)!r} does not exist; point it to an Android "
                                     "build of LiteRT's benchmark_model (android_aarch64_benchmark_model).")
            pushed = f"{remote}/benchmark_model"
            self._adb(serial, "pushing benchmark_model to the device", "push", str(local), pushed,
                      timeout_s=settings.timeout_s)
            self._adb(serial, "making benchmark_model executable", "shell", shlex.join(["chmod", "+x", pushed]))
            return pushed
        binary = self.settings.device_binary
        probe = f"if [ -x {shlex.quote(binary)} ]; then echo present; else echo absent; fi"
        if self._adb(serial, "looking for benchmark_model on the device", "shell", probe).stdout.strip() != "present":
            raise DeployKitError(f"the device has no executable benchmark_model at {binary}; push one there or set "
                                 "benchmark_binary to a local Android build of LiteRT's benchmark_model.")
        return binary

    def benchmark_arguments(self, graph: str, inputs: list[dict], threads: int, settings: ProfileSettings) -> list[str]:
        """benchmark_model's flags: the model, the real token ids as raw input files, runs, threads, delegates.

        --input_layer/--input_layer_shape/--input_layer_value_files are positional over the model's inputs
        (tflite/tools/benchmark/benchmark_tflite_model.cc); a ':' in a name is escaped as '::' there.
        --report_peak_memory_footprint makes versions that have it print the peak; older ones ignore it with a warning.
        """
        value_files = ",".join(f"{entry['tensor'].replace(':', '::')}:{entry['remote']}" for entry in inputs)
        op_profiling = self.settings.op_profiling and settings.op_profile
        return [
            f"--graph={graph}",
            f"--input_layer={','.join(entry['tensor'] for entry in inputs)}",
            f"--input_layer_shape={':'.join(','.join(map(str, entry['values'].shape)) for entry in inputs)}",
            f"--input_layer_value_files={value_files}",
            f"--num_threads={threads}",
            f"--num_runs={settings.runs}",
            f"--warmup_runs={settings.warmup}",
            f"--enable_op_profiling={str(op_profiling).lower()}",
            "--report_peak_memory_footprint=true",
            *self.settings.benchmark_flags,
        ]

    def _result(self, output: str, threads: int, settings: ProfileSettings) -> dict:
        """The local runner's profile shape from benchmark_model's summary statistics."""
        parsed = parse_benchmark_output(output)
        stat = parsed["inference"]
        median = stat["median_ms"]
        p50 = median if median is not None else stat["avg_ms"]
        note = ("benchmark_model prints no per-run timings: "
                + ("p50 is its median" if median is not None else "p50 is its mean (this version prints no median)")
                + ", p90 and p99 are not measured (None)"
                + (", p95 is its p95" if stat["p95_ms"] is not None else "") + ".")
        op_tables = (parsed["op_tables"] or {}).get("primary")
        if op_tables:
            note += " Timings include the op profiler's overhead (--enable_op_profiling=true)."
        result = {
            "latency_ms": {"p50": round(p50, 4), "p90": None, "p99": None, "mean": round(stat["avg_ms"], 4),
                           "min": round(stat["min_ms"], 4), "runs": stat["count"],
                           "throughput_per_s": round(1000.0 / stat["avg_ms"], 2),
                           "p95": stat["p95_ms"], "max": stat["max_ms"], "std": stat["std_ms"]},
            "latency_note": note,
            "peak_rss_mb": parsed["memory_mb"]["peak"],
            "memory_delta_mb": {"init": parsed["memory_mb"]["init_delta"],
                                "overall": parsed["memory_mb"]["overall_delta"]},
            "init_ms": parsed["init_ms"],
            "threads": threads,
            "runtime": {"name": "benchmark_model",
                        "binary": self.settings.benchmark_binary or self.settings.device_binary,
                        "flags": list(self.settings.benchmark_flags)},
        }
        if op_tables:
            result["op_profile"] = op_profile(op_tables)
        return result


def op_profile(tables: dict) -> dict:
    """deploykit's per-op summary from benchmark_model's primary-graph tables: ms per inference, slowest first."""
    top = sorted(({"name": node["name"], "type": node["type"], "ms": round(node["avg_ms"] * node["times_called"], 4)}
                  for node in tables["nodes"]), key=lambda row: -row["ms"])[:TOP_OPS]
    by_type = sorted(({"type": row["type"], "count": row["count"], "ms": row["avg_ms"]} for row in tables["by_type"]),
                     key=lambda row: -row["ms"])
    return {"source": "benchmark_model --enable_op_profiling=true, average per run of each node of the primary graph "
                      "(a delegated partition is one node)",
            "runs": tables["runs"], "by_type": by_type, "top": top}


def _check_litert(backend: str, artifact: Path) -> None:
    if backend != "litert" or artifact.suffix != ".tflite":
        raise DeployKitError(f"the adb runner runs LiteRT .tflite artifacts with benchmark_model; "
                             f"{artifact.name} is a {backend} artifact: use the local runner for it.")


def tflite_output(path: Path) -> dict:
    """The artifact's one output as benchmark_model writes it: dtype, shape, and the quantization that turns an
    integer output into deploykit's float32 (as its LiteRT backend dequantizes)."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_output_details()
    if len(details) != 1:
        raise DeployKitError(f"{path.name} has {len(details)} outputs; deploykit's encoder artifacts have one: "
                             "rebuild it with `deploykit build`.")
    scale, zero_point = details[0]["quantization"]
    return {"dtype": np.dtype(details[0]["dtype"]), "shape": tuple(int(n) for n in details[0]["shape"]),
            "scale": scale, "zero_point": zero_point}


def read_output(path: Path, output: dict) -> np.ndarray:
    """One row's output from the raw bytes benchmark_model wrote (pulled from the phone: read bounded, and it
    must be exactly one output tensor's bytes)."""
    from deploykit.user_files import read_untrusted_bytes

    expected = int(np.prod(output["shape"])) * output["dtype"].itemsize
    if not (path.exists() or path.is_symlink()):
        raise DeployKitError(f"benchmark_model wrote no {path.name} on the device; its version may predate "
                             "--output_filepath: push a current build with --benchmark-binary.")
    data = read_untrusted_bytes(path, limit=expected)
    if len(data) != expected:
        raise DeployKitError(f"benchmark_model's {path.name} holds {len(data)} bytes, not the {expected} of the "
                             f"artifact's output {list(output['shape'])}; check the benchmark_model build.")
    values = np.frombuffer(data, dtype=output["dtype"].newbyteorder("<")).reshape(output["shape"])[0]
    if output["dtype"].kind != "f" and output["scale"]:
        return (values.astype(np.float32) - output["zero_point"]) * output["scale"]
    return values.astype(np.float32)


def model_inputs(artifact: Path, sample: Inputs) -> list[dict]:
    """The sample as benchmark_model needs it: one entry per model input, in the model's input order.

    benchmark_model matches --input_layer entries to the model's inputs by position, so the order is read
    from the .tflite (its first subgraph's inputs, named by the signature that runs it).
    """
    expected = tflite_inputs(artifact)
    names = [entry["name"] for entry in expected]
    if sorted(names) != sorted(sample):
        raise DeployKitError(f"{artifact.name} takes the inputs {names}, the sample has {sorted(sample)}; "
                             "rebuild the artifact with this deploykit.")
    entries = []
    for entry in expected:
        dtype = entry["dtype"]
        if dtype not in FILE_INPUT_DTYPES or "," in entry["tensor"]:
            raise DeployKitError(f"{artifact.name}'s input {entry['tensor']!r} ({dtype}) cannot be "
                                 "fed to benchmark_model from a file; rebuild the artifact with this deploykit.")
        values = np.ascontiguousarray(sample[entry["name"]], dtype=np.dtype(dtype).newbyteorder("<"))
        entries.append({"tensor": entry["tensor"], "values": values})
    return entries


def tflite_inputs(path: Path) -> list[dict]:
    """The model's inputs in their order: tensor name, signature name (or the tensor's) and NumPy dtype.

    Read with LiteRT's interpreter (the runtime deploykit installs), which needs no TensorFlow.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as error:
        raise DeployKitError(f"{path} is not a readable .tflite model ({type(error).__name__}: {error}); "
                             "rebuild it with `deploykit build`.") from None
    signature_names = {}
    if interpreter.get_signature_list():
        runner = interpreter.get_signature_runner()
        signature_names = {details["index"]: name for name, details in runner.get_input_details().items()}
    return [{"tensor": details["name"], "name": signature_names.get(details["index"], details["name"]),
             "dtype": np.dtype(details["dtype"])} for details in interpreter.get_input_details()]


def _listing(states: dict[str, str]) -> str:
    return ", ".join(f"{serial} ({state})" for serial, state in states.items()) or "none"
