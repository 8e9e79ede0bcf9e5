"""deploykit: hardware-aware deployment of BERT-family text models.

    import deploykit as dk
    result = dk.build("minilm-l6", target="intel-cpu", data="reviews.jsonl")
    result.artifact.path, result.metrics.latency_ms.p50, result.metrics.accuracy_drop
    results = dk.search("minilm-l6", "arm-cpu,intel-cpu", "reviews.jsonl", trials=20)  # best Pareto point each

Heavy frameworks (TensorFlow, OpenVINO) load only when a build or profile runs.
"""

from importlib.metadata import version as _installed_version

__version__ = _installed_version("deploykit")  # one source: pyproject.toml

from deploykit.errors import DeployKitError, GateFailure  # noqa: E402
from deploykit.target_loader import list_targets, load_target  # noqa: E402


# The build API; the package that runs it is `deploykit.pipeline`, so `deploykit.build` names the function only.
from deploykit.pipeline import build, build_targets, search  # noqa: E402
from deploykit.compare import compare  # noqa: E402


def profile(path, threads=None, runs: int = 100, warmup: int = 10, device: str | None = None, **device_options) -> dict:
    """Profile a built artifact (or target folder) on this machine, or on `device` (ssh://..., adb://..., or a
    devices-file name; `device_options`: devices_file, trust_new_host, benchmark_binary).
    See `deploykit.profiling.build_folder.profile_path`."""
    from deploykit.profiling.base import ProfileSettings
    from deploykit.profiling.build_folder import build_target_of, profile_path
    from deploykit.profiling.devices import device_runner

    runner = device_runner(device, build_target_of(path), **device_options) if device else None
    return profile_path(path, threads, ProfileSettings(runs=runs, warmup=warmup), runner)


def generate(folder, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 40, seed: int = 0,
             threads: int | None = None, device: str | None = None):
    """Continue `prompt` with the decoder built in `folder` (OUT/<target>), yielding text as tokens come: greedy
    when temperature is 0, else sampled from the top_k tokens with `seed`; on `device` (ssh://user@host[:port] or
    a devices-file name) instead of here when given.

        print("".join(dk.generate("dist/arm-cpu", "The capital of France is", max_new_tokens=8)))
    """
    from pathlib import Path

    from deploykit.generation.device import folder_runner
    from deploykit.generation.runtime import Sampling
    from deploykit.generation.streaming import generate_text

    runner = folder_runner(Path(folder), device) if device else None
    return generate_text(Path(folder), prompt, max_new_tokens, Sampling(temperature, top_k, seed), threads, runner)


__all__ = ["build", "build_targets", "search", "compare", "profile", "generate", "list_targets", "load_target", "DeployKitError", "GateFailure", "__version__"]
