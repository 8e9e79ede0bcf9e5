"""Profiling runners: where an artifact is timed, and the registry that finds them.

A runner measures an artifact on one device and says what that device is. A target
names its runner in its YAML (`profiling: {name: local}`, or just `profiling: local`);
`deploykit build --runner NAME` overrides it. A runner is one module holding one
`ProfileRunner` subclass (another package registers one with a `deploykit.runners`
entry point); its settings are validated by its `settings_class` when the target loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from deploykit.registry import Registry

if TYPE_CHECKING:
    from deploykit.targets import Target

Inputs = dict  # input name -> numpy array (batch 1)


@dataclass(frozen=True)
class PairedTiming:
    """The shipped artifact and its baseline timed side by side in alternating rounds, the ratio taken per round:
    load on a busy machine hits both alike. Each round times `runs` inferences of each (10: a median robust to one
    preempted run); at least `min_rounds` rounds (10: enough for a bootstrap interval of the median ratio), more
    while the per-round ratio's coefficient of variation is above `max_cv` (5%: the spread at which a 2.8x
    speed-up is still told from 2.5x), up to `max_rounds` or `budget_s` seconds.

    A round counts only when neither side's threads waited for a core more than `max_wait_share` of its time
    (Linux run-queue wait; 5%, the size of `max_cv`: beyond it another process's share of the cores moves the ratio
    more than the spread we accept). Fewer than `min_rounds` such rounds make the result *inconclusive*: on a
    machine whose cores are taken, the ratio of two artifacts with different thread scaling is a different ratio,
    not a noisier one (docs/results/timing-under-load.md)."""

    runs: int = 10
    min_rounds: int = 10
    max_rounds: int = 40
    max_cv: float = 0.05
    budget_s: float = 60.0
    max_wait_share: float = 0.05


@dataclass(frozen=True)
class ProfileSettings:
    """How to time an artifact. 100 runs give a stable p99 estimate; 10 warm-up runs absorb lazy init."""

    runs: int = 100
    warmup: int = 10
    threads: int | None = None  # None: the target's thread count
    # A hung runtime must not hang the build: 100 runs of BERT-large on one slow core take about 2 minutes.
    timeout_s: float = 600.0
    # Per-op times from the runtime's profiler, in extra runs after the timed ones (never mixed into latencies).
    op_profile: bool = True
    paired: PairedTiming = PairedTiming()


class RunnerSettings(BaseModel):
    """A runner's options from the target YAML; subclasses add fields with defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str


class ProfileRunner:
    """Times artifacts on one device. Subclasses register themselves under `name`."""

    name: ClassVar[str]
    settings_class: ClassVar[type[RunnerSettings]] = RunnerSettings

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        RUNNERS.add(cls)

    def __init__(self, settings: RunnerSettings):
        self.settings = settings

    @property
    def device_name(self) -> str:
        """A file-name-safe name of the device measured on: its profile is `profiles/<target>/<device_name>.json`."""
        raise NotImplementedError

    def threads(self, target: "Target") -> int:
        """The thread count a target's artifacts are timed with on this runner's device."""
        raise NotImplementedError

    def describe(self, target: "Target", threads: int) -> dict:
        """Where the measurement was taken, for the report: the device's facts and whether it is the target's."""
        raise NotImplementedError

    def profile(self, backend: str, artifact: Path, runtime_config: dict, sample: Inputs, threads: int,
                settings: ProfileSettings) -> dict:
        """Latency summary (p50/p90/p99, throughput), peak memory and runtime facts of one artifact."""
        raise NotImplementedError

    def profile_pair(self, backend: str, artifact: Path, runtime_config: dict, baseline: Path, baseline_config: dict,
                     sample: Inputs, threads: int, settings: ProfileSettings,
                     baseline_sample: Inputs | None = None) -> dict | None:
        """The artifact against `baseline` in alternating rounds (`profiling.stats.paired_speedup`); None where this
        runner cannot load both at once (the report then says its ratio came from separate timings).
        `baseline_sample`: the baseline's own input where it takes another shape (another sequence length)."""
        return None

    def run_outputs(self, backend: str, artifact: Path, runtime_config: dict, inputs: Inputs, threads: int,
                    settings: ProfileSettings) -> dict | None:
        """The artifact's first output on every row of `inputs`, computed on this runner's device by its runtime
        ({"outputs": float32 array, "runtime", "device"}), for fidelity measured where the model runs; None where
        this runner cannot send outputs back (fidelity is then measured on the build host, and the report says so)."""
        return None


RUNNERS: Registry[ProfileRunner] = Registry("profiling runner", "deploykit.profiling", "deploykit.runners")


def runner_spec(spec: object) -> dict:
    """A target's `profiling:` value as a settings block: `local` is short for `{name: local}`."""
    return {"name": spec} if isinstance(spec, str) else spec


def get_runner(spec: object) -> ProfileRunner:
    """The runner a `profiling:` block (or a runner name) names, with its settings validated."""
    return RUNNERS.configured(runner_spec(spec), "profiling: {name: local}")
