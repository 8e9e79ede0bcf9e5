"""Generation gates, computed by running the artifact on held-out text against the original's outputs.

- perplexity ratio: the artifact's perplexity on the texts over the original's;
- top-1 agreement: share of positions where the most likely next token is the original's;
- mean KL divergence of the next-token distributions, KL(original || artifact), in nats;
- greedy match: share of the original's first N greedy tokens the artifact repeats before it first differs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from deploykit.generation.runtime import LoadedDecoder, Sampling, generate


@dataclass(frozen=True)
class GenerationFidelity:
    perplexity: float  # the artifact's, over every predicted position of the texts
    original_perplexity: float
    top1_agreement: float
    mean_kl: float
    greedy_match: float | None  # mean share of the first `greedy_tokens` repeated; None when not measured
    first_divergence: list[int | None]  # per prompt: the first greedy position that differs (None: none did)
    # per prompt that diverged: the original's logit margin there between its own choice and the artifact's (a
    # near tie, well under 1, is a rounding flip; a large one is a real error)
    divergence_margins: list[float]
    positions: int  # predicted positions the figures are over
    texts: int
    greedy_tokens: int

    @property
    def perplexity_ratio(self) -> float:
        return self.perplexity / self.original_perplexity

    def as_dict(self) -> dict:
        return {**asdict(self), "perplexity_ratio": self.perplexity_ratio}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def next_token_scores(reference: np.ndarray, candidate: np.ndarray, token_ids: list[int]) -> dict[str, np.ndarray]:
    """Per predicted position (all but the last token): both models' negative log-likelihood of the actual next
    token, whether their top-1 choices agree, and KL(reference || candidate)."""
    targets = np.asarray(token_ids[1:])
    ref = _log_softmax(reference[:-1].astype(np.float64))
    cand = _log_softmax(candidate[:-1].astype(np.float64))
    rows = np.arange(len(targets))
    return {
        "reference_nll": -ref[rows, targets],
        "candidate_nll": -cand[rows, targets],
        "agree": ref.argmax(-1) == cand.argmax(-1),
        "kl": (np.exp(ref) * (ref - cand)).sum(-1),
    }


def greedy_match(original: LoadedDecoder, artifact: LoadedDecoder, prompt_ids: list[int], tokens: int,
                 continuations: dict | None = None) -> tuple[float, int | None, float | None]:
    """(share of the original's first `tokens` greedy tokens the artifact repeats before differing, where it
    first differs, the original's logit margin there between its token and the artifact's). `continuations`
    keeps the original's continuations between calls: every candidate of a build is compared with the same ones."""
    key = (tuple(prompt_ids), tokens)
    memo = continuations if continuations is not None else {}
    if key not in memo:
        memo[key] = list(generate(original, prompt_ids, tokens, Sampling()))
    expected = memo[key]
    produced = list(generate(artifact, prompt_ids, tokens, Sampling()))
    for position, (a, b) in enumerate(zip(expected, produced)):
        if a != b:
            logits = original.prefill(prompt_ids + expected[:position])[0][-1]
            return position / len(expected), position, float(logits[a] - logits[b])
    return 1.0, None, None


def measure_fidelity(reference_logits: list[np.ndarray], texts: list[list[int]], artifact: LoadedDecoder,
                     original: LoadedDecoder | None = None, prompts: list[list[int]] = (),
                     greedy_tokens: int = 16, continuations: dict | None = None) -> GenerationFidelity:
    """Run the artifact on each text (prefill gives every position's logits) and score it against the original's
    logits of the same text; greedy continuations of `prompts` when `original` is given (its own continuations
    kept in `continuations` when given)."""
    scores = [next_token_scores(ref, artifact.prefill(ids)[0], ids) for ref, ids in zip(reference_logits, texts)]
    joined = {key: np.concatenate([s[key] for s in scores]) for key in scores[0]}
    matches = [greedy_match(original, artifact, p, greedy_tokens, continuations) for p in prompts] if original else []
    return GenerationFidelity(
        perplexity=float(np.exp(joined["candidate_nll"].mean())),
        original_perplexity=float(np.exp(joined["reference_nll"].mean())),
        top1_agreement=float(joined["agree"].mean()),
        mean_kl=float(joined["kl"].mean()),
        greedy_match=float(np.mean([m for m, _, _ in matches])) if matches else None,
        first_divergence=[d for _, d, _ in matches],
        divergence_margins=[margin for _, _, margin in matches if margin is not None],
        positions=int(len(joined["agree"])),
        texts=len(texts),
        greedy_tokens=greedy_tokens,
    )
