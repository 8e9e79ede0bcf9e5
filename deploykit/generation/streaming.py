"""Continuing a prompt with a built decoder folder, as text: what `deploykit generate` and `deploykit.generate` run."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from deploykit.errors import DeployKitError
from deploykit.generation.artifact_folder import read_decoder_folder
from deploykit.generation.runtime import PromptTooLong, Sampling, check_fits, generate
from deploykit.verify import check_files


def generate_text(folder: Path, prompt: str, max_new_tokens: int = 64, sampling: Sampling = Sampling(),
                  threads: int | None = None, device=None) -> Iterator[str]:
    """Continue `prompt` with the decoder built in `folder`, yielding the new text piece by piece as tokens come
    (a piece may be empty while a multi-byte character is incomplete). `device`: a profiling runner (ssh) to run it
    on instead of this machine. The folder's files are checked against its manifest and the prompt against the
    cache before this returns: either is a DeployKitError."""
    check = check_files(folder)
    if not check.passed:
        raise DeployKitError(f"{folder} does not match its manifest.json ({'; '.join(check.lines()[:2])}); "
                             "rebuild it, or run `deploykit verify` on it to see every difference.")
    opened = read_decoder_folder(folder)
    prompt_ids = list(opened.tokenizer.encode(prompt).ids)
    if device is None:
        decoder = opened.load(threads)
        cache_length = decoder.cache_length
    else:
        from deploykit.generation.device import decoder_device, generate_on_device

        runner = decoder_device(device)
        cache_length = opened.cache_length or 0  # generation.json's; the worker checks the artifact's own too
    try:
        check_fits(cache_length, len(prompt_ids), max_new_tokens)
    except PromptTooLong as error:
        raise DeployKitError(str(error)) from None
    if device is None:
        tokens = generate(decoder, prompt_ids, max_new_tokens, sampling, opened.stop_ids)
    else:
        tokens = generate_on_device(runner, opened.runtime, opened.files, opened.settings, prompt_ids,
                                    max_new_tokens, sampling, opened.stop_ids, threads)
    return _pieces(tokens, opened.tokenizer)


def _pieces(tokens: Iterator[int], tokenizer) -> Iterator[str]:
    """The text each new token adds (decoded together with the ones before it: byte-level BPE splits characters)."""
    produced: list[int] = []
    shown = ""
    for token in tokens:
        produced.append(token)
        text = tokenizer.decode(produced)
        yield text[len(shown):]
        shown = text
