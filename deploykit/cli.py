"""The `deploykit` command: thin click commands that call the API and print with rich.

Exit codes (stable, for CI): 0 success, 2 bad input or environment (one-line
message), 3 a build finished but missed a quality gate (its report, --junit-xml and
--summary-json are still written), 4 `verify` found a folder that differs from its
manifest or an artifact that does not run, 130 / 143 interrupted by Ctrl-C / SIGTERM
(temporary and staging folders removed, earlier builds unchanged).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploykit.backends.base import INT4_ALGORITHMS, Int4Settings
from deploykit.options import BuildOptions
from deploykit.errors import DeployKitError, quoted
from deploykit.interrupts import Interrupted, interruptible
from deploykit.pareto_search.settings import PREFERENCES, SearchSettings
from deploykit.target_loader import list_targets, load_target

# Wide enough for the summary tables when output is piped (rich assumes 80 columns then).
_WIDTH = shutil.get_terminal_size((150, 24)).columns
console = Console(stderr=True, width=_WIDTH)
output = Console(width=_WIDTH)
_BUILD = BuildOptions()  # the options' defaults are defined once, there
_SEARCH = SearchSettings()
_PROFILE = _BUILD.profile


def _device_options(command):
    """Where to measure (a device over SSH or ADB) and where to keep what was measured."""
    options = [
        click.option("--device", help="Profile on this device instead of the build host: ssh://user@host[:port], "
                     "adb://SERIAL (adb:// for the only phone attached), or a name from the devices file."),
        click.option("--devices", "devices_file", type=click.Path(dir_okay=False),
                     help="Devices file naming the lab's devices (default: $DEPLOYKIT_DEVICES, else ./devices.yaml)."),
        click.option("--trust-new-host", is_flag=True, help="Accept an SSH device whose host key is not in "
                     "known_hosts yet, and record it there (trust on first use)."),
        click.option("--benchmark-binary", type=click.Path(dir_okay=False, exists=True),
                     help="adb devices: a LiteRT benchmark_model binary to push (default: the one on the device)."),
        click.option("--save-profile", is_flag=False, flag_value="profiles", type=click.Path(file_okay=False),
                     help="Add what was measured to <DIR>/<target>/<device>.json, the device profile the latency "
                     "model is fitted on. Alone it means profiles/; give a folder as --save-profile=DIR (a "
                     "separate word after it would be read as the folder)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _search_options(command):
    """Search, size-gate and cache options, shared by `build` and `search`."""
    options = [
        click.option("--search", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Search N trials per target (Optuna over precisions, passes and their parameters; latency, "
                     "size and quality loss minimised, the gates as constraints) instead of trying the fixed "
                     "candidate list. `deploykit search` is the same with --trials."),
        click.option("--storage", help="Optuna storage URL of the search (default: sqlite:///OUT/search.db); a "
                     "shared database (postgresql://user@host/db) lets several machines work on one study."),
        click.option("--study", default=_SEARCH.study, show_default=True,
                     help="Study name; each target's study is NAME.<target>. Rerun with the same name to resume."),
        click.option("--prefer", type=click.Choice(PREFERENCES), default=_SEARCH.prefer, show_default=True,
                     help="Which Pareto point ships, among those passing every gate: fastest, smallest or most "
                     "faithful."),
        click.option("--prune-factor", type=click.FloatRange(min=0), default=_SEARCH.prune_factor, show_default=True,
                     help="Stop a trial whose fine-tune, halfway through, loses more than this many times the quality "
                     "the gate allows (0: never stop early)."),
        click.option("--search-passes", help="Comma-separated passes the search may use, or 'none' for precisions "
                     "only (default: those in the target's recipes, plus qat on integer-only targets)."),
        click.option("--search-length-percentiles", default=",".join(f"{p:g}" for p in _SEARCH.length_percentiles),
                     show_default=True, help="Token-length percentiles the search also tries as sequence lengths, "
                     "besides the build's own (--length-percentile); shorter is faster and truncates more texts. "
                     "'none' keeps the build's length; --sequence-length fixes it."),
        click.option("--max-size-mb", type=click.FloatRange(min=0, min_open=True),
                     help="Gate: largest artifact size in MB (1e6 bytes, every file of the model)."),
        click.option("--mixed-reserve", type=click.FloatRange(0, 1, max_open=True), default=_BUILD.mixed.reserve,
                     show_default=True, help="Precision mixed: share of the quality gate's allowance kept in reserve "
                     "when choosing the groups kept at high precision on calibration texts (cosine gate 0.99 and 0.5: "
                     "keep groups until 0.995)."),
        click.option("--mixed-max-share", type=click.FloatRange(0, 1, min_open=True), default=_BUILD.mixed.max_share,
                     show_default=True, help="Precision mixed: most groups kept at high precision, as a share of all."),
        click.option("--int4-group-size", type=int, default=_BUILD.int4.group_size, show_default=True,
                     help="Precision int4-weights: input channels sharing one scale (-1: one scale per row). LiteRT "
                     "takes 32, 64, 128, 256 or -1; OpenVINO any size, falling back to smaller groups."),
        click.option("--int4-ratio", type=click.FloatRange(0, 1, min_open=True), default=_BUILD.int4.ratio,
                     show_default=True, help="Precision int4-weights: share of the eligible weights at int4; below 1, "
                     "the backend keeps the most sensitive at int8, measured on calibration texts (OpenVINO only)."),
        click.option("--int4-algorithm", type=click.Choice(INT4_ALGORITHMS), default=_BUILD.int4.algorithm,
                     show_default=True, help="Precision int4-weights: how the 4-bit levels are chosen: rtn rounds "
                     "each group to nearest (data-free); awq (OpenVINO only) and gptq fit them on the calibration texts."),
        click.option("--int4-embeddings/--int8-embeddings", default=_BUILD.int4.embeddings, show_default=True,
                     help="Precision int4-weights: embedding tables at int4 too (smaller, slightly less faithful)."),
        click.option("--int4-embedding-group-size", type=int, default=None,
                     help="Precision int4-weights with --int4-embeddings: columns of the vocabulary table sharing one "
                     "scale (-1: one per row, the smallest) [default: --int4-group-size]."),
        click.option("--cache", type=click.Path(file_okay=False), help="Cache folder for exports and measurements "
                     "(default: $DEPLOYKIT_CACHE, else $XDG_CACHE_HOME/deploykit)."),
        click.option("--no-cache", "no_cache", is_flag=True, help="Run every stage, neither reading nor writing the "
                     "cache (by default exports and measurements of identical inputs are reused: same model, data, "
                     "parameters, target and toolchain versions)."),
        click.option("--cache-max-gb", type=click.FloatRange(min=0, min_open=True), default=_BUILD.cache_max_gb,
                     show_default=True, help="Cache size cap; the least recently used entries are removed beyond it."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


class _Group(click.Group):
    """Turns bad input, bad options and interruptions into one line and an exit code, never a traceback."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False  # usage errors come back here instead of click's three-line block
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:
            error.show()  # the help text itself, as click prints it
            sys.exit(0)
        except click.ClickException as error:
            command = error.ctx.command_path if getattr(error, "ctx", None) else "deploykit"
            _error(f"{error.format_message().rstrip('.')}; see '{command} --help'.")
            sys.exit(error.exit_code)
        except click.Abort:
            _error("aborted.")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, context):
        try:
            with interruptible():
                return super().invoke(context)
        except DeployKitError as error:
            _error(str(error))
            sys.exit(error.exit_code)
        except Interrupted as interruption:
            _error(f"interrupted by {interruption.signal_name}; temporary and staging folders were removed and "
                   "earlier builds left as they were.")
            sys.exit(interruption.exit_code)


