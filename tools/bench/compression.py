"""Benchmark: training-time compression passes + int8, every recipe side by side in one run.

One machine, one profiler (a fresh worker process per artifact, batch 1), the same
evaluation texts for every row, speed-ups against LiteRT fp32 of the original:

    python tools/bench/compression.py                       # MiniLM embedding model, bundled sentences
    python tools/bench/compression.py --model /tmp/minilm-topics/classifier.keras \\
        --data /tmp/minilm-topics/train.jsonl --eval-data /tmp/minilm-topics/test.jsonl
    python tools/bench/compression.py --recipes "distill:layers=2" "prune:heads=0.5,steps=200"
    python tools/bench/compression.py --model /tmp/minilm-topics/classifier.keras --data ... --eval-data ... \
        --target intel-cpu --precision int8,int4-weights --recipes trim-vocab     # every recipe at each precision

Each recipe runs through the build session exactly as `deploykit build --recipe`
does (passes in order, fine-tuned against the original, the original untouched),
then exports at each `--precision` (default dynamic-int8, LiteRT) and is validated on
the evaluation texts with its own tokenizer.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console

from deploykit import runtime_env  # noqa: F401
from deploykit.backends.base import get_backend
from deploykit.pipeline import BuildOptions, prepare_session
from deploykit.passes.recipe import parse_recipe, recipe
from deploykit.profiling.base import ProfileSettings, get_runner
from deploykit.progress import StepLog
from deploykit.target_loader import load_target
from ptq_vs_vendor import _format  # same folder: one number format for every benchmark table

DEFAULT_RECIPES = (
    "distill",  # half the layers, evenly spaced, trained on the teacher
    "prune:layers=3",  # the 3 layers whose removal changes the outputs least, then fine-tuned
    "prune:heads=0.5,neurons=0.5",  # half the heads and FFN units in every layer
    "trim-vocab",  # the corpus's tokens (+ ASCII characters), no training
    "distill,trim-vocab",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default=None, help="JSONL/CSV (default: the bundled sentences)")
    parser.add_argument("--eval-data", default=None, help="separate evaluation file (default: held out from --data)")
    parser.add_argument("--target", default="arm-cpu", help="target whose backend and threads are used")
    parser.add_argument("--precision", default="dynamic-int8", help="comma-separated: each recipe at each precision")
    parser.add_argument("--sequence-length", type=int, default=None, help="default: chosen from the data, as build does")
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES))
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    recipes = [parse_recipe(text) for text in args.recipes]
    target = load_target(args.target)
    backend = get_backend(target.runtime)
    # No cache: every row is measured in this run, side by side (a cached measurement is another run's machine state).
    options = BuildOptions(sequence_length=args.sequence_length, profile=ProfileSettings(runs=args.runs),
                           use_cache=False)
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as workdir:
        work = Path(workdir)
        log = StepLog(Console(stderr=True))  # progress on stderr, the table on stdout
        session = prepare_session(args.model, args.data, args.eval_data, options, log, work)
        runner = get_runner(target.profiling)
        threads = runner.threads(target)
        precisions = args.precision.split(",")
        rows = [(f"{backend.name} fp32, original", session.baseline(backend, target, runner, threads), None, [])]
        for precision in precisions:
            original = backend.export(session.models.saved_model(), precision, session.export_options(target),
                                      work / f"original-{precision}")
            rows.append((f"{precision}, original", session.measure(backend, original, runner, threads, "original"),
                         None, []))
        for number, (names, values) in enumerate(recipes):
            steps = recipe(names, values)  # passes with parameters: what the session's caches key on
            started = time.perf_counter()
            saved_model = session.models.saved_model(None, steps)
            seconds = time.perf_counter() - started
            for precision in precisions:
                artifact = backend.export(saved_model, precision, session.export_options(target, steps),
                                          work / f"recipe{number}-{precision}")
                label = f"{args.recipes[number]} + {precision}"
                rows.append((label, session.measure(backend, artifact, runner, threads, label, steps), seconds,
                             session.models.pass_results(steps)))
        print_table(rows, session, threads)


def print_table(rows, session, threads) -> None:
    print(f"\nModel {session.bundle.source} ({session.bundle.task}), sequence length {session.sequence_length}, "
          f"{len(session.split.evaluation)} evaluation texts, {len(session.split.training)} training texts, "
          f"{threads} threads, batch 1.\n")
    header = ("| recipe | parameters | MB | p50 ms | speed-up vs fp32 | cosine mean | NN / label agreement "
              "| accuracy | passes s |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    base_p50 = rows[0][1].profile["latency_ms"]["p50"]
    for label, measured, seconds, passes in rows:
        size = sum(path.stat().st_size for path in measured.artifact.files)
        p50 = measured.profile["latency_ms"]["p50"]
        fidelity = measured.quality["fidelity"]
        count = passes[-1]["effect"]["parameters_after"] if passes else session.bundle.details["parameters"]
        print(f"| {label} | {count / 1e6:.1f}M | {size / 1e6:.1f} | {p50:.2f} | {base_p50 / p50:.2f}× | "
              f"{_format(fidelity.get('cosine_mean'))} | {_format(fidelity['agreement'], 3)} | "
              f"{_format(measured.quality['accuracy'], 4)} | {'' if seconds is None else f'{seconds:.0f}'} |")


if __name__ == "__main__":
    main()
