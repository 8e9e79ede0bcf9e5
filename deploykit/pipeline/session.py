"""The build session: the model and data loaded once, the original's reference outputs, and measuring artifacts
against them (validation on every evaluation sample, then profiling by the target's runner)."""

from __future__ import annotations

import gc
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from deploykit.backends.base import Backend, ExportedArtifact, ExportOptions
from deploykit.pipeline.derived import ModelStore
from deploykit.cache import ContentCache, default_cache_folder, digest, toolchain_versions
from deploykit.options import BuildOptions
from deploykit.data import DEFAULT_DATA, DataSplit, TextDataset, choose_sequence_length, load_dataset, split_dataset
from deploykit.evaluate import (accuracy, class_names_of, classification_fidelity, embedding_fidelity, label_ids,
                                per_sample_fidelity, run_examples)
from deploykit.models import ModelBundle, load_model
from deploykit.graph.onnx_model import run_graph
from deploykit.passes.base import get_pass
from deploykit.passes.recipe import Recipe
from deploykit.planner import BASELINE_PRECISION
from deploykit.profiling.base import ProfileRunner
from deploykit.progress import StepLog
from deploykit.report.manifest import sha256_of
from deploykit.targets import Target

DEFAULT_MODEL = "minilm-l6"


@dataclass
class Reference:
    """What the original model does on the evaluation samples at the build's sequence length."""

    outputs: np.ndarray
    accuracy: float | None
    label_ids: np.ndarray | None  # evaluation labels as output indices (classifiers with labels)
    label_mapping: str | None  # how labels were mapped to indices, for the report
    class_names: list[str]  # each output's name for the report's confusion matrices (empty for embeddings)


@dataclass
class Measured:
    """An exported model with its validation and profiling results."""

    artifact: ExportedArtifact
    quality: dict
    profile: dict


