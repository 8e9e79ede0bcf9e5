"""Latency model: predict a candidate's p50 on a device from that device's measured profile, before building it.

A BERT encoder's time is, to first order, a fixed cost plus costs proportional to
three kinds of work, each with its own per-unit cost on a given runtime, precision
and thread count:

- dense multiply-accumulates (Q/K/V/output projections and the FFN): tokens x weights;
- attention multiply-accumulates (QK^T and attention x V, and with them the softmax): tokens^2 x heads x
  head width;
- per-token elementwise work (LayerNorm, residual adds, GELU): tokens x layers x width.

Measurements of one shape at several lengths separate the fixed, per-token and
per-token-pair costs; how per-token cost splits between dense and elementwise work is
only identified when the profile holds models of different widths (otherwise the fit
picks one split, exact for that width and for other depths and lengths).

The per-unit costs are fitted by non-negative least squares on a profile's end-to-end
measurements of one precision (several sequence lengths, and any compressed models
measured), so a candidate with another length, fewer layers, fewer heads or a narrower
FFN is predicted from its architecture alone. The model's stated error is its worst
leave-one-out relative error on the profile's own points inside the measured lengths
(outside them, at the shortest and longest, extrapolation misses more: that larger
figure applies there): the planner only skips a candidate predicted to miss a latency
budget by more than that.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from deploykit.errors import DeployKitError, quoted
from deploykit.user_files import read_json

# Below this many measurements of a precision there is nothing to check a fit against: no prediction.
MIN_POINTS = 3
# The error a model claims is never below this: held-out candidates (another architecture) miss more than
# the fitted points do, and a skip decision must not rest on an optimistic figure.
MIN_STATED_ERROR = 0.10
FEATURES = ("fixed", "dense_macs", "attention_macs", "token_width")
# A point's weight in the fit is 1 / (p50 x its relative spread), the spread never taken below SPREAD_FLOOR (1%: a
# tighter interval says more about how many runs were timed than about how the device varies from build to build)
# and, for points saved before profiles carried a spread, taken as DEFAULT_SPREAD (5%, the spread at which paired
# timing stops adding rounds). A point timed while another process held the cores weighs as little as its wait says.
SPREAD_FLOOR = 0.01
DEFAULT_SPREAD = 0.05


@dataclass(frozen=True)
class Architecture:
    """What sets an encoder's work: depth, width, heads, FFN width (and FFN rank when factorized)."""

    layers: int
    hidden: int
    heads: int
    head_dim: int
    intermediate: int
    ffn_rank: int | None = None

    def work(self, sequence_length: int) -> np.ndarray:
        """The model's features at one sequence length (batch 1): see the module docstring."""
        tokens = sequence_length
        attention_width = self.heads * self.head_dim
        ffn = 2 * self.ffn_rank * (self.hidden + self.intermediate) if self.ffn_rank else 2 * self.hidden * self.intermediate
        dense = self.layers * tokens * (4 * self.hidden * attention_width + ffn)
        attention = self.layers * 2 * tokens * tokens * attention_width
        elementwise = self.layers * tokens * (self.hidden + self.intermediate)
        return np.array([1.0, dense / 1e9, attention / 1e9, elementwise / 1e6])

    def as_dict(self) -> dict:
        return asdict(self)

    def changed(self, **fields) -> "Architecture":
        return replace(self, **fields)


def architecture_of(backbone) -> Architecture | None:
    """A keras-hub BertBackbone's architecture (None for models without one, e.g. an ONNX input)."""
    if backbone is None or not hasattr(backbone, "transformer_layers"):
        return None
    from deploykit.graph.bert_surgery import FFN_DENSE, head_size, low_rank_dense_class

    ffn = getattr(backbone.transformer_layers[0], FFN_DENSE[0], None)
    rank = ffn.rank if isinstance(ffn, low_rank_dense_class()) else None
    return Architecture(int(backbone.num_layers), int(backbone.hidden_dim), int(backbone.num_heads),
                        head_size(backbone), int(backbone.intermediate_dim), rank)


@dataclass(frozen=True)
class LatencyFit:
    """Per-unit costs of one precision on one device, and how far its own points stray from it."""

    precision: str
    coefficients: tuple[float, ...]
    error: float  # worst leave-one-out relative miss inside the measured lengths, at least MIN_STATED_ERROR
    extrapolation_error: float  # worst leave-one-out miss of all points, the shortest and longest included
    lengths: tuple[int, int]  # the shortest and longest sequence measured

    def predict(self, architecture: Architecture, sequence_length: int) -> float:
        return float(np.dot(self.coefficients, architecture.work(sequence_length)))

    def error_at(self, sequence_length: int) -> float:
        """The stated error of a prediction at this length: larger outside the measured range."""
        low, high = self.lengths
        return self.error if low <= sequence_length <= high else self.extrapolation_error


