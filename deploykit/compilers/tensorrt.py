"""TensorRT engine build from the exported ONNX: run here when TensorRT and a GPU are present.

An engine is tuned for the GPU it is built on, so CI machines without one ship the
ONNX plus `build_engine.py` (TensorRT's Python API, the target's settings baked in)
and `build_engine.sh` (the equivalent `trtexec` line). With TensorRT and a GPU here,
the same script builds `model.engine`, and `trtexec`, when on PATH, times it.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from pydantic import Field

from deploykit.compilers.base import CompileRequest, CompileResult, CompilerSettings, DeviceCompiler
from deploykit.subprocesses import last_line

SCRIPT = "build_engine.py"
ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"


class TensorRTSettings(CompilerSettings):
    workspace_mb: int = Field(4096, gt=0, description="Builder workspace memory pool limit.")
    optimization_level: int = Field(3, ge=0, le=5, description="TensorRT's builder level (3 is its default).")
    timing_cache: bool = Field(True, description="Keep kernel timings beside the engine for faster rebuilds.")
    sparsity: bool = Field(True, description="Mark 2:4-sparse weights when a pass produced them.")
    timeout_s: int = Field(3600, gt=0, description="Limit for building the engine here.")
    profile_iterations: int = Field(200, gt=0, description="trtexec timing iterations, when trtexec is on PATH.")


class TensorRTCompiler(DeviceCompiler):
    name = "tensorrt"
    settings_class = TensorRTSettings

    def missing(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (pip install 'deploykit[tensorrt]' on a machine with an NVIDIA GPU)"
        if shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists():
            return "no NVIDIA GPU on this machine (TensorRT tunes an engine for the GPU it is built on)"
        return None

    def compile(self, request: CompileRequest) -> CompileResult:
        settings: TensorRTSettings = self.settings
        sparse = settings.sparsity and request.sparse_weights
        shapes = _profile_shapes(request)
        script = request.folder / SCRIPT
        script.write_text(_script_text(settings, sparse, shapes))
        shell = request.folder / "build_engine.sh"
        command = self.trtexec_command(request.artifact.path.name, settings, sparse, shapes)
        shell.write_text(f'#!/bin/sh\n# The trtexec equivalent of {SCRIPT}.\ncd "$(dirname "$0")" && {command}\n')
        shell.chmod(0o755)
        details = {"command": command, "sparse_weights": sparse, "workspace_mb": settings.workspace_mb,
                   "shapes": shapes or "static"}
        files = [script, shell]
        if (reason := self.missing()) is not None:
            return CompileResult(self.name, "not run", f"engine: not built ({reason})", files, details)
        done = _run([sys.executable, SCRIPT], request.folder, settings.timeout_s)
        engine = request.folder / ENGINE
        if done.returncode != 0 or not engine.exists():
            return CompileResult(self.name, "failed", f"engine: build failed ({last_line(done)})", files, details)
        files += [engine] + ([request.folder / TIMING_CACHE] if settings.timing_cache else [])
        reason = f"engine: built on this machine's GPU ({engine.stat().st_size / 1e6:.1f} MB)"
        if shutil.which("trtexec") is not None:
            timed = _run(["trtexec", f"--loadEngine={ENGINE}", f"--iterations={settings.profile_iterations}"],
                         request.folder, settings.timeout_s)
            details["engine_latency_ms"] = parse_trtexec_latency(timed.stdout)
        else:
            reason += "; not timed (trtexec is not on PATH)"
        return CompileResult(self.name, "compiled", reason, files, details)

    @staticmethod
    def trtexec_command(onnx_name: str, settings: TensorRTSettings, sparse: bool, shapes: dict | None = None) -> str:
        parts = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={ENGINE}", "--stronglyTyped",
                 f"--memPoolSize=workspace:{settings.workspace_mb}M",
                 f"--builderOptimizationLevel={settings.optimization_level}"]
        if shapes:  # one optimisation profile: shortest, build length, longest
            for position, flag in enumerate(("min", "opt", "max")):
                parts.append(f"--{flag}Shapes=" + ",".join(f"{name}:1x{lengths[position]}"
                                                           for name, lengths in shapes.items()))
        if settings.timing_cache:
            parts.append(f"--timingCacheFile={TIMING_CACHE}")
        if sparse:
            parts.append("--sparsity=enable")
        return shlex.join(parts)


def _profile_shapes(request: CompileRequest) -> dict[str, list[int]] | None:
    """input -> [shortest, build length, longest] sequence for a dynamic ONNX; None for static shapes."""
    if request.sequence_range is None:
        return None
    low, high = request.sequence_range
    return {name: [low, request.sequence_length, high] for name in request.input_names}


def _script_text(settings: TensorRTSettings, sparse: bool, shapes: dict | None) -> str:
    """The packaged build script with this target's defaults written in."""
    text = resources.files("deploykit.resources").joinpath(SCRIPT).read_text()
    for name, value in (("WORKSPACE_MB", settings.workspace_mb), ("SPARSE", sparse),
                        ("OPTIMIZATION_LEVEL", settings.optimization_level), ("SHAPES", shapes or {})):
        text = re.sub(rf"^{name} = .*$", f"{name} = {value!r}", text, count=1, flags=re.MULTILINE)
    if not settings.timing_cache:
        text = text.replace('default=here / "timing.cache"', "default=None")
    return text


def _run(command: list[str], folder: Path, timeout_s: int) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"timed out after {timeout_s} s")


def parse_trtexec_latency(output: str) -> dict | None:
    """trtexec's 'GPU Compute Time: min = .., max = .., mean = .., median = .., percentile(90%) = ..' in ms."""
    match = re.search(r"GPU Compute Time: (.*)", output)
    if match is None:
        return None
    values = dict(re.findall(r"([\w()%.]+) = ([\d.]+) ms", match.group(1)))
    return {key.replace("percentile(", "p").replace("%)", ""): float(value) for key, value in values.items()}
