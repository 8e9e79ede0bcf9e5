"""Running a decoder artifact: chunked prefill, then decode one token at a time over the fixed-size cache.

Imports nothing heavier than NumPy, so the profiling worker on a device can run it with only the runtime installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

Step = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class PromptTooLong(ValueError):
    """A prompt (plus the tokens asked for) that does not fit the artifact's cache."""


@dataclass
class LoadedDecoder:
    """A loaded decoder artifact: `step(tokens [1, T], cache, index) -> (logits [1, T, vocab], new_kv)`, where
    new_kv [1, layers, 2, T, kv heads, head dim] are the keys and values of the T tokens, written into the cache
    here (the cache stays in this process: the model reads it and returns only what is new)."""

    step: Step
    cache_shape: tuple[int, ...]
    prefill_length: int | None  # fixed chunk of static-shape runtimes; None: one call takes any length
    description: str = ""  # runtime, version and what it runs on, for the report

    @property
    def cache_length(self) -> int:
        return int(self.cache_shape[3])

    def empty_cache(self) -> np.ndarray:
        return np.zeros(self.cache_shape, dtype=np.float32)

    def check_fits(self, prompt_tokens: int, new_tokens: int = 0) -> None:
        if prompt_tokens + new_tokens > self.cache_length:
            raise PromptTooLong(
                f"the prompt has {prompt_tokens} tokens and {new_tokens} more were asked for, over the artifact's "
                f"cache of {self.cache_length}; shorten the prompt, ask for fewer tokens, or rebuild with a larger "
                "--cache-length."
            )

    def prefill(self, token_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Logits [T, vocab] at every prompt position, and the cache holding the prompt."""
        self.check_fits(len(token_ids))
        cache = self.empty_cache()
        chunk = self.prefill_length or len(token_ids)
        logits = []
        for start in range(0, len(token_ids), chunk):
            piece = token_ids[start:start + chunk]
            tokens = np.zeros((1, chunk), dtype=np.int32)
            tokens[0, :len(piece)] = piece  # a short last chunk is padded: those positions are overwritten later
            out, new_kv = self.step(tokens, cache, start)
            self._write(cache, new_kv, start)
            logits.append(np.asarray(out, dtype=np.float32)[0, :len(piece)])
        return np.concatenate(logits), cache

    def decode(self, token: int, cache: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Logits [vocab] after `token` at position `index`, and the cache holding it."""
        out, new_kv = self.step(np.asarray([[token]], dtype=np.int32), cache, index)
        self._write(cache, new_kv, index)
        return np.asarray(out, dtype=np.float32)[0, -1], cache

    def _write(self, cache: np.ndarray, new_kv: np.ndarray, index: int) -> None:
        count = min(new_kv.shape[3], self.cache_length - index)
        cache[:, :, :, index:index + count] = new_kv[:, :, :, :count]


@dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is 0, else sampling from the top_k most likely tokens with a seeded generator."""

    temperature: float = 0.0
    top_k: int = 40
    seed: int = 0

    def chooser(self) -> Callable[[np.ndarray], int]:
        if self.temperature <= 0:
            return lambda logits: int(np.argmax(logits))
        rng = np.random.default_rng(self.seed)

        def choose(logits: np.ndarray) -> int:
            top = np.argsort(logits)[::-1][:max(1, self.top_k)]
            scaled = logits[top] / self.temperature
            weights = np.exp(scaled - scaled.max())
            return int(top[rng.choice(len(top), p=weights / weights.sum())])

        return choose


def generate(decoder: LoadedDecoder, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling = Sampling(),
             stop_ids: frozenset[int] = frozenset()) -> Iterator[int]:
    """Yield new token ids one by one (stream them), stopping at a stop token or after `max_new_tokens`."""
    decoder.check_fits(len(prompt_ids), max_new_tokens)
    choose = sampling.chooser()
    logits, cache = decoder.prefill(prompt_ids)
    token = choose(logits[-1])
    index = len(prompt_ids)
    for produced in range(max_new_tokens):
        yield token
        if token in stop_ids or produced + 1 == max_new_tokens:
            return
        last, cache = decoder.decode(token, cache, index)
        index += 1
        token = choose(last)
