"""Precision "mixed" in a build: the backend's quantized graph with its most sensitive groups kept at high precision.

The sensitivity analysis and the choice run on calibration texts against the original
model, so the evaluation texts stay held out for the gates. The ranking depends only on
the graph and those texts, so it is computed once per model, backend and recipe, and
cached by content like exports.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from deploykit.backends.base import Backend, ExportedArtifact, MixedGraph
from deploykit.cache import digest
from deploykit.evaluate import classification_fidelity, embedding_fidelity, run_examples
from deploykit.graph.mixed_precision import FidelityOf, Sensitivity, choose_groups, predicted_cost, rank_groups
from deploykit.passes.recipe import Recipe
from deploykit.planner import Gates
from deploykit.targets import Target
from deploykit.pipeline.session import BuildSession


def export_mixed(session: BuildSession, backend: Backend, target: Target, gates: Gates, saved_model: Path,
                 recipe: Recipe, folder: Path) -> ExportedArtifact:
    """Rank the backend's precision groups, keep the most sensitive high until the gates' fidelity (with its
    reserve) is met on the calibration texts, and write that graph into `folder`."""
    settings, log = session.options.mixed, session.log
    scratch = session.workdir / f"mixed-{target.name}-{len(recipe)}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    with log.step("mixed_graph", f"Quantizing the {backend.name} graph and finding its precision groups"):
        graph = backend.mixed_graph(saved_model, session.export_options(target, recipe), scratch)
    metric, goal = selection_goal(session, gates)
    fidelity_of = _fidelity_on_calibration(session, backend, graph, recipe, metric, scratch / "variant")
    key = digest(session.fingerprint(), "sensitivity", backend.name, target.integer_only, target.integer_io, recipe,
                 metric, settings.samples, [group.name for group in graph.groups])
    cached = session.cache.get("sensitivity", key) if session.cache is not None else None
    if cached is not None:
        log.info(f"[dim]sensitivity of {len(graph.groups)} groups reused from the cache ({key[:12]})[/]")
        groups = {group.name: group for group in graph.groups}
        all_quantized = cached.meta["all_quantized"]
        ranking = [Sensitivity(groups[row["group"]], row["alone_quantized"], row["kept_high"])
                   for row in cached.meta["ranking"]]
    else:
        variants = (2 if graph.measure_complements else 1) * len(graph.groups) + 1
        with log.step("sensitivity", f"Sensitivity of {len(graph.groups)} precision groups ({variants} "
                                     f"variants on {settings.samples} calibration texts)"):
            all_quantized, ranking = rank_groups(graph.groups, fidelity_of, graph.measure_complements)
        if session.cache is not None:
            session.cache.put("sensitivity", key, {}, {"all_quantized": all_quantized, "ranking": [
                {"group": row.group.name, "alone_quantized": row.alone_quantized, "kept_high": row.kept_high}
                for row in ranking]})
    with log.step("mixed_choice", f"Keeping the most sensitive groups high until {metric} {goal:.4f}"):
        choice = choose_groups(all_quantized, ranking, fidelity_of, goal, settings.max_share, metric)
    kept = frozenset(group.name for group in choice.kept)
    log.info(f"  mixed: {len(kept)} of {len(graph.groups)} groups kept high, {metric} on calibration texts "
             f"{all_quantized:.4f} -> {(choice.trail or [all_quantized])[-1]:.4f} (goal {goal:.4f})")
    artifact = graph.write(kept, folder)
    artifact.details["mixed_precision"] = choice.as_dict(graph.groups)
    activations = artifact.details.get("activations")
    if activations and target.activation_cost:
        artifact.details["mixed_precision"]["predicted_cost"] = predicted_cost(
            activations, target.activation_cost, tuple(sorted(target.activation_cost)))
    shutil.rmtree(scratch, ignore_errors=True)
    return artifact


def selection_goal(session: BuildSession, gates: Gates) -> tuple[str, float]:
    """The fidelity the choice aims at on calibration texts: the gate, plus the reserve of its allowance.
    Classifiers aim at agreement with the original: with labels, changing at most the accuracy budget's share of
    predictions bounds the accuracy drop by that budget."""
    reserve = session.options.mixed.reserve
    if session.bundle.task == "embedding":
        return "cosine_mean", gates.min_cosine + reserve * (1 - gates.min_cosine)
    has_labels = session.split.evaluation.labels is not None
    allowed = gates.max_accuracy_drop / 100 if has_labels else 1 - gates.min_agreement
    return "agreement", 1 - (1 - reserve) * allowed


def _fidelity_on_calibration(session: BuildSession, backend: Backend, graph: MixedGraph, recipe: Recipe, metric: str,
                             folder: Path) -> FidelityOf:
    """Kept groups -> the variant's fidelity to the original on the first calibration texts."""
    count = min(session.options.mixed.samples, len(session.split.calibration))
    inputs = {name: values[:count] for name, values in session.models.encoded("calibration", recipe).items()}
    original = {name: values[:count] for name, values in session.models.encoded("calibration").items()}
    reference = session.original_outputs(original)
    compare = embedding_fidelity if session.bundle.task == "embedding" else classification_fidelity
    # One thread: the same sums in the same order on every machine, so the same choice.

    def fidelity_of(kept: frozenset[str]) -> float:
        shutil.rmtree(folder, ignore_errors=True)
        variant = graph.write(kept, folder)
        outputs = run_examples(backend.load(variant.path, 1, variant.runtime_config), inputs)
        return float(compare(reference, np.asarray(outputs))[metric])

    return fidelity_of
