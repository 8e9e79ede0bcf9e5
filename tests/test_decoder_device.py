"""Decoders on a device over SSH (the loopback sshd of test_ssh_runner): timing and memory measured by the decoder
worker in the device's runtime, `deploykit generate --device`, and adb refused in one line."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.cli import main
from tests.test_generation import _causal_lm, _tokenizer_json
from tests.test_ssh_runner import _runner, sshd  # noqa: F401  (sshd: the module's own server)

PROMPT = "The markets opened"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer

    tokenizer = _tokenizer_json()
    folder = tmp_path_factory.mktemp("tiny-llama")
    _causal_lm("llama", Tokenizer.from_str(tokenizer).get_vocab_size()).save(folder / "model.keras")
    (folder / "tokenizer.json").write_text(tokenizer)
    return folder / "model.keras"


def _recording_python(folder: Path) -> tuple[str, Path]:
    """A 'device Python' that logs each command line it runs, then runs this Python: proof the worker ran there."""
    log, shim = folder / "device-python.log", folder / "device-python"
    shim.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    return str(shim), log


def test_a_decoder_build_times_on_the_device_and_generates_there(sshd, tiny_llama, tmp_path):  # noqa: F811
    from deploykit.generation.build import GenerationOptions, build_decoder
    from deploykit.generation.loaders import load_decoder
    from deploykit.generation.profile import TimingPlan
    from deploykit.target_loader import resolve_targets

    python, log = _recording_python(tmp_path)
    runner = _runner(sshd, tmp_path / "remote", python=python, threads=1)
    options = GenerationOptions(weights="int8", cache_length=128, prefill_length=16, timing=TimingPlan(rounds=3),
                                min_top1_agreement=0, devices={"arm-cpu": runner})
    out = tmp_path / "dist"
    [report] = build_decoder(load_decoder(tiny_llama), resolve_targets("arm-cpu"), out, options)
    assert report["passed"], report["candidates"]
    timing = report["timing"]
    where = timing["measured_on"]
    assert where["runner"] == "ssh" and where["device"] == "loopback" and where["threads"] == 1
    assert where["runtime"].startswith("LiteRT") and where["facts"]["cores"] > 0
    assert timing["artifacts"]["artifact"]["decode_tokens_per_s@64"]["speedup"]["median"] > 0
    for name in ("artifact", "fp32"):
        assert 0 < timing["memory"][name]["model_mb"] < timing["memory"][name]["peak_rss_mb"]
    ran = log.read_text().splitlines()
    assert len(ran) == 3 and all(line.endswith("-I decoder_worker.py request.json") for line in ran)  # 2 memory, 1 time
    assert "Timed on the device loopback over ssh" in (out / "arm-cpu" / "report.md").read_text()
    assert list((tmp_path / "remote").iterdir()) == []  # the session's temp folder is gone

    here = CliRunner().invoke(main, ["generate", str(out / "arm-cpu"), PROMPT, "-n", "12"])
    url = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}?python={python}&key={sshd['key']}" \
          f"&known_hosts={sshd['known_hosts']}"
    there = CliRunner().invoke(main, ["generate", str(out / "arm-cpu"), PROMPT, "-n", "12", "--device", url])
    assert here.exit_code == 0 and there.exit_code == 0, here.output + there.output
    assert there.output == here.output and there.output.strip()  # the same runtime gives the same tokens
    assert len(log.read_text().splitlines()) == 4

    too_long = CliRunner().invoke(main, ["generate", str(out / "arm-cpu"), PROMPT * 40, "--device", url])
    assert too_long.exit_code != 0 and "cache of 128" in too_long.output
    assert len(log.read_text().splitlines()) == 4  # refused before the device was asked

    adb = CliRunner().invoke(main, ["generate", str(out / "arm-cpu"), PROMPT, "--device", "adb://emulator-5554"])
    assert adb.exit_code != 0 and "decoders cannot run on adb devices" in adb.output
    assert "\n" not in adb.output.strip()


def test_the_decoder_worker_needs_only_the_standard_library_numpy_and_the_runtime():
    """What is copied to the device imports nothing else at module level (runtimes are imported lazily)."""
    from deploykit.generation.device import WORKER_FILES

    allowed = set(sys.stdlib_module_names) | {"__future__", "numpy"} | {Path(name).stem for name in WORKER_FILES}
    for name, path in WORKER_FILES.items():
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in tree.body
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert imported <= allowed, (name, imported - allowed)
