"""Is deploykit's reading of a GGUF file right? Its tokenizer and its float model against llama.cpp on the same file.

- Tokenizer: every bundled sentence, plus a few texts with whitespace runs, non-Latin scripts, emoji and the
  file's own control tokens, tokenized by deploykit's rebuilt tokenizer.json and by llama.cpp (BOS added, special
  tokens parsed). Prints how many token sequences are identical and the first that differ.
- Model: deploykit's held-out passages (the build's, `--eval-texts` of them) scored by deploykit's float model of
  the file and by llama.cpp fed the same ids: perplexity of each, next-token top-1 agreement, mean KL divergence.
  llama.cpp computes with the file's quantized blocks (and rounds activations to 8 bits in its matrix products), so
  small differences are llama.cpp's arithmetic; a wrong tokenizer, RoPE layout or norm gives thousands.

Needs llama-cpp-python (see decoders_vs_vendor.py for how to build it here).

    python tools/bench/gguf_vs_llama_cpp.py --model gemma3-270m
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).parent
EXTRA_TEXTS = ["Hello world!\n\nThis is   a test with  spaces, tabs\tand unicode: café, naïve, 東京, emoji 🙂.",
               "1234567 + 89 = ?", "  leading spaces", "trailing spaces   "]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a .gguf file or a packaged alias")
    parser.add_argument("--eval-texts", type=int, default=8)
    parser.add_argument("--cache-length", type=int, default=256)
    args = parser.parse_args()

    import llama_cpp

    from deploykit.generation.build import GenerationOptions, held_out_text
    from deploykit.generation.loaders import ALIASES, alias_path, load_decoder
    from deploykit.generation.metrics import measure_fidelity

    spec = importlib.util.spec_from_file_location("decoders_vs_vendor", HERE / "decoders_vs_vendor.py")
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)

    path = alias_path(args.model) if args.model in ALIASES else Path(args.model)
    bundle = load_decoder(args.model)
    reference = llama_cpp.Llama(model_path=str(path), n_ctx=args.cache_length, vocab_only=True, verbose=False)
    sentences = Path(__file__).resolve().parents[2] / "deploykit" / "resources" / "sentences.jsonl"
    texts = [json.loads(line)["text"] for line in sentences.read_text().splitlines()] + EXTRA_TEXTS
    controls = [token for token in ("<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>")
                if token in bundle.tokenizer.get_vocab()]
    if controls:
        texts.append(f"{controls[0]}user\nHi{controls[-1]}\n")
    differ = [(text, bundle.encode(text), reference.tokenize(text.encode(), add_bos=True, special=True))
              for text in texts]
    differ = [row for row in differ if row[1] != row[2]]
    print(f"tokenizer: {len(texts) - len(differ)} of {len(texts)} texts tokenized identically")
    for text, ours, theirs in differ[:3]:
        print(f"  {text[:60]!r}\n    deploykit {ours[:20]}\n    llama.cpp {theirs[:20]}")

    options = GenerationOptions(cache_length=args.cache_length, eval_texts=args.eval_texts)
    held = held_out_text(bundle, options, calibrate=False)
    logits = [bundle.full_logits(ids) for ids in held.evaluation]
    peer, _ = vendor.llama_cpp_decoder(path, args.cache_length, None)
    fidelity = measure_fidelity(logits, held.evaluation, peer)
    print(f"model: {len(held.evaluation)} passages, {fidelity.positions} predicted positions; perplexity deploykit "
          f"{fidelity.original_perplexity:.2f}, llama.cpp {fidelity.perplexity:.2f}; top-1 agreement "
          f"{fidelity.top1_agreement:.3f}; mean KL {fidelity.mean_kl:.4f} nats")


if __name__ == "__main__":
    main()