# A message longer than this quotes too much of some user value (a path, a recipe): its middle is cut.
MAX_ERROR_CHARACTERS = 600


def _error(message: str) -> None:
    """One line on stderr; the message is plain text (it may quote user paths), never rich markup."""
    if len(message) > MAX_ERROR_CHARACTERS:
        half = MAX_ERROR_CHARACTERS // 2
        message = f"{message[:half]} […] {message[-half:]}"
    console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


@click.group(cls=_Group)
@click.version_option(package_name="deploykit")
def main() -> None:
    """Compress, export, validate and profile BERT-family text models for each hardware target.

    \b
    deploykit targets                      list the hardware registry
    deploykit passes                       list the compression passes for --recipe
    deploykit build --target intel-cpu     build the built-in default (MiniLM + bundled data)
    deploykit build ./my-bert --data reviews.jsonl --target mobile-npu,arm-cpu
    deploykit verify dist                  re-check a build's files and run its artifacts
    deploykit ci init --provider gitlab    write a CI workflow that builds each target

    \b
    Exit codes: 0 success; 2 bad input or environment (one line on stderr);
    3 a gate missed (reports still written); 4 verify found a mismatch;
    130 / 143 interrupted by Ctrl-C / SIGTERM.
    """


@main.command()
@click.argument("name", required=False)
def passes(name: str | None) -> None:
    """List the compression passes (or one pass's parameters: default, accepted values, search range, meaning).

    Use them with build --recipe "name:key=value,...", or in a recipe file.
    """
    from deploykit.passes.base import PASSES, pass_class

    if name is None:
        table = Table(title="deploykit passes (`deploykit passes NAME` explains one pass's parameters)")
        for column in ("pass", "what it does", "parameters (default)"):
            table.add_column(column)
        for pass_name in PASSES.names():
            kind = pass_class(pass_name)
            defaults = kind.Parameters().model_dump()
            table.add_row(pass_name, escape(kind.description),
                          escape(", ".join(f"{k}={defaults[k]}" for k in kind.Parameters.listed())))
        output.print(table)
        return
    kind = pass_class(name)
    parameters = kind.Parameters
    table = Table(title=f"{name}: {escape(kind.description)}")
    for column in ("parameter", "default", "accepts", "search range", "meaning"):
        table.add_column(column)
    space = parameters.search_space()
    for field_name, info in parameters.listed().items():
        searched = "–" if field_name not in space else " .. ".join(map(str, space[field_name]))
        table.add_row(field_name, escape(str(info.default)), escape(parameters.accepted(field_name)), searched,
                      escape(info.description or ""))
    output.print(table)


