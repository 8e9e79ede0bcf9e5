"""The edgetpu device compiler against fake edgetpu_compiler executables printing the real output format.

Formats follow real edgetpu_compiler 16.0 runs (console summary; `<model>_edgetpu.log` with
`Operator / Count / Status` rows in 31- and 11-character columns).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deploykit.backends.base import ExportedArtifact
from deploykit.compilers.base import CompileRequest, get_compiler
from deploykit.compilers.edgetpu import failure_line, parse_report
from deploykit.errors import DeployKitError


def _table(rows: list[tuple[str, int, str]]) -> str:
    return "".join(f"{op:<31}{count:<11}{status}\n" for op, count, status in rows)


UNSPECIFIED = "Operation is otherwise supported, but not mapped due to some unspecified limitation"
ROWS = [
    ("FULLY_CONNECTED", 24, "Mapped to Edge TPU"),
    ("ADD", 13, "Mapped to Edge TPU"),
    ("BATCH_MATMUL", 8, "Operation not supported"),
    ("SOFTMAX", 4, UNSPECIFIED),
    ("RESHAPE", 16, "Mapped to Edge TPU"),
    ("QUANTIZE", 1, "Operation is working on an unsupported data type"),
]
LOG = ("Edge TPU Compiler version 16.0.384591198\nInput: model.tflite\nOutput: model_edgetpu.tflite\n\n"
       f"{'Operator':<31}{'Count':<11}Status\n\n" + _table(ROWS))
STDOUT = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 2210 ms.

Input model: /tmp/model.tflite
Input size: 10.21MiB
Output model: ./model_edgetpu.tflite
Output size: 11.02MiB
On-chip memory used for caching model parameters: 6.91MiB
On-chip memory remaining for caching model parameters: 512.00KiB
Off-chip memory used for streaming uncached model parameters: 2.75MiB
Number of Edge TPU subgraphs: 1
Total number of operations: 66
Operation log: ./model_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model \
will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations \
supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 53
Number of operations that will run on CPU: 13
See the operation log file for individual operation details.
Compilation child process completed within timeout period.
Compilation succeeded!
"""
FAILED = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.
ERROR: Didn't find op for builtin opcode 'FULLY_CONNECTED' version '9'

