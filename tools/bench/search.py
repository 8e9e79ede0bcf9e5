"""Benchmark: the search against today's fixed candidate list, per target, in one run; then the same search again
through the cache.

For each case (a fine-tuned MiniLM classifier with labels, the MiniLM embedding model
without labels) three `deploykit` processes run one after the other, each timed:

1. fixed:  `deploykit build` with a latency budget no candidate can meet, so every fixed
   candidate (the target's precisions, QAT on integer-only targets, the target's recipes)
   is built and measured; the best fixed point is the fastest that passes every quality gate.
2. search: `deploykit search --trials N` over the same targets, with an empty cache.
3. again:  the identical search into a new output folder, with the cache of run 2.

Then the artifact each job shipped is timed side by side: `deploykit.profile` on the
fixed list's and the search's target folder alternately, in fresh processes, and the
median p50 of those rounds is compared (the builds' own timings come from separate
processes and vary by 15-30% on a small VM).

Fine-tunes are shortened for both (the same `--set` for fixed and search), profiling
uses one thread (stable p50 on a small machine), and nothing here is tuned to MiniLM:

    python tools/train_classifier.py --out /tmp/minilm-topics          # the classifier case's model
    python tools/bench/search.py                                        # both cases, about an hour on 2 cores
    python tools/bench/search.py --cases embedding --trials 4 --targets arm-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "classifier": {"model": "/tmp/minilm-topics/classifier.keras", "data": "/tmp/minilm-topics/train.jsonl",
                   "eval_data": "/tmp/minilm-topics/test.jsonl", "targets": "arm-cpu"},
    "embedding": {"model": "minilm-l6", "data": None, "eval_data": None, "targets": "intel-cpu,arm-cpu,mobile-npu"},
}
# Short fine-tunes for every structural pass and QAT, the same for the fixed list and the search.
SHORT = ("distill.steps=150", "distill.hidden_steps=50", "prune.steps=150", "factorize.steps=150", "qat.steps=100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="classifier,embedding")
    parser.add_argument("--targets", help="override every case's targets (comma-separated)")
    parser.add_argument("--trials", type=int, default=8, help="trials per target's study")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="alternating side-by-side timings of the two artifacts")
    parser.add_argument("--work", type=Path, default=Path("/tmp/deploykit-bench-search"))
    parser.add_argument("--set", dest="settings", nargs="*", default=list(SHORT))
    args = parser.parse_args()

    results = {}
    for case in args.cases.split(","):
        spec = CASES[case]
        folder = args.work / case
        folder.mkdir(parents=True, exist_ok=True)
        targets = args.targets or spec["targets"]
        common = [spec["model"], "--target", targets, "--threads", "1", "--runs", str(args.runs)]
        common += ["--data", spec["data"]] if spec["data"] else []
        common += ["--eval-data", spec["eval_data"]] if spec["eval_data"] else []
        for setting in args.settings:
            common += ["--set", setting]
        empty_profiles = folder / "no-profiles"
        empty_profiles.mkdir(exist_ok=True)
        common += ["--profiles", str(empty_profiles), "--force"]
        timings = {
            "fixed": _run(["build", *common, "--out", str(folder / "fixed"), "--max-latency-ms", "0.001",
                           "--no-cache"], folder / "fixed.log"),
            "search": _run(["search", *common, "--trials", str(args.trials), "--out", str(folder / "search"),
                            "--cache", str(folder / "cache")], folder / "search.log", fresh=folder / "search",
                           cache=folder / "cache"),
            "again": _run(["search", *common, "--trials", str(args.trials), "--out", str(folder / "again"),
                           "--cache", str(folder / "cache")], folder / "again.log", fresh=folder / "again"),
        }
        results[case] = {"timings": timings, "targets": {}}
        for target in targets.split(","):
            results[case]["targets"][target] = _compare(folder, target)
            results[case]["targets"][target]["side_by_side"] = _side_by_side(folder, target, args.rounds, args.runs)
        _print_case(case, results[case])
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.work / 'results.json'}")


def _run(arguments: list[str], log: Path, fresh: Path | None = None, cache: Path | None = None) -> float:
    """One deploykit process, its output in `log`; returns its wall-clock seconds."""
    import shutil

    for folder in (fresh, cache):
        if folder is not None and folder.exists():
            shutil.rmtree(folder)
    command = [sys.executable, "-m", "deploykit.cli", *arguments]
    print("$ deploykit " + " ".join(arguments), flush=True)
    started = time.perf_counter()
    with log.open("w") as stream:
        code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env={**os.environ}).returncode
    seconds = time.perf_counter() - started
    print(f"  exit {code}, {seconds:.0f} s (log: {log})", flush=True)
    if code not in (0, 3):
        raise SystemExit(f"deploykit failed; see {log}")
    return round(seconds, 1)


def _quality_passed(checks: list[dict]) -> bool:
    return all(check["passed"] for check in checks if check["name"] != "latency_ms_p50")


def _compare(folder: Path, target: str) -> dict:
    fixed = json.loads((folder / "fixed" / target / "report.json").read_text())
    candidates = [{"candidate": c["candidate"], "recipe": c["recipe"], "latency_ms": c["latency_ms_p50"],
                   "size_mb": c["bytes"] / 1e6, "passed": _quality_passed(c["checks"]),
                   "quality": _quality(c)} for c in fixed["candidates"]]
    passing = [c for c in candidates if c["passed"]]
    best_fixed = min(passing, key=lambda c: c["latency_ms"]) if passing else None
    search = json.loads((folder / "search" / target / "search.json").read_text())
    chosen = next(t for t in search["trials"] if t["number"] == search["chosen_trial"])
    again = json.loads((folder / "again" / target / "search.json").read_text())
    return {
        "fixed": candidates,
        "best_fixed": best_fixed,
        "search": {"trial": chosen["number"], "candidate": chosen["candidate"]["label"],
                   "recipe": chosen["candidate"]["recipe"], **chosen["result"]},
        "front": search["front"],
        "states": search["states"],
        "again_chosen_same": again["chosen_trial"] == search["chosen_trial"]
        and again["front"] == search["front"],
    }


def _side_by_side(folder: Path, target: str, rounds: int, runs: int) -> dict:
    """Median p50 (ms) of the fixed job's and the search's shipped artifacts, timed alternately, one thread each."""
    import deploykit

    shipped = {job: folder / job / target for job in ("fixed", "search")}
    p50s: dict[str, list[float]] = {job: [] for job in shipped}
    for _ in range(rounds):
        for job, path in shipped.items():
            p50s[job].append(deploykit.profile(path, threads=1, runs=runs, warmup=5)["latency_ms"]["p50"])
    labels = {job: json.loads((path / "report.json").read_text())["artifact"]["candidate"]
              for job, path in shipped.items()}
    return {job: {"shipped": labels[job], "p50_ms": round(statistics.median(p50s[job]), 3), "rounds": p50s[job]}
            for job in shipped}


def _quality(candidate: dict) -> str:
    if candidate["accuracy_drop"] is not None:
        return f"drop {candidate['accuracy_drop']:.2f} pt"
    fidelity = candidate["fidelity"]
    if fidelity.get("cosine_mean") is not None:
        return f"cos {fidelity['cosine_mean']:.4f}"
    return f"agree {fidelity['agreement']:.3f}"


def _print_case(case: str, result: dict) -> None:
    timings = result["timings"]
    print(f"\n## {case}: fixed list {timings['fixed']:.0f} s, search {timings['search']:.0f} s, "
          f"identical search again {timings['again']:.0f} s ({timings['again'] / timings['search']:.1%} of the first)")
    print("| target | best fixed candidate | p50 ms | MB | search's choice | p50 ms | MB | quality loss | "
          "speed-up vs best fixed | front | trials |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for target, row in result["targets"].items():
        fixed, chosen = row["best_fixed"], row["search"]
        speedup = f"{fixed['latency_ms'] / chosen['latency_ms']:.2f}×" if fixed else "no fixed point passes"
        label = f"{chosen['candidate']} ({chosen['recipe'] or 'no passes'})"
        print(f"| {target} | {fixed['candidate'] + ' ' + fixed['quality'] if fixed else '–'} | "
              f"{fixed['latency_ms']:.2f} | {fixed['size_mb']:.1f} | " if fixed else f"| {target} | – | – | – | ",
              end="")
        print(f"{label} | {chosen['latency_ms']:.2f} | {chosen['size_mb']:.1f} | {chosen['quality_loss']:.4g} | "
              f"{speedup} | {len(row['front'])} | {row['states']} |")
    for target, row in result["targets"].items():
        print(f"\n{target}, every fixed candidate:")
        for c in row["fixed"]:
            print(f"  {c['candidate']:<40} p50 {c['latency_ms']:8.2f} ms  {c['size_mb']:6.1f} MB  {c['quality']:<16} "
                  f"{'passes' if c['passed'] else 'misses a quality gate'}")
        print(f"  identical second search chose the same point and front: {row['again_chosen_same']}")
        timed = row["side_by_side"]
        print(f"  side by side ({len(timed['fixed']['rounds'])} alternating rounds, median p50): fixed job shipped "
              f"{timed['fixed']['shipped']} {timed['fixed']['p50_ms']:.2f} ms, search shipped "
              f"{timed['search']['shipped']} {timed['search']['p50_ms']:.2f} ms, "
              f"ratio {timed['fixed']['p50_ms'] / timed['search']['p50_ms']:.2f}×")


if __name__ == "__main__":
    main()