@main.group(invoke_without_command=True)
@click.pass_context
def targets(context: click.Context) -> None:
    """List the registered hardware targets (add more with DEPLOYKIT_TARGETS=folder)."""
    if context.invoked_subcommand is not None:
        return
    table = Table(title="deploykit targets")
    for column in ("name", "runtime", "precisions", "integer-only", "sparsity", "device compiler"):
        table.add_column(column, no_wrap=True)
    table.add_column("description")
    for target in list_targets():
        compiler = target.compiler or {}
        vendor = f" ({compiler['vendor']})" if "vendor" in compiler else ""
        table.add_row(
            target.name, target.runtime, ", ".join(target.precisions), "yes" if target.integer_only else "no",
            ", ".join(target.sparsity), f"{compiler.get('name', '–')}{vendor}", target.description,
        )
    output.print(table)


@targets.command("show")
@click.argument("name")
def targets_show(name: str) -> None:
    """Print one target's full profile as YAML."""
    import yaml

    click.echo(yaml.safe_dump(load_target(name).model_dump(), sort_keys=False, width=1000), nl=False)


@main.command()
@click.argument("model", required=False)
@click.option("--target", "-t", "target_names", default="intel-cpu", show_default=True,
              help="Target name(s), comma-separated, or 'all'. See `deploykit targets`.")
@click.option("--data", type=click.Path(dir_okay=False), help="JSONL/CSV with a 'text' column and optional 'label'. "
              "Default: the bundled sentences.")
@click.option("--eval-data", type=click.Path(dir_okay=False), help="Separate evaluation file (default: held out from --data).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=str(_BUILD.out), show_default=True,
              help="Output folder; each target gets OUT/<target>/.")
@click.option("--precision", help="Override the target's precision (fp32, fp16, bf16, int8, a16w8, dynamic-int8, "
              "mixed: int8 with the most sensitive layers kept high, int4-weights).")
@click.option("--activation-percentile", type=click.FloatRange(50, 100), default=_BUILD.activation_percentile, show_default=True,
              help="Percentile-calibrated backends (TensorRT Q/DQ): share of activation values each int8 range keeps; "
              "the rest clip.")
@click.option("--sequence-length", type=click.IntRange(min=2), help="Static sequence length (default: p99 of the data's token lengths).")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 100), help="Gate: largest accuracy loss in points (default: the target's).")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), help="Gate: smallest mean cosine vs the original (default: the target's).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), help="Gate for classifiers evaluated without labels: "
              "smallest share of predictions equal to the original's (default: the target's, 0.99).")
@click.option("--max-latency-ms", type=click.FloatRange(min=0, min_open=True), help="Gate: largest p50 latency on the profiling host. When "
              "quantization alone misses it, the target's compression recipes are tried in turn.")
@click.option("--task", type=click.Choice(["embedding", "classification"]), help="Override the detected task.")
@click.option("--tokenizer", type=click.Path(exists=True), help="vocab.txt, Hugging Face tokenizer.json or tokenizer folder, for models that carry none.")
@click.option("--length-percentile", type=click.FloatRange(0, 100, min_open=True), default=_BUILD.sequence_length_percentile, show_default=True,
              help="Token-length percentile of the data that sets the sequence length.")
@click.option("--calibration-samples", type=click.IntRange(min=1), default=_BUILD.calibration_samples, show_default=True,
              help="Sentences used to calibrate int8 ranges.")
@click.option("--evaluation-samples", type=click.IntRange(min=1), default=_BUILD.evaluation_samples, show_default=True,
              help="Held-out sentences the artifact is validated on.")
@click.option("--seed", type=click.IntRange(min=0), default=_BUILD.seed, show_default=True, help="Seed of the calibration/evaluation split and of every training pass.")
@click.option("--masked-logit", type=click.FloatRange(max=0, max_open=True), default=_BUILD.masked_logit, show_default=True,
              help="Attention logit of padded positions in integer-only graphs (Keras uses -1e9, "
              "which one int8 scale cannot share with the real scores).")
@click.option("--max-residual-scale", type=click.FloatRange(min=1), default=_BUILD.max_residual_scale, show_default=True,
              help="Integer-only graphs: largest power-of-two divisor applied to outlier channels of the residual "
              "stream so one int8 scale resolves the rest (1 turns it off).")
