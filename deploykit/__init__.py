"""deploykit: hardware-aware deployment of BERT-family text models.

    import deploykit as dk
    result = dk.build("minilm-l6", target="intel-cpu", data="reviews.jsonl")
    result.artifact.path, result.metrics.latency_ms.p50, result.metrics.accuracy_drop

Heavy frameworks (TensorFlow, OpenVINO) load only when a build or profile runs.
"""

from importlib.metadata import version as _installed_version

__version__ = _installed_version("deploykit")  # one source: pyproject.toml

from deploykit.errors import DeployKitError, GateFailure  # noqa: E402
from deploykit.targets import list_targets, load_target  # noqa: E402


# Imported eagerly (light: no framework loads here) so that `deploykit.build` names the function: a lazy
# wrapper would be replaced by the `deploykit.build` submodule the first time anything imported it.
from deploykit.build import build, build_targets  # noqa: E402


def profile(path, threads=None, runs: int = 100, warmup: int = 10) -> dict:
    """Profile a built artifact on this machine; see `deploykit.profiling.local.profile_path`."""
    from deploykit.profiling.local import ProfileSettings, profile_path

    return profile_path(path, threads, ProfileSettings(runs=runs, warmup=warmup))


__all__ = ["build", "build_targets", "profile", "list_targets", "load_target", "DeployKitError", "GateFailure", "__version__"]
