"""`deploykit compare`: whether a new encoder build (NEW) regressed against an earlier one (BASE), in three checks.

- speed: NEW and BASE timed side by side on one runner, in alternating rounds (their recorded numbers when BASE is
  only a report.json or summary.json, or the two use different runtimes);
- size: NEW's artifact bytes against BASE's;
- fidelity: each build's recorded cosine, agreement and accuracy, and beside them how far NEW's outputs are from
  BASE's on the same texts.

    import deploykit as dk
    comparison = dk.compare("main-build/arm-cpu", "dist/arm-cpu")
    comparison.exit_code  # 0 no regression, 3 a regression, 5 speed could not be measured on this machine
    [(check.name, check.status, check.message) for check in comparison.checks]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np

from deploykit.backends.base import backend_for_file
from deploykit.compared_build import ComparedBuild, check_same_task, read_build
from deploykit.data import DEFAULT_DATA, DEFAULT_EVALUATION_SAMPLES, load_dataset, split_dataset
from deploykit.evaluate import classification_fidelity, embedding_fidelity
from deploykit.folder_texts import run_texts
from deploykit.profiling.alternating import alternating_timing
from deploykit.profiling.base import ProfileRunner, ProfileSettings, get_runner
from deploykit.profiling.build_folder import FolderArtifact, build_target_of, default_threads, folder_artifact
from deploykit.profiling.stats import ratio_interval
from deploykit.report.diff import report_diff
from deploykit.results import GATE_MISSED_EXIT_CODE, INCONCLUSIVE_EXIT_CODE

MAX_RECORDED_RUNS = 1_000_000  # timed runs a report may list


@dataclass(frozen=True)
class Thresholds:
    """How much worse NEW may be than BASE before a check fails.

    - max_slowdown 0.05: NEW is slower when the upper end of the BASE/NEW speed-up interval is below 1/(1+0.05).
      On a quiet machine the interval of paired rounds spans about ±4% around the ratio and their spread is about
      5% (docs/results/timing-under-load.md): a smaller limit would pass verdicts on noise.
    - max_growth 0.01: bytes are exact, so 1% only lets metadata move (names, a converter's version); a change of
      precision or structure is far larger.
    - max_cosine_drop 0.005: half of what the default cosine gate (0.99) allows a build to lose against the original.
    - max_accuracy_drop 1.0: percentage points of accuracy or agreement, the targets' default accuracy budget, in the
      unit of report.json's `accuracy_drop`.
    """

    max_slowdown: float = 0.05
    max_growth: float = 0.01
    max_cosine_drop: float = 0.005
    max_accuracy_drop: float = 1.0


@dataclass(frozen=True)
class Check:
    """One check's verdict: `status` pass, fail, inconclusive (speed: the machine was too busy to measure) or skipped
    (speed from recorded numbers that cannot be compared); `message` says why in one line."""

    name: str
    status: str
    message: str
    before: object = None
    after: object = None
    change: object = None
    threshold: object = None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """What `compare` found: the checks, the re-timing (None where none ran) and NEW's outputs against BASE's on the
    same texts (None without two folders)."""

    base: ComparedBuild
    new: ComparedBuild
    thresholds: Thresholds
    checks: list[Check]
    timing: dict | None
    outputs: dict | None

    @property
    def exit_code(self) -> int:
        """3 when a check failed, else 5 when speed was inconclusive, else 0."""
        statuses = {check.status for check in self.checks}
        return GATE_MISSED_EXIT_CODE if "fail" in statuses else INCONCLUSIVE_EXIT_CODE if "inconclusive" in statuses \
            else 0

    def as_dict(self) -> dict:
        """The --summary-json document."""
        return {"deploykit_version": version("deploykit"), "exit_code": self.exit_code, "passed": self.exit_code == 0,
                "base": self.base.describe(), "new": self.new.describe(), "thresholds": asdict(self.thresholds),
                "checks": [asdict(check) for check in self.checks], "timing": self.timing, "outputs": self.outputs}


def compare(base: str | Path, new: str | Path, *, runner: ProfileRunner | None = None, data: str | Path | None = None,
            thresholds: Thresholds = Thresholds(), settings: ProfileSettings = ProfileSettings(),
            threads: int | None = None, samples: int = DEFAULT_EVALUATION_SAMPLES) -> Comparison:
    """Compare NEW (a target folder written by `deploykit build`) with BASE (another, or an earlier report.json or
    summary.json). `runner`: where to time them (default: this machine); `data`: the texts both run on (default: the
    bundled sentences; a build's held-out split of them, `samples` at most); `settings.paired`: the rounds."""
    new_build = read_build(Path(new), "NEW")
    base_build = read_build(Path(base), "BASE", new_build.report.get("target"))
    check_same_task(base_build, new_build)
    identical = base_build.digests == new_build.digests and base_build.runtime_config == new_build.runtime_config
    runner = runner or get_runner("local")
    threads = threads or default_threads(runner, new_build.report)
    speed, timing = _speed(base_build, new_build, identical, runner, threads, settings, thresholds)
    outputs = None
    if base_build.folder:
        outputs = same_texts(base_build, new_build, Path(data or DEFAULT_DATA), samples, threads)
    fidelity = _fidelity(report_diff(base_build.report, new_build.report), base_build, new_build, outputs, thresholds)
    checks = [speed, _size(base_build, new_build, thresholds), fidelity]
    return Comparison(base_build, new_build, thresholds, checks, timing, outputs)


def _speed(base: ComparedBuild, new: ComparedBuild, identical: bool, runner: ProfileRunner, threads: int,
           settings: ProfileSettings, thresholds: Thresholds) -> tuple[Check, dict | None]:
    """The speed check and the timing it rests on: NEW and BASE re-timed side by side where both are folders of one
    runtime; else their recorded timed runs, judged only when both were timed on one device."""
    if identical:
        return Check("speed", "pass", "NEW's artifact files and runtime settings are BASE's, byte for byte: not "
                     "timed (the same files run at the same speed).", threshold=thresholds.max_slowdown), None
    if base.folder is None:
        return _recorded_speed(base, new, f"BASE is a {base.kind}, with no artifact to re-time", thresholds), None
    artifacts = folder_artifact(base.folder), folder_artifact(new.folder)
    backend, other = (backend_for_file(artifact.path).name for artifact in artifacts)
    if backend != other:
        return _recorded_speed(base, new, "BASE and NEW use different runtimes", thresholds), None
    timing = _retime(runner, backend, *artifacts, threads, settings)
    timing["measured_on"] = runner.describe(build_target_of(new.folder), threads)
    rounds = np.asarray(timing["rounds_ms"], np.float64)
    return _speed_verdict(timing, float(np.median(rounds[:, 1])), float(np.median(rounds[:, 0])),
                          f"re-timed in {timing['method']}", thresholds), timing


def _retime(runner: ProfileRunner, backend: str, base: FolderArtifact, new: FolderArtifact, threads: int,
            settings: ProfileSettings) -> dict:
    """NEW against BASE in alternating rounds, each on its own full-length input: in one worker that loads both, else
    (a runner that cannot load both at once: adb) in separate runs."""
    method = "alternating rounds in one worker"
    timing = runner.profile_pair(backend, new.path, new.runtime_config, base.path, base.runtime_config, new.sample,
                                 threads, settings, baseline_sample=base.sample)
    if timing is None:
        timing = alternating_timing(runner, backend, new, base, threads, settings)
        method = "alternating runs, one of each per round"
    return {**timing, "method": method, "threads": threads,
            "sequence_lengths": {"base": base.sequence_length, "new": new.sequence_length}}


def _speed_verdict(timing: dict, base_ms: float, new_ms: float, how: str, thresholds: Thresholds) -> Check:
    """Slower when the whole speed-up interval (BASE/NEW) lies below 1/(1+max_slowdown); inconclusive when the timing
    says the machine was too busy to measure."""
    speedup, (low, high) = timing["speedup"], timing["interval"]
    limit = 1 / (1 + thresholds.max_slowdown)
    values = {"before": round(base_ms, 4), "after": round(new_ms, 4), "change": round(1 / speedup - 1, 4),
              "threshold": thresholds.max_slowdown, "details": {"speedup": speedup, "interval": [low, high]}}
    ratio = f"BASE/NEW speed-up {speedup:.3f} ({low:.3f}–{high:.3f}), {how}"
    if timing.get("inconclusive"):
        return Check("speed", "inconclusive", f"{ratio}: the machine was too busy to time them (other processes held "
                     "the cores); rerun on a quieter machine.", **values)
    if high < limit:
        return Check("speed", "fail", f"NEW is slower: {ratio}, all below {limit:.3f} (--max-slowdown "
                     f"{thresholds.max_slowdown:g}).", **values)
    return Check("speed", "pass", f"{ratio}: not slower beyond --max-slowdown {thresholds.max_slowdown:g}.", **values)


def _recorded_speed(base: ComparedBuild, new: ComparedBuild, reason: str, thresholds: Thresholds) -> Check:
    """Speed from what the two builds recorded (`reason`: why they were not re-timed): each one's timed runs, taken
    separately, perhaps on other machines and under other load. Reported when both reports keep their runs and name
    the same device, never judged: only alternating rounds time a ratio that load cannot move."""
    runs = _recorded_runs(base.report), _recorded_runs(new.report)
    devices = [(build.report.get("measured_on") or {}).get("device") for build in (base, new)]
    if None in runs or devices[0] is None or devices[0] != devices[1]:
        return Check("speed", "skipped", f"not judged: {reason}, and the recorded timings were not both taken on one "
                     "device with their runs kept; pass both build folders to time them side by side.",
                     threshold=thresholds.max_slowdown)
    speedup, low, high = ratio_interval(runs[0], runs[1])
    base_ms, new_ms = float(np.median(runs[0])), float(np.median(runs[1]))
    return Check("speed", "skipped", f"not judged: BASE/NEW speed-up {speedup:.3f} ({low:.3f}–{high:.3f}) from the "
                 f"recorded runs only ({reason}; each build timed its own, separately, so load on either run is in "
                 "the ratio); pass both build folders to time them side by side.", round(base_ms, 4),
                 round(new_ms, 4), round(new_ms / base_ms - 1, 4), thresholds.max_slowdown,
                 {"speedup": round(speedup, 4), "interval": [round(low, 4), round(high, 4)]})


def _recorded_runs(report: dict) -> list[float] | None:
    runs = (report.get("metrics") or {}).get("latency_samples_ms")
    if not isinstance(runs, list) or not 2 <= len(runs) <= MAX_RECORDED_RUNS:
        return None
    numbers = [value for value in runs if isinstance(value, (int, float)) and not isinstance(value, bool) and
               0 < value < 1e12]
    return numbers if len(numbers) == len(runs) else None


def _size(base: ComparedBuild, new: ComparedBuild, thresholds: Thresholds) -> Check:
    """NEW's artifact bytes against BASE's; larger by more than `max_growth` fails."""
    before, after = base.bytes, new.bytes
    growth = after / before - 1
    status = "fail" if growth > thresholds.max_growth else "pass"
    text = f"{before:,} → {after:,} bytes ({growth:+.2%}, --max-growth {thresholds.max_growth:g})"
    return Check("size", status, f"NEW is larger: {text}." if status == "fail" else f"{text}.", before, after,
                 round(growth, 6), thresholds.max_growth)


# Recorded fidelity measures: name -> (how much larger than the limit a drop is counted, the limit's option)
FIDELITY_MEASURES = {"cosine_mean": (1.0, "max_cosine_drop"), "agreement": (100.0, "max_accuracy_drop"),
                     "accuracy": (100.0, "max_accuracy_drop")}


def _fidelity(diff: dict, base: ComparedBuild, new: ComparedBuild, outputs: dict | None,
              thresholds: Thresholds) -> Check:
    """Each build's recorded cosine mean, agreement and accuracy (fractions; agreement and accuracy drops counted in
    points): a drop beyond its limit fails. NEW's outputs against BASE's on the same texts are reported beside."""
    before, after, change, dropped = {}, {}, {}, []
    for name, (scale, limit_name) in FIDELITY_MEASURES.items():
        entry = diff["changes"].get(name)
        if entry is None or entry["change"] is None:
            continue
        before[name], after[name], change[name] = entry["before"], entry["after"], entry["change"]
        limit = getattr(thresholds, limit_name)
        if -entry["change"] * scale > limit:
            dropped.append(f"{name} {entry['before']:.4f} → {entry['after']:.4f} (--{limit_name.replace('_', '-')} "
                           f"{limit:g})")
    limits = {"max_cosine_drop": thresholds.max_cosine_drop, "max_accuracy_drop": thresholds.max_accuracy_drop}
    sources = [(build.report.get("data") or {}).get("source") for build in (base, new)]
    note = f" The builds were evaluated on different data ({sources[0]} and {sources[1]})." \
        if None not in sources and sources[0] != sources[1] else ""
    recorded = ", ".join(f"{name} {before[name]:.4f} → {after[name]:.4f}" for name in before) or "none recorded"
    message = f"NEW is less faithful: {', '.join(dropped)}." if dropped else f"recorded {recorded}."
    if outputs is not None:
        message += f" NEW against BASE on {outputs['texts']} texts: {_agreement_words(outputs)}."
    return Check("fidelity", "fail" if dropped else "pass", message + note, before, after, change, limits)


def _agreement_words(outputs: dict) -> str:
    if "cosine_mean" not in outputs:
        return outputs["note"]
    if outputs["cosine_mean"] is not None:
        return f"cosine mean {outputs['cosine_mean']:.4f}, nearest-neighbour agreement {outputs['agreement']:.4f}"
    return f"top-1 agreement {outputs['agreement']:.4f}, logit cosine {outputs['logit_cosine_mean']:.4f}"


def same_texts(base: ComparedBuild, new: ComparedBuild, data: Path, samples: int, threads: int) -> dict:
    """NEW's outputs against BASE's on the same texts (a build's held-out evaluation split of `data`), each encoded
    with its own folder's tokenizer: cosine and nearest-neighbour agreement for embeddings, top-1 agreement for
    classifier logits."""
    texts = split_dataset(load_dataset(data), evaluation_samples=samples).evaluation.texts
    artifacts = [folder_artifact(build.folder) for build in (base, new)]
    outputs = [run_texts(artifact.path, artifact.runtime_config, texts, threads) for artifact in artifacts]
    found = {"texts": len(texts), "data": str(data)}
    if outputs[0].shape != outputs[1].shape:
        return {**found, "note": f"outputs of different shapes ({outputs[0].shape[1:]} and {outputs[1].shape[1:]}), "
                                 "not compared"}
    measure = embedding_fidelity if new.task == "embedding" else classification_fidelity
    return {**found, **{name: None if value is None else round(value, 6)
                        for name, value in measure(*outputs).items()}}