@click.option("--allow-fallback", is_flag=True,
              help="Report ops that would fall back from the target's accelerator (float ops, ops outside its "
              "op set or shape limits) without failing the build on them.")
@click.option("--qat/--no-qat", default=True, show_default=True,
              help="On integer-only targets, try quantization-aware training (a short fine-tune against the "
              "original model's outputs, plus labels when the data has them) when post-training int8 misses a gate; "
              "on OpenVINO, likewise int4-aware training (int4-qat) when int4-weights misses one.")
@click.option("--qat-steps", type=click.IntRange(min=1), help="Optimizer steps of quantization-aware training "
              "(default: the qat pass's; `deploykit passes qat` lists them).")
@click.option("--set", "settings", multiple=True, metavar="PASS.PARAMETER=VALUE",
              help="Set a pass parameter wherever the pass runs (the target's recipes, qat, a search, where it is then "
              "not searched), e.g. --set distill.steps=300 --set prune.heads=0.25. Repeatable; `deploykit passes` "
              "lists the parameters.")
@click.option("--qat-learning-rate", type=click.FloatRange(min=0, min_open=True),
              help="QAT learning rate of the weights (the usual BERT fine-tuning rate, 2e-5, suits models already "
              "fine-tuned on the data).")
@click.option("--qat-range-learning-rate", type=click.FloatRange(min=0, min_open=True),
              help="QAT learning rate of the activation ranges.")
@click.option("--recipe", help="Force training-time passes, run in the order given, before the target's export, "
              "e.g. 'distill:layers=3,qat' or 'prune:heads=0.25,neurons=0.5,trim-vocab', or a YAML/JSON recipe file "
              "(passes: [{pass: distill, layers: 3}], precision: int8), or a build's report.json to rebuild what it "
              "shipped. `deploykit passes` lists "
              "the passes and their parameters. Parameters follow name:key=value; further key=value continue that pass.")
@click.option("--runs", type=click.IntRange(min=1), default=_PROFILE.runs, show_default=True, help="Timed profiling runs per artifact.")
@click.option("--warmup", type=click.IntRange(min=0), default=_PROFILE.warmup, show_default=True, help="Untimed warm-up runs per artifact.")
@click.option("--threads", type=click.IntRange(min=1), help="Profiling threads (default: the target's, else all cores).")
@click.option("--runner", help="Profiling runner to time artifacts with (default: the target's `profiling:`; "
              "built in: local).")
@click.option("--profile-timeout", type=click.FloatRange(min=0, min_open=True), default=_PROFILE.timeout_s, show_default=True,
              help="Seconds one artifact's profiling process may run before it is stopped and the build fails.")
@click.option("--converter-timeout", type=click.FloatRange(min=0, min_open=True), default=_BUILD.converter_timeout_s, show_default=True,
              help="Seconds a converter child process (tf2onnx, for TensorRT targets) may run.")
@click.option("--force", is_flag=True, help="Replace OUT/<target> even when it is not a deploykit build (by default "
              "only folders holding a deploykit manifest.json are replaced).")
@click.option("--junit-xml", type=click.Path(dir_okay=False), help="Also write the gates as JUnit XML (one testsuite "
              "per target, one testcase per gate), also when a gate is missed or the build stops with an error.")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Also write a JSON summary (per target: passed, "
              "artifact path, precision, bytes and sha256, p50, fidelity, gates, exit code), also on a missed gate "
              "or an error.")
@_device_options
@click.option("--profiles", type=click.Path(file_okay=False), help="Measured device profiles the latency model "
              "predicts candidates from (default: $DEPLOYKIT_PROFILES, else ./profiles); with --max-latency-ms, "
              "candidates predicted to miss it by more than the model's error are skipped before any training.")
@_search_options
def build(**arguments) -> None:
    """Build MODEL for each target: compress, export, validate against the original, profile, report.

    MODEL is a Hugging Face BERT folder, a keras-hub preset folder, a .keras file, an .onnx file
    (post-training paths on OpenVINO and TensorRT targets only; vocab.txt beside it or --tokenizer),
    or the alias minilm-l6 (the default). Writes OUT/<target>/ with the artifact, tokenizer files,
    report.json, report.md and manifest.json, plus what the target's device compiler produced or
    the script to run it where its toolchain is installed (TensorRT, edgetpu_compiler, LiteRT NPU
    AOT). Exits with 3 when an artifact misses a quality gate.
    """
    _run_build(**arguments)


def _run_build(junit_xml: str | None, summary_json: str | None, **arguments) -> None:
    """`build` and `search`; --junit-xml and --summary-json record how the run ended, with an error too (once they
    are known not to overwrite an input)."""
    _check_build_paths(junit_xml, summary_json, arguments)
    try:
        results = _build(**arguments)
    except DeployKitError as error:
        targets = [name.strip() for name in arguments["target_names"].split(",") if name.strip()]
        _write_results(junit_xml, summary_json, [], error.exit_code, str(error), targets)
        raise
    failed = [r.target for r in results if not r.passed]
    _write_results(junit_xml, summary_json, results, 3 if failed else 0)
    if failed:
        _error(f"quality gate missed for {', '.join(failed)}; see their report.md.")
        sys.exit(3)


