"""Reads what LiteRT's `benchmark_model` tool prints: latency statistics, memory footprint and per-op tables.

benchmark_model prints no machine-readable summary on stdout, so its log lines are the interface.
The format read here is the one of google-ai-edge/LiteRT at commit f67457790c9c2ab67347d6fe53270e8d3df20868
(tflite/tools/benchmark/benchmark_model.cc, tflite/tools/logging.h, tflite/profiling/profile_summary_formatter.cc)
and of the statistics code it links, tensorflow/tensorflow third_party/xla/xla/tsl/util/stats_calculator.{h,cc}
at commit 0adb54768767eeca26fbe07905e073b5286797d9. TensorFlow releases whose `StatWithPercentiles` did
not exist yet print the same lines without `p5=... median=... p95=...`; those are read too, with no percentiles.
"""

from __future__ import annotations

import re

from deploykit.errors import DeployKitError

# Every TFLITE_LOG message starts with its severity; a multi-line message (the op tables) only on its first line.
_SEVERITY = re.compile(r"^(INFO|WARN|ERROR|FATAL): ")
_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
_STAT_FIELD = re.compile(rf"(\w+)=({_NUMBER})")
_TIMINGS = re.compile(
    rf"Inference timings in us: Init: ({_NUMBER}), First inference: ({_NUMBER}), "
    rf"Warmup \(avg\): ({_NUMBER}), Inference \(avg\): ({_NUMBER})")
# The deltas of the peak RSS (ru_maxrss) since the tool started; older TensorFlow releases print "Peak memory footprint".
_MEMORY_DELTA = re.compile(rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
                           rf"init=({_NUMBER}) overall=({_NUMBER})")
_PEAK_MEMORY = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUMBER})")
_MODEL_SIZE = re.compile(rf"The input model file size \(MB\): ({_NUMBER})")
_TABLE_TITLE = re.compile(r"^=+ (.+?) =+$")
_SUBGRAPH = re.compile(r"^Subgraph \(index: (\d+), name: .*\) profile:$")
_PROFILED_RUNS = re.compile(r"^Timings \(microseconds\): count=(\d+)")
RUN_SECTION = "Operator-wise Profiling Info for Regular Benchmark Runs:"


def parse_benchmark_output(text: str) -> dict:
    """Timings in milliseconds, memory in MB and the regular runs' op tables of one benchmark_model run.

    Missing latency lines are an error (the tool failed, or its version prints another format); the
    memory lines and op tables are optional (older versions, --enable_op_profiling off).
    """
    lines = text.splitlines()
    stat_lines = _run_stat_lines(lines)
    timings = _search(_TIMINGS, text)
    missing = [what for what, found in (("the 'count=...' statistics of the warm-up and timed runs", len(stat_lines) >= 2),
                                        ("the 'Inference timings in us: ...' line", timings is not None)) if not found]
    if missing:
        errors = [line for line in lines if line.startswith(("ERROR: ", "FATAL: "))]
        said = f" Its first error: {errors[0][:300]}" if errors else ""
        raise DeployKitError(f"benchmark_model's output lacks {' and '.join(missing)}; check that the binary is "
                             f"LiteRT/TensorFlow Lite's benchmark_model (2.x) and that it ran to the end.{said}")
    init_us, first_us, warmup_avg_us, _ = timings
    memory = _search(_MEMORY_DELTA, text)
    peak = _search(_PEAK_MEMORY, text)
    model_size = _search(_MODEL_SIZE, text)
    return {
        "init_ms": init_us / 1000.0,
        "first_inference_ms": first_us / 1000.0,
        "warmup_avg_ms": warmup_avg_us / 1000.0,
        "warmup": _run_stat(stat_lines[0]),
        "inference": _run_stat(stat_lines[1]),
        "model_size_mb": model_size[0] if model_size else None,
        "memory_mb": {"init_delta": memory[0] if memory else None, "overall_delta": memory[1] if memory else None,
                      "peak": peak[0] if peak else None},
        "op_tables": _op_tables(lines),
    }


