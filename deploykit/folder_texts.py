"""Texts through a build folder as an app on the device would put them: encoded with the folder's own tokenizer.json
and vocab.txt (not the original model's tokenizer), then run through its artifact with its runtime.

`deploykit compare` runs two builds on the same texts this way, so that a change of sequence length, vocabulary or
normalization between them shows in their outputs, as it would in the app.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploykit.backends.base import backend_for_file
from deploykit.errors import DeployKitError, quoted
from deploykit.evaluate import run_examples
from deploykit.user_files import inside, read_json, read_untrusted_bytes

NORMALIZERS = ("keras-hub", "huggingface-bert")


def encode_texts(folder: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """`texts` as the folder's artifact takes them (token_ids and padding_mask at its sequence length), tokenized as
    its tokenizer.json says: the vocabulary file it names, its normalizer and its lowercase/accent/CJK settings."""
    from deploykit.models.bundle import ModelBundle
    from deploykit.models.text_normalization import KERAS_HUB_OPTIONS, HuggingFaceBertNormalizer, KerasHubNormalizer

    tokenizer_file = folder / "tokenizer.json"
    config = read_json(tokenizer_file, dict, untrusted=True)
    try:
        vocabulary_file = inside(folder, config["vocabulary"], f"{tokenizer_file}'s vocabulary")
        vocabulary = [line for line in read_untrusted_bytes(vocabulary_file).decode("utf-8-sig").splitlines() if line]
        length, kind = int(config["sequence_length"]), config["normalizer"]
        flags = {name: bool(config[name]) for name in ("lowercase", "strip_accents", "split_on_cjk")}
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise DeployKitError(f"{tokenizer_file} is not as deploykit writes it ({type(error).__name__}: "
                             f"{quoted(str(error))}); rebuild the folder with `deploykit build`.") from None
    if kind not in NORMALIZERS or not 2 <= length <= 1_000_000:
        raise DeployKitError(f"{tokenizer_file} gives normalizer {quoted(kind)} and sequence_length {length}; rebuild "
                             "the folder with this deploykit.")
    import keras_hub

    if kind == "huggingface-bert":  # Hugging Face's normalizer does it all; keras-hub's tokenizer only splits
        tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, **KERAS_HUB_OPTIONS)
        normalizer = HuggingFaceBertNormalizer(flags["lowercase"], flags["strip_accents"], flags["split_on_cjk"])
    else:
        tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, **flags)
        normalizer = KerasHubNormalizer()
    bundle = ModelBundle(forward=None, tokenizer=tokenizer, task=config.get("task", "embedding"),
                         max_sequence_length=length, source=str(folder), text_normalizer=normalizer)
    return bundle.encode(texts, length)


def run_texts(artifact: Path, runtime_config: dict, texts: list[str], threads: int) -> np.ndarray:
    """The artifact's output for each text, one batch-1 example at a time as the device runs it."""
    loaded = backend_for_file(artifact).load(artifact, threads, runtime_config)
    return run_examples(loaded, encode_texts(artifact.parent, texts))