def _check_build_paths(junit_xml: str | None, summary_json: str | None, arguments: dict) -> None:
    """Every path `build` writes, against every file it reads, before any work."""
    from deploykit.output_paths import Output, check_outputs
    from deploykit.profiling.devices import devices_file_path
    from deploykit.profiling.profiles import profiles_folder
    from deploykit.targets import TARGETS_ENV, target_dirs

    out = Path(arguments["out"])
    outputs = [Output("--out", out, "folder"),
               *(Output("--out", out / name, "replaced") for name in _target_folder_names(arguments["target_names"])),
               *(Output(option, Path(value), kind) for option, value, kind in (
                   ("--summary-json", summary_json, "file"), ("--junit-xml", junit_xml, "file"),
                   ("--save-profile", arguments["save_profile"], "folder"), ("--cache", arguments["cache"], "folder"))
                 if value is not None)]
    inputs = {option: _path(arguments[name]) for option, name in (
        ("MODEL", "model"), ("--data", "data"), ("--eval-data", "eval_data"), ("--tokenizer", "tokenizer"),
        ("--recipe", "recipe"), ("--benchmark-binary", "benchmark_binary"))}
    inputs["--devices"] = devices_file_path(arguments["devices_file"])
    inputs["--profiles"] = profiles_folder(_path(arguments["profiles"]))
    try:
        inputs.update({f"${TARGETS_ENV} folder": folder for folder in target_dirs()[1:]})
    except DeployKitError:
        pass  # a missing targets folder is reported, in one line, where the targets load
    check_outputs(outputs, inputs)


def _target_folder_names(text: str) -> list[str]:
    """The OUT/<target> folders a --target value names (all the registry's for 'all'; none it cannot list)."""
    from deploykit.target_loader import list_targets
    from deploykit.targets.schema import TARGET_NAME

    names = [name.strip() for name in text.split(",")]
    if "all" in names:
        try:
            names += [target.name for target in list_targets()]
        except DeployKitError:
            pass  # reported where the targets load
    return [name for name in dict.fromkeys(names) if TARGET_NAME.fullmatch(name)]


def _write_results(junit_xml: str | None, summary_json: str | None, results: list, exit_code: int,
                   error: str | None = None, targets: list[str] = ()) -> None:
    from deploykit.report.junit import write_junit
    from deploykit.report.summary import write_summary

    try:
        if junit_xml:
            write_junit(Path(junit_xml), results, error, targets)
        if summary_json:
            write_summary(Path(summary_json), results, exit_code, error)
    except OSError as problem:
        raise DeployKitError(f"cannot write {problem.filename} ({problem.strerror}).") from None


def _build(model, target_names, data, eval_data, out, precision, activation_percentile, sequence_length,
           max_accuracy_drop, min_cosine, min_agreement, max_latency_ms, task, tokenizer, length_percentile,
           calibration_samples, evaluation_samples, seed, masked_logit, max_residual_scale, allow_fallback, qat,
           qat_steps, settings, qat_learning_rate, qat_range_learning_rate, recipe, runs, warmup, threads, runner,
           profile_timeout, converter_timeout, force, device, devices_file, trust_new_host, benchmark_binary,
           save_profile, profiles, search, storage, study, prefer, prune_factor, search_passes,
           search_length_percentiles, max_size_mb, mixed_reserve, mixed_max_share, int4_group_size, int4_ratio,
           int4_algorithm, int4_embeddings, int4_embedding_group_size, cache, no_cache, cache_max_gb) -> list:
    """`build` and `search`: one implementation (a search is a build with --search N)."""
    from deploykit.runtime_env import import_tensorflow_quietly

    import_tensorflow_quietly()
    from deploykit.build import BuildOptions, build_targets, forced_recipe
    from deploykit.mixed_precision import MixedSettings
    from deploykit.profiling.local import ProfileSettings
    from deploykit.progress import StepLog

    pass_parameters = _pass_settings(settings)
    pass_parameters["qat"] = {**pass_parameters.get("qat", {}), **_given(
        steps=qat_steps, learning_rate=qat_learning_rate, range_learning_rate=qat_range_learning_rate)}
    forced = {"recipe": None, "pass_parameters": pass_parameters, "precision": precision}
    if recipe is not None:
        forced = forced_recipe(recipe, pass_parameters, precision)
    options = BuildOptions(
        out=Path(out), activation_percentile=activation_percentile, **forced,
        sequence_length=sequence_length,
        max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine, min_agreement=min_agreement,
        max_latency_ms=max_latency_ms, force=force, converter_timeout_s=converter_timeout, runner=runner,
        device=device, devices_file=_path(devices_file), trust_new_host=trust_new_host,
        benchmark_binary=benchmark_binary, save_profile=_path(save_profile), profiles=_path(profiles),
        sequence_length_percentile=length_percentile,
        calibration_samples=calibration_samples, evaluation_samples=evaluation_samples, seed=seed,
        masked_logit=masked_logit, max_residual_scale=max_residual_scale, allow_fallback=allow_fallback, qat=qat,
        profile=ProfileSettings(runs=runs, warmup=warmup, threads=threads, timeout_s=profile_timeout),
        max_size_mb=max_size_mb, mixed=MixedSettings(mixed_reserve, mixed_max_share), int4=Int4Settings(
            int4_group_size, int4_ratio, int4_algorithm, int4_embeddings, int4_embedding_group_size), cache=_path(cache), use_cache=not no_cache, cache_max_gb=cache_max_gb,
        search=SearchSettings(trials=search, storage=storage, study=study, prefer=prefer, prune_factor=prune_factor,
                              passes=_search_passes(search_passes),
                              length_percentiles=_percentiles(search_length_percentiles)) if search else None,
    )
    results = build_targets(model, target_names, data, eval_data, options, task, tokenizer, StepLog(console))
    for result in results:
        if "search" in result.report:
            output.print(_front_table(result.target, result.report["search"]))
    output.print(_summary_table([r.report for r in results]))
    for result in results:
        output.print(f"{result.target}: {result.folder}/report.md", highlight=False, markup=False)
    return results


