"""The options `build` and `search` share, in sections: how they are declared, grouped in --help, read from a
--config file, and turned into BuildOptions."""

from __future__ import annotations

import difflib
from pathlib import Path

import click

from deploykit.backends.base import INT4_ALGORITHMS, Int4Settings
from deploykit.cli.app import optional_path
from deploykit.errors import DeployKitError, quoted
from deploykit.options import BuildOptions
from deploykit.pareto_search.settings import PREFERENCES, SearchSettings

BUILD_DEFAULTS = BuildOptions()  # the options' defaults are defined once, there
SEARCH_DEFAULTS = SearchSettings()
PROFILE_DEFAULTS = BUILD_DEFAULTS.profile


def measuring_device_options(command):
    """Where to measure: this machine, or a device over SSH or ADB."""
    options = [
        click.option("--device", help="Profile on this device instead of the build host: ssh://user@host[:port], "
                     "adb://SERIAL (adb:// for the only phone attached), or a name from the devices file."),
        click.option("--devices", "devices_file", type=click.Path(dir_okay=False),
                     help="Devices file naming the lab's devices (default: $DEPLOYKIT_DEVICES, else ./devices.yaml)."),
        click.option("--trust-new-host", is_flag=True, help="Accept an SSH device whose host key is not in "
                     "known_hosts yet, and record it there (trust on first use)."),
        click.option("--benchmark-binary", type=click.Path(dir_okay=False, exists=True),
                     help="adb devices: a LiteRT benchmark_model binary to push (default: the one on the device)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def device_options(command):
    """Where to measure (a device over SSH or ADB) and where to keep what was measured."""
    command = click.option("--save-profile", is_flag=False, flag_value="profiles", type=click.Path(file_okay=False),
                           help="Add what was measured to <DIR>/<target>/<device>.json, the device profile the latency "
                           "model is fitted on. Alone it means profiles/; give a folder as --save-profile=DIR (a "
                           "separate word after it would be read as the folder).")(command)
    command = click.option("--host-device-tolerance", type=float, default=BUILD_DEFAULTS.host_device_tolerance,
                           show_default=True, help="With fidelity measured on a device: host and device cosine, "
                           "agreement or accuracy further apart than this are reported as a finding.")(command)
    command = click.option("--validate-on", type=click.Choice(["host", "device"]), default=None,
                           help="Where the evaluation samples run for fidelity and the gates: the profiling device "
                           "(its runtime and delegate; the default when it is a device) or this host.")(command)
    return measuring_device_options(command)


def search_options(command):
    """Search, size-gate and cache options, shared by `build` and `search`."""
    options = [
        click.option("--search", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Search N trials per target (Optuna over precisions, passes and their parameters; latency, "
                     "size and quality loss minimised, the gates as constraints) instead of trying the fixed "
                     "candidate list. `deploykit search` is the same with --trials."),
        click.option("--storage", help="Optuna storage URL of the search (default: sqlite:///OUT/search.db); a "
                     "shared database (postgresql://user@host/db) lets several machines work on one study."),
        click.option("--study", default=SEARCH_DEFAULTS.study, show_default=True,
                     help="Study name; each target's study is NAME.<target>. Rerun with the same name to resume."),
        click.option("--prefer", type=click.Choice(PREFERENCES), default=SEARCH_DEFAULTS.prefer, show_default=True,
                     help="Which Pareto point ships, among those passing every gate: fastest, smallest or most "
                     "faithful."),
        click.option("--prune-factor", type=click.FloatRange(min=0), default=SEARCH_DEFAULTS.prune_factor, show_default=True,
                     help="Stop a trial whose fine-tune, halfway through, loses more than this many times the quality "
                     "the gate allows (0: never stop early)."),
        click.option("--search-passes", help="Comma-separated passes the search may use, or 'none' for precisions "
                     "only (default: those in the target's recipes, plus qat on integer-only targets)."),
        click.option("--search-length-percentiles", default=",".join(f"{p:g}" for p in SEARCH_DEFAULTS.length_percentiles),
                     show_default=True, help="Token-length percentiles the search also tries as sequence lengths, "
                     "besides the build's own (--length-percentile); shorter is faster and truncates more texts. "
                     "'none' keeps the build's length; --sequence-length fixes it."),
        click.option("--max-size-mb", type=click.FloatRange(min=0, min_open=True),
                     help="Gate: largest artifact size in MB (1e6 bytes, every file of the model)."),
        click.option("--mixed-reserve", type=click.FloatRange(0, 1, max_open=True), default=BUILD_DEFAULTS.mixed.reserve,
                     show_default=True, help="Precision mixed: share of the quality gate's allowance kept in reserve "
                     "when choosing the groups kept at high precision on calibration texts (cosine gate 0.99 and 0.5: "
                     "keep groups until 0.995)."),
        click.option("--mixed-max-share", type=click.FloatRange(0, 1, min_open=True), default=BUILD_DEFAULTS.mixed.max_share,
                     show_default=True, help="Precision mixed: most groups kept at high precision, as a share of all."),
        click.option("--int4-group-size", type=int, default=BUILD_DEFAULTS.int4.group_size, show_default=True,
                     help="Precision int4-weights: input channels sharing one scale (-1: one scale per row). LiteRT "
                     "takes 32, 64, 128, 256 or -1; OpenVINO any size, falling back to smaller groups."),
        click.option("--int4-ratio", type=click.FloatRange(0, 1, min_open=True), default=BUILD_DEFAULTS.int4.ratio,
                     show_default=True, help="Precision int4-weights: share of the eligible weights at int4; below 1, "
                     "the backend keeps the most sensitive at int8, measured on calibration texts (OpenVINO only)."),
        click.option("--int4-algorithm", type=click.Choice(INT4_ALGORITHMS), default=BUILD_DEFAULTS.int4.algorithm,
                     show_default=True, help="Precision int4-weights: how the 4-bit levels are chosen: rtn rounds "
                     "each group to nearest (data-free); awq (OpenVINO only) and gptq fit them on the calibration texts."),
        click.option("--int4-embeddings/--int8-embeddings", default=BUILD_DEFAULTS.int4.embeddings, show_default=True,
                     help="Precision int4-weights: embedding tables at int4 too (smaller, slightly less faithful)."),
        click.option("--int4-embedding-group-size", type=int, default=None,
                     help="Precision int4-weights with --int4-embeddings: columns of the vocabulary table sharing one "
                     "scale (-1: one per row, the smallest) [default: --int4-group-size]."),
        click.option("--cache", type=click.Path(file_okay=False), help="Cache folder for exports and measurements "
                     "(default: $DEPLOYKIT_CACHE, else $XDG_CACHE_HOME/deploykit)."),
        click.option("--no-cache", "no_cache", is_flag=True, help="Run every stage, neither reading nor writing the "
                     "cache (by default exports and measurements of identical inputs are reused: same model, data, "
                     "parameters, target and toolchain versions)."),
        click.option("--cache-max-gb", type=click.FloatRange(min=0, min_open=True), default=BUILD_DEFAULTS.cache_max_gb,
                     show_default=True, help="Cache size cap; the least recently used entries are removed beyond it."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _pass_settings(settings: tuple[str, ...]) -> dict[str, dict]:
    """--set pass.parameter=value, checked against the pass's declared parameters."""
    from deploykit.passes.base import pass_class
    from deploykit.passes.recipe import parse_value

    parameters: dict[str, dict] = {}
    for text in settings:
        name, dot, rest = text.partition(".")
        key, equals, value = rest.partition("=")
        if not dot or not equals or not key.strip():
            raise DeployKitError(f"--set {text!r}: write PASS.PARAMETER=VALUE, e.g. --set distill.steps=300.")
        parameters.setdefault(name.strip(), {})[key.strip()] = parse_value(value)
    for name, values in parameters.items():  # each value alone: a pass may need several set together (prune)
        known = pass_class(name).Parameters.model_fields
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise DeployKitError(f"--set: pass {name!r} has no parameter {', '.join(unknown)}; its parameters are "
                                 f"{', '.join(sorted(known))}.")
        for key, value in values.items():
            pass_class(name).Parameters.check_value(name, key, value)
    return parameters


def _search_passes(text: str | None) -> tuple[str, ...] | None:
    """--search-passes: None (the target's), 'none' (precisions only), or the named passes."""
    if text is None:
        return None
    return () if text.strip().lower() == "none" else tuple(name.strip() for name in text.split(",") if name.strip())


def _percentiles(text: str) -> tuple[float, ...]:
    """--search-length-percentiles: comma-separated numbers, or 'none' (their range is checked with the options)."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        values = ()
    if not values:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of percentiles, e.g. 90,95, or 'none'",
                                 param_hint="--search-length-percentiles")
    return values


def _given(**values) -> dict:
    """The options the user set (None means: the default)."""
    return {name: value for name, value in values.items() if value is not None}


def build_options(values: dict, record: tuple = ()) -> BuildOptions:
    """The BuildOptions the command's values ask for (each from its flag, else --config, else its default);
    `record`: the values as the command took them, echoed in report.json."""
    from deploykit.graph.mixed_precision import MixedSettings
    from deploykit.options import forced_recipe
    from deploykit.profiling.base import ProfileSettings

    v = values
    pass_parameters = _pass_settings(v["settings"])
    pass_parameters["qat"] = {**pass_parameters.get("qat", {}), **_given(
        steps=v["qat_steps"], learning_rate=v["qat_learning_rate"], range_learning_rate=v["qat_range_learning_rate"])}
    forced = {"recipe": None, "pass_parameters": pass_parameters, "precision": v["precision"]}
    if v["recipe"] is not None:
        forced = forced_recipe(v["recipe"], pass_parameters, v["precision"])
    search = None
    if v["search"]:
        search = SearchSettings(trials=v["search"], storage=v["storage"], study=v["study"], prefer=v["prefer"],
                                prune_factor=v["prune_factor"], passes=_search_passes(v["search_passes"]),
                                length_percentiles=_percentiles(v["search_length_percentiles"]))
    return BuildOptions(
        out=Path(v["out"]), activation_percentile=v["activation_percentile"], **forced,
        sequence_length=v["sequence_length"], max_accuracy_drop=v["max_accuracy_drop"], min_cosine=v["min_cosine"],
        min_agreement=v["min_agreement"], max_latency_ms=v["max_latency_ms"], force=v["force"],
        converter_timeout_s=v["converter_timeout"], runner=v["runner"], device=v["device"],
        devices_file=optional_path(v["devices_file"]), trust_new_host=v["trust_new_host"],
        benchmark_binary=v["benchmark_binary"], save_profile=optional_path(v["save_profile"]),
        validate_on=v["validate_on"], host_device_tolerance=v["host_device_tolerance"],
        profiles=optional_path(v["profiles"]), sequence_length_percentile=v["length_percentile"],
        calibration_samples=v["calibration_samples"], evaluation_samples=v["evaluation_samples"], seed=v["seed"],
        masked_logit=v["masked_logit"], max_residual_scale=v["max_residual_scale"],
        allow_fallback=v["allow_fallback"], qat=v["qat"],
        profile=ProfileSettings(runs=v["runs"], warmup=v["warmup"], threads=v["threads"],
                                timeout_s=v["profile_timeout"]),
        max_size_mb=v["max_size_mb"], mixed=MixedSettings(v["mixed_reserve"], v["mixed_max_share"]),
        int4=Int4Settings(v["int4_group_size"], v["int4_ratio"], v["int4_algorithm"], v["int4_embeddings"],
                          v["int4_embedding_group_size"]),
        cache=optional_path(v["cache"]), use_cache=not v["no_cache"], cache_max_gb=v["cache_max_gb"], search=search,
        command=record,
    )


def command_record(values: dict) -> tuple:
    """The command's values as (name, value) pairs, for report.json's `options`: `--config report.json` reads them
    back, so a build can be repeated from its report."""
    return tuple((name, list(value) if isinstance(value, tuple) else value) for name, value in sorted(values.items()))


# --help shows the options of `build` and `search` in these sections, in this order; every option is in one.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Inputs": ("config", "target_names", "data", "eval_data", "task", "tokenizer"),
    "Output": ("out", "force", "junit_xml", "summary_json"),
    "Gates": ("max_accuracy_drop", "min_cosine", "min_agreement", "max_latency_ms", "max_size_mb", "allow_fallback"),
    "Export and precision": ("precision", "activation_percentile", "masked_logit", "max_residual_scale",
                             "converter_timeout", "mixed_reserve", "mixed_max_share", "int4_group_size", "int4_ratio",
                             "int4_algorithm", "int4_embeddings", "int4_embedding_group_size"),
    "Data and sequence length": ("sequence_length", "length_percentile", "calibration_samples",
                                 "evaluation_samples", "seed"),
    "Training passes": ("recipe", "settings", "qat", "qat_steps", "qat_learning_rate", "qat_range_learning_rate"),
    "Profiling": ("runs", "warmup", "threads", "runner", "profile_timeout", "device", "devices_file",
                  "trust_new_host", "benchmark_binary", "validate_on", "host_device_tolerance", "save_profile",
                  "profiles"),
    "Search": ("search", "trials", "storage", "study", "prefer", "prune_factor", "search_passes",
               "search_length_percentiles"),
    "Cache": ("cache", "no_cache", "cache_max_gb"),
    "Generation (decoders)": ("weights", "cache_length", "prefill_length", "weight_group_size", "int4_method",
                              "max_perplexity_ratio", "min_top1_agreement", "min_greedy_match"),
}


class GroupedCommand(click.Command):
    """A command whose --help lists its options by section (SECTIONS), not in one flat list."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {param.name: param.get_help_record(ctx) for param in self.get_params(ctx)
                   if isinstance(param, click.Option)}
        placed = set()
        for section, names in SECTIONS.items():
            rows = [records[name] for name in names if records.get(name)]
            placed.update(names)
            if rows:
                with formatter.section(f"{section} options"):
                    formatter.write_dl(rows)
        rest = [record for name, record in records.items() if name not in placed and record]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)


CONFIG_KINDS = (".yaml", ".yml", ".json")
# Options that trust something (an SSH host key, a folder deploykit did not write, a binary to run on a device):
# a person gives them on the command line; a config file, which may come with a build folder, cannot.
COMMAND_LINE_ONLY = ("trust_new_host", "force", "benchmark_binary")
MAX_CONFIG_BYTES = 16 * 2**20  # a report.json with a search section is well under this


def _read_config(context: click.Context, _parameter: click.Parameter, value: str | None) -> None:
    """--config FILE: option values from a YAML mapping (option names, with - or _) or from a report.json's
    `options`; flags given on the command line win. The file may come from elsewhere: read bounded, and only the
    command's own option names are taken, each converted and checked by the option itself."""
    if value is None:
        return
    from deploykit.user_files import parse_json, parse_yaml, read_untrusted_bytes

    path = Path(value)
    if path.suffix.lower() not in CONFIG_KINDS:
        raise click.BadParameter(f"{quoted(value)} is not a .yaml, .yml or .json file", param_hint="--config")
    try:
        text = read_untrusted_bytes(path, MAX_CONFIG_BYTES).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DeployKitError(f"--config {path} is not UTF-8 text.") from None
    values = parse_json(text, f"--config {path}") if path.suffix.lower() == ".json" else \
        parse_yaml(text, f"--config {path}")
    from_report = isinstance(values, dict) and path.suffix.lower() == ".json" and "options" in values
    if from_report:  # a report.json: the options its build ran with, less those only a person may give
        values = {key: item for key, item in (values["options"] or {}).items() if key not in COMMAND_LINE_ONLY}
    if not isinstance(values, dict):
        raise DeployKitError(f"--config {path} must hold a mapping of option names to values (or be a report.json "
                             "with an 'options' section).")
    known = {param.name: param for param in context.command.params if param.name != "config"}
    flags = {opt.lstrip("-").replace("-", "_"): param.name for param in known.values()
             for opt in getattr(param, "opts", ()) if opt.startswith("--")}
    chosen = {}
    for key, item in values.items():
        name = str(key).replace("-", "_")
        name = name if name in known else flags.get(name)
        if name is None:
            close = difflib.get_close_matches(str(key), [*known, *flags], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; see '{context.command_path} --help'."
            raise DeployKitError(f"--config {path}: {quoted(key)} is not an option of {context.command_path}{hint}")
        if name in COMMAND_LINE_ONLY:
            raise DeployKitError(f"--config {path}: {name} is taken from the command line only (it trusts a host, "
                                 "replaces a folder deploykit did not write, or runs a binary); give it as a flag.")
        if item is not None and not isinstance(item, (str, int, float, bool, list)):
            raise DeployKitError(f"--config {path}: {name} must be a number, text, true/false or a list.")
        chosen[name] = item
    context.default_map = {**(context.default_map or {}), **chosen}


config_option = click.option(
    "--config", type=click.Path(dir_okay=False, exists=True), is_eager=True, expose_value=False,
    callback=_read_config, help="Option values from a YAML file (option names as keys, e.g. max-accuracy-drop: 1) "
    "or a build's report.json (its options, to repeat the build); flags given here win.")
