"""The documentation: the README stays a short page, every relative link resolves, the mkdocs site builds with
`--strict` (a broken link or anchor, or a page missing from the nav, fails), and the architecture page names only
modules that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
ARCHITECTURE = DOCS / "architecture.md"
MAX_README_LINES = 250

FENCE = re.compile(r"^ *(```|~~~).*?^ *\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REPOSITORY_PATH = re.compile(r"(deploykit|targets|tools|tests|profiles|docs)/\S*")


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def _relative_links(path: Path) -> list[str]:
    prose = CODE_SPAN.sub("", _prose(path.read_text(encoding="utf-8")))
    return [target for target in LINK.findall(prose) if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|#", target)]


def _named_paths(path: Path) -> list[str]:
    """Repository paths written in backticks outside code blocks, e.g. `deploykit/passes/distill.py`."""
    spans = (match.group(2).strip() for match in CODE_SPAN.finditer(_prose(path.read_text(encoding="utf-8"))))
    return [span for span in spans if REPOSITORY_PATH.fullmatch(span)]


def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning: links, anchors, nav entries and the API pages' docstrings all resolve."""
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(path):
    """GitHub renders README.md and docs/*.md from the repository: every relative link must reach a file in it,
    never one outside it (a `../shared/` folder, say)."""
    broken = []
    for target in _relative_links(path):
        file_part = target.split("#", 1)[0]
        if not file_part:
            continue
        resolved = (path.parent / file_part).resolve()
        if not resolved.exists() or ROOT not in resolved.parents or "shared" in resolved.relative_to(ROOT).parts:
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links that do not resolve inside the repository: {broken}"


def test_architecture_page_names_only_paths_that_exist():
    named = _named_paths(ARCHITECTURE)
    assert len(named) > 50, "the architecture page should name the modules it describes, in backticks"
    missing = []
    for name in named:
        placeholder = re.search(r"[<*]", name)
        if placeholder:  # `deploykit/passes/<name>.py`: the folder a new module goes into must exist
            folder = ROOT / name[:placeholder.start()].rsplit("/", 1)[0]
            if not folder.is_dir():
                missing.append(name)
        elif not (ROOT / name).exists():
            missing.append(name)
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_architecture_page_names_every_package_and_plugin_kind():
    """Every package of deploykit, and every plugin registry's base module and entry-point group, is on the page."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = set(_named_paths(ARCHITECTURE))
    packages = sorted(init.parent.relative_to(ROOT).as_posix() for init in (ROOT / "deploykit").rglob("__init__.py"))
    unnamed = [package for package in packages if not any(name.startswith(package + "/") for name in named)]
    assert not unnamed, f"docs/architecture.md names no module of {unnamed}"
    registries = []
    for module in sorted((ROOT / "deploykit").rglob("*.py")):
        source = module.read_text(encoding="utf-8")
        for group in re.findall(r"= Registry\(\s*\"[^\"]+\",\s*\"[^\"]+\",\s*\"([^\"]+)\"\)", source):
            registries.append((module.relative_to(ROOT).as_posix(), group))
    assert len(registries) >= 5
    absent = [(module, group) for module, group in registries if f"`{module}`" not in text or f"`{group}`" not in text]
    assert not absent, f"docs/architecture.md lacks these plugin kinds (base module, entry-point group): {absent}"