def _search_command(**arguments) -> None:
    _run_build(search=arguments.pop("trials"), **arguments)


search = click.Command(
    "search", callback=_search_command,
    params=[param for param in build.params if param.name != "search"] + [
        click.Option(["--trials", "-n"], type=click.IntRange(min=1), default=_SEARCH.trials, show_default=True,
                     help="Finished trials per target's study (a resumed study counts those it holds).")],
    help="""Search each target's compression settings for MODEL and ship the best point that passes every gate.

    One Optuna study per target minimises p50 latency on the target's runner, artifact size
    and quality loss over the precisions the target runs and the passes it declares (with
    the ranges the passes declare), the gates as constraints. Candidates the device's
    latency model (profiles/) says are too slow for --max-latency-ms are skipped before
    training; fine-tunes hopeless halfway are stopped. OUT/<target>/ gets the artifact, the
    report with the Pareto front, search.json (every trial) and pareto.png. The study lives
    in --storage (default OUT/search.db): rerun to resume, or point several machines at one
    database. Exits with 3 when no trial passes the gates.
    """,
)
main.add_command(search)


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: as the build profiled it: the "
              "device's setting or the target's threads, within this machine's cores).")
@click.option("--runs", type=click.IntRange(min=1), default=_PROFILE.runs, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=_PROFILE.warmup, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=_PROFILE.timeout_s, show_default=True,
              help="Seconds the profiling process may run before it is stopped.")
@click.option("--op-profile/--no-op-profile", default=_PROFILE.op_profile, show_default=True,
              help="Also time each op with the runtime's profiler (extra runs after the timed ones).")
@_device_options
def profile(artifact, threads, runs, warmup, timeout, op_profile, device, devices_file, trust_new_host,
            benchmark_binary, save_profile) -> None:
    """Time a built ARTIFACT (a target folder from `deploykit build`, or its model.xml / model.tflite / model.onnx)
    on this machine, or on a device with --device.

    Runs batch 1 at the artifact's full sequence length in a fresh process and
    prints latency percentiles, throughput, peak memory and the slowest op types.
    """
    from deploykit.profiling.base import ProfileSettings, get_runner
    from deploykit.profiling.build_folder import build_target_of, profile_path, profiled_measurement
    from deploykit.profiling.devices import device_runner
    from deploykit.profiling.profiles import save_profile as save

    if save_profile:
        from deploykit.output_paths import Output, check_outputs

        check_outputs([Output("--save-profile", Path(save_profile), "folder")], {"ARTIFACT": Path(artifact)})
    target = build_target_of(artifact) if device or save_profile else None
    runner = device_runner(device, target, devices_file, trust_new_host, benchmark_binary) if device \
        else get_runner("local")
    settings = ProfileSettings(runs=runs, warmup=warmup, timeout_s=timeout, op_profile=op_profile)
    measured = profile_path(artifact, threads, settings, runner)
    latency = measured["latency_ms"]
    table = Table(title=f"{measured['artifact']} ({measured['backend']}, sequence length {measured['sequence_length']}, "
                  f"{measured['threads']} threads)")
    for column in ("p50 ms", "p90 ms", "p99 ms", "throughput /s", "peak RSS MB"):
        table.add_column(column)
    table.add_row(*(_number(latency[key], 2) for key in ("p50", "p90", "p99")), _number(latency["throughput_per_s"], 1),
                  _number(measured["peak_rss_mb"], 1))
    output.print(table)
    if measured.get("op_profile"):
        output.print(_op_table(measured["op_profile"]))
    if target is not None:
        described = runner.describe(target, measured["threads"])
        output.print(described["note"], highlight=False, markup=False)
        if save_profile:
            path = save(Path(save_profile), target.name, described, measured["runtime"], [profiled_measurement(measured)])
            output.print(f"Profile saved: {path}", highlight=False, markup=False)


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _op_table(op_profile: dict, rows: int = 8) -> Table:
    """The op types that took the most time per inference."""
    total = sum(row["ms"] for row in op_profile["by_type"]) or 1.0
    table = Table(title=f"Time by op type ({op_profile['source']})")
    for column in ("op type", "ops", "ms per inference", "share"):
        table.add_column(column)
    for row in op_profile["by_type"][:rows]:
        table.add_row(escape(row["type"]), str(row["count"]), f"{row['ms']:.3f}", f"{row['ms'] / total:.0%}")
    return table


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--html", "html", is_flag=True,
              help="Also write FOLDER/report.html: every target on one self-contained page with its plots.")
