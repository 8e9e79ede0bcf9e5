"""`deploykit build` and `deploykit search`: run the build, print its tables, and record how it ended."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deploykit.cli.app import console, optional_path, output, print_error
from deploykit.cli.generation import build_decoder_command, generation_options
from deploykit.cli.build_options import (BUILD_DEFAULTS, PROFILE_DEFAULTS, SEARCH_DEFAULTS, GroupedCommand,
                                         build_options, command_record, config_option, device_options,
                                         search_options)
from deploykit.cli.tables import front_table, summary_table
from deploykit.errors import DeployKitError
from deploykit.results import GATE_MISSED_EXIT_CODE, INCONCLUSIVE_EXIT_CODE

# A run's exit code is its worst target's: a missed gate outranks an undecided one.
EXIT_CODE_SEVERITY = (0, INCONCLUSIVE_EXIT_CODE, GATE_MISSED_EXIT_CODE)


@click.command(cls=GroupedCommand)
@config_option
@click.argument("model", required=False)
@click.option("--target", "-t", "target_names", default="intel-cpu", show_default=True,
              help="Target name(s), comma-separated, or 'all'. See `deploykit targets`.")
@click.option("--data", type=click.Path(dir_okay=False), help="JSONL/CSV with a 'text' column and optional 'label'. "
              "Default: the bundled sentences.")
@click.option("--eval-data", type=click.Path(dir_okay=False), help="Separate evaluation file (default: held out from --data).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=str(BUILD_DEFAULTS.out), show_default=True,
              help="Output folder; each target gets OUT/<target>/.")
@click.option("--precision", help="Override the target's precision (fp32, fp16, bf16, int8, a16w8, dynamic-int8, "
              "mixed: int8 with the most sensitive layers kept high, int4-weights).")
@click.option("--activation-percentile", type=click.FloatRange(50, 100), default=BUILD_DEFAULTS.activation_percentile, show_default=True,
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
@click.option("--length-percentile", type=click.FloatRange(0, 100, min_open=True), default=BUILD_DEFAULTS.sequence_length_percentile, show_default=True,
              help="Token-length percentile of the data that sets the sequence length.")
@click.option("--calibration-samples", type=click.IntRange(min=1), default=BUILD_DEFAULTS.calibration_samples, show_default=True,
              help="Sentences used to calibrate int8 ranges.")
@click.option("--evaluation-samples", type=click.IntRange(min=1), default=BUILD_DEFAULTS.evaluation_samples, show_default=True,
              help="Held-out sentences the artifact is validated on.")
@click.option("--seed", type=click.IntRange(min=0), default=BUILD_DEFAULTS.seed, show_default=True, help="Seed of the calibration/evaluation split and of every training pass.")
@click.option("--masked-logit", type=click.FloatRange(max=0, max_open=True), default=BUILD_DEFAULTS.masked_logit, show_default=True,
              help="Attention logit of padded positions in integer-only graphs (Keras uses -1e9, "
              "which one int8 scale cannot share with the real scores).")
@click.option("--max-residual-scale", type=click.FloatRange(min=1), default=BUILD_DEFAULTS.max_residual_scale, show_default=True,
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
@click.option("--runs", type=click.IntRange(min=1), default=PROFILE_DEFAULTS.runs, show_default=True, help="Timed profiling runs per artifact.")
@click.option("--warmup", type=click.IntRange(min=0), default=PROFILE_DEFAULTS.warmup, show_default=True, help="Untimed warm-up runs per artifact.")
@click.option("--threads", type=click.IntRange(min=1), help="Profiling threads (default: the target's, else all cores).")
@click.option("--runner", help="Profiling runner to time artifacts with (default: the target's `profiling:`; "
              "built in: local).")
@click.option("--profile-timeout", type=click.FloatRange(min=0, min_open=True), default=PROFILE_DEFAULTS.timeout_s, show_default=True,
              help="Seconds one artifact's profiling process may run before it is stopped and the build fails.")
@click.option("--converter-timeout", type=click.FloatRange(min=0, min_open=True), default=BUILD_DEFAULTS.converter_timeout_s, show_default=True,
              help="Seconds a converter child process (tf2onnx, for TensorRT targets) may run.")
@click.option("--force", is_flag=True, help="Replace OUT/<target> even when it is not a deploykit build (by default "
              "only folders holding a deploykit manifest.json are replaced).")
@click.option("--junit-xml", type=click.Path(dir_okay=False), help="Also write the gates as JUnit XML (one testsuite "
              "per target, one testcase per gate), also when a gate is missed or the build stops with an error.")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Also write a JSON summary (per target: passed, "
              "artifact path, precision, bytes and sha256, p50, fidelity, gates, exit code), also on a missed gate "
              "or an error.")
@device_options
@click.option("--profiles", type=click.Path(file_okay=False), help="Measured device profiles the latency model "
              "predicts candidates from (default: $DEPLOYKIT_PROFILES, else ./profiles); with --max-latency-ms, "
              "candidates predicted to miss it by more than the model's error are skipped before any training.")
@search_options
@generation_options
def build(**arguments) -> None:
    """Build MODEL for each target: compress, export, validate against the original, profile, report.

    MODEL is a Hugging Face BERT folder, a keras-hub preset folder, a .keras file, an .onnx file
    (post-training paths on OpenVINO and TensorRT targets only; vocab.txt beside it or --tokenizer),
    or the alias minilm-l6 (the default). A generative decoder (a .gguf file, a Hugging Face Llama,
    Qwen2, GPT-2 or Gemma 3 folder, a .keras CausalLM with tokenizer.json beside it, or the alias
    smollm2-135m) is built with a KV cache and the Generation options; see docs/generation.md. Writes OUT/<target>/ with the artifact, tokenizer files,
    report.json, report.md and manifest.json, plus what the target's device compiler produced or
    the script to run it where its toolchain is installed (TensorRT, edgetpu_compiler, LiteRT NPU
    AOT). Exits with 3 when an artifact misses a quality gate.
    """
    _run_build(arguments, command_record(arguments))


def _run_build(arguments: dict, record: tuple) -> None:
    """`build` and `search`; --junit-xml and --summary-json record how the run ended, with an error too (once they
    are known not to overwrite an input). `record`: the command's values, echoed in each report.json."""
    from deploykit.generation.loaders import is_decoder_source

    if arguments["model"] and is_decoder_source(arguments["model"]):
        return build_decoder_command(arguments)
    junit_xml, summary_json = arguments["junit_xml"], arguments["summary_json"]
    _check_build_paths(junit_xml, summary_json, arguments)
    try:
        results = _build(arguments, record)
    except DeployKitError as error:
        targets = [name.strip() for name in arguments["target_names"].split(",") if name.strip()]
        _write_results(junit_xml, summary_json, [], error.exit_code, str(error), targets)
        raise
    exit_code = max((result.exit_code for result in results), default=0, key=EXIT_CODE_SEVERITY.index)
    _write_results(junit_xml, summary_json, results, exit_code)
    if exit_code == GATE_MISSED_EXIT_CODE:
        failed = [result.target for result in results if result.exit_code == GATE_MISSED_EXIT_CODE]
        print_error(f"quality gate missed for {', '.join(failed)}; see their report.md.")
    elif exit_code == INCONCLUSIVE_EXIT_CODE:
        undecided = [result.target for result in results if result.inconclusive]
        print_error(f"a gate could not be decided for {', '.join(undecided)} (its measurement straddles the limit); "
                    "see their report.md, and rerun on a quieter machine or with more --runs.")
    if exit_code:
        sys.exit(exit_code)


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
    inputs = {option: optional_path(arguments[name]) for option, name in (
        ("MODEL", "model"), ("--data", "data"), ("--eval-data", "eval_data"), ("--tokenizer", "tokenizer"),
        ("--recipe", "recipe"), ("--benchmark-binary", "benchmark_binary"))}
    inputs["--devices"] = devices_file_path(arguments["devices_file"])
    inputs["--profiles"] = profiles_folder(optional_path(arguments["profiles"]))
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


def _build(arguments: dict, record: tuple) -> list:
    """`build` and `search`: one implementation (a search is a build with --search N)."""
    from deploykit.runtime_env import import_tensorflow_quietly

    import_tensorflow_quietly()
    from deploykit.pipeline import build_targets
    from deploykit.progress import StepLog

    options = build_options(arguments, record)
    a = arguments
    results = build_targets(a["model"], a["target_names"], a["data"], a["eval_data"], options, a["task"],
                            a["tokenizer"], StepLog(console))
    for result in results:
        if "search" in result.report:
            output.print(front_table(result.target, result.report["search"]))
    output.print(summary_table([r.report for r in results]))
    for result in results:
        output.print(f"{result.target}: {result.folder}/report.md", highlight=False, markup=False)
    return results


def _search_command(**arguments) -> None:
    record = command_record(arguments)
    arguments["search"] = arguments.pop("trials")
    _run_build(arguments, record)


search = GroupedCommand(
    "search", callback=_search_command,
    params=[param for param in build.params if param.name != "search"] + [
        click.Option(["--trials", "-n"], type=click.IntRange(min=1), default=SEARCH_DEFAULTS.trials, show_default=True,
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
