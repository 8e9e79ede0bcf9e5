"""Device-side profiling worker: times one artifact with the device's own runtime and prints JSON.

This file runs as a standalone script wherever an artifact is timed: in a fresh
local process (the `local` runner) or copied to a device over SSH (the `ssh`
runner). It therefore imports only the standard library and, lazily, the one
runtime it needs (plus NumPy, which every runtime's Python API takes tensors in
and installs with itself): a Raspberry Pi with just `pip install ai-edge-litert`
can run it. Python 3.8 or newer.

Usage: python -I device_worker.py request.json   (the request's format: worker_io.py; with a "pair", the
artifact and a baseline are timed side by side in alternating rounds; with "mode": "outputs", the artifact runs on
every input row and its outputs are written to outputs.npy beside the request, for fidelity measured on the device)
Prints one JSON line; on failure, one line `deploykit-worker: <message>` on stderr and exit code 3.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import statistics
import sys
import time
from importlib import metadata
from typing import Callable, NamedTuple

# Per-op profiles time this many extra runs with the runtime's profiler on (after the timed runs, so the
# profiler's overhead never reaches the latency figures).
OP_PROFILE_RUNS = 10
TOP_OPS = 20
OUTPUTS_FILE = "outputs.npy"  # written beside the request in "outputs" mode


class WorkerError(Exception):
    """A problem the user can fix on the device (a missing runtime, an unreadable artifact)."""


class Loaded(NamedTuple):
    """An artifact loaded in its runtime: `run` takes {input name: array} and returns the runtime's own result,
    which `output_of` turns into the first output as float32 (kept apart so that timing pays for no conversion)."""

    run: Callable
    runtime: dict
    profile_ops: Callable | None
    output_of: Callable


def _package_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def missing_runtime(runtime: str, package: str) -> WorkerError:
    return WorkerError(f"the {runtime} runtime is not installed for {sys.executable}; "
                       f"install it on this device with `{sys.executable} -m pip install {package}`")


def _arrays(inputs: dict) -> dict:
    """Request inputs ({name: {dtype, shape, values}}) as NumPy arrays."""
    import numpy as np

    return {name: np.asarray(spec["values"], dtype=spec["dtype"]).reshape(spec["shape"]) for name, spec in inputs.items()}


def _op_profile(source: str, per_node: dict, runs: int) -> dict:
    """Average milliseconds per inference, by op type and for the slowest nodes ({(name, type): total ms})."""
    by_type: dict = {}
    for (name, kind), total in per_node.items():
        entry = by_type.setdefault(kind, {"type": kind, "count": 0, "ms": 0.0})
        entry["count"] += 1
        entry["ms"] += total / runs
    top = sorted(({"name": name, "type": kind, "ms": round(total / runs, 4)}
                  for (name, kind), total in per_node.items()), key=lambda row: -row["ms"])[:TOP_OPS]
    types = sorted(by_type.values(), key=lambda row: -row["ms"])
    return {"source": source, "runs": runs,
            "by_type": [{**row, "ms": round(row["ms"], 4)} for row in types], "top": top}


def load_litert(path: str, threads: int, runtime_config: dict, op_profile: bool):
    try:
        from ai_edge_litert.interpreter import Interpreter
        name, version = "ai-edge-litert", _package_version("ai-edge-litert")
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
            name, version = "tflite-runtime", _package_version("tflite-runtime")
        except ImportError:
            raise missing_runtime("LiteRT", "ai-edge-litert  (or tflite-runtime)") from None
    runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner()
    outputs = runner.get_output_details()
    facts = {"name": name, "version": version, "delegate": "XNNPACK (default CPU delegate)",
             "input_types": {key: value["dtype"].__name__ for key, value in runner.get_input_details().items()},
             "output_types": {key: value["dtype"].__name__ for key, value in outputs.items()}}
    first = next(iter(outputs))
    scale, zero_point = outputs[first]["quantization"]

    def output_of(result: dict):
        """The first output as float32, an integer output dequantized as deploykit's LiteRT backend does."""
        value = result[first]
        if value.dtype.kind != "f" and scale:
            return (value.astype("float32") - zero_point) * scale
        return value.astype("float32")

    # The Python interpreter exposes no op profiler; per-op times on LiteRT come from benchmark_model (adb runner).
    return Loaded(lambda inputs: runner(**inputs), facts, None, output_of)