def report(folder, html) -> None:
    """Compare the targets built into FOLDER side by side (reads each FOLDER/<target>/report.json)."""
    from deploykit.user_files import read_json

    # Hidden folders are staging or leftovers, never targets; a link is never followed out of FOLDER, and each
    # report.json is read bounded (the folder may come from elsewhere).
    files = sorted(path / "report.json" for path in Path(folder).iterdir() if not path.name.startswith(".")
                   and path.is_dir() and not path.is_symlink() and os.path.lexists(path / "report.json"))
    reports = [read_json(path, dict, untrusted=True) for path in files]
    if not reports:
        raise DeployKitError(f"{folder} holds no <target>/report.json; pass the --out folder of a build.")
    try:
        table = _summary_table(reports)
    except (KeyError, TypeError, ValueError) as error:
        raise DeployKitError(f"a report.json under {folder} is not as deploykit writes it ({type(error).__name__}: "
                             f"{quoted(str(error))}); rebuild that target.") from None
    output.print(table)
    if html:
        from jinja2 import UndefinedError

        from deploykit.report.html import write_html

        try:
            page = write_html(Path(folder) / "report.html", reports)
        except (KeyError, TypeError, ValueError, AttributeError, UndefinedError) as error:
            raise DeployKitError(f"a report.json under {folder} lacks what the HTML report needs "
                                 f"({type(error).__name__}: {quoted(str(error))}); rebuild that target.") from None
        except OSError as error:
            raise DeployKitError(f"cannot write {Path(folder) / 'report.html'} ({error.strerror}).") from None
        output.print(str(page), highlight=False, markup=False)


@main.command()
@click.argument("dist", type=click.Path(exists=True, file_okay=False))
def verify(dist) -> None:
    """Check that the build folders in DIST (a build's --out folder or one target folder) are what the build shipped.

    Every file's size and sha256 are compared with the folder's manifest.json, files the
    manifest does not list are reported, and the artifact is loaded with its runtime and
    run once on a full-length input made from the folder's tokenizer files. Exits with 4
    when any folder differs or its artifact does not run.
    """
    from deploykit.verify import build_folders, verify_folder

    failed = []
    for folder in build_folders(Path(dist)):
        check = verify_folder(folder)
        verdict = "[green]ok[/]" if check.passed else "[red]FAILED[/]"
        # soft_wrap: a path is never broken across lines (it stays whole to copy); the terminal wraps it if it must
        output.print(f"{escape(str(folder))}: {verdict} ({check.matched} files match the manifest)", highlight=False,
                     soft_wrap=True)
        for line in check.lines():
            output.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
        if not check.passed:
            failed.append(str(folder))
    if failed:
        _error(f"{', '.join(failed)} {'does' if len(failed) == 1 else 'do'} not match what the build shipped; "
               "see above.")
        sys.exit(4)


@main.group()
def ci() -> None:
    """Continuous integration: write a workflow that builds, verifies and reports every target."""


@ci.command("init")
@click.option("--provider", default="github", show_default=True,
              help="CI service: github (.github/workflows/deploykit.yml) or gitlab (.gitlab-ci.yml).")
@click.option("--targets", default="intel-cpu", show_default=True,
              help="Targets to build, one job each: comma-separated names, or 'all' (every target with an exporter).")
@click.option("--model", help="MODEL for `deploykit build`, as a path in the repository (default: the built-in one).")
@click.option("--data", help="--data for `deploykit build`, as a path in the repository.")
@click.option("--device", "devices", multiple=True, metavar="[TARGET=]NAME",
              help="Also build TARGET profiled on the device NAME of the devices file (devices.yaml in the repository "
              "or $DEPLOYKIT_DEVICES), on a self-hosted runner that reaches it. Repeatable; TARGET= may be left out "
              "with one target.")
@click.option("--runner-label", help="Label of the self-hosted runner that runs the --device jobs (default: "
              "deploykit-devices; GitHub runs-on: [self-hosted, LABEL], GitLab tags: [LABEL]).")