@dataclass
class BuildSession:
    """Shares the model, data, reference outputs and fp32 baselines between the targets of one build."""

    bundle: ModelBundle
    split: DataSplit
    sequence_length: int
    sequence_length_reason: str
    options: BuildOptions
    log: StepLog
    workdir: Path
    cache: ContentCache | None = None  # None: every stage runs (--no-cache)
    token_lengths: np.ndarray | None = None  # of the data's texts; None when --sequence-length fixed the length
    models: ModelStore = field(init=False)
    _reference: Reference | None = None
    _baselines: dict = field(default_factory=dict)
    _fingerprints: dict = field(default_factory=dict)  # sequence length -> fingerprint
    _inputs: str | None = None
    _stores: dict = field(default_factory=dict)

    def __post_init__(self):
        self.models = self._stores[self.sequence_length] = ModelStore(self, self.workdir)

    def length_at(self, percentile: float) -> int:
        """The sequence length the build would choose at another token-length percentile."""
        return choose_sequence_length(self.token_lengths, self.bundle.max_sequence_length, percentile)

    @contextmanager
    def at_length(self, length: int) -> Iterator[None]:
        """Build and measure at another sequence length (a search trial, and the folder of the one it ships):
        inputs, traces, cache keys and artifacts use it, while the reference stays the original at the build's
        length, so what truncation costs counts as quality loss."""
        if length == self.sequence_length:
            yield
            return
        self.reference()  # at the build's own length, before switching
        before = self.sequence_length, self.models
        if length not in self._stores:
            folder = self.workdir / f"length-{length}"
            folder.mkdir(parents=True, exist_ok=True)
            self._stores[length] = ModelStore(self, folder)
        self.sequence_length, self.models = length, self._stores[length]
        try:
            yield
        finally:
            self.sequence_length, self.models = before

    def fingerprint(self) -> str:
        """sha256 of everything every artifact of this build depends on, whatever the target: the model's weights,
        vocabulary and task, the data split, the sequence length, the export settings, and the toolchain versions."""
        if self.sequence_length not in self._fingerprints:
            self._fingerprints[self.sequence_length] = digest(self._inputs_digest(), self.sequence_length)
        return self._fingerprints[self.sequence_length]

    def _inputs_digest(self) -> str:
        """The fingerprint's length-independent part, hashed once per build (the weights are most of the work)."""
        if self._inputs is None:
            bundle, options = self.bundle, self.options
            if bundle.onnx_source is not None:
                model = sha256_of(bundle.onnx_source)
            else:
                # The weights of the model objects themselves: building a deployment model here would shift Keras's
                # automatic layer names, and with them the exported graph's bytes.
                weights = (bundle.task_model or bundle.backbone).weights
                model = digest([weight.numpy() for weight in weights], bundle.details.get("pooling"),
                               bundle.details.get("normalize"), bundle.token_map)
            split = {name: [getattr(self.split, name).texts, getattr(self.split, name).labels]
                     for name in ("calibration", "evaluation", "training")}
            self._inputs = digest(
                model, bundle.tokenizer.get_vocabulary(), bundle.tokenizer_settings(),
                bundle.task, bundle.class_names, split, options.seed, options.masked_logit,
                options.max_residual_scale, options.activation_percentile, options.int4,
                toolchain_versions())
        return self._inputs

    def _measurement_key(self, artifact: ExportedArtifact, runner: ProfileRunner, threads: int) -> str:
        """What a measurement depends on: the artifact's bytes, the evaluation data, the runner and device, settings."""
        return digest(self.fingerprint(), [sha256_of(path) for path in artifact.files], artifact.runtime_config,
                      runner.name, runner.device_name, threads, self.options.profile.__dict__,
                      self.validates_on_device(runner))

    def measurement_cached(self, artifact: ExportedArtifact, runner: ProfileRunner, threads: int) -> bool:
        return self.cache is not None and self.cache.get("measurement", self._measurement_key(
            artifact, runner, threads)) is not None

    def reference(self) -> Reference:
        """The original's outputs on the evaluation samples, and the labels mapped to its classes."""
        if self._reference is None:
            with self.log.step("reference", "Running the original model on the evaluation samples"):
                outputs = self._original_outputs()
                ids, mapping = None, None
                labels = self.split.evaluation.labels
                if self.bundle.task == "classification" and labels is not None:
                    ids, mapping = label_ids(labels, self.bundle.class_names, outputs.shape[-1])
                original_accuracy = accuracy(outputs, ids) if ids is not None else None
                names = class_names_of(labels, self.bundle.class_names, outputs.shape[-1]) \
                    if self.bundle.task == "classification" else []
            self._reference = Reference(outputs, original_accuracy, ids, mapping, names)
        return self._reference

    def _original_outputs(self) -> np.ndarray:
        """The original's outputs on the evaluation samples; from the cache when the same model, data and length
        ran before (the fingerprint covers all three), since a rerun otherwise repeats this forward pass."""
        key = digest(self.fingerprint(), "reference") if self.cache is not None else None
        if key is not None and (entry := self.cache.get("reference", key)) is not None:
            return np.load(entry.path("outputs.npy"), allow_pickle=False)
        outputs = self.original_outputs(self.models.encoded("evaluation"))
        if key is not None:
            stored = self.workdir / "reference-outputs.npy"
            np.save(stored, outputs, allow_pickle=False)
            self.cache.put("reference", key, {"outputs.npy": stored}, {"shape": list(outputs.shape)})
        return outputs

    def original_outputs(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """What the original model (Keras, or the ONNX graph as given) outputs on encoded inputs."""
        if self.bundle.onnx_source is not None:
            return run_graph(self.models.saved_model(), inputs)
        return self.bundle.predict(inputs)

    def quality(self, outputs: np.ndarray) -> dict:
        """Fidelity against the original and, with labels, accuracy."""
        reference = self.reference()
        if self.bundle.task == "embedding":
            fidelity = embedding_fidelity(reference.outputs, outputs)
        else:
            fidelity = classification_fidelity(reference.outputs, outputs)
        ids = reference.label_ids
        return {"fidelity": fidelity, "accuracy": accuracy(outputs, ids) if ids is not None else None}

    def measure(self, backend: Backend, artifact: ExportedArtifact, runner: ProfileRunner, threads: int, label: str,
                recipe: Recipe = ()) -> Measured:
        """Validate an artifact on every evaluation sample, then profile it; `recipe` names the model it came from
        (its tokenizer builds the inputs). A measurement of the same bytes on the same runner comes from the cache."""
        key = None
        if self.cache is not None:
            key = self._measurement_key(artifact, runner, threads)
            if (entry := self.cache.get("measurement", key)) is not None:
                self.log.info(f"[dim]{label}: measurement reused from the cache[/]")
                return Measured(artifact, entry.meta["quality"], {**entry.meta["profile"], "cached": True})
        measured = self._measure(backend, artifact, runner, threads, label, recipe)
        if key is not None:
            self.cache.put("measurement", key, {}, {"quality": measured.quality, "profile": measured.profile})
        return measured

    def _measure(self, backend: Backend, artifact: ExportedArtifact, runner: ProfileRunner, threads: int, label: str,
                 recipe: Recipe) -> Measured:
        inputs = self.models.encoded("evaluation", recipe)
        with self.log.step(f"validate_{label}", f"Validating the {label} artifact on {len(self.split.evaluation)} samples"):
            loaded = backend.load(artifact.path, threads, artifact.runtime_config)
            outputs = run_examples(loaded, inputs)
            reference = self.reference()
            quality = self._quality_of(outputs)
            del loaded
        gc.collect()  # release the in-process runtime's worker threads before timing another process
        settings = self.options.profile
        quality["validated_on"] = {"where": "host"}
        if self.validates_on_device(runner):
            quality = self._device_quality(backend, artifact, runner, threads, label, inputs, quality)
        sample = {name: values[:1] for name, values in inputs.items()}
        with self.log.step(f"profile_{label}", f"Profiling the {label} artifact ({settings.runs} runs, {threads} threads, "
                                               f"{runner.name} runner)"):
            profile = runner.profile(backend.name, artifact.path, artifact.runtime_config, sample, threads, settings)
        return Measured(artifact, quality, profile)

    def _quality_of(self, outputs: np.ndarray) -> dict:
        reference = self.reference()
        return {**self.quality(outputs), "per_sample": per_sample_fidelity(
            self.bundle.task, reference.outputs, outputs, reference.label_ids, reference.class_names)}

    def validates_on_device(self, runner: ProfileRunner) -> bool:
        """Whether fidelity comes from the profiling device: by default whenever the runner is a device (--device,
        or a target whose YAML names a device runner), unless validation on the host is asked for."""
        return (self.options.validate_on or "device") == "device" and runner.name != "local"  # local: this host

    def _device_quality(self, backend: Backend, artifact: ExportedArtifact, runner: ProfileRunner, threads: int,
                        label: str, inputs: dict, host: dict) -> dict:
        """Fidelity from the outputs the device's runtime computed, with the host's beside it and whether the two
        differ beyond the tolerance (a delegate or an Arm kernel that computes differently is a finding of its own)."""
        with self.log.step(f"validate_{label}_on_device", f"Validating the {label} artifact on {runner.device_name} "
                                                          f"({len(self.split.evaluation)} samples)"):
            measured = runner.run_outputs(backend.name, artifact.path, artifact.runtime_config, inputs, threads,
                                          self.options.profile)
        if measured is None:
            return {**host, "validated_on": {"where": "host", "reason": f"the {runner.name} runner cannot send "
                                                                       "outputs back from its device"}}
        quality = self._quality_of(measured["outputs"])
        tolerance = self.options.host_device_tolerance
        on_host, on_device = ({**found["fidelity"], "accuracy": found["accuracy"]} for found in (host, quality))
        differences = {name: round(float(on_device[name] - on_host[name]), 6)
                       for name in ("cosine_mean", "agreement", "accuracy")
                       if on_host.get(name) is not None and on_device.get(name) is not None}
        quality["validated_on"] = {
            "where": "device", "device": runner.device_name, "runtime": measured["runtime"],
            "host": {"fidelity": host["fidelity"], "accuracy": host["accuracy"]},
            "device_minus_host": differences, "tolerance": tolerance,
            "beyond_tolerance": any(abs(value) > tolerance for value in differences.values())}
        return quality

    def export_options(self, target: Target, recipe: Recipe = (), int4_embeddings: bool = False) -> ExportOptions:
        """What the export of the recipe's model needs; a last pass that trained towards an export (int4-qat)
        fixes how it runs. `int4_embeddings`: a candidate's own int4 embedding tables (a size budget's)."""
        int4 = replace(self.options.int4, embeddings=True) if int4_embeddings else self.options.int4
        options = ExportOptions(calibration=self.models.calibration(recipe), integer_only=target.integer_only,
                                integer_io=target.integer_io, activation_percentile=self.options.activation_percentile,
                                converter_timeout_s=self.options.converter_timeout_s, int4=int4)
        if recipe:
            name, parameters = recipe[-1]
            options = get_pass(name, **dict(parameters)).export_options(options)
        return options

    def baseline(self, backend: Backend, target: Target, runner: ProfileRunner, threads: int) -> Measured:
        """The fp32 artifact of the original on the same runtime, runner and threads (once per build)."""
        key = (backend.name, runner.name, threads, self.sequence_length)
        if key not in self._baselines:
            folder = self.workdir / f"baseline_{backend.name}_{threads}_{self.sequence_length}"
            artifact = self._cached_baseline(backend, target, folder)
            self._baselines[key] = self.measure(backend, artifact, runner, threads, f"fp32 {backend.name} baseline")
        return self._baselines[key]

    def _cached_baseline(self, backend: Backend, target: Target, folder: Path) -> ExportedArtifact:
        """The fp32 export of the original, from the cache when these inputs were exported before."""
        key = None
        if self.cache is not None:
            key = digest(self.fingerprint(), "baseline", backend.name, target.integer_only, target.integer_io)
            if (entry := self.cache.get("export", key)) is not None:
                folder.mkdir(parents=True, exist_ok=True)
                meta = entry.meta
                files = [Path(shutil.copy2(entry.path(name), folder / name)) for name in meta["files"]]
                return ExportedArtifact(folder / meta["path"], files, meta["format"], meta["precision"],
                                        meta["method"], meta["runtime_config"])
        with self.log.step("export_baseline", f"Exporting the fp32 {backend.name} baseline"):
            artifact = backend.export(self.models.saved_model(), BASELINE_PRECISION, self.export_options(target), folder)
        if key is not None:
            self.cache.put("export", key, {path.name: path for path in artifact.files}, {
                "files": [path.name for path in artifact.files], "path": artifact.path.name, "format": artifact.format,
                "precision": artifact.precision, "method": artifact.method, "runtime_config": artifact.runtime_config})
        return artifact


def prepare_session(
    model: str | Path | None,
    data: str | Path | None,
    eval_data: str | Path | None,
    options: BuildOptions,
    log: StepLog,
    workdir: Path,
    task: str | None = None,
    tokenizer: str | Path | None = None,
) -> BuildSession:
    """Load data and model, split, and choose the sequence length, failing early on bad input."""
    dataset = load_dataset(data or DEFAULT_DATA)
    if data is None and model is not None:
        # The bundled labels belong to the bundled topics, not to the user's classes.
        dataset = TextDataset(dataset.texts, None, dataset.source)
        log.info("No --data given: calibrating and evaluating on the bundled sentences, without their labels.")
    evaluation = load_dataset(eval_data) if eval_data else None
    with log.step("load_model", f"Loading model {model or DEFAULT_MODEL}"):
        bundle = load_model(model or DEFAULT_MODEL, task=task, tokenizer=tokenizer)
    split = split_dataset(dataset, evaluation, options.calibration_samples, options.evaluation_samples, options.seed)
    lengths = None
    if options.sequence_length is not None:
        bundle.check_sequence_length(options.sequence_length)
        length, reason = options.sequence_length, "--sequence-length"
    else:
        texts = dataset.texts + (evaluation.texts if evaluation else [])
        lengths = bundle.token_lengths(texts)
        length = choose_sequence_length(lengths, bundle.max_sequence_length, options.sequence_length_percentile)
        reason = (
            f"p{options.sequence_length_percentile:g} of {len(texts)} token lengths "
            f"({np.percentile(lengths, options.sequence_length_percentile):.0f}) rounded up to a multiple of 8, "
            f"capped at {bundle.max_sequence_length}"
        )
    cache = ContentCache(options.cache or default_cache_folder(), options.cache_max_gb * 1e9, log) \
        if options.use_cache else None
    return BuildSession(bundle, split, length, reason, options, log, workdir, cache, lengths)
