"""Cache entries are authenticated (HMAC-SHA256 under a key that never travels with the cache) before anything in
them is used: an edited, forged, foreign or booby-trapped entry is removed and its stage runs again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from deploykit import cache as cache_module
from deploykit.pipeline import BuildOptions, build_targets
from deploykit.cache import KEY_VARIABLE, ContentCache, key_file
from deploykit.errors import DeployKitError
from deploykit.profiling.base import ProfileSettings
from deploykit.progress import StepLog

FAST = ProfileSettings(runs=3, warmup=0, op_profile=False)
SMALL = dict(profile=FAST, calibration_samples=10, evaluation_samples=20)
KEY = "a" * 64
BUILD_KEY = "the builds' shared secret"
REJECTED = "failed its integrity check"

# What each call site stores (its meta's shape), and one byte of it to edit (the first `old` after `field`): a latency,
# a precision, a verdict of the search, a shape, a ranking. The verdict and the sensitivity ranking are tested here
# only: at build level each would take two searches or two mixed-precision builds (12 s and more).
STAGES = {
    "measurement": ({}, {"quality": {"fidelity": {"cosine_mean": 0.9987}, "accuracy": 0.6},
                         "profile": {"latency_ms": {"p50": 1.25, "p90": 1.5}}}, '"p50"', "1.25", "1.15"),
    "export": ({"model.tflite": b"tflite" * 100, "tokenizer/vocab.txt": b"[PAD]\n[UNK]\n"},
               {"files": ["model.tflite"], "tokenizer": ["vocab.txt"], "path": "model.tflite", "format": "tflite",
                "precision": "dynamic-int8", "method": "TFLiteConverter", "runtime_config": {}, "details": {},
                "passes": [], "architecture": None, "integer_graph": None, "candidate": "dynamic-int8"},
               '"precision"', "int8", "int4"),
    "verdict": ({}, {"pruned": "quality loss 0.02 at step 20 of 40",
                     "checkpoints": [{"step": 20, "steps": 40, "quality_loss": 0.02, "limit": 0.01}]},
                '"pruned"', "0.02", "0.01"),
    "reference": ({"outputs.npy": b"\x93NUMPY" + b"\0" * 200}, {"shape": [20, 2]}, '"shape"', "20", "21"),
    "sensitivity": ({}, {"all_quantized": 0.97, "ranking": [{"group": "layer_0/ffn", "alone_quantized": 0.98,
                                                             "kept_high": 0.999}]},
                    '"kept_high"', "0.999", "0.998"),
}


class RecordingLog(StepLog):
    """A StepLog that keeps what it would print."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def info(self, message: str) -> None:
        self.messages.append(message)


@pytest.fixture(autouse=True)
def own_key(tmp_path, monkeypatch):
    """Each test has its own key file, never in the user's home, whatever DEPLOYKIT_CACHE_KEY the shell has."""
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def _store(tmp_path: Path, stage: str = "measurement", files: dict[str, bytes] | None = None,
           meta: dict | None = None) -> tuple[ContentCache, Path]:
    """A cache with one entry (by default a measurement with one file, model.bin) under KEY."""
    files = {"model.bin": b"x" * 1000} if files is None else files
    sources = {}
    for name, data in files.items():
        sources[name] = tmp_path / "sources" / name
        sources[name].parent.mkdir(parents=True, exist_ok=True)
        sources[name].write_bytes(data)
    cache = ContentCache(tmp_path / "cache", log=RecordingLog())
    entry = cache.put(stage, KEY, sources, STAGES["measurement"][1] if meta is None else meta)
    return cache, entry.folder


def _assert_rejected(cache: ContentCache, folder: Path, stage: str = "measurement", key: str = KEY) -> None:
    """The entry reads as a miss, is gone, counted, and logged as failing its check."""
    assert cache.get(stage, key) is None
    assert not os.path.lexists(folder)
    assert cache.rejected == 1
    assert f"Cache entry {stage}/{key[:12]} {REJECTED}" in cache.log.messages[-1]


def _record(folder: Path) -> dict:
    return json.loads((folder / "entry.json").read_text())


