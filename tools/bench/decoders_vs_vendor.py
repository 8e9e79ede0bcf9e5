"""Benchmark: deploykit's decoder artifacts vs the vendors' default weight compression and vs llama.cpp.

Everything is measured in one run, on one machine, on the same held-out passages and prompts:

    python tools/bench/decoders_vs_vendor.py                         # SmolLM2-135M-Instruct (GGUF Q4_1)
    python tools/bench/decoders_vs_vendor.py --rounds 7 --threads 2 --json tools/bench/results/decoders.json

Rows:
- deploykit intel-cpu / arm-cpu: what `deploykit build MODEL --target intel-cpu,arm-cpu` ships (its own gates);
- NNCF default int4: `nncf.compress_weights(model, mode=INT4_ASYM)` with every other argument at NNCF's default
  but the group-size fallback (its default group of 128 refuses models whose widths it does not divide, SmolLM2's
  576), on the same OpenVINO IR, run with the CPU plugin's defaults;
- LiteRT default int8: TFLiteConverter with Optimize.DEFAULT (dynamic-range int8), the same signatures;
- float32 of each runtime, the baseline each speed-up is taken against;
- llama.cpp: the original GGUF file run by llama-cpp-python, fed deploykit's token ids, when it is installed. It
  builds from source; on CPUs with AMX build it without AMX, whose matmul crashes (ggml-org/llama.cpp#20824):
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON"
  pip install --no-cache-dir --no-deps llama-cpp-python==0.3.36

Columns: size, time to first token (128-token prompt), decode tokens/s after a 128-token prefill, perplexity ratio
and top-1 agreement against the float original, greedy match of the first 16 tokens. Timings come from alternating
rounds (every artifact once per round, in turn), so host load hits all rows alike; each is a median with its
range over the rounds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from deploykit import runtime_env  # noqa: F401
from deploykit.generation.artifact_folder import open_decoder_folder
from deploykit.generation.backends.base import DecoderExport, export_in_child, get_decoder_backend
from deploykit.generation.build import GenerationOptions, build_decoder, held_out_text
from deploykit.generation.loaders import load_decoder
from deploykit.generation.metrics import measure_fidelity
from deploykit.generation.profile import TimingPlan, time_side_by_side
from deploykit.generation.runtime import LoadedDecoder
from deploykit.progress import StepLog
from deploykit.target_loader import load_target


def nncf_default_int4(saved_model: Path, folder: Path) -> list[Path]:
    """NNCF's int4 at its defaults, except where they refuse the model: group 128 does not divide SmolLM2's 576
    channels, and NNCF stops with InvalidGroupSizeError; its message suggests the fallback used here (ADJUST)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    fallback = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)
    model = nncf.compress_weights(ov.convert_model(str(saved_model)), mode=nncf.CompressWeightsMode.INT4_ASYM,
                                  advanced_parameters=fallback)
    folder.mkdir(parents=True)
    ov.save_model(model, str(folder / "model.xml"))
    return [folder / "model.xml", folder / "model.bin"]


