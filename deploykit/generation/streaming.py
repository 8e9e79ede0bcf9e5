"""Continuing a prompt with a built decoder folder, as text: what `deploykit generate` and `deploykit.generate` run."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from deploykit.errors import DeployKitError
from deploykit.generation.artifact_folder import open_decoder_folder
from deploykit.generation.runtime import PromptTooLong, Sampling, generate
from deploykit.verify import check_files


def generate_text(folder: Path, prompt: str, max_new_tokens: int = 64, sampling: Sampling = Sampling(),
                  threads: int | None = None) -> Iterator[str]:
    """Continue `prompt` with the decoder built in `folder`, yielding the new text piece by piece as tokens come
    (a piece may be empty while a multi-byte character is incomplete). The folder's files are checked against its
    manifest and the prompt against the cache before this returns: either is a DeployKitError."""
    check = check_files(folder)
    if not check.passed:
        raise DeployKitError(f"{folder} does not match its manifest.json ({'; '.join(check.lines()[:2])}); "
                             "rebuild it, or run `deploykit verify` on it to see every difference.")
    decoder, tokenizer, stop_ids = open_decoder_folder(folder, threads)
    prompt_ids = list(tokenizer.encode(prompt).ids)
    try:
        decoder.check_fits(len(prompt_ids), max_new_tokens)
    except PromptTooLong as error:
        raise DeployKitError(str(error)) from None
    return _pieces(generate(decoder, prompt_ids, max_new_tokens, sampling, stop_ids), tokenizer)


def _pieces(tokens: Iterator[int], tokenizer) -> Iterator[str]:
    """The text each new token adds (decoded together with the ones before it: byte-level BPE splits characters)."""
    produced: list[int] = []
    shown = ""
    for token in tokens:
        produced.append(token)
        text = tokenizer.decode(produced)
        yield text[len(shown):]
        shown = text
