"""Opening a decoder build folder (OUT/<target>) to run it: untrusted until its files match its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from deploykit.errors import DeployKitError
from deploykit.generation.backends.base import DECODER_BACKENDS, get_decoder_backend
from deploykit.generation.runtime import LoadedDecoder, PromptTooLong, Sampling, generate
from deploykit.user_files import read_json

MAX_INTERFACE_BYTES = 1 << 20


def open_decoder_folder(folder: Path, threads: int | None) -> tuple[LoadedDecoder, object, frozenset[int]]:
    """(the loaded artifact, its tokenizer, the ids generation stops at), from a folder whose files the caller has
    checked against its manifest (verify.check_files): links are never followed, and only the file generation.json
    names inside the folder, with a suffix a decoder runtime opens, is loaded."""
    from tokenizers import Tokenizer

    interface = read_json(folder / "generation.json", dict, untrusted=True, limit=MAX_INTERFACE_BYTES)
    name = interface.get("model")
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        raise DeployKitError(f"{folder}/generation.json names no model file inside the folder; rebuild it.")
    path = folder / name
    runtime = next((r for r in DECODER_BACKENDS.names() if get_decoder_backend(r).suffix == path.suffix), None)
    if runtime is None or not path.is_file() or path.is_symlink():
        raise DeployKitError(f"{folder} holds no decoder artifact deploykit can run ({name}); pass an OUT/<target> "
                             "folder of a decoder build.")
    tokenizer_path = folder / "tokenizer.json"
    if tokenizer_path.is_symlink() or not tokenizer_path.is_file():
        raise DeployKitError(f"{folder} has no tokenizer.json; rebuild it.")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    stops = frozenset(int(i) for i in interface.get("stop_ids", []) if isinstance(i, int))
    backend = get_decoder_backend(runtime)
    return backend.load(path, threads, backend.runtime_settings(interface.get("runtime_config"))), tokenizer, stops


def generate_text(folder: Path, prompt: str, max_new_tokens: int = 64, sampling: Sampling = Sampling(),
                  threads: int | None = None) -> Iterator[str]:
    """Continue `prompt` with the decoder built in `folder`, yielding the new text piece by piece as tokens come
    (a piece may be empty while a multi-byte character is incomplete). The folder's files are checked against its
    manifest and the prompt against the cache before this returns: either is a DeployKitError."""
    from deploykit.verify import check_files

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
