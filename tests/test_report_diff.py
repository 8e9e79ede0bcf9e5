"""The report's `previous` section: what changed between two builds of a target, from their report.json alone."""

from deploykit.report.diff import read_previous, report_diff


def report(sha256: str, size: int, p50: float, cosine: float | None, agreement: float, accuracy: float | None,
           candidate: str = "int8") -> dict:
    return {"deploykit_version": "0.1.0",
            "artifact": {"sha256": sha256, "bytes": size, "candidate": candidate},
            "metrics": {"latency_ms": {"p50": p50}, "fidelity": {"cosine_mean": cosine, "agreement": agreement},
                        "accuracy": accuracy},
            "gates": {"passed": True}}


def test_changed_artifact_shows_every_delta():
    before = report("aa", 23_000_000, 8.0, 0.99, 0.98, None, candidate="int8")
    after = report("bb", 12_000_000, 6.5, 0.985, 0.97, None, candidate="distill:layers=3 int8")

    diff = report_diff(before, after)

    assert diff["artifact_changed"] is True
    assert diff["sha256"] == {"before": "aa", "after": "bb"}
    assert diff["candidate"] == {"before": "int8", "after": "distill:layers=3 int8"}
    assert diff["changes"]["bytes"] == {"before": 23_000_000, "after": 12_000_000, "change": -11_000_000}
    assert diff["changes"]["latency_ms_p50"]["change"] == -1.5
    assert diff["changes"]["cosine_mean"]["change"] == -0.005
    assert diff["changes"]["agreement"]["change"] == -0.01


def test_same_artifact_is_unchanged_and_unmeasured_values_are_left_out():
    before = report("aa", 100, 1.0, None, 1.0, 0.9)

    diff = report_diff(before, report("aa", 100, 1.25, None, 1.0, 0.9))

    assert diff["artifact_changed"] is False
    assert "cosine_mean" not in diff["changes"]  # a classifier has no embedding cosine on either side
    assert diff["changes"]["latency_ms_p50"] == {"before": 1.0, "after": 1.25, "change": 0.25}
    assert diff["changes"]["accuracy"]["change"] == 0.0


def test_older_report_without_a_measure_gives_no_change_for_it():
    older = report("aa", 100, 1.0, 0.99, 1.0, None)
    del older["metrics"]["fidelity"]

    diff = report_diff(older, report("bb", 100, 1.0, 0.99, 1.0, None))

    assert diff["changes"]["cosine_mean"] == {"before": None, "after": 0.99, "change": None}


def test_a_folder_deploykit_did_not_write_has_no_previous_report(tmp_path):
    (tmp_path / "report.json").write_text('{"artifact": {}}')

    assert read_previous(tmp_path) is None
