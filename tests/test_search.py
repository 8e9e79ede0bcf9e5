"""The search (Optuna study per target, Pareto front, resume, shared studies) and the content-addressed cache,
on tiny models built in the test session."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploykit.pipeline import BuildOptions, build_targets
from deploykit.cache import ContentCache, digest
from deploykit.errors import DeployKitError
from deploykit.latency_model import Architecture
from deploykit.profiling.base import ProfileSettings
from deploykit.profiling.profiles import save_profile
from deploykit.pareto_search.pareto import pareto_front, preferred
from deploykit.pareto_search.settings import SearchSettings

FAST = ProfileSettings(runs=3, warmup=0, op_profile=False)
SMALL = dict(profile=FAST, calibration_samples=10, evaluation_samples=20)


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- Pareto front --------------------------------------------------------------------------------------------


def test_the_pareto_front_of_known_points():
    points = {
        "fast-bad": (1.0, 10.0, 0.30),
        "slow-good": (9.0, 10.0, 0.01),
        "middle": (4.0, 5.0, 0.05),
        "dominated-by-middle": (5.0, 6.0, 0.06),
        "tie-of-middle": (4.0, 5.0, 0.05),
        "smallest": (8.0, 1.0, 0.20),
        "dominated-everywhere": (9.5, 11.0, 0.31),
    }
    front = pareto_front(list(points), points.get)
    assert front == ["fast-bad", "slow-good", "middle", "tie-of-middle", "smallest"]
    assert preferred(front, points.get, "latency") == "fast-bad"
    assert preferred(front, points.get, "size") == "smallest"
    assert preferred(front, points.get, "quality") == "slow-good"
    assert pareto_front([], points.get) == []


# ---- cache ---------------------------------------------------------------------------------------------------


def test_cache_keys_change_with_every_input():
    base = digest("model-hash", {"prune": {"heads": 0.25}}, "int8", {"openvino": "2026.4.1"})
    assert base == digest("model-hash", {"prune": {"heads": 0.25}}, "int8", {"openvino": "2026.4.1"})
    assert base != digest("model-hash", {"prune": {"heads": 0.5}}, "int8", {"openvino": "2026.4.1"})
    assert base != digest("model-hash", {"prune": {"heads": 0.25}}, "fp16", {"openvino": "2026.4.1"})
    assert base != digest("model-hash", {"prune": {"heads": 0.25}}, "int8", {"openvino": "2026.5.0"})
    assert digest(1) != digest("1") and digest([1, 2]) != digest([12])


def test_the_cache_drops_damaged_entries_and_evicts_the_least_recently_used(tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(b"x" * 1000)
    cache = ContentCache(tmp_path / "cache", max_bytes=2800)  # two entries of about 1.3 kB fit, not three
    for key in ("a" * 64, "b" * 64):
        cache.put("export", key, {"model.bin": source}, {"key": key})
        time.sleep(0.01)
    assert cache.get("export", "a" * 64).meta == {"key": "a" * 64}  # now the most recently used
    cache.put("export", "c" * 64, {"model.bin": source}, {"key": "c"})
    assert cache.get("export", "b" * 64) is None  # least recently used: evicted for c
    assert cache.get("export", "a" * 64) is not None and cache.get("export", "c" * 64) is not None
    stored = cache.get("export", "c" * 64).path("model.bin")
    stored.write_bytes(b"y" * 1000)  # same size, other bytes
    assert cache.get("export", "c" * 64) is None and not stored.parent.exists()


def test_a_rebuild_reuses_every_stage_and_a_changed_input_misses(tiny_classifier, labelled_data, tmp_path,
                                                                  monkeypatch):
    from deploykit.pipeline import session as session_module
    from deploykit.progress import StepLog

    def build(out, data=labelled_data, **extra):
        log = StepLog()
        options = BuildOptions(out=tmp_path / out, precision="dynamic-int8", cache=tmp_path / "cache", **SMALL,
                               **extra)
        result = build_targets(tiny_classifier, "arm-cpu", data, options=options, log=log)[0]
        return result, log

    first, log = build("first")
    assert "export" in log.seconds
    again, log = build("again")
    assert "export" not in log.seconds and "export_baseline" not in log.seconds  # nothing exported again
    assert not any(key.startswith(("validate_", "profile_")) for key in log.seconds)  # nor measured again
    assert sha256_of(again.artifact.path) == sha256_of(first.artifact.path)
    assert again.report["metrics"]["latency_ms"] == first.report["metrics"]["latency_ms"]
    references = lambda: len(list((tmp_path / "cache" / "reference").glob("*/*/outputs.npy")))  # noqa: E731
    assert references() == 1  # the original's outputs were stored once and read back

    _, log = build("recipe", recipe=("trim-vocab",), pass_parameters={"trim-vocab": {"min_count": 2}})
    assert "export" in log.seconds  # a pass parameter: a new key
    changed = tmp_path / "data.jsonl"
    changed.write_text(labelled_data.read_text().replace("goal", "goals"))
    _, log = build("data", data=changed)
    assert "export" in log.seconds and references() == 2  # other texts: other calibration, other key
    versions = dict(session_module.toolchain_versions())
    monkeypatch.setattr(session_module, "toolchain_versions", lambda: {**versions, "ai-edge-litert": "9.9.9"})
    _, log = build("version")
    assert "export" in log.seconds  # another toolchain version: another key

    monkeypatch.setattr(session_module, "toolchain_versions", lambda: versions)
    for stored in (tmp_path / "cache" / "export").glob("*/*/model.tflite"):
        stored.write_bytes(stored.read_bytes()[:-1] + b"\0")  # damage every cached artifact
    repaired, log = build("repaired")
    assert "export" in log.seconds and sha256_of(repaired.artifact.path) == sha256_of(first.artifact.path)


# ---- search --------------------------------------------------------------------------------------------------


def _slow_int8_profile(folder: Path, ms_per_8_tokens=(("dynamic-int8", 100.0), ("fp16", 0.01), ("fp32", 0.01))) -> Path:
    """A profile of this host in which dynamic-int8 is far too slow for any budget and fp16/fp32 are fast."""
    from deploykit.profiling.local import LocalRunner

    tiny = Architecture(layers=1, hidden=32, heads=2, head_dim=16, intermediate=64)
    device = LocalRunner(LocalRunner.settings_class(name="local")).device_name
    rows = []
    for precision, ms in ms_per_8_tokens:
        rows += [{"label": precision, "precision": precision, "recipe": "", "sequence_length": n,
                  "architecture": tiny.as_dict(), "latency_ms": {"p50": ms * n / 8}, "peak_rss_mb": 1.0, "bytes": 1,
                  "op_types": None} for n in (8, 16, 32)]
    save_profile(folder, "arm-cpu", {"device": device, "runner": "local", "threads": 1},
                 {"name": "ai-edge-litert", "version": "2.3.0"}, rows)
    return folder


def test_a_search_ships_the_preferred_point_of_its_front_and_skips_what_is_predicted_too_slow(
        tiny_classifier, labelled_data, tmp_path):
    options = BuildOptions(out=tmp_path / "out", max_latency_ms=5.0, profiles=_slow_int8_profile(tmp_path / "p"),
                           profile=ProfileSettings(runs=3, warmup=0, threads=1, op_profile=False),
                           calibration_samples=10, evaluation_samples=20,
                           search=SearchSettings(trials=5, passes=("trim-vocab",)))
    result = build_targets(tiny_classifier, "arm-cpu", labelled_data, options=options)[0]
    folder = result.folder
    search = json.loads((folder / "search.json").read_text())
    trials = search["trials"]
    assert len(trials) == 5 and {t["state"] for t in trials} <= {"complete", "pruned"}
    # build's own candidates run first (the search starts from them), then the sampler's
    assert [t["candidate"]["label"] for t in trials if t.get("fixed_candidate")] == ["dynamic-int8", "fp16", "fp32",
                                                                                       "int4-weights"]
    assert [t["number"] for t in trials if t.get("fixed_candidate")] == [0, 1, 2, 3]
    skipped = [t for t in trials if "skipped" in t]
    assert skipped and all(t["candidate"]["precision"] == "dynamic-int8" and "result" not in t for t in skipped)
    assert all(t["candidate"]["precision"] != "dynamic-int8" for t in trials if "result" in t)
    # The shipped point is the fastest of the front of trials passing every gate, the front recomputed here.
    measured = [t for t in trials if "result" in t and "same_as" not in t and t["result"]["passed"]]
    values = lambda t: tuple(t["result"][k] for k in ("latency_ms", "size_mb", "quality_loss"))  # noqa: E731
    front = pareto_front(measured, values)
    assert sorted(row["trial"] for row in search["front"]) == sorted(t["number"] for t in front)
    assert search["chosen_trial"] == preferred(front, values, "latency")["number"]
    report = result.report
    assert report["search"]["chosen_trial"] == search["chosen_trial"]
    chosen = next(t for t in trials if t["number"] == search["chosen_trial"])
    assert report["artifact"]["precision"] == chosen["candidate"]["precision"]
    assert report["recipe"]["passes"] == [] or chosen["candidate"]["recipe"].startswith("trim-vocab")
    assert "## Search: Pareto front" in (folder / "report.md").read_text()
    png = (folder / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert "pareto.png" in (folder / "manifest.json").read_text()


def test_a_search_tries_shorter_sequence_lengths_and_ships_one_consistently(tiny_classifier, labelled_data,
                                                                             tmp_path):
    """Texts of 1-3 sentences: the build's p99 length is 32, p40 is shorter. A profile in which fp32 costs 1 ms per 8
    tokens and a 3 ms budget make every trial at 32 predicted too slow, so what ships is built at the short length."""
    rows = [json.loads(line) for line in labelled_data.read_text().splitlines()]
    varied = tmp_path / "varied.jsonl"
    varied.write_text("".join(json.dumps({"text": " ".join([row["text"]] * (1 + i % 3)), "label": row["label"]}) + "\n"
                              for i, row in enumerate(rows)))
    options = BuildOptions(out=tmp_path / "out", max_latency_ms=3.0, precision="fp32", max_accuracy_drop=100.0,
                           profiles=_slow_int8_profile(tmp_path / "p", (("fp32", 1.0),)),
                           profile=ProfileSettings(runs=3, warmup=0, threads=1, op_profile=False),
                           calibration_samples=10, evaluation_samples=20,
                           search=SearchSettings(trials=4, passes=(), length_percentiles=(40.0,)))
    result = build_targets(tiny_classifier, "arm-cpu", varied, options=options)[0]
    search = json.loads((result.folder / "search.json").read_text())
    assert search["space"]["sequence_lengths"][0] == 32 and len(search["space"]["sequence_lengths"]) == 2
    short = search["space"]["sequence_lengths"][1]
    trials = search["trials"]
    assert {t["candidate"]["sequence_length"] for t in trials if "skipped" in t} == {32}
    built = [t for t in trials if "result" in t and "same_as" not in t]
    assert built and {t["candidate"]["sequence_length"] for t in built} == {short}
    # The folder is the short trial's throughout: report, tokenizer, the artifact's inputs, a re-profile.
    report = result.report
    assert report["model"]["sequence_length"] == short
    assert json.loads((result.folder / "tokenizer.json").read_text())["sequence_length"] == short
    tokenize = next(step for step in report["plan"] if step["step"] == "tokenize")
    assert tokenize["sequence_length"] == short and "search" in tokenize["chosen_by"]
    from ai_edge_litert.interpreter import Interpreter

    inputs = Interpreter(model_path=str(result.folder / "model.tflite")).get_input_details()
    assert all(list(detail["shape"]) == [1, short] for detail in inputs)
    import deploykit

    assert deploykit.profile(result.folder, runs=2, warmup=0)["sequence_length"] == short


def test_a_hopeless_fine_tune_is_stopped_halfway(tiny_backbone_file, labelled_data, tmp_path):
    """With no quality loss allowed, a distilled student that lost anything halfway is stopped there."""
    options = BuildOptions(out=tmp_path / "out", min_cosine=1.0, precision="fp32", **SMALL,
                           pass_parameters={"distill": {"steps": 40, "hidden_steps": 0, "ffn_width": 0.25}},
                           recipe=("distill",), search=SearchSettings(trials=1))
    with pytest.raises(DeployKitError, match="no trial produced an artifact"):
        build_targets(tiny_backbone_file, "arm-cpu", labelled_data, options=options)
    import optuna

    study = optuna.load_study(study_name="deploykit.arm-cpu", storage=f"sqlite:///{tmp_path / 'out' / 'search.db'}")
    (trial,) = study.trials
    assert trial.state.name == "PRUNED" and "at step 20 of 40" in trial.user_attrs["pruned"]
    assert trial.user_attrs["checkpoints"][0]["quality_loss"] > 0


def _search_command(model: Path, data: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "deploykit.cli", "search", str(model), "--data", str(data), "--target", "arm-cpu",
            "--out", str(out), "--trials", str(trials), "--search-passes", "trim-vocab", "--runs", "3", "--warmup",
            "0", "--calibration-samples", "10", "--evaluation-samples", "20", *extra]


def _schema_ready(path) -> bool:
    """Whether Optuna has finished creating its tables in the SQLite file (it writes version_info last): opening the
    storage earlier would create them too, racing the search process that is creating them."""
    import sqlite3

    if not path.exists():
        return False
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        try:
            return connection.execute("SELECT count(*) FROM version_info").fetchone()[0] > 0
        except sqlite3.OperationalError:  # the table is not there yet
            return False


def _trials(storage: str, name: str = "deploykit.arm-cpu") -> list:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def test_an_interrupted_search_resumes_on_two_workers_without_losing_or_repeating_a_trial(
        tiny_classifier, labelled_data, tmp_path):
    """Ctrl-C during a trial, then the same command on two machines' worth of processes sharing the study."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = lambda out: _search_command(tiny_classifier, labelled_data, tmp_path / out, 8,  # noqa: E731
                                          "--storage", storage)
    first = subprocess.Popen(command("first"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:  # interrupt during a trial after one completed
        trials = _trials(storage) if _schema_ready(tmp_path / "study.db") else []
        if sum(t.state.name == "COMPLETE" for t in trials) >= 1 and trials[-1].state.name == "RUNNING" \
                and trials[-1].params:  # its objective runs (a signal between trials fails the next at its start)
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130, first.stderr.read()
    before = {t.number: t for t in _trials(storage)}
    interrupted = [t for t in before.values() if t.state.name == "FAIL"]
    done_before = {n for n, t in before.items() if t.state.name in ("COMPLETE", "PRUNED")}
    assert len(interrupted) == 1 and 1 <= len(done_before) < 6

    # The first worker queues the interrupted trial again; the second joins once it is queued (two workers starting
    # in the same instant could both queue it: one repeated trial, never a lost one).
    workers = [subprocess.Popen(command("worker-0"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    deadline = time.monotonic() + 120
    while len(_trials(storage)) == len(before) and time.monotonic() < deadline and workers[0].poll() is None:
        time.sleep(0.05)
    workers.append(subprocess.Popen(command("worker-1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for worker in workers:
        assert worker.wait(timeout=400) == 0, worker.stderr.read()[-3000:]
    after = _trials(storage)
    finished = [t for t in after if t.state.name in ("COMPLETE", "PRUNED")]
    assert 8 <= len(finished) <= 9  # the budget across all runs; a second worker may overshoot by one
    assert {t.number for t in finished} >= done_before  # nothing finished before ran again...
    new = [t for t in after if t.number not in before]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in new) and len(new) <= 9 - len(done_before)
    retry = [t for t in new if t.user_attrs.get("retry_of") == interrupted[0].number]
    assert len(retry) == 1 and retry[0].params == interrupted[0].params  # the interrupted trial is not lost
    assert len({t.user_attrs["worker"] for t in new}) == 2  # both processes ran trials of the one study
    for i in range(2):
        assert json.loads((tmp_path / f"worker-{i}" / "arm-cpu" / "search.json").read_text())["trials"]


def _postgres():
    """A PostgreSQL server from Debian's package on a free loopback port: (URL, stop command, folder), or None
    when the package is not installed here. Run as the package's postgres user when the tests run as root."""
    import glob
    import socket
    import tempfile

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        return None
    pytest.importorskip("psycopg2")
    bin_dir = Path(found[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="deploykit-pg-"))  # under /tmp: the postgres user can reach it
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "server.log"),
                    "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    stop = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", stop, folder


def test_a_study_in_postgresql(tiny_classifier, labelled_data, tmp_path):
    """The same search with its study in a PostgreSQL server (Debian's package, started here on loopback)."""
    server = _postgres()
    if server is None:
        pytest.skip("Debian's postgresql is not installed (make test installs it as root)")
    storage, stop, folder = server
    try:
        run = subprocess.run(_search_command(tiny_classifier, labelled_data, tmp_path / "out", 3, "--storage", storage,
                                             "--study", "shared"), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        trials = _trials(storage, "shared.arm-cpu")
        # build's four arm-cpu candidates are all queued first; --trials 3 runs three, the fourth waits for a resume
        states = [(t.state.name, t.user_attrs["fixed_candidate"]["precision"]) for t in trials]
        assert all(state in ("COMPLETE", "PRUNED") for state, _ in states[:3]) and states[3] == ("WAITING", "int4-weights"), states
        search = json.loads((tmp_path / "out" / "arm-cpu" / "search.json").read_text())
        assert search["storage"].startswith("postgresql+psycopg2://postgres@127.0.0.1")
        assert not (tmp_path / "out" / "search.db").exists()  # nothing in SQLite beside it
    finally:
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("arguments, message", [
    (["--set", "distill.nope=3"], "--set: pass 'distill' has no parameter nope"),
    (["--set", "distil.steps=3"], "unknown pass 'distil'"),
    (["--set", "distill"], "write PASS.PARAMETER=VALUE"),
    (["--set", "prune.heads=lots"], "prune parameter heads must be a number"),
    (["--set", "prune.heads=1.5"], "prune parameter heads must be >= 0 and < 1"),
    (["--search-passes", "distil"], "--search-passes: unknown pass distil"),
    (["--trials", "0"], "Invalid value for '--trials'"),
    (["--search-length-percentiles", "95,0"], "search length percentile must be in (0, 100], got 0.0"),
    (["--search-length-percentiles", "p90"], "--search-length-percentiles"),
])
def test_bad_search_options_stop_before_any_work(arguments, message, tmp_path):
    from click.testing import CliRunner

    from deploykit.cli import main

    result = CliRunner().invoke(main, ["search", "minilm-l6", "--out", str(tmp_path / "out"), *arguments])
    assert result.exit_code == 2 and message in result.output + (result.stderr or ""), result.output
    assert not (tmp_path / "out").exists()
