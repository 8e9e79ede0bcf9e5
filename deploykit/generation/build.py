"""Building a generative decoder for targets: export per runtime, gate on held-out text, time side by side, write.

For each target the weight precisions its file lists are tried in order (int4 first where memory bandwidth bounds
decode); the first artifact whose measured fidelity passes every gate ships. It is timed against the same runtime's
float32 export in alternating rounds, and OUT/<target>/ gets the artifact, tokenizer.json, generation.json (how to
drive it), report.json, report.md and manifest.json.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from deploykit.errors import DeployKitError
from deploykit.generation.backends.base import (DEFAULT_GROUP_SIZE, DecoderArtifact, DecoderBackend, DecoderExport,
                                                export_in_child, get_decoder_backend)
from deploykit.generation.decoder import STEP_INPUTS, STEP_OUTPUTS, DecoderBundle
from deploykit.generation.metrics import GenerationFidelity, measure_fidelity
from deploykit.generation.profile import TimingPlan, peak_memory, time_side_by_side
from deploykit.progress import StepLog
from deploykit.targets.schema import Target

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "resources" / "sentences.jsonl"
# A paragraph of context per held-out text: long enough that later positions lean on the cache, short enough
# that 16 texts (2,000 predicted positions) are scored in seconds on a 135M model.
DEFAULT_CACHE_LENGTH = 512
DEFAULT_PREFILL_LENGTH = 64  # LiteRT's fixed prefill chunk: longer prompts run in several chunks
DEFAULT_TEXT_TOKENS = 128
DEFAULT_EVAL_TEXTS = 16
DEFAULT_CALIBRATION_TEXTS = 16  # AWQ / scale estimation samples; NNCF's own examples use 32-128 for billion-scale
DEFAULT_GREEDY_PROMPTS = 4
DEFAULT_GREEDY_TOKENS = 16  # the bar: the first 16 greedy tokens
# Models with at least this many bytes of float32 weights are exported in a child process (export_in_child): the
# converters' transient memory is several times the weights (about 10x for LiteRT on SmolLM2-135M), while a child
# costs a process start and a TensorFlow import (seconds), which tiny models need not pay.
ISOLATED_EXPORT_BYTES = 100_000_000


@dataclass(frozen=True)
class GenerationOptions:
    """Every knob of a decoder build; the defaults are what `deploykit build <decoder>` does."""

    data: Path | None = None  # JSONL/CSV with a `text` column (default: deploykit's bundled English sentences)
    weights: str | None = None  # one precision instead of the target's list
    cache_length: int = DEFAULT_CACHE_LENGTH
    prefill_length: int = DEFAULT_PREFILL_LENGTH
    group_size: int | None = None  # int4 group (None: group_size_for chooses)
    ratio: float = 1.0
    algorithm: str | None = None  # int4: rtn | awq (OpenVINO); None: the target's int4_method
    text_tokens: int = DEFAULT_TEXT_TOKENS
    eval_texts: int = DEFAULT_EVAL_TEXTS
    calibration_texts: int = DEFAULT_CALIBRATION_TEXTS
    greedy_prompts: int = DEFAULT_GREEDY_PROMPTS
    greedy_tokens: int = DEFAULT_GREEDY_TOKENS
    max_perplexity_ratio: float | None = None  # None: the target's budget
    min_top1_agreement: float | None = None
    min_greedy_match: float | None = None
    timing: TimingPlan = TimingPlan()
    threads: int | None = None
    seed: int = 0
    force: bool = False
    isolate_exports: bool | None = None  # exports in child processes; None: for models of ISOLATED_EXPORT_BYTES up
    devices: dict = field(default_factory=dict)  # target name -> an ssh runner timing it on a device (else: here)


@dataclass
class HeldOutText:
    """Token ids of calibration and evaluation passages, greedy prompts, and the original's logits on each passage."""

    calibration: list[list[int]]
    evaluation: list[list[int]]
    prompts: list[list[int]]
    reference_logits: list[np.ndarray] = field(default_factory=list)
    source: str = ""
    continuations: dict = field(default_factory=dict)  # the original's greedy continuations, computed once


def check_generation_target(target: Target) -> None:
    if target.generation is None:
        raise DeployKitError(f"target {target.name} does not run generative decoders (its file has no `generation` "
                             f"block); build decoders for {', '.join(_generation_targets()) or 'a target with one'}, "
                             "or add the block.")


def _generation_targets() -> list[str]:
    """The registered targets that run decoders (files that do not read are left to their own errors)."""
    from deploykit.targets import read_target_file, target_paths

    names = []
    for path in target_paths():
        try:
            target = read_target_file(path)
        except DeployKitError:
            continue
        if target.generation is not None:
            names.append(target.name)
    return names


