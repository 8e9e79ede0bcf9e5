"""Benchmark: does a build's speed-up survive a busy machine?

Builds the same artifact twice (no cache, so each build times afresh): once on a quiet machine, once while a
CPU-bound process, started and stopped here, keeps one core busy. Prints both builds' speed-ups over the fp32
baseline as the report gives them (alternating rounds: median per-round ratio and its bootstrap interval) and,
beside them, the ratio of the two artifacts' separately timed p50s (how deploykit timed before, and how runners that
cannot pair still do). A speed-up that holds moves little between the two builds, and each interval holds the other
build's point estimate; a build that cannot hold it (its threads waited for a core in too many rounds) must say
inconclusive instead of stating a figure.

    python tools/bench/timing_under_load.py --model minilm-l6 --target arm-cpu
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path


def _burn(stop) -> None:
    """A CPU-bound loop until `stop` is set: another job on the same machine."""
    count = 0
    while not stop.is_set():
        for _ in range(100_000):
            count += 1


def _build(model: str, target: str, out: Path, samples: int, threads: int | None) -> dict:
    import deploykit as dk
    from deploykit.options import BuildOptions
    from deploykit.profiling.base import ProfileSettings

    options = BuildOptions(out=out, use_cache=False, evaluation_samples=samples, calibration_samples=samples,
                           profile=ProfileSettings(threads=threads))
    return dk.build(model, target=target, options=options).report


def _row(name: str, report: dict) -> dict:
    paired = report["speed"].get("paired") or {}
    separate = report["baseline"]["latency_ms"]["p50"] / report["metrics"]["latency_ms"]["p50"]
    return {"run": name, "speedup": report["metrics"]["speedup_vs_baseline"], "interval": paired.get("interval"),
            "rounds": paired.get("rounds"), "ratio_cv": paired.get("ratio_cv"), "drift": paired.get("drift"),
            "inconclusive": paired.get("inconclusive"), "contended_rounds": paired.get("contended_rounds"),
            "rounds_timed": paired.get("rounds_timed"), "median_wait_share": paired.get("median_wait_share"),
            "separate_p50_ratio": round(separate, 4), "artifact": report["artifact"]["candidate"],
            "by_fastest_run": {key: (paired.get("by_fastest_run") or {}).get(key) for key in ("speedup", "interval", "ratio_cv")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--target", default="arm-cpu")
    parser.add_argument("--samples", type=int, default=64, help="evaluation and calibration samples per build")
    parser.add_argument("--threads", type=int, help="time with this many threads (default: the target's, at most "
                        "this host's cores)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="timing-under-load-") as scratch:
        rows.append(_row("quiet", _build(args.model, args.target, Path(scratch) / "quiet", args.samples, args.threads)))
        stop = multiprocessing.Event()
        burner = multiprocessing.Process(target=_burn, args=(stop,), daemon=True)
        burner.start()
        time.sleep(1)
        try:
            rows.append(_row("one core busy", _build(args.model, args.target, Path(scratch) / "busy", args.samples, args.threads)))
        finally:
            stop.set()
            burner.join(10)
            if burner.is_alive():
                burner.terminate()
    quiet, busy = rows
    print(f"{args.model} -> {args.target}, shipped {quiet['artifact']} / {busy['artifact']}")
    print(f"{'run':14s} {'speed-up (alternating rounds)':32s} {'rounds':>6s} {'busy':>5s} {'wait':>6s} "
          f"{'ratio CV':>9s} {'drift':>6s} {'verdict':>13s} {'separate p50s':>14s}")
    for row in rows:
        low, high = row["interval"] or (float("nan"), float("nan"))
        verdict = "inconclusive" if row["inconclusive"] else "stated"
        print(f"{row['run']:14s} {row['speedup']:6.2f}x ({low:.2f}-{high:.2f}){'':13s} {row['rounds'] or 0:6d} "
              f"{row['contended_rounds'] or 0:5d} {(row['median_wait_share'] or 0):6.1%} {(row['ratio_cv'] or 0):9.1%} "
              f"{str(row['drift']):>6s} {verdict:>13s} {row['separate_p50_ratio']:13.2f}x")
    moved = abs(busy["speedup"] / quiet["speedup"] - 1)
    inside = (quiet["interval"] and busy["interval"] and quiet["interval"][0] <= busy["speedup"] <= quiet["interval"][1]
              and busy["interval"][0] <= quiet["speedup"] <= busy["interval"][1])
    moved_separate = abs(busy["separate_p50_ratio"] / quiet["separate_p50_ratio"] - 1)
    print(f"alternating rounds: the busy build's speed-up is {moved:.1%} from the quiet one's; each interval holds "
          f"the other's point estimate: {bool(inside)}. Separate p50s moved {moved_separate:.1%}. The busy build "
          f"{'marks its speed-up inconclusive' if busy['inconclusive'] else 'states its speed-up'}; the quiet one "
          f"{'marks its speed-up inconclusive' if quiet['inconclusive'] else 'states its speed-up'}.")
    if args.json:
        document = {"model": args.model, "target": args.target, "threads": args.threads, "rows": rows}
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
