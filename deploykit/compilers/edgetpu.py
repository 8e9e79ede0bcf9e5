"""Coral's edgetpu_compiler: maps a full-integer int8 .tflite onto the Edge TPU.

The compiler exists only as an x86-64 Debian package, so most build machines
lack it; then the target folder gets `compile_edgetpu.sh` with the exact command.
When it runs, its operation log says which ops the Edge TPU takes and which fall
back to the host CPU (Coral docs, "Edge TPU Compiler": coral.ai/docs/edgetpu/compiler).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydantic import Field

from deploykit.compilers.base import CompileRequest, CompileResult, CompilerSettings, DeviceCompiler

MAPPED = "Mapped to Edge TPU"
_SCRIPT = """#!/bin/sh
# Compiles the model for the Coral Edge TPU; run it where edgetpu_compiler is installed
# (Coral's Debian package `edgetpu-compiler`, x86-64 Linux). Writes *_edgetpu.tflite and its .log here.
set -e
cd "$(dirname "$0")"
{command}
"""
_ROW = re.compile(r"^(\S+)\s+(\d+)\s+(\S.*?)\s*$")


class EdgeTPUSettings(CompilerSettings):
    """edgetpu_compiler flags a target may set; each default is the compiler's own."""

    timeout_s: int = Field(180, gt=0, description="--timeout_sec: the compiler gives up after this many seconds.")
    min_runtime_version: int | None = Field(
        None, gt=0, description="--min_runtime_version: the oldest Edge TPU runtime the devices run; "
        "None keeps the compiler's default (its own runtime version).")
    search_delegate: bool = Field(
        False, description="--search_delegate: when the compiler fails to create the Edge TPU delegate, retry "
        "with the Edge TPU part ending earlier in the graph.")
    delegate_search_step: int = Field(1, gt=0, description="--delegate_search_step: ops to step back per retry.")


class EdgeTPUCompiler(DeviceCompiler):
    name = "edgetpu"
    settings_class = EdgeTPUSettings
    settings: EdgeTPUSettings

    def missing(self) -> str | None:
        if shutil.which("edgetpu_compiler") is None:
            return ("edgetpu_compiler is not on PATH (Coral's Debian package `edgetpu-compiler`, x86-64 Linux only; "
                    "install it and rebuild, or run compile_edgetpu.sh from the target folder on such a machine)")
        return None

    def argv(self, model: str) -> list[str]:
        """The compiler call, writing into the current directory (the target folder, or a scratch one)."""
        s = self.settings
        argv = ["edgetpu_compiler", "--show_operations", "--out_dir", ".", "--timeout_sec", str(s.timeout_s)]
        if s.min_runtime_version is not None:
            argv += ["--min_runtime_version", str(s.min_runtime_version)]
        if s.search_delegate:
            argv += ["--search_delegate", "--delegate_search_step", str(s.delegate_search_step)]
        return argv + [model]

    def compile(self, request: CompileRequest) -> CompileResult:
        model, folder = request.artifact.path, request.folder
        shown = request.model_in_folder
        command = shlex.join(self.argv(shown))
        reason = self.missing()
        if reason is not None:
            script = folder / "compile_edgetpu.sh"
            script.write_text(_SCRIPT.format(command=command))
            script.chmod(0o755)
            return CompileResult(self.name, "not run", reason, [script], {"command": command})
        with tempfile.TemporaryDirectory(prefix="edgetpu-") as scratch:
            try:  # the compiler enforces --timeout_sec itself; the extra minute lets it report before we stop it
                run = subprocess.run(self.argv(str(model.absolute())), cwd=scratch, capture_output=True, text=True,
                                     check=False, timeout=self.settings.timeout_s + 60)  # its exit code is read below
            except subprocess.TimeoutExpired:
                return CompileResult(self.name, "failed", f"edgetpu_compiler ran past {self.settings.timeout_s} s; "
                                     "raise timeout_s in the target's compiler block", details={"command": command})
            except OSError as error:  # e.g. the x86-64 binary on another architecture
                return CompileResult(self.name, "failed", f"edgetpu_compiler could not start: {error}",
                                     details={"command": command})
            compiled = Path(scratch) / f"{model.stem}_edgetpu.tflite"
            log = compiled.with_suffix(".log")
            if run.returncode != 0 or not compiled.exists():
                line = failure_line(run.stdout + "\n" + run.stderr)
                return CompileResult(self.name, "failed", f"edgetpu_compiler failed (exit {run.returncode}): {line}",
                                     details={"command": command})
            details = parse_report(run.stdout, log.read_text() if log.exists() else "")
            files = [Path(shutil.move(str(path), str(folder / path.name))) for path in (compiled, log) if path.exists()]
        total = details["ops_on_edgetpu"] + details["ops_on_cpu"]
        reason = (f"{details['ops_on_edgetpu']} of {total} ops mapped to the Edge TPU; "
                  f"off-chip parameter streaming {details['off_chip_memory']}")
        return CompileResult(self.name, "compiled", reason, files, {**details, "command": command})


def parse_report(stdout: str, log: str) -> dict:
    """Facts from the compiler's console summary and its `<model>_edgetpu.log` operator table.

    The log lists every op as `Operator  Count  Status` rows; the console prints the memory
    figures, and "Number of operations that will run on Edge TPU/CPU" only when some op falls back.
    """
    header = re.search(r"^Operator\s+Count\s+Status\s*$", log, re.MULTILINE)
    rows = (_ROW.match(line) for line in log[header.end():].splitlines()) if header else ()
    operators = [{"op": m[1], "count": int(m[2]), "status": m[3]} for m in rows if m]
    mapped = sum(row["count"] for row in operators if row["status"] == MAPPED)
    on_tpu = _field(stdout, "Number of operations that will run on Edge TPU")
    on_cpu = _field(stdout, "Number of operations that will run on CPU")
    version = re.search(r"Edge TPU Compiler version (\S+)", stdout + "\n" + log)
    return {
        "compiler_version": version[1] if version else None,
        "ops_on_edgetpu": int(on_tpu) if on_tpu else mapped,
        "ops_on_cpu": int(on_cpu) if on_cpu else sum(row["count"] for row in operators) - mapped,
        "edgetpu_subgraphs": int(n) if (n := _field(stdout, "Number of Edge TPU subgraphs")) else None,
        "on_chip_memory": _field(stdout, "On-chip memory used for caching model parameters"),
        "off_chip_memory": _field(stdout, "Off-chip memory used for streaming uncached model parameters"),
        "operators": operators,
    }


def failure_line(output: str) -> str:
    """The compiler's most telling line: its last one minus the closing boilerplate ("Compilation failed!")."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(("Compilation failed!", "Compilation child process"))]
    return (telling or lines or ["no output"])[-1]


def _field(text: str, label: str) -> str | None:
    found = re.search(rf"^{re.escape(label)}:\s*(\S.*?)\s*$", text, re.MULTILINE)
    return found[1] if found else None