def _search(pattern: re.Pattern, text: str) -> tuple[float, ...] | None:
    found = pattern.search(text)
    return tuple(float(group) for group in found.groups()) if found else None


def _run_stat_lines(lines: list[str]) -> list[str]:
    """The statistics line after each 'Running benchmark for at least ...' (warm-up first, then the timed runs)."""
    found, waiting = [], False
    for line in lines:
        message = _SEVERITY.sub("", line, count=1)
        if message.startswith("Running benchmark for at least"):
            waiting = True
        elif waiting and message.startswith("count="):
            found.append(message)
            waiting = False
    return found


def _run_stat(line: str) -> dict:
    """One `StatWithPercentiles` line in milliseconds: count, first, curr, min, max, avg, std, p5, median, p95.

    When every run took the same time the tool prints only `count=N curr=X(all same)`; then min = max = avg = X.
    """
    fields = {key: float(value) for key, value in _STAT_FIELD.findall(line)}
    count = int(fields.get("count", 0))
    if count == 0 or "curr" not in fields:
        raise DeployKitError(f"benchmark_model timed no runs ({line.strip()[:200]!r}); raise --num_runs or check "
                             "that the model runs with the given flags.")
    if "avg" not in fields:  # all runs the same
        fields.update(first=fields["curr"], min=fields["curr"], max=fields["curr"], avg=fields["curr"], std=0.0)
    stat = {"count": count}
    for key in ("first", "curr", "min", "max", "avg", "std", "p5", "median", "p95"):
        stat[f"{key}_ms"] = fields[key] / 1000.0 if key in fields else None
    return stat


def _op_tables(lines: list[str]) -> dict | None:
    """The per-node and per-type tables of the regular runs, per graph ('primary', 'subgraph N', 'delegate internal').

    Columns are found by their header, since versions differ (TensorFlow 2.4 to 2.7 print a `[start]` column).
    None when the output has no op profile (--enable_op_profiling=false).
    """
    try:
        start = next(i for i, line in enumerate(lines) if _SEVERITY.sub("", line, count=1) == RUN_SECTION)
    except StopIteration:
        return None
    graphs: dict[str, dict] = {}
    graph, table, columns = "primary", None, []
    for line in lines[start + 1:]:
        if _SEVERITY.match(line):  # the next log message: the profile has ended
            break
        if subgraph := _SUBGRAPH.match(line):
            graph, table = f"subgraph {subgraph.group(1)}", None
        elif line.startswith("Delegate internal:"):
            graph, table = "delegate internal", None
        elif title := _TABLE_TITLE.match(line):
            table, columns = title.group(1), []
        elif runs := _PROFILED_RUNS.match(line):
            graphs.setdefault(graph, _empty_graph())["runs"] = int(runs.group(1))
        elif line.startswith("\t") and table in ("Run Order", "Summary by node type"):
            fields = [field.strip() for field in line.split("\t")[1:]]
            if fields[0].lower() == "[node type]":
                columns = [field.strip("[]").lower() for field in fields]
                continue
            row = dict(zip(columns, fields))
            try:
                if table == "Run Order":
                    graphs.setdefault(graph, _empty_graph())["nodes"].append(
                        {"type": row["node type"], "name": row["name"], "avg_ms": float(row["avg ms"]),
                         "times_called": int(row["times called"])})
                else:
                    graphs.setdefault(graph, _empty_graph())["by_type"].append(
                        {"type": row["node type"], "count": int(row["count"]), "avg_ms": float(row["avg ms"])})
            except (KeyError, ValueError):
                raise DeployKitError(f"benchmark_model's {table!r} table has a row deploykit cannot read "
                                     f"({line.strip()[:200]!r}); check the benchmark_model version.") from None
    return graphs


def _empty_graph() -> dict:
    """One graph's tables: nodes in run order (avg ms per call, calls per run), per-type totals (avg ms per run)."""
    return {"runs": None, "nodes": [], "by_type": []}