def fit(precision: str, rows: list[tuple[Architecture, int, float]],
        spreads: list[float | None] | None = None) -> LatencyFit | None:
    """Fit per-unit costs on (architecture, sequence length, p50 ms) rows; None with fewer than MIN_POINTS.
    `spreads`: each row's relative spread (`point_spread`), so that a noisy point pulls the fit less."""
    from scipy.optimize import nnls

    if len(rows) < MIN_POINTS:
        return None
    features = np.array([architecture.work(length) for architecture, length, _ in rows])
    measured = np.array([p50 for _, _, p50 in rows])
    spread = np.array([DEFAULT_SPREAD if value is None else max(value, SPREAD_FLOOR)
                       for value in (spreads or [None] * len(rows))])
    # Relative error is what matters (a 10% miss at 2 ms and at 200 ms are the same mistake): weight rows by 1/p50,
    # and by how precisely each was measured.
    weights = 1.0 / (measured * spread)
    coefficients, _ = nnls(features * weights[:, None], measured * weights)
    lengths = [length for _, length, _ in rows]
    inside, everywhere = [MIN_STATED_ERROR], [MIN_STATED_ERROR]
    for held_out in range(len(rows)):
        keep = np.arange(len(rows)) != held_out
        partial, _ = nnls(features[keep] * weights[keep, None], measured[keep] * weights[keep])
        miss = abs(float(features[held_out] @ partial) / measured[held_out] - 1)
        everywhere.append(miss)
        if min(lengths) < lengths[held_out] < max(lengths):  # a point the others surround: an interpolation
            inside.append(miss)
    return LatencyFit(precision, tuple(float(c) for c in coefficients), round(max(inside), 4),
                      round(max(everywhere), 4), (min(lengths), max(lengths)))


@dataclass(frozen=True)
class LatencyModel:
    """The fits of one device profile, by precision, at the thread count the profile was measured with."""

    device: str
    threads: int
    fits: dict[str, LatencyFit]
    source: str

    def predict(self, precision: str, architecture: Architecture | None, sequence_length: int,
                threads: int, executes_as: dict[str, str] | None = None) -> tuple[float, float] | None:
        """(predicted p50 ms, stated relative error), or None when the profile cannot say.

        `executes_as`: the backend's precisions that run another's kernels (LiteRT's fp16 runs as fp32 on
        XNNPACK), used when the profile has no measurement of the precision itself.
        """
        fitted = self.fits.get(precision) or self.fits.get((executes_as or {}).get(precision, ""))
        if fitted is None or architecture is None or threads != self.threads:
            return None
        return round(fitted.predict(architecture, sequence_length), 4), fitted.error_at(sequence_length)


def point_spread(latency_ms: dict, wait_share: float | None = None) -> float | None:
    """A measurement's relative spread: half its p50 interval's width over the p50, at least the share of time a
    worker thread waited for a core (another process's load); None when the timing gave no interval."""
    interval = latency_ms.get("p50_interval")
    if not interval:
        return None
    spread = (float(interval[1]) - float(interval[0])) / 2 / float(latency_ms["p50"])
    return round(max(spread, float(wait_share or 0.0)), 4)


def profile_rows(profile: dict) -> dict[str, tuple[list[tuple[Architecture, int, float]], list[float | None]]]:
    """A profile's measurements as fit rows and their spreads, by precision (rows without an architecture are left
    out; rows saved before profiles carried a spread have None)."""
    rows: dict[str, tuple[list, list]] = {}
    for entry in profile.get("measurements", []):
        if entry.get("architecture"):
            points, spreads = rows.setdefault(entry["precision"], ([], []))
            points.append((Architecture(**entry["architecture"]), int(entry["sequence_length"]),
                           float(entry["latency_ms"]["p50"])))
            spread = entry.get("spread")
            if spread is not None and not (math.isfinite(float(spread)) and float(spread) >= 0):
                raise ValueError(f"spread {spread!r} is not a finite share")
            spreads.append(None if spread is None else float(spread))
    return rows


def model_from_profile(profile: dict, source: str) -> LatencyModel:
    fits = {precision: fitted for precision, (rows, spreads) in profile_rows(profile).items()
            if (fitted := fit(precision, rows, spreads)) is not None}
    return LatencyModel(profile["device"], int(profile["threads"]), fits, source)


def load_latency_model(profiles: Path, target: str, device: str) -> LatencyModel | None:
    """The model of `profiles/<target>/<device>.json`, when that file exists."""
    path = profiles / target / f"{device}.json"
    if not (path.exists() or path.is_symlink()):
        return None
    try:  # a profile may come from elsewhere (a colleague's, a CI artifact): read bounded, any shape refused
        return model_from_profile(read_json(path, dict, untrusted=True), str(path))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise DeployKitError(f"{path} is not a profile as deploykit writes it ({type(error).__name__}: "
                             f"{quoted(str(error))}); move it away or measure again with --save-profile.") from None


def misses_budget(predicted: tuple[float, float] | None, budget_ms: float | None) -> bool:
    """Whether a prediction says, beyond the model's error, that the candidate cannot meet the budget."""
    if predicted is None or budget_ms is None:
        return False
    p50, error = predicted
    return math.isfinite(p50) and p50 * (1 - error) > budget_ms
