"""Shared fixtures: tiny BERT models and datasets built in the test session (seconds, no downloads)."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The CLI's tables as on a wide terminal, whoever runs the tests: pytest-xdist's workers set COLUMNS=80, where rich
# wraps a target's name inside its table cell and the tests' text checks would depend on the path's length.
os.environ["COLUMNS"] = "150"

TOPICS = {
    "sports": "team match goal score coach league player win season",
    "food": "bread soup cheese recipe bake taste garlic dinner salad",
}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentences(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = list(TOPICS)[i % 2]
        words = TOPICS[label].split()
        length = rng.randint(3, 9)
        rows.append({"text": " ".join(rng.choice(words) for _ in range(length)), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pytest_collection_modifyitems(items: list) -> None:
    """The slow MiniLM modules first: with two workers taking whole files (make test), the longest file then starts
    at once instead of last. The order within each group stays as collected."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _session_env(name: str, value: str):
    """Set an environment variable for the whole test session, then put back what was there."""
    previous = os.environ.get(name)
    os.environ[name] = value
    yield
    if previous is None:
        del os.environ[name]
    else:
        os.environ[name] = previous


@pytest.fixture(scope="session", autouse=True)
def no_device_profiles(tmp_path_factory):
    """Builds in tests plan without the repository's measured profiles/ (they describe one host, not the test's)."""
    yield from _session_env("DEPLOYKIT_PROFILES", str(tmp_path_factory.mktemp("no-profiles")))


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """Fixtures shared by several tests build with a cache of the test session's, never the user's."""
    yield from _session_env("DEPLOYKIT_CACHE", str(tmp_path_factory.mktemp("session-cache")))


@pytest.fixture(scope="session", autouse=True)
def session_cache_key(tmp_path_factory):
    """The cache's key (made on first use) goes to a config folder of the test session's, never the user's."""
    yield from _session_env("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Each test builds with an empty cache of its own: no test reuses another's exports or measurements."""
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def vocabulary() -> list[str]:
    words = sorted({w for text in TOPICS.values() for w in text.split()})
    return SPECIAL + words


@pytest.fixture(scope="session")
def labelled_data(tmp_path_factory) -> Path:
    """120 two-class sentences with string labels."""
    return write_jsonl(tmp_path_factory.mktemp("data") / "topics.jsonl", _sentences(120, seed=0))


def _tiny_backbone(vocabulary):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=32,
    )


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, vocabulary, labelled_data) -> Path:
    """A keras-hub BertTextClassifier with its preprocessor, briefly trained, saved as .keras with labels.txt."""
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16)
    classifier = keras_hub.models.BertTextClassifier(_tiny_backbone(vocabulary), num_classes=2, preprocessor=preprocessor)
    rows = [json.loads(line) for line in labelled_data.read_text().splitlines()]
    names = sorted(TOPICS)
    classifier.fit(
        [r["text"] for r in rows], [names.index(r["label"]) for r in rows], batch_size=16, epochs=3, verbose=0
    )
    folder = tmp_path_factory.mktemp("classifier")
    path = folder / "classifier.keras"
    classifier.save(path)
    (folder / "labels.txt").write_text("\n".join(names) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_backbone_file(tmp_path_factory, vocabulary) -> Path:
    """A bare keras-hub BertBackbone saved as .keras, with vocab.txt beside it (an embedding model)."""
    folder = tmp_path_factory.mktemp("backbone")
    path = folder / "encoder.keras"
    _tiny_backbone(vocabulary).save(path)
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` with a digest of its bytes (folders and links marked as such)."""
    if not folder.exists():
        return {}
    entries = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_symlink():
            entries[key] = f"link -> {path.readlink()}"
        elif path.is_dir():
            entries[key] = "folder"
        else:
            entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


@pytest.fixture
def snapshot():
    """`snapshot(folder)`: what a folder holds, to assert that a command left it byte-identical."""
    return _snapshot