@click.option("--install", default="pip install deploykit", show_default=True,
              help="Command that installs deploykit in the job, e.g. 'pip install -e .' in deploykit's own "
              "repository or 'pip install -r requirements.txt'.")
@click.option("--build-args", default="", help="More `deploykit build` options, as shell words, e.g. "
              "'--max-accuracy-drop 1 --precision int8'; each word of letters, digits and _ . , : = / + @ % - "
              "(a complex recipe goes in a recipe file: --recipe FILE).")
@click.option("--out", type=click.Path(dir_okay=False), help="Workflow file to write (default: where the provider "
              "reads it).")
@click.option("--force", is_flag=True, help="Replace the file when it exists.")
def ci_init(provider, targets, model, data, devices, runner_label, install, build_args, out, force) -> None:
    """Write a CI workflow: per target, install deploykit, restore the deploykit cache, build with --junit-xml and
    --summary-json, verify, show report.md, save the cache and keep the target folder; a missed gate fails the job.
    """
    import shlex

    from deploykit.ci import get_provider, workflow_settings, write_workflow

    chosen = get_provider(provider)
    given = [("--provider", provider), ("--targets", targets), ("--model", model), ("--data", data),
             *(("--device", device) for device in devices), ("--runner-label", runner_label),
             ("--install", install), ("--build-args", build_args or None)]
    command = " ".join(["deploykit ci init", *(f"{flag} {shlex.quote(value)}" for flag, value in given if value)])
    settings = workflow_settings(targets, model, data, devices, runner_label, install, build_args, command)
    path = write_workflow(chosen, settings, _path(out), force)
    jobs = ", ".join([*settings.targets, *(f"{job.target} on {job.device}" for job in settings.devices)])
    output.print(f"{path}: {chosen.title} workflow, one job per target ({jobs}).", highlight=False, markup=False,
                 soft_wrap=True)


def _path(value: str | None) -> Path | None:
    return Path(value) if value is not None else None


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


def _front_table(target: str, search: dict) -> Table:
    """A search's Pareto front (trials passing every gate), fastest first, the shipped point marked."""
    states = ", ".join(f"{count} {state}" for state, count in search["states"].items())
    table = Table(title=f"{target}: Pareto front of {search['feasible']} trials passing the gates ({states})")
    for column in ("trial", "candidate", "recipe", "length", "p50 ms", "predicted ms", "size MB", "quality loss"):
        table.add_column(column)
    for row in sorted(search["front"], key=lambda row: row["latency_ms"]):
        shipped = row["trial"] == search["chosen_trial"]
        table.add_row(f"{row['trial']}{' ★' if shipped else ''}", escape(row["candidate"]), escape(row["recipe"] or "–"),
                      str(row.get("sequence_length") or "–"),
                      f"{row['latency_ms']:.3f}", _optional(row["predicted_latency_ms"], 3), f"{row['size_mb']:.2f}",
                      f"{row['quality_loss']:.4g}", style="bold" if shipped else None)
    return table


def _summary_table(reports: list[dict]) -> Table:
    table = Table(title="fp32 baseline vs deploykit artifact (same runtime, same run)")
    for column in ("target", "artifact", "size MB (fp32 → art.)", "p50 ms (fp32 → art.)", "speed-up",
                   "cosine mean", "agreement", "accuracy drop", "gates"):
        table.add_column(column)
    for report in reports:
        baseline, metrics, artifact = report["baseline"], report["metrics"], report["artifact"]
        fidelity = metrics["fidelity"]
        table.add_row(
            escape(str(report["target"])),
            escape(f"{artifact['format']} {artifact['precision']}"),
            f"{baseline['bytes'] / 1e6:.1f} → {artifact['bytes'] / 1e6:.1f}",
            f"{baseline['latency_ms']['p50']:.2f} → {metrics['latency_ms']['p50']:.2f}",
            _speedup(report),
            _optional(fidelity["cosine_mean"]),
            _optional(fidelity["agreement"]),
            _optional(metrics["accuracy_drop"], 2),
            "[green]pass[/]" if report["gates"]["passed"] else "[red]FAIL[/]",
        )
    return table


def _speedup(report: dict) -> str:
    """The speed-up with its interval; in red, marked, when the artifact is slower than the baseline or than a
    candidate it displaced (reports from before the flag have no `speed`)."""
    speed = report.get("speed") or {}
    interval = speed.get("speedup_interval")
    text = f"{report['metrics']['speedup_vs_baseline']:.2f}×" + (f" ({interval[0]:.2f}–{interval[1]:.2f})"
                                                                  if interval else "")
    if speed.get("slower_than_baseline"):
        return f"[red]{text} slower[/]"
    if speed.get("faster_candidates_displaced"):
        return f"[yellow]{text} (a faster candidate missed a gate)[/]"
    return text


def _optional(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