def _write_record(folder: Path, record: dict) -> None:
    (folder / "entry.json").write_text(json.dumps(record))


# ---- entries -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", list(STAGES))
def test_one_edited_byte_of_what_a_stage_stored_drops_the_entry(stage, tmp_path):
    files, meta, field, old, new = STAGES[stage]
    cache, folder = _store(tmp_path, stage, files, meta)
    assert cache.get(stage, KEY).meta == meta  # intact: a hit
    text = (folder / "entry.json").read_text()
    at = text.index(old, text.index(field))
    (folder / "entry.json").write_text(text[:at] + new + text[at + len(old):])
    _assert_rejected(cache, folder, stage)


def _forge(path: Path, data: bytes) -> None:
    """Replace a file's bytes and its sha256 in entry.json, as anyone can who may write the cache but lacks the key."""
    entry = path.parent / "entry.json"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(data)
    entry.write_text(entry.read_text().replace(before, hashlib.sha256(data).hexdigest()))


def test_an_entry_forged_with_recomputed_sha256s_but_without_the_key_is_rejected(tmp_path):
    cache, folder = _store(tmp_path)
    _forge(folder / "model.bin", b"y" * 1000)
    text = (folder / "entry.json").read_text()
    (folder / "entry.json").write_text(text.replace('"p50":1.25', '"p50":0.01'))
    _assert_rejected(cache, folder)


def test_an_entry_of_the_format_without_a_mac_is_rebuilt(tmp_path):
    cache, folder = _store(tmp_path)
    record = _record(folder)
    old = {"files": {"model.bin": record["files"]["model.bin"]["sha256"]}, "meta": record["meta"],
           "stored": record["stored"]}
    (folder / "entry.json").write_text(json.dumps(old, indent=1))  # as deploykit wrote entries before
    _assert_rejected(cache, folder)
    assert "no MAC" in cache.log.messages[-1]


def test_an_entry_made_under_another_key_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, "machine A")
    _, folder = _store(tmp_path)
    assert ContentCache(tmp_path / "cache").get("measurement", KEY) is not None  # same key: trusted
    monkeypatch.setenv(KEY_VARIABLE, "machine B")
    _assert_rejected(ContentCache(tmp_path / "cache", log=RecordingLog()), folder)


def test_an_entry_moved_under_another_key_or_stage_is_rejected(tmp_path):
    cache, folder = _store(tmp_path)
    other_key = "b" * 64
    moved = tmp_path / "cache" / "measurement" / other_key[:2] / other_key
    shutil.copytree(folder, moved)
    _assert_rejected(cache, moved, key=other_key)
    other_stage = tmp_path / "cache" / "reference" / KEY[:2] / KEY
    shutil.copytree(folder, other_stage)
    assert cache.get("reference", KEY) is None and not other_stage.exists() and cache.rejected == 2
    assert cache.get("measurement", KEY) is not None  # the original, where it was stored, is intact


@pytest.mark.parametrize("linked", ["model.bin", "tokenizer", "entry.json"])
def test_a_file_or_folder_replaced_by_a_link_outside_the_entry_is_rejected(linked, tmp_path):
    """The link leads to identical bytes, so the sha256s match: only refusing links keeps reads inside the entry."""
    cache, folder = _store(tmp_path, files={"model.bin": b"x" * 1000, "tokenizer/vocab.txt": b"[PAD]\n"})
    outside = tmp_path / "outside" / linked
    outside.parent.mkdir()
    (shutil.copytree if (folder / linked).is_dir() else shutil.copyfile)(folder / linked, outside)
    (shutil.rmtree if (folder / linked).is_dir() else os.unlink)(folder / linked)
    (folder / linked).symlink_to(outside)
    _assert_rejected(cache, folder)
    assert outside.exists()  # removing the entry removed the link, not what it leads to


