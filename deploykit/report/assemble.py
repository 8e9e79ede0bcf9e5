"""report.json: everything a build decided and measured, as one machine-readable document."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from deploykit.data import DataSplit
from deploykit.latency_model import architecture_of
from deploykit.models import ModelBundle
from deploykit.passes.recipe import recipe_document
from deploykit.planner import Plan
from deploykit.report.manifest import file_entry
from deploykit.report.speed import speed_findings
from deploykit.targets import Target


def _artifact_entry(measured, folder: Path | None) -> dict:
    artifact = measured.artifact
    base = folder or artifact.path.parent
    files = [file_entry(path, base) for path in artifact.files]
    return {
        "path": artifact.path.relative_to(base).as_posix(),
        "format": artifact.format,
        "precision": artifact.precision,
        "method": artifact.method,
        "bytes": sum(f["bytes"] for f in files),
        "sha256": files[0]["sha256"],
        "files": files,
        "runtime_config": artifact.runtime_config,
        **artifact.details,
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


def assemble_report(
    target: Target,
    plan: Plan,
    bundle: ModelBundle,
    split: DataSplit,
    folder: Path,
    chosen,
    tried: list,
    baseline,
    original_accuracy: float | None,
    label_mapping: str | None,
    timings: dict,
    measured_on: dict,
    integer_graph: dict | None = None,
    device_compile: dict | None = None,
    paired: dict | None = None,
) -> dict:
    """The report of one target's build: the chosen candidate, every candidate tried, the baseline."""
    artifact = chosen.measured
    artifact_entry = {"candidate": chosen.label, **_artifact_entry(artifact, folder)}
    baseline_entry = _artifact_entry(baseline, None)
    return {
        "deploykit_version": version("deploykit"),
        "target": target.name,
        "target_profile": target.model_dump(),
        "model": {
            "source": bundle.source,
            "task": bundle.task,
            "sequence_length": plan.sequence_length,
            "max_sequence_length": bundle.max_sequence_length,
            "architecture": architecture.as_dict() if (architecture := architecture_of(bundle.backbone)) else None,
            **bundle.details,
        },
        "data": {
            "source": split.calibration.source,
            "evaluation_source": "--eval-data" if split.evaluation.source != split.calibration.source
            else "held out from --data by a seeded split",
            "calibration_samples": len(split.calibration),
            "evaluation_samples": len(split.evaluation),
            "labels": split.evaluation.labels is not None,
            "label_mapping": label_mapping,
        },
        "plan": plan.steps,
        "passes": chosen.passes,  # what each training-time pass of the shipped artifact did, measured
        # The shipped candidate as a recipe file: `deploykit build --recipe report.json` builds it again.
        "recipe": recipe_document(chosen.passes, artifact.artifact.precision),
        "candidates": [candidate.summary() for candidate in tried],
        "artifact": artifact_entry,
        "baseline": {
            "format": baseline_entry["format"],
            "precision": baseline_entry["precision"],
            "bytes": baseline_entry["bytes"],
            "latency_ms": baseline.profile["latency_ms"],
            "run_queue_wait_share": baseline.profile.get("run_queue_wait_share"),
            "latency_samples_ms": baseline.profile.get("latency_samples_ms"),  # None: the runner gives a summary only
            "peak_rss_mb": baseline.profile["peak_rss_mb"],
            "runtime": baseline.profile["runtime"],
            "op_profile": baseline.profile.get("op_profile"),
            "fidelity": baseline.quality["fidelity"],
            "accuracy": baseline.quality["accuracy"],
        },
        "metrics": {
            "latency_ms": artifact.profile["latency_ms"],
            "run_queue_wait_share": artifact.profile.get("run_queue_wait_share"),
            "latency_samples_ms": artifact.profile.get("latency_samples_ms"),
            "peak_rss_mb": artifact.profile["peak_rss_mb"],
            "rss_before_load_mb": artifact.profile.get("rss_before_load_mb"),
            "runtime": artifact.profile["runtime"],
            "op_profile": artifact.profile.get("op_profile"),
            "fidelity": artifact.quality["fidelity"],
            "accuracy": artifact.quality["accuracy"],
            "per_sample": artifact.quality.get("per_sample"),  # each cosine, or confusion matrices
            "original_accuracy": original_accuracy,
            "accuracy_drop": chosen.accuracy_drop,
            # From alternating rounds where the runner could time both side by side, else from the two p50s.
            "speedup_vs_baseline": paired["speedup"] if paired else _ratio(baseline.profile["latency_ms"]["p50"],
                                                                           artifact.profile["latency_ms"]["p50"]),
            "size_ratio_vs_baseline": _ratio(artifact_entry["bytes"], baseline_entry["bytes"]),
        },
        # Slower than the baseline, or than a faster candidate passed over for a missed gate: said, not hidden.
        "speed": speed_findings(baseline.profile, chosen, tried, paired),
        "compatibility": {
            "integer_only_required": target.integer_only,
            **(chosen.compatibility.as_dict() if chosen.compatibility else {"fallback_ops": None, "fallback_reasons": None}),
        },
        "measured_on": measured_on,  # the profiling runner's account of the device (latency, memory)
        # Where the fidelity and accuracy above were computed: "host", or "device" with its runtime, the host's own
        # figures and whether the two differ beyond the tolerance. Absent from measurements cached before it existed.
        "fidelity_measured_on": artifact.quality.get("validated_on", {"where": "host"}),
        "gates": {"passed": chosen.passed, "inconclusive": chosen.inconclusive, "checks": chosen.checks},
        "integer_graph": integer_graph,
        "device_compile": device_compile,  # the device toolchain's outcome (None: the target names none)
        "timings_s": dict(timings),
    }