def llama_cpp_decoder(gguf: Path, cache_length: int, threads: int | None) -> tuple[LoadedDecoder, int] | None:
    """llama.cpp on the GGUF file as a LoadedDecoder (it keeps its own KV cache: the step ignores the cache
    argument and starts over at index 0), and the file's size; None when llama-cpp-python is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    # logits_all: logits at every prompt position, as deploykit's prefill computes them (and the gates need).
    model = llama_cpp.Llama(model_path=str(gguf), n_ctx=cache_length, n_threads=threads, n_threads_batch=threads,
                            n_gpu_layers=0, logits_all=True, verbose=False)

    def step(tokens: np.ndarray, cache: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        ids = [int(t) for t in tokens[0]]
        if index == 0:
            model.reset()
        model.n_tokens = index  # positions past index are rewritten, as the exported artifacts do
        model.eval(ids)
        logits = np.asarray(model.scores[index:index + len(ids)], dtype=np.float32)[None]
        return logits, np.zeros((1, 1, 2, len(ids), 1, 1), dtype=np.float32)

    description = f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"
    return LoadedDecoder(step, (1, 1, 2, cache_length, 1, 1), None, description), gguf.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cache-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--eval-texts", type=int, default=16)
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args()

    log = StepLog(__import__("rich.console").console.Console())
    bundle = load_decoder(args.model)
    options = GenerationOptions(cache_length=args.cache_length, eval_texts=args.eval_texts, threads=args.threads,
                                timing=TimingPlan(prompt_lengths=(128,), cache_fills=(128,), rounds=args.rounds))
    text = held_out_text(bundle, options, calibrate=True)  # the build's evaluation passages, none calibrated on
    text.reference_logits = [bundle.full_logits(ids) for ids in text.evaluation]
    original = bundle.loaded(args.cache_length)
    decoders: dict[str, tuple[LoadedDecoder, int]] = {}
    with tempfile.TemporaryDirectory(prefix="decoder-bench-") as scratch_name:
        scratch = Path(scratch_name)
        build_decoder(bundle, [load_target("intel-cpu"), load_target("arm-cpu")], scratch / "dist", options, log)
        for target in ("intel-cpu", "arm-cpu"):
            report = json.loads((scratch / "dist" / target / "report.json").read_text())
            if report["passed"]:
                loaded, _, _ = open_decoder_folder(scratch / "dist" / target, args.threads)
                decoders[f"deploykit {target}: {report['artifact']['weights']}"] = (loaded,
                                                                                  report["artifact"]["bytes"])
        for runtime, vendor in (("openvino", "NNCF default int4"), ("litert", "LiteRT default int8")):
            backend = get_decoder_backend(runtime)
            export = DecoderExport("fp32", args.cache_length, options.prefill_length)
            saved = scratch / f"saved-{runtime}"
            bundle.write_saved_model(saved, args.cache_length, backend.signatures(export))
            with log.step(runtime, f"{runtime}: float32 and the vendor's default"):
                fp32 = export_in_child(runtime, saved, export, scratch / f"{runtime}-fp32")
                decoders[f"{runtime} float32"] = (backend.load(fp32.path, args.threads, fp32.runtime_config),
                                                  sum(p.stat().st_size for p in fp32.files))
                if runtime == "openvino":
                    files = nncf_default_int4(saved, scratch / "nncf-default")
                else:
                    default = replace(export, weights="int8-dynamic")
                    files = export_in_child(runtime, saved, default, scratch / "litert-default").files
                decoders[vendor] = (backend.load(files[0], args.threads), sum(p.stat().st_size for p in files))
        if bundle.details.get("format") == "gguf":
            from deploykit.generation.loaders import ALIASES, alias_path

            gguf = alias_path(args.model) if args.model in ALIASES else Path(args.model)
            peer = llama_cpp_decoder(gguf, args.cache_length, args.threads)
            if peer is None:
                print("llama.cpp: llama-cpp-python is not installed (pip install llama-cpp-python); row left out.")
            else:
                decoders["llama.cpp on the GGUF file"] = peer
        rows = {}
        with log.step("fidelity", "scoring every artifact on the held-out passages"):
            for name, (decoder, size) in decoders.items():
                fidelity = measure_fidelity(text.reference_logits, text.evaluation, decoder, original, text.prompts,
                                            options.greedy_tokens, text.continuations)
                rows[name] = {"bytes": size, "runtime": decoder.description, **fidelity.as_dict()}
        with log.step("timing", f"timing {len(decoders)} artifacts in {args.rounds} alternating rounds"):
            vocabulary = bundle.tokenizer.get_vocab_size()
            timing = time_side_by_side({name: d for name, (d, _) in decoders.items()}, vocabulary, options.timing)
    for name, measured in timing["artifacts"].items():
        rows[name]["timing"] = measured
    print(f"\n{'artifact':<44} {'MB':>7} {'TTFT@128 ms':>18} {'decode tok/s':>18} {'ppl ratio':>9} {'top-1':>6} "
          f"{'greedy16':>8}")
    for name, row in rows.items():
        ttft, decode = row["timing"]["ttft_ms@128"], row["timing"]["decode_tokens_per_s@128"]
        print(f"{name:<44} {row['bytes'] / 1e6:7.1f} {_cell(ttft):>18} {_cell(decode):>18} "
              f"{row['perplexity_ratio']:9.4f} {row['top1_agreement']:6.3f} {row['greedy_match']:8.3f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "rounds": args.rounds, "rows": rows}, indent=2) + "\n")


def _cell(entry: dict) -> str:
    low, high = entry["range"]
    return f"{entry['median']:.1f} ({low:.0f}-{high:.0f})"


if __name__ == "__main__":
    main()