@pytest.mark.parametrize("name", ["../x.bin", "{outside}", "tokenizer/../../x.bin"])
def test_a_file_name_leading_out_of_the_entry_is_rejected_even_under_a_valid_mac(name, tmp_path):
    """A record signed with the key (a bug, or a key holder) still cannot make get() read outside the entry."""
    cache, folder = _store(tmp_path)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 1000)
    shutil.copyfile(outside, folder.parent / "x.bin")  # what ../x.bin names
    record = _record(folder)
    del record["mac"]
    record["files"] = {name.format(outside=outside): record["files"]["model.bin"]}
    record["mac"] = cache._mac("measurement", KEY, record)
    _write_record(folder, record)
    _assert_rejected(cache, folder)
    assert "is not a plain name inside the entry" in cache.log.messages[-1]
    assert outside.exists() and (folder.parent / "x.bin").exists()  # only the entry's own folder was removed


def test_a_fifo_as_entry_json_is_rejected_without_blocking(tmp_path):
    cache, folder = _store(tmp_path)
    (folder / "entry.json").unlink()
    os.mkfifo(folder / "entry.json")
    results = []
    reader = threading.Thread(target=lambda: results.append(cache.get("measurement", KEY)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "get() blocked on a FIFO"
    assert results == [None] and not folder.exists() and cache.rejected == 1


@pytest.mark.parametrize("damage, why", [("oversized", "larger than"), ("cut", "is not JSON"),
                                         ("a list", "is not a JSON object")])
def test_an_oversized_or_unparsable_entry_json_is_rejected(damage, why, tmp_path, monkeypatch):
    cache, folder = _store(tmp_path)
    if damage == "oversized":
        monkeypatch.setattr(cache_module, "MAX_ENTRY_BYTES", 100)
    else:
        (folder / "entry.json").write_text('{"files": {' if damage == "cut" else "[]")
    _assert_rejected(cache, folder)
    assert why in cache.log.messages[-1]


def test_a_file_of_another_size_is_rejected_without_being_hashed(tmp_path, monkeypatch):
    cache, folder = _store(tmp_path)
    (folder / "model.bin").write_bytes(b"x" * 999)
    hashed = []
    monkeypatch.setattr(cache_module, "sha256_of", lambda path: hashed.append(path) or "0" * 64)
    _assert_rejected(cache, folder)
    assert hashed == [] and "999 bytes instead of 1000" in cache.log.messages[-1]


# ---- the key -------------------------------------------------------------------------------------------------


def test_the_key_file_is_made_once_readable_by_its_user_only_and_reused(tmp_path):
    assert not key_file().exists()
    cache, folder = _store(tmp_path)
    path = key_file()
    assert path == tmp_path / "config" / "deploykit" / "cache.key"
    key = path.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["cache.key"]  # no temporary file left
    assert ContentCache(tmp_path / "cache").get("measurement", KEY) is not None  # a new process trusts its entries
    assert path.read_bytes() == key
    assert not list((tmp_path / "cache").rglob("*.key"))


def test_a_process_that_loses_the_race_for_the_key_file_uses_the_winners(tmp_path, monkeypatch):
    winner = os.urandom(32)
    link = os.link

    def lose(source, target):
        Path(target).write_bytes(winner)  # another process linked its key into place first
        return link(source, target)

    monkeypatch.setattr(cache_module.os, "link", lose)
    assert cache_module.cache_key(tmp_path / "cache") == winner
    assert os.listdir(key_file().parent) == ["cache.key"]


def test_DEPLOYKIT_CACHE_KEY_overrides_the_key_file(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, "a CI secret")
    assert cache_module.cache_key(tmp_path / "cache") == b"a CI secret"
    assert not key_file().exists()
    monkeypatch.setenv(KEY_VARIABLE, "")  # empty: as if unset
    assert cache_module.cache_key(tmp_path / "cache") == key_file().read_bytes()


def test_a_key_that_cannot_be_had_stops_with_the_fix(tmp_path, monkeypatch):
    config = tmp_path / "config-is-a-file"
    config.write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    with pytest.raises(DeployKitError, match=f"Cannot read or create the cache key .*{KEY_VARIABLE}") as error:
        ContentCache(tmp_path / "cache")
    assert str(config / "deploykit" / "cache.key") in str(error.value) and "\n" not in str(error.value)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key_file().parent.mkdir(parents=True)
    key_file().write_bytes(b"short")
    with pytest.raises(DeployKitError, match="shorter than 32 bytes: delete it"):
        ContentCache(tmp_path / "cache")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cache" / "config"))
    with pytest.raises(DeployKitError, match="would lie inside the cache"):
        ContentCache(tmp_path / "cache")


# ---- builds --------------------------------------------------------------------------------------------------


def _build(model: Path, data: Path, out: Path, cache: Path, log: StepLog | None = None, **extra):
    options = BuildOptions(out=out, cache=cache, **SMALL, **{"precision": "dynamic-int8", **extra})
    return build_targets(model, "arm-cpu", data, options=options, log=log or StepLog())[0]


@pytest.fixture(scope="module")
def first_build(tiny_classifier, labelled_data, tmp_path_factory) -> tuple[dict, Path]:
    """One build of the tiny classifier under BUILD_KEY: its report, and its cache for each test to copy and tamper."""
    folder = tmp_path_factory.mktemp("first-build")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_VARIABLE, BUILD_KEY)
        result = _build(tiny_classifier, labelled_data, folder / "out", folder / "cache")
    return result.report, folder / "cache"


def _rebuild(first_build, tampered, tiny_classifier, labelled_data, tmp_path, monkeypatch) -> tuple[dict, RecordingLog]:
    """A copy of the first build's cache, `tampered(cache)`, then the same build again with it."""
    cache = tmp_path / "cache"
    shutil.copytree(first_build[1], cache)
    tampered(cache)
    monkeypatch.setenv(KEY_VARIABLE, BUILD_KEY)
    log = RecordingLog()
    return _build(tiny_classifier, labelled_data, tmp_path / "again", cache, log).report, log


def _edit_meta(cache: Path, stage: str, edit) -> None:
    """Edit the meta of every `stage` entry in place, keeping its MAC (what a writer without the key can do)."""
    entries = list((cache / stage).glob("*/*/entry.json"))
    assert entries
    for path in entries:
        record = json.loads(path.read_text())
        edit(record["meta"])
        path.write_text(json.dumps(record))


def test_an_edited_cached_latency_is_measured_again(first_build, tiny_classifier, labelled_data, tmp_path,
                                                     monkeypatch):
    def faster(meta):
        meta["profile"]["latency_ms"]["p50"] = 0.000123

    report, log = _rebuild(first_build, lambda cache: _edit_meta(cache, "measurement", faster), tiny_classifier,
                           labelled_data, tmp_path, monkeypatch)
    assert report["metrics"]["latency_ms"]["p50"] != 0.000123
    assert "profile_dynamic-int8 litert" in log.seconds  # measured again, not read from the cache
    assert "export" not in log.seconds  # the intact artifact was reused
    assert any("Cache entry measurement/" in message and REJECTED in message for message in log.messages)


def test_an_edited_cached_export_is_exported_again(first_build, tiny_classifier, labelled_data, tmp_path, monkeypatch):
    def relabel(meta):
        if meta["precision"] == "dynamic-int8":
            meta["precision"] = "int4-weights"

    report, log = _rebuild(first_build, lambda cache: _edit_meta(cache, "export", relabel), tiny_classifier,
                           labelled_data, tmp_path, monkeypatch)
    assert "export" in log.seconds and report["artifact"]["precision"] == "dynamic-int8"
    assert report["artifact"]["sha256"] == first_build[0]["artifact"]["sha256"]


def test_a_forged_cached_reference_is_computed_again(first_build, tiny_classifier, labelled_data, tmp_path,
                                                     monkeypatch):
    """The original's outputs replaced by others, with the sha256 recomputed: every fidelity would be against them."""
    import numpy as np

    def forge(cache):
        (outputs,) = (cache / "reference").glob("*/*/outputs.npy")
        forged = outputs.with_suffix(".forged.npy")
        np.save(forged, -np.load(outputs), allow_pickle=False)
        _forge(outputs, forged.read_bytes())
        forged.unlink()
        shutil.rmtree(cache / "measurement")  # so the fidelity is computed again, against the reference

    report, log = _rebuild(first_build, forge, tiny_classifier, labelled_data, tmp_path, monkeypatch)
    assert report["metrics"]["fidelity"] == first_build[0]["metrics"]["fidelity"]
    assert any("Cache entry reference/" in message and REJECTED in message for message in log.messages)
