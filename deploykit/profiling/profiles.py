"""Measured device profiles: `profiles/<target>/<device>.json`, what the latency model is fitted on.

A profile holds one device's facts, its runtime and version, the thread count, and
every artifact measured there: precision, recipe, sequence length, the encoder's
architecture, end-to-end latency and per-op-type costs. `--save-profile` adds a
build's (or a `deploykit profile` run's) measurements, replacing earlier ones of the
same artifact kind, so a profile grows as a device is used.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from deploykit.atomic_files import write_atomically
from deploykit.errors import DeployKitError, quoted
from deploykit.user_files import read_json

SCHEMA = 1
PATH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a target's or device's name as a path component
DEFAULT_PROFILES = Path("profiles")


def profiles_folder(given: Path | None) -> Path | None:
    """`--profiles`, else $DEPLOYKIT_PROFILES, else ./profiles when it exists (None: no latency model)."""
    if given is not None:
        return given
    if os.environ.get("DEPLOYKIT_PROFILES"):
        return Path(os.environ["DEPLOYKIT_PROFILES"])
    return DEFAULT_PROFILES if DEFAULT_PROFILES.is_dir() else None


def build_measurements(report: dict) -> list[dict]:
    """A build report's measurements: the fp32 baseline and every candidate tried, with their architectures."""
    length = report["model"]["sequence_length"]
    baseline = report["baseline"]
    rows = [measurement(f"{baseline['precision']} baseline", baseline["precision"], "", length,
                        report["model"].get("architecture"), baseline, baseline["bytes"])]
    rows += [measurement(candidate["candidate"], candidate["precision"], candidate.get("recipe", ""), length,
                         candidate.get("architecture"), candidate, candidate["bytes"])
             for candidate in report["candidates"]]
    return rows


def measurement(label: str, precision: str, recipe: str, sequence_length: int, architecture: dict | None,
                measured: dict, size: int | None) -> dict:
    """One profile row; `measured` holds latency_ms, peak_rss_mb and (optionally) op_profile and
    run_queue_wait_share. `spread`: the p50's relative uncertainty, which weighs the row in the latency model."""
    from deploykit.latency_model import point_spread

    return {"label": label, "precision": precision, "recipe": recipe, "sequence_length": sequence_length,
            "architecture": architecture, "latency_ms": measured["latency_ms"],
            "spread": point_spread(measured["latency_ms"], measured.get("run_queue_wait_share")),
            "peak_rss_mb": measured.get("peak_rss_mb"), "bytes": size,
            "op_types": (measured.get("op_profile") or {}).get("by_type")}


def save_profile(folder: Path, target: str, measured_on: dict, runtime: dict, measurements: list[dict]) -> Path:
    """Add `measurements` to `<folder>/<target>/<device>.json` (written atomically) and return its path."""
    device = measured_on["device"]
    for kind, name in (("target", target), ("device", device)):  # path components: never a separator or `..`
        if not isinstance(name, str) or not PATH_NAME.fullmatch(name):
            raise DeployKitError(f"the {kind} name {quoted(name)} cannot name a profile file (letters, digits, '.', "
                                 "'_' and '-', starting with a letter or digit); rebuild the folder.")
    path = folder / target / f"{device}.json"
    profile = {"schema": SCHEMA, "target": target, "device": device, "runner": measured_on["runner"],
               "threads": measured_on["threads"], "facts": measured_on.get("facts"),
               "runtime": {key: runtime.get(key) for key in ("name", "version")}, "measurements": []}
    if path.exists() or path.is_symlink():
        earlier = read_json(path, dict, untrusted=True)
        if earlier.get("threads") != profile["threads"] or earlier.get("runtime") != profile["runtime"]:
            raise DeployKitError(f"{path} was measured with {earlier.get('threads')} threads on {earlier.get('runtime')}, "
                                 f"this run with {profile['threads']} on {profile['runtime']}; a profile holds one "
                                 "setting: move the old file away or profile with the same threads and runtime.")
        profile["measurements"] = earlier.get("measurements", [])
    key = lambda row: (row["label"], row["recipe"], row["sequence_length"], json.dumps(row["architecture"]))  # noqa: E731
    fresh = {key(row) for row in measurements}
    try:
        profile["measurements"] = [row for row in profile["measurements"] if key(row) not in fresh] + measurements
        profile["measurements"].sort(key=lambda row: (str(row["precision"]), str(row["sequence_length"]),
                                                      str(row["label"])))
    except (KeyError, TypeError) as error:
        raise DeployKitError(f"{path} holds a measurement that is not as deploykit writes it ({type(error).__name__}:"
                             f" {quoted(str(error))}); move the file away.") from None
    write_atomically(path, json.dumps(profile, indent=1) + "\n")
    return path
