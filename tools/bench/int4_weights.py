"""Benchmark: int4 weights against the target's 8-bit precision and fp32 on the real MiniLM embedding model, side by
side in one run.

Each variant is one `deploykit.build` on the bundled sentences (same data, seed and calibration; no cache), pinned to a
precision and, for int4-weights, to int4 settings (and trained only where its recipe says so). Every artifact then runs on texts neither calibration nor GPTQ saw:
the build's own held-out evaluation texts and sentences of a different kind (the GPL-3 licence text), compared with
the original Keras model. Latency: `deploykit.profile` on every folder in turn, `--rounds` times, median p50 (1 thread).

    python tools/bench/int4_weights.py                                   # arm-cpu (LiteRT), ~20 min on 2 cores
    python tools/bench/int4_weights.py --target intel-cpu --variants int8 "int4-weights:embeddings=int4"
    python tools/bench/int4_weights.py --variants "int4-weights:group_size=32,embeddings=int4,algorithm=rtn"
    python tools/bench/int4_weights.py --target intel-cpu --variants fp32 "int4-weights:embeddings=int4" \
        "int4-weights:embeddings=int4,recipe=int4-qat:learn_clipping=false"  # int4-aware training, pass parameters after the name

A variant is PRECISION or int4-weights:KEY=VALUE,... with the keys of Int4Settings (group_size, ratio, algorithm,
embeddings=int4|int8, embedding_group_size), and recipe=PASS (e.g. int4-qat, with at most one parameter after a colon:
recipe=int4-qat:learn_clipping=false; the rest are the pass's defaults; passes joined by +:
recipe=trim-vocab:keep=reachable+int4-qat).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from mixed_precision import OTHER_TEXT, fidelity_on, median_p50, sentences  # same folder

DEFAULT_VARIANTS = ("fp32", "dynamic-int8", "int4-weights", "int4-weights:embeddings=int4",
                    "int4-weights:group_size=32,embeddings=int4")


def parse_variant(text: str):
    """(precision, Int4Settings, recipe or None) from PRECISION or int4-weights:KEY=VALUE,..."""
    from deploykit.backends.base import Int4Settings

    precision, _, settings = text.partition(":")
    int4, recipe = Int4Settings(), None
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if key == "recipe":
            recipe = value.replace("+", ",")
            continue
        converted = {"group_size": int, "ratio": float, "algorithm": str, "embedding_group_size": int,
                     "embeddings": lambda v: v == "int4"}[key](value)
        int4 = replace(int4, **{key: converted})
    return precision, int4, recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="arm-cpu")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--other-text", type=Path, default=OTHER_TEXT, help="plain text cut into sentences")
    parser.add_argument("--other-count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deploykit-bench-int4"))
    args = parser.parse_args()

    import deploykit
    from deploykit.models import load_model
    from deploykit.profiling.base import ProfileSettings

    bundle = load_model("minilm-l6")
    other = sentences(args.other_text, args.other_count)
    results = {"command": " ".join(["python", *sys.argv]), "other_text": f"{args.other_text} ({len(other)} sentences)",
               "target": args.target, "variants": {}}
    rows = results["variants"]
    for number, variant in enumerate(args.variants):
        precision, int4, recipe = parse_variant(variant)
        started = time.perf_counter()
        result = deploykit.build("minilm-l6", args.target, out=args.work / f"variant{number}", precision=precision,
                                 int4=int4, recipe=recipe, qat=False, force=True, use_cache=False,
                                 profile=ProfileSettings(threads=1, runs=10))
        report = json.loads((result.folder / "report.json").read_text())
        rows[variant] = {
            "build_s": round(time.perf_counter() - started, 1),
            "bytes": report["artifact"]["bytes"],
            "method": report["artifact"]["method"],
            "evaluation": report["metrics"]["fidelity"],
            "other_text": fidelity_on(result.folder, bundle, other, report["plan"][0]["sequence_length"]),
            "folder": str(result.folder),
        }
    median_p50(rows, args.rounds, args.runs)
    results_folder = Path(__file__).parent / "results"
    results_folder.mkdir(exist_ok=True)
    (results_folder / f"int4_weights_{args.target}.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{args.target}, MiniLM, {results['other_text']}, 1 thread")
    print("| variant | MB | cosine held-out | NN held-out | cosine GPL-3 | NN GPL-3 | p50 ms | build s |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, row in rows.items():
        evaluation, other_fidelity = row["evaluation"], row["other_text"]
        print(f"| {variant} | {row['bytes'] / 1e6:.1f} | {evaluation['cosine_mean']:.4f} | "
              f"{evaluation['agreement']:.3f} | {other_fidelity['cosine_mean']:.4f} | {other_fidelity['agreement']:.3f} "
              f"| {row['p50_ms']:.2f} | {row['build_s']:.0f} |")


if __name__ == "__main__":
    main()
