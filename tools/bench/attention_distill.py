"""Benchmark: the distilled student with and without attention distillation (MiniLM), side by side in one run.

Each recipe runs the `distill` pass on the same data with the same seed, starting from the
original every time, and the student it returns is measured in Keras (fp32) on the held-out
evaluation texts against the original: mean and minimum cosine, as `deploykit build` reports
them. Only the recipes differ:

    python tools/bench/attention_distill.py                          # 3-layer MiniLM student, ~21 min on 2 cores
    python tools/bench/attention_distill.py --recipes "distill:layers=3" \\
        "distill:layers=3,attention_weight=1" "distill:layers=3,steps=1500"   # + the same time without attention
    python tools/bench/attention_distill.py --set steps=400 hidden_steps=200  # shorter, for every recipe

Writes the table and every setting to tools/bench/results/attention_distill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from deploykit.runtime_env import import_tensorflow_quietly  # first: sets the Keras backend
from deploykit.pipeline import BuildOptions, prepare_session
from deploykit.pipeline.session import BuildSession
from deploykit.passes.base import PassContext, get_pass
from deploykit.passes.recipe import parse_recipe
from deploykit.progress import StepLog
from ptq_vs_vendor import _format  # same folder: one number format for every benchmark table

DEFAULT_RECIPES = ("distill:layers=3", "distill:layers=3,attention_weight=1")
RESULTS = Path(__file__).resolve().parent / "results" / "attention_distill.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default=None, help="JSONL/CSV (default: the bundled sentences)")
    parser.add_argument("--eval-data", default=None, help="separate evaluation file (default: held out from --data)")
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), help="one distill pass each")
    parser.add_argument("--set", dest="settings", nargs="*", default=[],
                        help="distill parameters applied to every recipe, e.g. steps=400 hidden_steps=200")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import_tensorflow_quietly()

    shared = _shared_settings(args.settings)
    arms = [_distill_parameters(text, shared) for text in args.recipes]
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as workdir:
        log = StepLog(Console(stderr=True))  # progress on stderr, the table on stdout
        session = prepare_session(args.model, args.data, args.eval_data, BuildOptions(use_cache=False), log,
                                  Path(workdir))
        context = _pass_context(session)
        rows = [_run_arm(session, context, text, parameters) for text, parameters in zip(args.recipes, arms)]
    setup = {"model": args.model, "task": session.bundle.task, "sequence_length": session.sequence_length,
             "training_texts": len(session.split.training), "evaluation_texts": len(session.split.evaluation),
             "seed": session.options.seed}
    print_table(rows, setup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python", "tools/bench/attention_distill.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "setup": setup, "rows": rows,
    }, indent=2) + "\n")
    print(f"\nresults: {args.out}")


def _shared_settings(settings: list[str]) -> dict:
    """`steps=400 hidden_steps=200` -> parameters, parsed the way a recipe parses them."""
    _, parameters = parse_recipe("distill:" + ",".join(settings)) if settings else ((), {})
    return parameters.get("distill", {})


def _distill_parameters(text: str, shared: dict) -> dict:
    names, parameters = parse_recipe(text)
    if names != ("distill",):
        raise SystemExit(f"each recipe must be one distill pass, got {text!r}")
    return {**parameters.get("distill", {}), **shared}


def _pass_context(session: BuildSession) -> PassContext:
    """What the build gives a pass: the training split, the original's outputs on it, no labels (embeddings)."""
    models = session.models
    training = models.encoded("training")
    with session.log.step("teacher", f"Running the original model on {len(session.split.training)} training texts"):
        teacher_outputs = session.bundle.predict(training)
    return PassContext(
        bundle=session.bundle, sequence_length=session.sequence_length, train_texts=session.split.training.texts,
        train_inputs=training, teacher_outputs=teacher_outputs, teacher=session.bundle, label_ids=None,
        calibration=models.calibration(), log=session.log, seed=session.options.seed,
    )


def _run_arm(session: BuildSession, context: PassContext, text: str, parameters: dict) -> dict:
    """One distill pass from the original, then the student's fidelity on the evaluation texts."""
    chosen = get_pass("distill", **parameters)
    started = time.perf_counter()
    result = chosen.run(context)
    seconds = time.perf_counter() - started
    fidelity = session.quality(result.bundle.predict(session.models.encoded("evaluation")))["fidelity"]
    effect = result.effect
    return {
        "recipe": text, "parameters": chosen.describe(), "seconds": round(seconds, 1),
        "cosine_mean": fidelity["cosine_mean"], "cosine_min": fidelity["cosine_min"],
        "agreement": fidelity["agreement"],
        "effect": {key: value for key, value in effect.items()
                   if key.endswith(("_first", "_last", "_before", "_after"))},
    }


def print_table(rows: list[dict], setup: dict) -> None:
    print(f"\nModel {setup['model']} ({setup['task']}), sequence length {setup['sequence_length']}, "
          f"{setup['training_texts']} training texts, {setup['evaluation_texts']} held-out texts, "
          f"seed {setup['seed']}; "
          "fp32 Keras student against the original.\n")
    print("| recipe | hidden steps | output steps | attention weight | cosine mean | cosine min | NN / label agreement "
          "| attention KL before → after | pass s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        p, effect = row["parameters"], row["effect"]
        attention = (f"{effect['attention_divergence_before']:.4f} → {effect['attention_divergence_after']:.4f}"
                     if "attention_divergence_after" in effect else "–")
        print(f"| {row['recipe']} | {p['hidden_steps']} | {p['steps']} | {p['attention_weight']:g} | "
              f"{_format(row['cosine_mean'])} | {_format(row['cosine_min'])} | {_format(row['agreement'], 3)} | "
              f"{attention} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