def int4_method(target: Target, options: GenerationOptions) -> str:
    return options.algorithm or target.generation.int4_method


def needs_calibration(target: Target, options: GenerationOptions) -> bool:
    """Whether a candidate of this target is fitted on calibration text: int4 by AWQ or mixed with int8, or a
    precision the runtime calibrates (static activation ranges)."""
    weights = [options.weights] if options.weights else target.generation.weights
    fitted_int4 = any(w.startswith("int4") for w in weights) and (int4_method(target, options) == "awq" or
                                                                 "int4-mixed" in weights)
    return fitted_int4 or bool(set(weights) & get_decoder_backend(target.runtime).calibrated)


def held_out_text(bundle: DecoderBundle, options: GenerationOptions, calibrate: bool = False) -> HeldOutText:
    """Passages of about `text_tokens` tokens made of consecutive texts, shuffled with the seed: calibration
    first, evaluation from the rest (disjoint), greedy prompts the first half of the first evaluation passages."""
    from deploykit.data import load_dataset

    dataset = load_dataset(options.data or DEFAULT_DATA)
    passages, current = [], []
    for text in dataset.texts:
        current += bundle.encode(text if not current else " " + text)
        if len(current) >= options.text_tokens:
            passages.append(current[:options.text_tokens])
            current = []
    needed = options.eval_texts + (options.calibration_texts if calibrate else 0)
    if len(passages) < max(needed, 2):
        raise DeployKitError(f"{dataset.source} gives {len(passages)} passages of {options.text_tokens} tokens and the "
                             f"build needs {needed}; pass a larger --data file or fewer --eval-texts.")
    order = np.random.default_rng(options.seed).permutation(len(passages))
    passages = [passages[i] for i in order]
    calibration = passages[:options.calibration_texts] if calibrate else []
    evaluation = passages[len(calibration):len(calibration) + options.eval_texts]
    prompts = [p[:options.text_tokens // 2] for p in evaluation[:options.greedy_prompts]]
    return HeldOutText(calibration, evaluation, prompts, source=str(dataset.source))


def group_size_for(bundle: DecoderBundle, options: GenerationOptions) -> int:
    """The int4 group: the user's, else the default halved until it divides the model's hidden size."""
    if options.group_size:
        return options.group_size
    size = DEFAULT_GROUP_SIZE
    hidden = int(bundle.backbone.hidden_dim)
    while size > 32 and hidden % size:
        size //= 2
    return size


def gate_failures(fidelity: GenerationFidelity, gates: dict) -> list[str]:
    max_ratio, min_top1, min_greedy = (gates["max_perplexity_ratio"], gates["min_top1_agreement"],
                                       gates["min_greedy_match"])
    failures = []
    if fidelity.perplexity_ratio > max_ratio:
        failures.append(f"perplexity ratio {fidelity.perplexity_ratio:.3f} > {max_ratio:g}")
    if fidelity.top1_agreement < min_top1:
        failures.append(f"top-1 agreement {fidelity.top1_agreement:.3f} < {min_top1:g}")
    if min_greedy is not None and (fidelity.greedy_match or 0) < min_greedy:
        failures.append(f"greedy match {fidelity.greedy_match:.3f} < {min_greedy:g}")
    return failures


def build_decoder(bundle: DecoderBundle, targets: list[Target], out: Path,
                  options: GenerationOptions = GenerationOptions(), log: StepLog | None = None) -> list[dict]:
    """Build, gate, time and write each target; returns each target's report (`passed` false, with the candidates
    measured and no artifact, where no precision passed the gates)."""
    log = log or StepLog()
    from deploykit.output_folder import check_output

    for target in targets:  # every refusal before any work
        check_generation_target(target)
        backend = get_decoder_backend(target.runtime)
        backend.check_method(int4_method(target, options))
        for weights in [options.weights] if options.weights else target.generation.weights:
            backend.describe(weights)
    bundle.check_length(options.cache_length)
    check_output(out, [t.name for t in targets], options.force)
    with log.step("reference", "scoring the original on held-out text"):
        text = held_out_text(bundle, options, any(needs_calibration(t, options) for t in targets))
        text.reference_logits = [bundle.full_logits(ids) for ids in text.evaluation]
    original = bundle.loaded(options.cache_length)
    return [_build_target(bundle, target, text, original, out, options, log) for target in targets]


def _build_target(bundle: DecoderBundle, target: Target, text: HeldOutText, original, out: Path,
                  options: GenerationOptions, log: StepLog) -> dict:
    from deploykit.output_folder import new_staging, replace_folder

    backend = get_decoder_backend(target.runtime)
    choices = [options.weights] if options.weights else list(target.generation.weights)
    export = DecoderExport(weights=choices[0], cache_length=options.cache_length,
                           prefill_length=options.prefill_length, group_size=group_size_for(bundle, options),
                           ratio=options.ratio, algorithm=int4_method(target, options),
                           calibration=tuple(tuple(ids) for ids in text.calibration))
    staging = new_staging(out, target.name)
    try:
        with tempfile.TemporaryDirectory(prefix="deploykit-decoder-") as scratch:
            saved_model = Path(scratch) / "saved_model"
            with log.step("trace", f"{target.name}: tracing the cached step ({options.cache_length}-token cache)"):
                bundle.write_saved_model(saved_model, options.cache_length, backend.signatures(export))
            tried, shipped = [], None
            for weights in choices:
                ratio = target.generation.int4_mixed_ratio if weights == "int4-mixed" else options.ratio
                candidate = replace(export, weights=weights, ratio=ratio)
                with log.step("export", f"{target.name}: exporting {candidate.label()} weights and scoring them"):
                    artifact = _export(backend, bundle, saved_model, candidate, Path(scratch) / weights, options)
                    loaded = backend.load(artifact.path, options.threads, artifact.runtime_config)
                    fidelity = measure_fidelity(text.reference_logits, text.evaluation, loaded, original,
                                                text.prompts, options.greedy_tokens, text.continuations)
                failures = gate_failures(fidelity, _gates(target, options))
                tried.append({"weights": candidate.label(), "method": artifact.method, "bytes": _size(artifact.files),
                              "fidelity": fidelity.as_dict(), "gates_failed": failures})
                if not failures:
                    shipped = (artifact, fidelity)
                    break
            report = {"task": "generation", "target": target.name, "passed": shipped is not None,
                      "model": bundle.describe(), "gates": _gates(target, options), "candidates": tried,
                      "seed": options.seed}
            if shipped is not None:
                artifact, fidelity = shipped
                loaded = None  # let go while the baseline is exported: the runtime's copy of a model is large
                timing, loaded = _time_against_float(backend, target, saved_model, artifact, bundle, options,
                                                     Path(scratch), log)
                report.update(_shipped(bundle, artifact, loaded, fidelity, timing, text, options))
                for path in artifact.files:
                    shutil.copy2(path, staging / path.name)
                _write_interface(bundle, staging, artifact, loaded)
                report["device_compile"] = _device_compile(backend, target, staging, artifact, options, log)
        _write_reports(staging, report)
        replace_folder(staging, out / target.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _time_against_float(backend: DecoderBackend, target: Target, saved_model: Path, artifact: DecoderArtifact,
                        bundle: DecoderBundle, options: GenerationOptions, scratch: Path, log: StepLog):
    """Each one's peak memory, in a process of its own; then the shipped artifact and the runtime's float32 export
    of the same model timed in alternating rounds: here, or on the target's device (options.devices). Returns the
    timing and the loaded artifact."""
    files = {"artifact": artifact}
    if artifact.export.weights != "fp32":
        with log.step("baseline", "exporting the float32 baseline to time against"):
            files["fp32"] = _export(backend, bundle, saved_model, replace(artifact.export, weights="fp32"),
                                    scratch / "baseline-fp32", options)
    prompt = max(options.timing.fitting(options.cache_length).prompt_lengths)
    vocabulary = bundle.tokenizer.get_vocab_size()
    baseline = "fp32" if "fp32" in files else None
    device = options.devices.get(target.name)
    if device is not None:
        from deploykit.generation.device import time_on_device

        artifacts = {name: (built.files, backend.runtime_settings(built.runtime_config)) for name, built in files.items()}
        timing = time_on_device(device, backend.name, artifacts, vocabulary, options.timing, baseline,
                                device.threads(target), prompt, log)
        return timing, backend.load(artifact.path, options.threads, artifact.runtime_config)
    with log.step("memory", f"peak memory of {', '.join(files)}, each in a fresh process ({prompt}-token prompt)"):
        try:
            memory = {name: peak_memory(backend.name, built.path, built.runtime_config, options.threads, prompt)
                      for name, built in files.items()}
        except OSError as error:  # /proc/self/status is Linux's
            memory = {"not_measured": str(error)}
    decoders = {name: backend.load(built.path, options.threads, built.runtime_config) for name, built in files.items()}
    with log.step("timing", f"timing {', '.join(decoders)} side by side ({options.timing.rounds} alternating rounds)"):
        timing = time_side_by_side(decoders, vocabulary, options.timing, baseline=baseline)
    where = {"runner": "local", "device": "this machine", "host": platform.machine(),
             "threads": options.threads or os.cpu_count(), "runtime": decoders["artifact"].description}
    return {**timing, "memory": memory, "measured_on": where}, decoders["artifact"]


def _device_compile(backend: DecoderBackend, target: Target, folder: Path, artifact: DecoderArtifact,
                    options: GenerationOptions, log: StepLog) -> dict | None:
    """The target's device toolchain on the shipped artifact (TensorRT: the engine, or the script that builds it),
    where the backend's decoders fit it; None where there is none to run."""
    if target.compiler is None or not backend.device_compiled:
        return None
    from deploykit.backends.base import ExportedArtifact
    from deploykit.compilers.base import CompileRequest, get_compiler

    compiler = get_compiler(target.compiler)
    shipped = ExportedArtifact(path=folder / artifact.path.name, files=[folder / p.name for p in artifact.files],
                               format=backend.suffix.lstrip("."), precision=artifact.export.weights,
                               method=artifact.method)
    request = CompileRequest(artifact=shipped, folder=folder, sequence_length=options.prefill_length,
                             input_names=("tokens",), sequence_range=(1, options.cache_length), log=log)
    with log.step("device_compile", f"{compiler.name} for {target.name}"):
        return compiler.compile(request).as_dict(folder)


def _export(backend: DecoderBackend, bundle: DecoderBundle, saved_model: Path, export: DecoderExport, folder: Path,
            options: GenerationOptions) -> DecoderArtifact:
    isolate = options.isolate_exports
    if isolate is None:
        isolate = 4 * bundle.causal_lm.count_params() >= ISOLATED_EXPORT_BYTES
    if isolate:
        return export_in_child(backend.name, saved_model, export, folder)
    return backend.export(saved_model, export, folder)


def _size(files: list[Path]) -> int:
    return sum(p.stat().st_size for p in files)


def _gates(target: Target, options: GenerationOptions) -> dict:
    budgets = target.budgets
    return {"max_perplexity_ratio": options.max_perplexity_ratio or budgets.max_perplexity_ratio,
            "min_top1_agreement": options.min_top1_agreement if options.min_top1_agreement is not None
            else budgets.min_top1_agreement,
            "min_greedy_match": options.min_greedy_match if options.min_greedy_match is not None
            else budgets.min_greedy_match}


def _shipped(bundle: DecoderBundle, artifact, loaded, fidelity: GenerationFidelity, timing: dict,
             text: HeldOutText, options: GenerationOptions) -> dict:
    """The report's sections about the shipped artifact: what it is, how faithful, how fast."""
    source = " (weights dequantized from the GGUF file)" if bundle.details.get("format") == "gguf" else ""
    return {
        "artifact": {"file": artifact.path.name, "files": [p.name for p in artifact.files],
                     "bytes": _size(artifact.files), "weights": artifact.export.label(), "method": artifact.method,
                     "cache_length": options.cache_length, "prefill_length": loaded.prefill_length},
        "fidelity": {**fidelity.as_dict(), "measured_on": f"{loaded.description} on {platform.machine()} host",
                     "against": f"the original Keras model in float32{source}", "data": text.source},
        "timing": timing,
    }


def _write_interface(bundle: DecoderBundle, folder: Path, artifact, loaded) -> None:
    """tokenizer.json and generation.json: what an app (or `deploykit generate`) needs to drive the artifact."""
    bundle.write_tokenizer(folder)
    interface = {
        "task": "generation", "model": artifact.path.name, "tokenizer": "tokenizer.json",
        "inputs": {"tokens": "int32 [1, T]", "cache": f"float32 {list(loaded.cache_shape)}", "index": "int32 []"},
        "outputs": {"logits": "float32 [1, T, vocabulary]", "new_kv": "float32 [1, layers, 2, T, kv heads, head dim]"},
        "input_names": list(STEP_INPUTS), "output_names": list(STEP_OUTPUTS),
        "signatures": {"prefill": loaded.prefill_length, "decode": 1} if loaded.prefill_length else None,
        "cache_length": loaded.cache_length,
        "stop_ids": bundle.stop_ids(),
        "runtime_config": artifact.runtime_config,
        "how": "prefill: tokens = the prompt (in chunks of the prefill length, the last padded), index = its start "
               "position, cache = zeros at first; decode: one token at index = its position; after each call write "
               "new_kv into the cache at positions index..index+T-1 (axis 3).",
    }
    (folder / "generation.json").write_text(json.dumps(interface, indent=2) + "\n", encoding="utf-8")


def _write_reports(folder: Path, report: dict) -> None:
    from deploykit.generation.report import markdown_report
    from deploykit.report.manifest import write_manifest

    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(markdown_report(report), encoding="utf-8")
    write_manifest(folder)
