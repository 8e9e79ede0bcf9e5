"""The models a build derives from the original, one per recipe, and everything computed from them.

Every cache here is keyed by content: the recipe (passes with their parameters) that
produced a model, never an object's identity. Architecture-changing passes run once per
recipe prefix for the whole build, so targets sharing a prefix train once; an in-place
pass (qat, always last) trains inside the export's graph context and the weights are
put back afterwards.
"""

from __future__ import annotations

import itertools
import shutil
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Protocol

import numpy as np

from deploykit.backends.base import Inputs
from deploykit.options import BuildOptions
from deploykit.data import DataSplit
from deploykit.evaluate import label_ids
from deploykit.graph.integer_graph import integer_graph
from deploykit.models import ModelBundle
from deploykit.graph.onnx_model import write_static_graph
from deploykit.passes.base import Pass, PassContext, PassResult, get_pass, pass_class
from deploykit.passes.recipe import Recipe
from deploykit.progress import StepLog
from deploykit.graph.residual_scaling import find_scales, scaled_residual_stream


class Session(Protocol):
    """What the store reads of its build session (the session holds the stores; this module does not import it)."""

    bundle: ModelBundle
    split: DataSplit
    sequence_length: int
    options: BuildOptions
    log: StepLog

    def quality(self, outputs: np.ndarray) -> dict: ...


