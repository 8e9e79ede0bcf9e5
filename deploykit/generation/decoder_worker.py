"""Device-side decoder worker: runs decoder artifacts with the device's own runtime, and prints what it measured.

Copied to the device (deploykit.generation.device) beside deploykit's device_worker.py (device facts, memory) and
deploykit.generation's runtime.py and profile.py, renamed decoder_runtime.py and decoder_timing.py: it needs the
standard library, NumPy and the runtime, not deploykit.

Usage: python -I decoder_worker.py request.json, where the request's "mode" is
- "time": the artifacts timed side by side in alternating rounds (profile.time_side_by_side); one JSON line;
- "memory": one artifact's peak memory in this fresh process; one JSON line;
- "generate": one artifact continuing the prompt's token ids; one JSON line per token as it comes, then a last one
  with the runtime's description.
On failure: one line `deploykit-worker: <message>` on stderr and exit code 3.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's folder out of sys.path

import decoder_runtime  # noqa: E402
import decoder_timing  # noqa: E402
import device_worker  # noqa: E402

PACKAGES = {"litert": "ai-edge-litert", "openvino": "openvino", "tensorrt": "onnxruntime"}


def _load(request: dict, name: str):
    runtime, entry = request["runtime"], request["artifacts"][name]
    if runtime not in decoder_runtime.LOADERS:
        raise device_worker.WorkerError(f"this worker cannot run {runtime!r} decoders (known: "
                                        f"{', '.join(decoder_runtime.LOADERS)})")
    if not os.path.isfile(entry["file"]):
        raise device_worker.WorkerError(f"the artifact {entry['file']} is not on this device")
    try:
        return decoder_runtime.load_artifact(runtime, entry["file"], request["threads"], entry["settings"])
    except ImportError:
        raise device_worker.missing_runtime(runtime, PACKAGES[runtime]) from None


def _time(request: dict) -> dict:
    decoders = {name: _load(request, name) for name in request["artifacts"]}
    plan = decoder_timing.TimingPlan(**{key: tuple(value) if isinstance(value, list) else value
                                        for key, value in request["plan"].items()})
    timing = decoder_timing.time_side_by_side(decoders, request["vocabulary"], plan, request.get("baseline"))
    return {**timing, "runtime": next(iter(decoders.values())).description, "device": device_worker.device_facts()}


def _memory(request: dict) -> dict:
    name = next(iter(request["artifacts"]))
    module = decoder_runtime.RUNTIME_MODULES[request["runtime"]]
    try:
        return decoder_timing.memory_of(module, lambda: _load(request, name), request["prompt_length"],
                                        request["decode_steps"])
    except ImportError:
        raise device_worker.missing_runtime(request["runtime"], PACKAGES[request["runtime"]]) from None


def _generate(request: dict) -> dict:
    decoder = _load(request, next(iter(request["artifacts"])))
    sampling = decoder_runtime.Sampling(**request["sampling"])
    for token in decoder_runtime.generate(decoder, request["prompt"], request["max_new_tokens"], sampling,
                                          frozenset(request["stop_ids"])):
        print(json.dumps({"token": token}), flush=True)
    return {"runtime": decoder.description, "device": device_worker.device_facts()}


MODES = {"time": _time, "memory": _memory, "generate": _generate}


def main(arguments: list) -> int:
    if len(arguments) != 1:
        print("deploykit-worker: usage: decoder_worker.py request.json", file=sys.stderr)
        return 2
    try:
        request = device_worker.read_json(arguments[0])
        mode = MODES.get(request.get("mode"))
        if mode is None:
            raise device_worker.WorkerError(f"unknown mode {request.get('mode')!r} (known: {', '.join(MODES)})")
        print(json.dumps(mode(request)), flush=True)
    except device_worker.WorkerError as error:
        print(f"deploykit-worker: {error}", file=sys.stderr)
        return 3
    except decoder_runtime.PromptTooLong as error:
        print(f"deploykit-worker: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