def load_openvino(path: str, threads: int, runtime_config: dict, op_profile: bool):
    try:
        import openvino as ov
    except ImportError:
        raise missing_runtime("OpenVINO", "openvino") from None
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **runtime_config}
    compiled = core.compile_model(path, "CPU", config)
    request = compiled.create_infer_request()
    facts = {"name": "openvino", "version": ov.get_version(), "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
             "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string()}

    def profile_ops(inputs: dict, runs: int) -> dict:
        profiled = core.compile_model(path, "CPU", {**config, "PERF_COUNT": True}).create_infer_request()
        profiled.infer(inputs)
        per_node: dict = {}
        for _ in range(runs):
            profiled.infer(inputs)
            for info in profiled.get_profiling_info():
                if info.status.name == "EXECUTED":
                    key = (info.node_name, info.node_type)
                    per_node[key] = per_node.get(key, 0.0) + info.real_time.total_seconds() * 1000.0
        return _op_profile("OpenVINO performance counters (PERF_COUNT), real time per executed node", per_node, runs)

    output = compiled.outputs[0]
    return Loaded(lambda inputs: request.infer(inputs), facts, profile_ops if op_profile else None,
                  lambda result: result[output].astype("float32"))


def load_onnxruntime(path: str, threads: int, runtime_config: dict, op_profile: bool):
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_runtime("onnxruntime", "onnxruntime") from None

    def session(profiling: bool):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if profiling:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(os.getcwd(), "ort-profile")
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    timed = session(False)
    facts = {"name": "onnxruntime", "version": ort.__version__, "providers": timed.get_providers()}

    def profile_ops(inputs: dict, runs: int) -> dict:
        profiled = session(True)
        for _ in range(runs + 1):
            profiled.run(None, inputs)
        events = read_json(profiled.end_profiling())
        # The profile starts with the session: the first run (lazy allocation) is left out, as warm-up.
        first_run = next(e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        warm_from = first_run["ts"] + first_run["dur"]
        per_node: dict = {}
        for event in events:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and event["ts"] >= warm_from:
                key = (event["name"][: -len("_kernel_time")], event.get("args", {}).get("op_name", "?"))
                per_node[key] = per_node.get(key, 0.0) + event.get("dur", 0) / 1000.0
        return _op_profile("onnxruntime profiler (enable_profiling), kernel time per node", per_node, runs)

    return Loaded(lambda inputs: timed.run(None, inputs), facts, profile_ops if op_profile else None,
                  lambda result: result[0].astype("float32"))


def read_json(path: str):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


LOADERS = {"litert": load_litert, "openvino": load_openvino, "tensorrt": load_onnxruntime}


def _memory_mb(field: str) -> float | None:
    """A /proc/self/status memory field in MB (VmRSS: now, VmHWM: peak); None off Linux.

    VmHWM rather than getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so
    a worker started by a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _cpuinfo_field(text: str, *names: str) -> str | None:
    for name in names:
        match = re.search(rf"^{name}\s*:\s*(.+)$", text, re.MULTILINE | re.IGNORECASE)
        if match:
            return match.group(1).strip()
    return None


def _accelerators() -> list:
    """Accelerators the kernel shows: NVIDIA GPUs, Jetson, Edge TPU (PCIe/USB), NPUs under /dev/accel."""
    found = []
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        model = _cpuinfo_field(_read(info), "Model")
        found.append(f"NVIDIA {model}" if model and not model.startswith("NVIDIA") else model or "NVIDIA GPU")
    if os.path.exists("/etc/nv_tegra_release"):
        found.append("NVIDIA Jetson (" + _read("/etc/nv_tegra_release").split(",")[0].strip("# \n") + ")")
    if glob.glob("/dev/apex_*"):
        found.append("Coral Edge TPU (PCIe)")
    found += [f"NPU device {path}" for path in sorted(glob.glob("/dev/accel/accel*"))]
    return found


def device_facts() -> dict:
    """What this device is: CPU model, cores, ISA flags, memory, OS, accelerators."""
    cpuinfo = _read("/proc/cpuinfo")
    meminfo = _cpuinfo_field(_read("/proc/meminfo"), "MemTotal")
    os_release = re.search(r'^PRETTY_NAME="?([^"\n]*)"?$', _read("/etc/os-release"), re.MULTILINE)
    flags = _cpuinfo_field(cpuinfo, "flags", "Features") or ""
    model = (_cpuinfo_field(cpuinfo, "model name", "Model", "Hardware", "cpu model") or platform.processor()
             or platform.machine())
    return {
        "hostname": platform.node(),
        "arch": platform.machine(),
        "cpu": model,
        "cores": os.cpu_count(),
        "isa_flags": sorted(set(flags.split())),
        "memory_mb": round(int(meminfo.split()[0]) / 1024) if meminfo else None,
        "os": os_release.group(1) if os_release else platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "accelerators": _accelerators(),
    }


def _scheduler_ns() -> dict | None:
    """(ns on a core, ns runnable but waiting for one) of each of this process's threads (Linux schedstat), by
    thread; None where the kernel does not say. Wait that grows while an artifact is timed means another process
    held the cores: the measurement says so rather than passing the other job's share off as the artifact's."""
    counters = {}
    for path in glob.glob("/proc/self/task/*/schedstat"):
        try:
            with open(path, encoding="ascii") as handle:
                ran, waited = handle.read().split()[:2]
            counters[path] = (int(ran), int(waited))
        except (OSError, ValueError):
            continue  # a thread that ended between the listing and the read
    return counters or None


# A thread counts as doing the timed work when it was on a core for at least this share of the runs' wall time. A
# runtime's helper thread that wakes briefly while the compute threads hold every core waits for one too, but that
# wait is the artifact's own doing, not another process's; a compute thread starved by other processes still runs
# far more than 5%.
WORKING_SHARE = 0.05


def _timed_runs(run, inputs: dict, runs: int) -> tuple:
    """Milliseconds of each of `runs` inferences, and the largest share of their wall time any of the threads doing
    the work spent waiting for a core (None where unknown): at most 1, and a lower bound on how much of the time
    went to other processes. Read once around all runs: per run, reading every thread's counters would cost more
    than a small model's inference."""
    latencies = []
    before = _scheduler_ns()
    for _ in range(runs):
        start = time.perf_counter_ns()
        run(inputs)
        latencies.append((time.perf_counter_ns() - start) / 1e6)
    after = _scheduler_ns()
    if before is None or after is None:
        return latencies, None
    wall_ns = sum(latencies) * 1e6
    waits = [waited - before.get(thread, (0, 0))[1] for thread, (ran, waited) in after.items()
             if ran - before.get(thread, (0, 0))[0] >= WORKING_SHARE * wall_ns]
    return latencies, round(min(1.0, max(waits, default=0) / wall_ns), 4)


def _loader(request: dict, *artifacts: str):
    """The request's runtime loader, once its artifacts are known to be on this device."""
    for path in artifacts:
        if not os.path.isfile(path):
            raise WorkerError(f"the artifact {path} is not on this device")
    loader = LOADERS.get(request["backend"])
    if loader is None:
        raise WorkerError(f"this worker cannot run {request['backend']!r} artifacts (known: {', '.join(LOADERS)})")
    return loader


def measure(request: dict) -> dict:
    """Load, warm up, time `runs` batch-1 inferences; then, when asked, a per-op profile."""
    artifact = request["artifact"]
    loader = _loader(request, artifact)
    before_load_mb = _memory_mb("VmRSS")
    run, runtime, profile_ops, _ = loader(artifact, request["threads"], request["runtime_config"],
                                          request.get("op_profile", False))
    inputs = _arrays(request["inputs"])  # after the runtime: a missing runtime is named before its NumPy is
    for _ in range(request["warmup"]):
        run(inputs)
    latencies, wait_share = _timed_runs(run, inputs, request["runs"])
    peak_mb = _memory_mb("VmHWM")
    measured = {"latencies_ms": latencies, "run_queue_wait_share": wait_share, "peak_rss_mb": peak_mb,
                "rss_before_load_mb": before_load_mb,
                "runtime": runtime, "device": device_facts()}
    if profile_ops is not None:
        measured["op_profile"] = profile_ops(inputs, min(OP_PROFILE_RUNS, request["runs"]))
    return measured


def measure_pair(request: dict) -> dict:
    """The artifact and a baseline (`request["pair"]`) loaded side by side and timed in alternating rounds, in
    ABBA order, so that load on the device and drift hit both alike: per round, each one's median over `runs`
    inferences. Rounds go on past `min_rounds` while the per-round ratio's coefficient of variation is above
    `max_cv`, up to `max_rounds` or `budget_s` seconds; rounds disturbed by other processes do not count, and
    timing stops early when, at the rate clean rounds have come so far, `max_rounds` would not bring `min_rounds`."""
    pair = request["pair"]
    loader = _loader(request, request["artifact"], pair["artifact"])
    run, runtime = loader(request["artifact"], request["threads"], request["runtime_config"], False)[:2]
    run_baseline = loader(pair["artifact"], request["threads"], pair["runtime_config"], False).run
    inputs = _arrays(request["inputs"])
    baseline_inputs = _arrays(pair["inputs"]) if "inputs" in pair else inputs  # its own sequence length
    for _ in range(max(1, request["warmup"])):
        run(inputs)
        run_baseline(baseline_inputs)
    rounds, fastest, waits = [], [], []
    started = time.monotonic()
    while len(rounds) < pair["max_rounds"]:
        medians, minimums, waited = [0.0, 0.0], [0.0, 0.0], [None, None]
        sides = ((0, run, inputs), (1, run_baseline, baseline_inputs))
        for index, timed, given in sides if len(rounds) % 2 == 0 else sides[::-1]:
            latencies, waited[index] = _timed_runs(timed, given, pair["runs"])
            medians[index], minimums[index] = statistics.median(latencies), min(latencies)
        rounds.append(medians)
        fastest.append(minimums)
        waits.append(waited)
        # Rounds in which another process held the cores do not count towards the minimum: transient load is
        # waited out (within the budget); load that lasts leaves too few clean rounds, and the result says so.
        clean = [ratio for ratio, waited in zip(rounds, waits) if _clean(waited, pair["max_wait_share"])]
        if len(clean) >= pair["min_rounds"]:
            ratios = [baseline / artifact for artifact, baseline in clean]
            if statistics.pstdev(ratios) / statistics.fmean(ratios) <= pair["max_cv"]:
                break
        elif len(rounds) >= pair["min_rounds"] and len(clean) * pair["max_rounds"] < pair["min_rounds"] * len(rounds):
            break  # at the clean rounds' rate so far, max_rounds would not hold min_rounds of them: the machine is busy
        if len(rounds) >= pair["min_rounds"] and time.monotonic() - started > pair["budget_s"]:
            break
    return {"rounds_ms": rounds, "rounds_min_ms": fastest, "rounds_wait_share": waits, "runtime": runtime,
            "device": device_facts()}


def measure_outputs(request: dict) -> dict:
    """Run the artifact on each input row (batch 1, as it ships) and write the first output of every row, stacked,
    to outputs.npy in the working folder: what the host computes fidelity from, as the device's runtime computed
    it. NumPy's own format without pickles, so the host can read it back as plain numbers."""
    import numpy as np

    loaded = _loader(request, request["artifact"])(request["artifact"], request["threads"], request["runtime_config"],
                                                    False)
    inputs = _arrays(request["inputs"])
    count = len(next(iter(inputs.values())))
    rows = [loaded.output_of(loaded.run({name: values[i:i + 1] for name, values in inputs.items()}))[0]
            for i in range(count)]
    outputs = np.stack(rows).astype(np.float32)
    np.save(OUTPUTS_FILE, outputs, allow_pickle=False)
    return {"outputs": {"file": OUTPUTS_FILE, "shape": list(outputs.shape)}, "runtime": loaded.runtime,
            "device": device_facts()}


def _clean(waited: list, max_share: float) -> bool:
    """A round neither side of which waited for a core more than `max_share` of its time (unknown counts as clean:
    the drift check is then all that can tell)."""
    return all(share is None or share <= max_share for share in waited)


def main(arguments: list) -> int:
    if len(arguments) != 1:
        print("deploykit-worker: usage: device_worker.py request.json", file=sys.stderr)
        return 2
    try:
        request = read_json(arguments[0])
        mode = measure_pair if "pair" in request else measure_outputs if request.get("mode") == "outputs" else measure
        print(json.dumps(mode(request)))
    except WorkerError as error:
        print(f"deploykit-worker: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
