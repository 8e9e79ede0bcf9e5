"""Opening a decoder build folder (OUT/<target>) to run it: untrusted until its files match its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploykit.errors import DeployKitError
from deploykit.generation.backends.base import DECODER_BACKENDS, get_decoder_backend
from deploykit.generation.runtime import LoadedDecoder
from deploykit.user_files import read_json

MAX_INTERFACE_BYTES = 1 << 20


@dataclass(frozen=True)
class DecoderFolder:
    """What a decoder build folder holds, read but not loaded: where it runs is the caller's choice."""

    path: Path  # the file the runtime opens
    runtime: str
    settings: dict  # runtime settings from generation.json, as the backend accepts them
    tokenizer: object  # a tokenizers.Tokenizer
    stop_ids: frozenset[int]
    cache_length: int | None  # as generation.json says; the runtime checks it again

    @property
    def files(self) -> list[Path]:
        return get_decoder_backend(self.runtime).artifact_files(self.path)

    def load(self, threads: int | None) -> LoadedDecoder:
        return get_decoder_backend(self.runtime).load(self.path, threads, self.settings)


def read_decoder_folder(folder: Path) -> DecoderFolder:
    """The decoder in a folder whose files the caller has checked against its manifest (verify.check_files): links
    are never followed, and only the file generation.json names inside the folder, with a suffix a decoder runtime
    opens, is used."""
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
    length = interface.get("cache_length")
    backend = get_decoder_backend(runtime)
    return DecoderFolder(path, runtime, backend.runtime_settings(interface.get("runtime_config")), tokenizer, stops,
                         length if isinstance(length, int) and length > 0 else None)


def open_decoder_folder(folder: Path, threads: int | None) -> tuple[LoadedDecoder, object, frozenset[int]]:
    """(the loaded artifact, its tokenizer, the ids generation stops at): an app's own generation loop."""
    opened = read_decoder_folder(folder)
    return opened.load(threads), opened.tokenizer, opened.stop_ids