class ModelStore:
    """Models, traced graphs, encoded inputs and residual scales of one build, by recipe."""

    def __init__(self, session: Session, folder: Path):
        self.session = session
        self.folder = folder  # traced graphs go here (one store per sequence length in a search)
        self._models: dict[Recipe, ModelBundle] = {(): session.bundle}  # architecture-changing passes -> model
        self._records: dict[Recipe, list[dict]] = {(): []}  # ... -> what each of those passes did
        self._saved_models: dict[tuple, Path] = {}
        self._trace_numbers = itertools.count()  # folder names never reused, whatever release() removed
        self._pass_results: dict[Recipe, list[dict]] = {}
        self._encoded: dict[tuple, Inputs] = {}
        self._calibration: dict[Recipe, list[Inputs]] = {}
        self._residual: dict[Recipe, tuple[np.ndarray | None, int]] = {}
        self._teacher_outputs: np.ndarray | None = None
        self.fine_tune_callbacks: tuple = ()  # Keras callbacks for every fine-tune (set by a search per trial)

    # ---- models by recipe -----------------------------------------------------------------------

    @staticmethod
    def model_key(recipe: Recipe) -> Recipe:
        """The passes that changed the architecture: an in-place last pass (qat) trains the same model."""
        return recipe[:-1] if recipe and pass_class(recipe[-1][0]).must_be_last else recipe

    @staticmethod
    def tokenizer_key(recipe: Recipe) -> Recipe:
        """The passes up to the last one that changed the token ids: what the model's tokenizer depends on."""
        changed = [i for i, (name, _) in enumerate(recipe) if pass_class(name).changes_token_ids]
        return recipe[:changed[-1] + 1] if changed else ()

    def bundle(self, recipe: Recipe = ()) -> ModelBundle:
        """The model a recipe produced (the original when its passes have not run or changed nothing)."""
        return self._models.get(self.model_key(recipe), self._models[()])

    def pass_results(self, recipe: Recipe) -> list[dict]:
        """What each pass of a recipe did (empty before it ran)."""
        return self._pass_results.get(recipe, [])

    def release(self) -> None:
        """Forget every derived model and what was computed from it, keeping the original's: a search's trials
        rarely share a recipe, and memory and disk must not grow with the number of trials."""
        original = ()
        self._models, self._records = {original: self.session.bundle}, {original: []}
        self._pass_results.clear()
        for key in [key for key in self._saved_models if key != "onnx" and key[1] != original]:
            shutil.rmtree(self._saved_models.pop(key), ignore_errors=True)
        self._encoded = {key: value for key, value in self._encoded.items() if key[1] == original}
        self._calibration = {key: value for key, value in self._calibration.items() if key == original}
        self._residual = {key: value for key, value in self._residual.items() if key == original}

    # ---- inputs --------------------------------------------------------------------------------

    def encoded(self, which: str, recipe: Recipe = ()) -> Inputs:
        """A split's texts as inputs of the recipe's model (default: the original's tokenizer)."""
        key = (which, self.tokenizer_key(recipe))
        if key not in self._encoded:
            dataset = getattr(self.session.split, which)
            self._encoded[key] = self.bundle(key[1]).encode(dataset.texts, self.session.sequence_length)
        return self._encoded[key]

    def calibration(self, recipe: Recipe = ()) -> list[Inputs]:
        """Batch-1 calibration examples for the recipe's model."""
        key = self.tokenizer_key(recipe)
        if key not in self._calibration:
            calibration = self.encoded("calibration", key)
            count = len(self.session.split.calibration)
            self._calibration[key] = [{name: values[i:i + 1] for name, values in calibration.items()}
                                      for i in range(count)]
        return self._calibration[key]

    # ---- integer graphs ------------------------------------------------------------------------

    def residual_scales(self, recipe: Recipe) -> np.ndarray | None:
        """Per-channel scales of the residual stream for integer graphs (found once per model)."""
        key = self.model_key(recipe)
        if key not in self._residual:
            session = self.session
            with session.log.step("residual_scales", "Measuring residual-stream outlier channels on calibration samples"):
                scales = find_scales(self.bundle(key), session.sequence_length, self.calibration(key)[:64],
                                     session.options.max_residual_scale)
            self._residual[key] = (scales, int((scales > 1).sum()) if scales is not None else 0)
        return self._residual[key][0]

    def integer_graph_facts(self, recipe: Recipe) -> dict:
        """How integer-only graphs were traced, for the report."""
        options = self.session.options
        return {
            "masked_attention_logit": options.masked_logit,
            "layer_norm": "mean, SUB, MUL, RSQRT (integer-capable ops)",
            "max_residual_scale": options.max_residual_scale,
            "scaled_residual_channels": self._residual.get(self.model_key(recipe), (None, 0))[1],
        }

    def graph_context(self, masked_logit: float | None, recipe: Recipe) -> ExitStack:
        """How the graph is traced: as the framework does, or integer-capable (masked_logit set)."""
        stack = ExitStack()
        if masked_logit is not None:
            stack.enter_context(integer_graph(masked_logit))
            scales = self.residual_scales(recipe)
            if scales is not None:
                stack.enter_context(scaled_residual_stream(self.bundle(recipe), scales))
        return stack

    # ---- traced graphs -------------------------------------------------------------------------

    def saved_model(self, masked_logit: float | None = None, recipe: Recipe = (), dynamic: bool = False) -> Path:
        """The traced graph, once per masked-logit setting (None: the framework's own graph), recipe and
        shape (`dynamic`: any sequence length, for targets with a `sequence_range`)."""
        session = self.session
        original = session.bundle
        if original.onnx_source is not None:  # ONNX input: the static-shape graph is every exporter's source
            if "onnx" not in self._saved_models:
                with session.log.step("saved_model", "Fixing the ONNX model's inputs to [1, sequence length]"):
                    self._saved_models["onnx"] = write_static_graph(
                        original.onnx_source, session.sequence_length, self.folder / "source.onnx")
            return self._saved_models["onnx"]
        key = (masked_logit, recipe, dynamic)
        length = None if dynamic else session.sequence_length
        if key not in self._saved_models:
            folder = self.folder / f"saved_model_{next(self._trace_numbers)}"
            if recipe:
                self._pass_results[recipe] = self._run_passes(recipe, masked_logit, folder, length)
            else:
                how = "" if masked_logit is None else " (integer-capable: bounded mask, scaled residual stream)"
                how += ", dynamic sequence axis" if dynamic else ""
                with self.graph_context(masked_logit, ()), \
                        session.log.step("saved_model", f"Tracing the model to a SavedModel{how}"):
                    original.write_saved_model(folder, length)
            self._saved_models[key] = folder
        return self._saved_models[key]

    def _run_passes(self, recipe: Recipe, masked_logit: float | None, folder: Path, length: int | None) -> list[dict]:
        """Apply each pass in order, measure the model after each, and trace the result."""
        structural = self.model_key(recipe)
        results = self._structural_passes(structural)
        bundle = self.bundle(structural)
        weights = bundle.deployment_model(self.session.sequence_length).weights  # shared: restored below
        original = [variable.numpy() for variable in weights]
        try:
            with self.graph_context(masked_logit, structural):
                tracing = None
                if structural != recipe:
                    name, parameters = recipe[-1]
                    chosen = get_pass(name, **dict(parameters))
                    results = results + [self._measured(chosen.run(self._pass_context(structural, chosen)), structural)]
                    tracing = chosen.export_context()
                names = " + ".join(name for name, _ in recipe)
                with self.session.log.step("saved_model", f"Tracing the model after {names} to a SavedModel"):
                    with tracing or nullcontext():
                        bundle.write_saved_model(folder, length)
        finally:
            for variable, value in zip(weights, original):
                variable.assign(value)
        return results

    def _structural_passes(self, recipe: Recipe) -> list[dict]:
        """Run architecture-changing passes in order, once per recipe prefix for the whole build."""
        if recipe not in self._models:
            results = self._structural_passes(recipe[:-1])
            name, parameters = recipe[-1]
            chosen = get_pass(name, **dict(parameters))
            result = chosen.run(self._pass_context(recipe[:-1], chosen))
            self._models[recipe] = result.bundle or self.bundle(recipe[:-1])
            self._records[recipe] = results + [self._measured(result, recipe)]
        return self._records[recipe]

    def _measured(self, result: PassResult, recipe: Recipe) -> dict:
        """What a pass did, with the quality of the model it left (the recipe's model) against the original."""
        record = result.as_dict()
        with self.session.log.step(f"{result.name}_measure",
                                   f"Measuring the model after {result.name} on the evaluation texts"):
            model = self.bundle(recipe)
            record["quality_after"] = self.session.quality(model.predict(self.encoded("evaluation", recipe)))
        return record

    def _pass_context(self, recipe: Recipe, chosen: Pass) -> PassContext:
        """The training texts (encoded for the recipe's model), what the original outputs on them, labels if any.

        The original runs on the training texts only for a pass that learns from it
        (21 s on MiniLM's 1,000 bundled texts), once per build.
        """
        session = self.session
        if self._teacher_outputs is None and chosen.reads_teacher_outputs:
            with session.log.step("teacher", f"Running the original model on {len(session.split.training)} training texts"):
                self._teacher_outputs = session.bundle.predict(self.encoded("training"))
        teacher = self._teacher_outputs if chosen.reads_teacher_outputs else None
        ids = None
        if teacher is not None and session.bundle.task == "classification" and session.split.training.labels is not None:
            ids, _ = label_ids(session.split.training.labels, session.bundle.class_names, teacher.shape[-1])
        return PassContext(
            bundle=self.bundle(recipe), sequence_length=session.sequence_length,
            train_texts=session.split.training.texts, train_inputs=self.encoded("training", recipe),
            teacher_outputs=teacher, teacher=session.bundle, label_ids=ids, calibration=self.calibration(recipe),
            log=session.log, seed=session.options.seed, callbacks=self.fine_tune_callbacks, int4=session.options.int4,
        )
