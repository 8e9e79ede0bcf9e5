"""Timing decoders: time to first token at given prompt lengths, decode tokens per second at given cache fills.

Artifacts are timed side by side in alternating rounds (each round times every artifact once, in turn), so load on
the host hits all of them alike; ratios to the baseline are taken per round and reported as median and range.

Like runtime.py, this imports nothing of deploykit at module level: the decoder worker runs it on a device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from deploykit.generation.runtime import LoadedDecoder

DEFAULT_PROMPT_LENGTHS = (32, 128)  # a short chat turn and a paragraph of context
DEFAULT_CACHE_FILLS = (128,)
DEFAULT_DECODE_STEPS = 16  # decode steps timed per round and fill
DEFAULT_ROUNDS = 5


@dataclass(frozen=True)
class TimingPlan:
    prompt_lengths: tuple[int, ...] = DEFAULT_PROMPT_LENGTHS
    cache_fills: tuple[int, ...] = DEFAULT_CACHE_FILLS
    decode_steps: int = DEFAULT_DECODE_STEPS
    rounds: int = DEFAULT_ROUNDS
    seed: int = 0

    def fitting(self, cache_length: int) -> "TimingPlan":
        """The lengths that fit a cache of `cache_length` (a fill leaves room for the decode steps); half the
        cache where none of the asked-for ones fits, so a small cache is still timed."""
        steps = min(self.decode_steps, cache_length // 2)
        prompts = tuple(n for n in self.prompt_lengths if n <= cache_length) or (cache_length // 2,)
        fills = tuple(f for f in self.cache_fills if f + steps <= cache_length) or (cache_length // 2,)
        return TimingPlan(prompts, fills, steps, self.rounds, self.seed)


def _one_round(decoder: LoadedDecoder, plan: TimingPlan, tokens: np.ndarray) -> dict[str, float]:
    measured = {}
    for length in plan.prompt_lengths:
        start = time.perf_counter()
        decoder.prefill(list(tokens[:length]))
        measured[f"ttft_ms@{length}"] = (time.perf_counter() - start) * 1000
    for fill in plan.cache_fills:
        _, cache = decoder.prefill(list(tokens[:fill]))
        start = time.perf_counter()
        for offset in range(plan.decode_steps):
            _, cache = decoder.decode(int(tokens[fill + offset]), cache, fill + offset)
        measured[f"decode_tokens_per_s@{fill}"] = plan.decode_steps / (time.perf_counter() - start)
    return measured


def time_side_by_side(decoders: dict[str, LoadedDecoder], vocabulary_size: int, plan: TimingPlan = TimingPlan(),
                      baseline: str | None = None) -> dict[str, dict]:
    """Per decoder: each metric's median and [min, max] over the rounds, and its ratio to `baseline` per round
    (faster is above 1: the baseline's TTFT over this one's, this one's tokens/s over the baseline's)."""
    cache_length = min(d.cache_length for d in decoders.values())
    plan = plan.fitting(cache_length)
    tokens = np.random.default_rng(plan.seed).integers(0, vocabulary_size, cache_length)
    for decoder in decoders.values():  # warm-up: first calls allocate and pick kernels
        _one_round(decoder, TimingPlan(plan.prompt_lengths[:1], (), 1, 1), tokens)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in decoders}
    for _ in range(plan.rounds):
        for name, decoder in decoders.items():
            rounds[name].append(_one_round(decoder, plan, tokens))
    summary = {}
    for name, measured in rounds.items():
        metrics = {}
        for key in measured[0]:
            values = np.asarray([m[key] for m in measured])
            entry = {"median": float(np.median(values)), "range": [float(values.min()), float(values.max())]}
            if baseline and name != baseline:
                base = np.asarray([m[key] for m in rounds[baseline]])
                ratios = base / values if key.startswith("ttft") else values / base
                entry["speedup"] = {"median": float(np.median(ratios)),
                                    "range": [float(ratios.min()), float(ratios.max())]}
            metrics[key] = entry
        summary[name] = metrics
    return {"rounds": plan.rounds, "decode_steps": plan.decode_steps, "artifacts": summary}


def peak_memory(runtime: str, path: Path, runtime_config: dict, threads: int | None, prompt_length: int,
                decode_steps: int = DEFAULT_DECODE_STEPS) -> dict[str, float]:
    """Resident memory of a fresh process that loads the artifact, prefills `prompt_length` tokens and decodes
    `decode_steps` more: its peak (VmHWM, what the app's process needs, runtime included) and how much of it came
    after the runtime was imported (the model's weights, caches and scratch). A process of its own, because the
    build's process holds the original model and every other artifact."""
    from deploykit.subprocesses import in_fresh_process

    return in_fresh_process(f"measuring the memory of {path.name}", _peak_memory_here, runtime, path, runtime_config,
                            threads, prompt_length, decode_steps)


def _peak_memory_here(runtime: str, path: Path, runtime_config: dict, threads: int | None, prompt_length: int,
                      decode_steps: int) -> dict[str, float]:
    from deploykit.generation.backends.base import get_decoder_backend
    from deploykit.generation.runtime import RUNTIME_MODULES

    backend = get_decoder_backend(runtime)
    return memory_of(RUNTIME_MODULES[runtime], lambda: backend.load(path, threads, runtime_config), prompt_length,
                     decode_steps)


def memory_of(runtime_module: str, load: Callable[[], "LoadedDecoder"], prompt_length: int,
              decode_steps: int) -> dict[str, float]:
    """Peak memory of this process (a fresh one) importing `runtime_module`, then running `load()`'s decoder over a
    prompt and `decode_steps` tokens."""
    import importlib

    importlib.import_module(runtime_module)
    before = _status_mb("VmRSS")
    decoder = load()
    length = min(prompt_length, decoder.cache_length - decode_steps)
    _, cache = decoder.prefill([1] * length)
    for offset in range(decode_steps):
        _, cache = decoder.decode(1, cache, length + offset)
    peak = _status_mb("VmHWM")
    return {"peak_rss_mb": round(peak, 1), "model_mb": round(peak - before, 1), "before_load_mb": round(before, 1),
            "prompt_tokens": length, "decode_steps": decode_steps}


def _status_mb(field: str) -> float:
    """A /proc/self/status memory field in MB (Linux; the fields are in kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1000
    raise OSError(f"/proc/self/status has no {field}")
