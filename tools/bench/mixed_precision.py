"""Benchmark: uniform int8 against "mixed" (int8 with the most sensitive layers kept high) on the real MiniLM
embedding model, side by side in one run, per target.

For each target, `deploykit.build` runs twice on the bundled sentences (same data, seed and
calibration, the target's own gates, which "mixed" aims at): `--precision int8` and
`--precision mixed` (a build that misses a gate still writes its folder). Post-training only (no QAT
candidate after int8 on integer-only targets): the comparison is between precisions, on the same
weights. Then both artifacts run on texts that neither calibration nor the mixed choice saw: the build's own held-out evaluation texts (from its report) and
sentences of a different kind (the GPL-3 licence text, cut into sentences), each
compared with the original Keras model. Latency: `deploykit.profile` on the two folders
alternately, in this process, `--rounds` times, median p50 (one thread).

    python tools/bench/mixed_precision.py                       # nvidia-gpu and intel-cpu, ~20 min on 2 cores
    python tools/bench/mixed_precision.py --targets nvidia-gpu --other-text my_corpus.txt
    python tools/bench/mixed_precision.py --targets mobile-npu --precisions int8,mixed,a16w8 --rounds 1

On integer-only LiteRT targets the table adds the share of activation tensors at int16 and the cost of each
artifact's activations predicted from the target's `activation_cost` table, relative to all-int8.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

OTHER_TEXT = Path("/usr/share/common-licenses/GPL-3")


def sentences(path: Path, limit: int) -> list[str]:
    """Sentences of 6-60 words from a plain-text file, in order."""
    text = re.sub(r"\s+", " ", path.read_text(errors="replace"))
    found = [s.strip() for s in re.split(r"(?<=[.;:!?])\s+", text)]
    return [s for s in found if 6 <= len(s.split()) <= 60][:limit]


def fidelity_on(folder: Path, bundle, texts: list[str], length: int) -> dict:
    """The artifact in `folder` against the original model on `texts` (cosine and nearest-neighbour agreement)."""
    from deploykit.backends.base import backend_for_file
    from deploykit.evaluate import embedding_fidelity, run_examples
    from deploykit.profiling.build_folder import artifact_in

    report = json.loads((folder / "report.json").read_text())
    path = artifact_in(folder)
    backend = backend_for_file(path)
    inputs = bundle.encode(texts, length)
    runner = backend.load(path, 1, report["artifact"]["runtime_config"])
    return embedding_fidelity(bundle.predict(inputs), run_examples(runner, _artifact_encoder(folder, bundle).encode(
        texts, length)))


def _artifact_encoder(folder: Path, bundle):
    """The bundle, with the vocabulary the artifact ships where a pass trimmed it (ids renumbered)."""
    from dataclasses import replace

    from deploykit.passes.trim_vocab import with_vocabulary

    vocabulary = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if vocabulary == list(bundle.tokenizer.get_vocabulary()):
        return bundle
    return replace(bundle, tokenizer=with_vocabulary(bundle.tokenizer, vocabulary))


def activations_of(folder: Path, report: dict) -> dict | None:
    """Activation tensors by type of a LiteRT artifact (None for other runtimes)."""
    from deploykit.backends.litert import activation_precisions
    from deploykit.profiling.build_folder import artifact_in

    path = artifact_in(folder)
    return activation_precisions(path) if path.suffix == ".tflite" else None


def predicted_vs_int8(activations: dict | None, costs: dict) -> float | None:
    """The artifact's activation cost from the target's table, relative to the same elements all int8."""
    from deploykit.graph.mixed_precision import predicted_cost

    if not activations or not costs:
        return None
    predicted = predicted_cost(activations, costs, ("int8",))
    return predicted and predicted["vs_all_int8"]


def median_p50(rows: dict[str, dict], rounds: int, runs: int) -> None:
    """Profile every row's folder in turn, `rounds` times (one thread), and store each row's median p50 and the
    rounds' values: alternating keeps the host's drift out of the ratios."""
    import deploykit

    p50 = {name: [] for name in rows}
    for _ in range(rounds):
        for name, row in rows.items():
            p50[name].append(deploykit.profile(row["folder"], threads=1, runs=runs)["latency_ms"]["p50"])
    for name, row in rows.items():
        row["p50_ms"] = round(statistics.median(p50[name]), 3)
        row["p50_rounds"] = p50[name]


def _optional(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="nvidia-gpu,intel-cpu")
    parser.add_argument("--other-text", type=Path, default=OTHER_TEXT, help="plain text cut into sentences")
    parser.add_argument("--other-count", type=int, default=300)
    parser.add_argument("--precisions", default="int8,mixed", help="built side by side, in this order")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deploykit-bench-mixed"))
    args = parser.parse_args()

    import deploykit
    from deploykit.models import load_model
    from deploykit.profiling.base import ProfileSettings

    bundle = load_model("minilm-l6")
    other = sentences(args.other_text, args.other_count)
    results = {"command": " ".join(["python", *sys.argv]), "other_text": f"{args.other_text} ({len(other)} sentences)",
               "targets": {}}
    for target in args.targets.split(","):
        rows = {}
        for precision in args.precisions.split(","):
            out = args.work / precision
            started = time.perf_counter()
            result = deploykit.build("minilm-l6", target, out=out, precision=precision, force=True, use_cache=False,
                                     qat=False,
                                     profile=ProfileSettings(threads=1, runs=args.runs))
            report = json.loads((result.folder / "report.json").read_text())
            length = report["plan"][0]["sequence_length"]
            mixed = report["artifact"].get("mixed_precision") or {}
            activations = activations_of(result.folder, report)
            rows[precision] = {
                "build_s": round(time.perf_counter() - started, 1),
                "bytes": report["artifact"]["bytes"],
                "groups_kept_high": mixed.get("kept_high"),
                "ops_kept_high_share": mixed.get("ops_kept_high_share"),
                "activation_elements_kept_high_share": mixed.get("activation_elements_kept_high_share"),
                "int16_tensor_share": activations.get("int16", {}).get("tensor_share", 0.0) if activations else None,
                "predicted_cost_vs_int8": predicted_vs_int8(activations, report["target_profile"]["activation_cost"]),
                "evaluation": report["metrics"]["fidelity"],  # the build's held-out evaluation texts
                "other_text": fidelity_on(result.folder, bundle, other, length),
                "folder": str(result.folder),
            }
        median_p50(rows, args.rounds, args.runs)
        results["targets"][target] = rows
        print(f"\n{target}")
        print(f"{'precision':10} {'kept':>5} {'ops high':>8} {'int16 t':>7} {'cost':>5} {'cos eval':>9} {'nn eval':>8} "
              f"{'cos other':>9} {'nn other':>8} {'p50 ms':>7} {'MB':>6}")
        for precision, row in rows.items():
            evaluation, other_fid = row["evaluation"], row["other_text"]
            print(f"{precision:10} {len(row['groups_kept_high'] or []):5d} {row['ops_kept_high_share'] or 0:8.3f} "
                  f"{_optional(row['int16_tensor_share']):>7} {_optional(row['predicted_cost_vs_int8']):>5} "
                  f"{evaluation['cosine_mean']:9.4f} {evaluation['agreement']:8.3f} "
                  f"{other_fid['cosine_mean']:9.4f} {other_fid['agreement']:8.3f} {row['p50_ms']:7.2f} "
                  f"{row['bytes'] / 1e6:6.1f}")
    output = Path(__file__).parent / "results" / f"mixed_precision_{args.targets.replace(',', '_')}.json"
    output.parent.mkdir(exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
