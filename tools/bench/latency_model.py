"""Benchmark: the latency model's predictions against measurements of candidates it was not fitted on.

Measures MiniLM (all-MiniLM-L6-v2, the bundled sentences) on this host through real
`deploykit build` runs with `--save-profile`, for the LiteRT target (arm-cpu) and the
OpenVINO target (intel-cpu):

- the fit set: the fp32 baseline and the target's first precision (dynamic-int8 / int8)
  at sequence lengths 16, 32, 64, 128 and 256;
- held out: sequence length 96 at both precisions; a 3-layer distilled student
  (`distill:layers=3`, untrained: latency depends on the shape, not on the weights) at
  length 64; and on LiteRT another precision, fp16, at lengths 64 and 96, predicted from
  the fp32 fit because XNNPACK runs fp16 weights as fp32 (the backend declares it).

Then fits the model on the fit set only and prints predicted vs measured p50 for every
held-out candidate. The measured profiles are written to --profiles (the repository's
profiles/ holds the ones measured on the build host, named for it).

    python tools/bench/latency_model.py                      # measure (about 15 min on 2 cores), then compare
    python tools/bench/latency_model.py --no-measure         # compare from the profiles already in --profiles
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from deploykit.latency_model import Architecture, fit
from deploykit.profiling.local import LocalRunner
from deploykit.user_files import read_json

FIT_LENGTHS = (16, 32, 64, 128, 256)
HELD_OUT_LENGTH = 96
STUDENT = "distill:layers=3,steps=0,hidden_steps=0"  # the student's shape, without spending time training it
TARGETS = {"arm-cpu": {"fp16": "fp32"}, "intel-cpu": {}}  # target -> precisions run as another's (executes_as)


def measure(profiles: Path, runs: int, threads: int, console: Console) -> None:
    """Every build the comparison needs, each a `deploykit build --save-profile` process of its own.

    One process per build, as users run it: a long-lived process that built before keeps runtime thread
    pools (OpenVINO's, TensorFlow's) that compete with the profiling worker on a small machine.
    """
    quick = ["--runs", str(runs), "--warmup", "5", "--threads", str(threads), "--evaluation-samples", "32", "--calibration-samples", "64",
             "--save-profile", str(profiles)]
    builds = [["--target", "arm-cpu,intel-cpu", "--sequence-length", str(n)] for n in (*FIT_LENGTHS, HELD_OUT_LENGTH)]
    builds += [["--target", "arm-cpu,intel-cpu", "--sequence-length", "64", "--recipe", STUDENT, "--min-cosine", "-1"]]
    builds += [["--target", "arm-cpu", "--sequence-length", str(n), "--precision", "fp16"] for n in (64, HELD_OUT_LENGTH)]
    for number, arguments in enumerate(builds, 1):
        console.print(f"[bold]Build {number}/{len(builds)}:[/] deploykit build {' '.join(arguments)}")
        with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as out:
            subprocess.run([sys.executable, "-m", "deploykit.cli", "build", *arguments, "--out", out, *quick],
                           check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "KERAS_BACKEND": "tensorflow", "HF_HUB_OFFLINE": "1"})


def held_out(row: tuple[Architecture, int, float, str]) -> bool:
    architecture, length, _, recipe = row
    return length not in FIT_LENGTHS or bool(recipe)


def compare(profiles: Path, device: str, console: Console) -> list[float]:
    errors = []
    table = Table(title=f"Latency model on {device}: fitted on lengths {', '.join(map(str, FIT_LENGTHS))} of the "
                  "original; every row below was held out")
    for column in ("target", "candidate", "length", "layers", "fitted on", "predicted p50 ms", "measured p50 ms",
                   "error"):
        table.add_column(column)
    for target, executes_as in TARGETS.items():
        profile = read_json(profiles / target / f"{device}.json", dict)
        rows = {precision: [(Architecture(**m["architecture"]), m["sequence_length"], m["latency_ms"]["p50"],
                             m["recipe"]) for m in profile["measurements"] if m["precision"] == precision]
                for precision in {m["precision"] for m in profile["measurements"]}}
        fits = {precision: fit(precision, [r[:3] for r in entries if not held_out(r)])
                for precision, entries in rows.items()}
        for precision, entries in sorted(rows.items()):
            fitted = fits.get(precision) or fits.get(executes_as.get(precision, ""))
            for architecture, length, measured, recipe in sorted(entries, key=lambda r: (r[3], r[1])):
                if fitted is None or not (held_out((architecture, length, measured, recipe)) or fits.get(precision) is None):
                    continue
                predicted = fitted.predict(architecture, length)
                errors.append(predicted / measured - 1)
                label = f"{recipe.split(':')[0] + ' + ' if recipe else ''}{precision}"
                table.add_row(target, label, str(length), str(architecture.layers), fitted.precision,
                              f"{predicted:.2f}", f"{measured:.2f}", f"{predicted / measured - 1:+.1%}")
    console.print(table)
    worst = max(abs(e) for e in errors)
    console.print(f"Held-out candidates: {len(errors)}; mean |error| {sum(abs(e) for e in errors) / len(errors):.1%}, "
                  f"worst {worst:.1%} ({'within' if worst <= 0.15 else 'OUTSIDE'} ±15%).")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=Path, default=Path("profiles"))
    parser.add_argument("--runs", type=int, default=100)
    # One thread by default: on a 2-core VM, two threads on two cores stall on whichever is preempted, and the
    # same artifact's p50 moved by up to 60% between runs (README); the model is only as good as its points.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-measure", dest="measure", action="store_false")
    arguments = parser.parse_args()
    console = Console(width=150)
    if arguments.measure:
        measure(arguments.profiles, arguments.runs, arguments.threads, console)
    compare(arguments.profiles, LocalRunner(LocalRunner.settings_class(name="local")).device_name, console)


if __name__ == "__main__":
    main()