Compilation failed: Model failed in Tflite interpreter. Please ensure model can be loaded/run in Tflite interpreter.
Compilation child process completed within timeout period.
Compilation failed!
"""


def _fake_compiler(folder: Path, body: str) -> None:
    """Put an `edgetpu_compiler` on PATH (only it) that records its arguments and then runs `body`."""
    folder.mkdir()
    path = folder / "edgetpu_compiler"
    path.write_text(f'#!/bin/sh\necho "$@" > "{folder}/args"\n{body}')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


SUCCEEDS = f"""out=.
for arg; do model="$arg"; done
while [ $# -gt 0 ]; do [ "$1" = "--out_dir" ] && out="$2"; shift; done
stem=$(basename "$model" .tflite)
printf 'edgetpu model' > "$out/${{stem}}_edgetpu.tflite"
cat > "$out/${{stem}}_edgetpu.log" <<'EOF'
{LOG}EOF
cat <<'EOF'
{STDOUT}EOF
"""


@pytest.fixture
def request_(tmp_path: Path) -> CompileRequest:
    folder = tmp_path / "target"
    folder.mkdir()
    model = folder / "model.tflite"
    model.write_bytes(b"TFL3 not a real model")
    artifact = ExportedArtifact(path=model, files=[model], format="tflite", precision="int8", method="test")
    return CompileRequest(artifact=artifact, folder=folder, sequence_length=16, input_names=("input_ids",))


def test_missing_compiler_writes_the_script_and_says_why(request_, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    compiler = get_compiler({"name": "edgetpu", "min_runtime_version": 13})
    assert "edgetpu_compiler is not on PATH" in compiler.missing()

    result = compiler.compile(request_)

    script = request_.folder / "compile_edgetpu.sh"
    assert (result.status, result.files) == ("not run", [script])
    assert "edgetpu-compiler" in result.reason
    assert result.details["command"] == ("edgetpu_compiler --show_operations --out_dir . --timeout_sec 180 "
                                         "--min_runtime_version 13 model.tflite")
    assert result.details["command"] in script.read_text()
    assert os.access(script, os.X_OK)
    assert result.as_dict(request_.folder)["files"] == ["compile_edgetpu.sh"]


def test_present_compiler_compiles_and_reports_the_mapping(request_, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    _fake_compiler(bin_dir, SUCCEEDS)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    compiler = get_compiler({"name": "edgetpu", "search_delegate": True, "delegate_search_step": 4})
    assert compiler.missing() is None

    result = compiler.compile(request_)

    assert result.status == "compiled", result.reason
    folder = request_.folder
    assert result.files == [folder / "model_edgetpu.tflite", folder / "model_edgetpu.log"]
    assert (folder / "model_edgetpu.tflite").read_text() == "edgetpu model"
    assert not (folder / "compile_edgetpu.sh").exists()
    assert result.reason == "53 of 66 ops mapped to the Edge TPU; off-chip parameter streaming 2.75MiB"
    details = result.details
    assert (details["ops_on_edgetpu"], details["ops_on_cpu"], details["edgetpu_subgraphs"]) == (53, 13, 1)
    assert (details["on_chip_memory"], details["off_chip_memory"]) == ("6.91MiB", "2.75MiB")
    assert details["operators"][2] == {"op": "BATCH_MATMUL", "count": 8, "status": "Operation not supported"}
    assert len(details["operators"]) == len(ROWS)
    args = (bin_dir / "args").read_text().split()
    assert args[:5] == ["--show_operations", "--out_dir", ".", "--timeout_sec", "180"]
    assert args[5:8] == ["--search_delegate", "--delegate_search_step", "4"]
    assert args[-1] == str(request_.artifact.path.absolute())
    assert details["command"].endswith("--delegate_search_step 4 model.tflite")


def test_compiler_refusal_is_a_failed_result_with_its_reason(request_, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    # It can leave a stub *_edgetpu.tflite behind; the exit code decides.
    stub = 'for arg; do model="$arg"; done\nprintf stub > "$(basename "$model" .tflite)_edgetpu.tflite"\n'
    _fake_compiler(bin_dir, f"{stub}cat <<'EOF'\n{FAILED}EOF\nexit 1\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    result = get_compiler({"name": "edgetpu"}).compile(request_)

    assert result.status == "failed"
    assert result.reason.startswith("edgetpu_compiler failed (exit 1): Compilation failed: Model failed in Tflite")
    assert result.files == []
    assert sorted(path.name for path in request_.folder.iterdir()) == ["model.tflite"]


def test_compiler_exiting_zero_without_output_is_failed(request_, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    _fake_compiler(bin_dir, "echo 'Edge TPU Compiler version 15.0.340273435'\n"
                            "echo 'Internal compiler error. Aborting!'\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    result = get_compiler({"name": "edgetpu"}).compile(request_)

    assert result.status == "failed"
    assert result.reason == "edgetpu_compiler failed (exit 0): Internal compiler error. Aborting!"


def test_compiler_that_cannot_start_is_failed(request_, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    binary = bin_dir / "edgetpu_compiler"
    binary.write_bytes(b"\x7fELF\x02 built for another machine")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))

    result = get_compiler({"name": "edgetpu"}).compile(request_)

    assert result.status == "failed"
    assert result.reason.startswith("edgetpu_compiler could not start: [Errno 8] Exec format error")


def test_parser_reads_a_partly_mapped_report():
    facts = parse_report(STDOUT, LOG)
    assert facts["compiler_version"] == "16.0.384591198"
    assert (facts["ops_on_edgetpu"], facts["ops_on_cpu"]) == (53, 13)
    assert facts["operators"][3] == {"op": "SOFTMAX", "count": 4, "status": UNSPECIFIED}
    assert sum(row["count"] for row in facts["operators"]) == 66


def test_parser_counts_from_the_table_when_everything_maps():
    # Without fallbacks the console prints no "Number of operations that will run on ..." lines.
    skipped = ("Number of operations", "Model successfully")
    stdout = "\n".join(line for line in STDOUT.splitlines() if not line.startswith(skipped))
    log = LOG.split("FULLY_CONNECTED")[0] + _table([("FULLY_CONNECTED", 24, "Mapped to Edge TPU"),
                                                    ("MEAN", 26, "Mapped to Edge TPU")])
    facts = parse_report(stdout, log)
    assert (facts["ops_on_edgetpu"], facts["ops_on_cpu"]) == (50, 0)
    assert facts["off_chip_memory"] == "2.75MiB"
    assert parse_report("", "")["operators"] == []


def test_parser_takes_the_console_counts_without_a_log():
    facts = parse_report(STDOUT, "")
    assert (facts["ops_on_edgetpu"], facts["ops_on_cpu"], facts["operators"]) == (53, 13, [])


def test_failure_line_skips_the_closing_boilerplate():
    assert failure_line(FAILED).startswith("Compilation failed: Model failed in Tflite interpreter.")
    assert failure_line("Invalid model: model.tflite\nModel not quantized\n") == "Model not quantized"
    assert failure_line("") == "no output"


def test_unknown_settings_are_refused():
    with pytest.raises(DeployKitError, match="bogus"):
        get_compiler({"name": "edgetpu", "bogus": 1})
    with pytest.raises(DeployKitError, match="timeout_s"):
        get_compiler({"name": "edgetpu", "timeout_s": 0})


def test_generated_shell_script_quotes_a_hostile_path(tmp_path):
    import shlex

    from deploykit.backends.base import ExportedArtifact
    from deploykit.compilers.base import CompileRequest, get_compiler

    hostile = tmp_path / "$(touch pwned); `id` 'x'"
    hostile.mkdir()
    model = hostile / "model.tflite"  # outside the target folder: named by its absolute path
    model.write_bytes(b"x")
    folder = tmp_path / "target"
    folder.mkdir()
    request = CompileRequest(artifact=ExportedArtifact(model, [model], "tflite", "int8", "test"), folder=folder,
                             sequence_length=16, input_names=("token_ids",))
    get_compiler({"name": "edgetpu"}).compile(request)
    script = (folder / "compile_edgetpu.sh").read_text()
    command = next(line for line in script.splitlines() if line.startswith("edgetpu_compiler"))
    assert shlex.split(command)[-1] == str(model.absolute())
