"""A GGUF file's tokenizer as Hugging Face tokenizers' tokenizer.json, and its tokenizer_config.json.

Byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen2) comes with its merges; SentencePiece BPE (Gemma, Llama 2)
keeps only piece scores, from which the merges are rebuilt.
"""

from __future__ import annotations

import gguf
from gguf import TokenType

from deploykit.errors import DeployKitError, quoted
from deploykit.generation.gguf_metadata import strings, value

# tokenizer.ggml.pre -> the pre-tokenizer of the model's original tokenizer.json, as llama.cpp's llama-vocab.cpp
# splits for that name. keras-hub's BytePairTokenizer applies its own split whatever tokenizer.json says.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS = {  # name -> the regex split before bytes become symbols (None: ByteLevel's own GPT-2 regex)
    "gpt-2": None, "smollm": None, "starcoder": None,
    "llama-bpe": _LLAMA3_SPLIT, "qwen2": _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}"),
}
_DIGIT_SPLITTING = {"smollm", "starcoder"}  # each digit its own pre-token (HF's Digits(individual_digits=True))


def tokenizer_files(reader: gguf.GGUFReader, config: dict):
    """tokenizer.json (a `tokenizers.Tokenizer`) and tokenizer_config.json from the tokenizer in the metadata."""
    from tokenizers import AddedToken, processors

    model = value(reader, "tokenizer.ggml.model", str)
    if model not in _TOKENIZER_MODELS:
        raise DeployKitError(f"GGUF tokenizer model {quoted(model)} is not supported; deploykit converts 'gpt2' "
                             "(byte-level BPE) and 'llama' (SentencePiece BPE) tokenizers")
    tokens = strings(reader, "tokenizer.ggml.tokens")
    types = value(reader, "tokenizer.ggml.token_type", list, [TokenType.NORMAL] * len(tokens))
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(types) != len(tokens):
        raise DeployKitError("GGUF vocabulary lists a token twice, or its token types do not match its tokens")
    tokenizer = _TOKENIZER_MODELS[model](reader, tokens, types, vocab)
    for kinds, add in (({TokenType.CONTROL, TokenType.UNKNOWN}, tokenizer.add_special_tokens),
                       ({TokenType.USER_DEFINED}, tokenizer.add_tokens)):
        add([AddedToken(tokens[index], normalized=False) for index, kind in enumerate(types) if kind in kinds])
    named = {role: _special_token(reader, role, tokens) for role in ("bos", "eos", "unknown", "padding")}
    add_bos = value(reader, "tokenizer.ggml.add_bos_token", bool, False)
    add_eos = value(reader, "tokenizer.ggml.add_eos_token", bool, False)
    added = [(named["bos"], add_bos), (named["eos"], add_eos)]
    if any(token is None and wanted for token, wanted in added):
        raise DeployKitError("GGUF tokenizer adds a BOS or EOS token it does not name")
    if add_bos or add_eos:
        single = " ".join([named["bos"]] * add_bos + ["$A"] + [named["eos"]] * add_eos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=f"{single} {single.replace('$A', '$B:1')}",
            special_tokens=sorted({(token, vocab[token]) for token, wanted in added if wanted}),
        )
    elif model == "gpt2":
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": named["bos"], "eos_token": named["eos"],
        "unk_token": named["unknown"], "pad_token": named["padding"], "add_bos_token": add_bos,
        "add_eos_token": add_eos, "model_max_length": config["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }
    template = value(reader, "tokenizer.chat_template", str, None)
    if template is not None:
        tokenizer_config["chat_template"] = template
    config.update(vocab_size=len(tokens), bos_token_id=vocab.get(named["bos"]), eos_token_id=vocab.get(named["eos"]),
                  pad_token_id=vocab.get(named["padding"]))
    return tokenizer, tokenizer_config


def _byte_level_bpe(reader: gguf.GGUFReader, tokens: list[str], types: list[int], vocab: dict[str, int]):
    """GPT-2 style: merges listed in the metadata, bytes mapped to printable characters, a named regex split."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if (pre := value(reader, "tokenizer.ggml.pre", str, "default")) not in _PRE_TOKENIZERS:
        raise DeployKitError(f"GGUF pre-tokenizer {quoted(pre)} is not supported; deploykit converts "
                             f"{', '.join(_PRE_TOKENIZERS)}")
    merges = []
    for merge in strings(reader, "tokenizer.ggml.merges"):
        cut = merge.find(" ", 1)  # as llama.cpp splits a merge: a first part that is itself a space stays whole
        if cut < 0:
            raise DeployKitError(f"GGUF merge {quoted(merge)} is not two tokens separated by a space")
        merges.append((merge[:cut], merge[cut + 1:]))
    try:
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre == "llama-bpe"))
    except Exception as error:  # tokenizers raises plain Exception for a merge of tokens outside the vocabulary
        raise DeployKitError(f"GGUF tokenizer is inconsistent: {quoted(str(error), plain=True)}") from None
    regex = _PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex is None)]
    if regex is not None:
        steps.insert(0, pre_tokenizers.Split(Regex(regex), behavior="isolated"))
    if pre in _DIGIT_SPLITTING:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    if pre == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(reader: gguf.GGUFReader, tokens: list[str], types: list[int], vocab: dict[str, int]):
    """SentencePiece BPE (Gemma, Llama 2): GGUF keeps each piece's score, not the merges. llama.cpp merges the
    adjacent pair whose joined piece scores highest; a BPE whose merges are every split of every normal piece, ranked
    by the joined piece's score, picks the same pairs (Hugging Face builds Gemma's tokenizer.json the same way).
    Spaces are "▁", and characters outside the vocabulary fall back to <0xNN> byte pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = value(reader, "tokenizer.ggml.scores", list)
    if len(scores) != len(tokens) or not all(type(score) is float for score in scores):
        raise DeployKitError("GGUF tokenizer.ggml.scores is not one float per token")
    normal = [index for index, kind in enumerate(types) if kind == TokenType.NORMAL]
    merges = []
    for index in sorted(normal, key=lambda index: (-scores[index], index)):
        piece = tokens[index]
        splits = [(piece[:cut], piece[cut:]) for cut in range(1, len(piece))]
        merges.extend(sorted(((left, right) for left, right in splits if left in vocab and right in vocab),
                             key=lambda pair: (vocab[pair[0]], vocab[pair[1]])))
    unknown = _special_token(reader, "unknown", tokens)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unknown, byte_fallback=True,
                                     fuse_unk=True))
    space = [normalizers.Replace(" ", "\u2581")]
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if value(reader, "tokenizer.ggml.add_space_prefix", bool, True):  # llama.cpp's default for SentencePiece
        space.insert(0, normalizers.Prepend("\u2581"))
        decode.append(decoders.Strip(" ", 1, 0))
    tokenizer.normalizer = normalizers.Sequence(space)
    tokenizer.decoder = decoders.Sequence(decode)
    return tokenizer


_TOKENIZER_MODELS = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}


def _special_token(reader: gguf.GGUFReader, role: str, tokens: list[str]) -> str | None:
    index = value(reader, f"tokenizer.ggml.{role}_token_id", int, None)
    if index is None:
        return None
    if not 0 <= index < len(tokens):
        raise DeployKitError(f"GGUF {role} token id {index} is outside the vocabulary of {len(tokens)} tokens")
    return tokens[index]
