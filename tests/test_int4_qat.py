"""int4-qat: the simulated rounding is the int4-weights export's, and a build tries it after int4-weights."""

from dataclasses import replace

import numpy as np
import pytest

from deploykit.backends.base import ExportOptions, Int4Settings, get_backend
from deploykit.pipeline import build
from deploykit.errors import DeployKitError
from deploykit.evaluate import run_examples
from deploykit.models import load_model
from deploykit.passes.base import PassContext, get_pass
from deploykit.passes.int4_qat import (_apply_clipping, clipping_variables, group_width, int4_rounded,
                                      int4_rounding)
from deploykit.profiling.local import ProfileSettings
from deploykit.progress import StepLog

FAST = ProfileSettings(runs=5, warmup=1)
TEXTS = ["team goal win season", "bread soup garlic", "coach league player", "cheese recipe bake dinner"] * 4
# The CPU plugin's own precision choices (bf16 where the host has it, activations of int4 MatMuls quantized at run
# time) add noise of about 1e-4 on some hosts; the comparisons below are of the weights' rounding alone.
EXACT_RUNTIME = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}


@pytest.mark.parametrize("width, requested, group", [(384, 128, 128), (1536, 128, 128), (32, 128, 32),
                                                     (96, 64, 32), (48, 128, 48), (384, -1, 384)])
def test_group_width_follows_the_export_fallback(width, requested, group):
    assert group_width(width, requested) == group


def test_rounding_uses_sixteen_levels_per_group_and_keeps_zero():
    weights = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    weights[:128, 0] = 0.0  # an all-zero group stays zero
    rounded = np.asarray(int4_rounded(weights, (0,), 128))
    for block in (rounded[:128], rounded[128:]):
        for column in block.T:
            assert len(np.unique(column)) <= 16
    assert not rounded[:128, 0].any()
    assert 0 < np.abs(rounded - weights).max() < (weights.max() - weights.min()) / 15


@pytest.mark.parametrize("table_groups", [None, -1])
def test_simulated_rounding_is_what_the_openvino_int4_export_computes(tiny_backbone_file, tmp_path, table_groups):
    """The Keras model with int4_rounding (and the vocabulary table rounded, in the layers' groups or one per row)
    gives the int4 IR's outputs, to float precision; both are far from the float model's."""
    bundle = load_model(tiny_backbone_file)
    inputs = bundle.encode(TEXTS, 16)
    calibration = [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(8)]
    float_outputs = bundle.predict(inputs)
    bundle.write_saved_model(tmp_path / "saved", 16)
    backend = get_backend("openvino")
    settings = Int4Settings(group_size=16, algorithm="rtn", embeddings=True, embedding_group_size=table_groups)
    artifact = backend.export(tmp_path / "saved", "int4-weights", ExportOptions(calibration, int4=settings),
                              tmp_path / "int4")
    exported = run_examples(backend.load(artifact.path, 1, {**artifact.runtime_config, **EXACT_RUNTIME}), inputs)
    table = bundle.backbone.token_embedding.embeddings
    groups = table.shape[1] // settings.group_size
    assert groups > 1 and _zero_point_columns(artifact.path, table.shape[0]) == (1 if table_groups == -1 else groups)
    table.assign(int4_rounded(table, (1,), settings.table_group_size))
    with int4_rounding(settings.group_size):
        simulated = bundle.predict(inputs, model=bundle.deployment_model(16))
    assert np.abs(simulated - exported).max() < 1e-4 * np.abs(exported).max()
    assert np.abs(float_outputs - exported).max() > 100 * np.abs(simulated - exported).max()


def _zero_point_columns(path, rows: int) -> int:
    """Groups per row of the int4 table with `rows` rows in an OpenVINO IR (from its zero points' shape)."""
    import openvino as ov

    shapes = [list(op.get_output_shape(0)) for op in ov.Core().read_model(str(path)).get_ops()
              if op.get_type_name() == "Constant" and op.get_friendly_name().endswith("zero_point")]
    return next(int(np.prod(shape[1:])) for shape in shapes if shape[0] == rows)


def test_learned_clipping_once_applied_is_what_the_openvino_int4_export_computes(tiny_backbone_file, tmp_path):
    """Kernels clipped to their learned ranges, exported with rounding to nearest, give the outputs the training
    simulated with those ranges: the export's min/max finds the clipped grid."""
    bundle = load_model(tiny_backbone_file)
    inputs = bundle.encode(TEXTS, 16)
    settings = Int4Settings(algorithm="rtn", group_size=-1, embeddings=True)
    table = bundle.backbone.token_embedding.embeddings
    table.assign(int4_rounded(table, (1,), settings.group_size))
    model = bundle.deployment_model(16)
    clipping = clipping_variables(model, settings.group_size, 4.0)
    rng = np.random.default_rng(0)
    for _, pair in clipping.values():  # as if learned: ranges kept between 50% and 98%
        for logits in pair:
            logits.assign(rng.uniform(0.0, 4.0, size=logits.shape).astype("float32"))
    with int4_rounding(settings.group_size, model, clipping):
        simulated = bundle.predict(inputs, model=bundle.deployment_model(16))
    with int4_rounding(settings.group_size):
        unclipped = bundle.predict(inputs, model=bundle.deployment_model(16))
    kept = _apply_clipping(clipping, settings.group_size)
    bundle.write_saved_model(tmp_path / "saved", 16)
    backend = get_backend("openvino")
    artifact = backend.export(tmp_path / "saved", "int4-weights", ExportOptions([], int4=settings), tmp_path / "int4")
    exported = run_examples(backend.load(artifact.path, 1, {**artifact.runtime_config, **EXACT_RUNTIME}), inputs)
    assert 0.5 < kept["clipping_kept"] < 0.98
    assert np.abs(simulated - exported).max() < 1e-4 * np.abs(exported).max()
    assert np.abs(unclipped - exported).max() > 100 * np.abs(simulated - exported).max()


def test_rounding_one_model_leaves_a_copy_beside_it_float(tiny_backbone_file):
    """The live teacher of the augmentation is a clone of the original: rounding the model being trained must not
    round the clone, though both run inside the same context."""
    import keras

    bundle = load_model(tiny_backbone_file)
    inputs = bundle.encode(TEXTS, 16)
    model = bundle.deployment_model(16)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    float_outputs = bundle.predict(inputs, model=bundle.deployment_model(16))  # models trace once: fresh ones here
    with int4_rounding(-1, model):
        rounded, beside = bundle.predict(inputs, model=model), bundle.predict(inputs, model=copy)
    assert np.allclose(beside, float_outputs, atol=1e-6) and not np.allclose(rounded, float_outputs, atol=1e-4)


def _cosine(a, b):
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def test_int4_qat_recovers_most_of_what_rounding_costs_on_texts_it_did_not_see(tiny_backbone_file, labelled_data):
    import json

    import keras

    texts = [json.loads(line)["text"] for line in labelled_data.read_text().splitlines()]
    bundle = load_model(tiny_backbone_file)
    for layer in bundle.backbone._flatten_layers():  # one outlier input channel per kernel: coarse int4 groups
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            kernel = layer.kernel.numpy()
            kernel[0] *= 20.0
            layer.kernel.assign(kernel)
    model = bundle.deployment_model(16)
    training, unseen = bundle.encode(texts[:90], 16), bundle.encode(texts[90:], 16)
    reference = bundle.predict(unseen, model=model)
    int4 = Int4Settings(group_size=-1, embeddings=True)

    def rounded_outputs():
        with int4_rounding(int4.group_size):
            return bundle.predict(unseen, model=bundle.deployment_model(16))

    before = rounded_outputs()
    context = PassContext(bundle=bundle, sequence_length=16, train_texts=texts[:90], train_inputs=training,
                          teacher_outputs=bundle.predict(training, model=model), teacher=bundle, label_ids=None,
                          calibration=[], log=StepLog(), int4=int4)
    result = get_pass("int4-qat", steps=150, batch_size=8, learning_rate=3e-4).apply(context)
    after = rounded_outputs()
    assert result.effect["loss_last"] < result.effect["loss_first"] and result.effect["augmented"]
    assert 1 - _cosine(after, reference) < 0.5 * (1 - _cosine(before, reference)), (
        _cosine(before, reference), _cosine(after, reference))


def test_the_live_teacher_reads_a_trimmed_tokenizer_s_ids_as_its_own_tokens(tiny_backbone_file):
    """After trim-vocab renumbers the tokens, the original still labels the student's (perturbed) inputs: a text
    encoded with the trimmed tokenizer gets the original's output on that text."""
    import tensorflow as tf

    from deploykit.passes.int4_qat import _live_teacher

    bundle = load_model(tiny_backbone_file)
    inputs = bundle.encode(TEXTS, 16)
    context = PassContext(bundle=bundle, sequence_length=16, train_texts=TEXTS, train_inputs=inputs,
                          teacher_outputs=bundle.predict(inputs), teacher=bundle, label_ids=None, calibration=[],
                          log=StepLog())
    trimmed = get_pass("trim-vocab", unseen="unk").apply(context).bundle
    student_inputs = trimmed.encode(TEXTS, 16)
    assert len(trimmed.tokenizer.get_vocabulary()) < len(bundle.tokenizer.get_vocabulary())
    assert not np.array_equal(student_inputs["token_ids"], inputs["token_ids"])
    teacher = _live_teacher(replace(context, bundle=trimmed, train_inputs=student_inputs))
    labelled = np.asarray(teacher({k: tf.constant(v) for k, v in student_inputs.items()}, training=False))
    np.testing.assert_allclose(labelled, bundle.predict(inputs), atol=1e-5)


def test_build_tries_int4_qat_after_int4_weights(tiny_backbone_file, labelled_data, tmp_path, monkeypatch):
    from deploykit.planner import Gates

    checks = Gates.checks
    monkeypatch.setattr(Gates, "checks", lambda self, *args: checks(self, *args) + [
        {"name": "impossible", "value": 1, "limit": 0, "passed": False}])
    result = build(tiny_backbone_file, "intel-cpu", labelled_data, out=tmp_path, profile=FAST, calibration_samples=20,
                   evaluation_samples=40, precision="int4-weights",
                   int4=Int4Settings(algorithm="rtn", group_size=-1, embeddings=True),
                   pass_parameters={"int4-qat": {"steps": 60, "batch_size": 8, "learning_rate": 1e-3}})
    plain, trained = result.report["candidates"]
    assert [plain["candidate"], trained["candidate"]] == ["int4-weights", "int4-qat + int4-weights"]
    effect = trained["passes"][0]["effect"]
    assert effect["loss_last"] < effect["loss_first"] and effect["embeddings_rounded"]
    assert trained["fidelity"]["cosine_mean"] > 0.99  # a tiny random model barely feels int4: see the test above
    assert result.report["baseline"]["fidelity"]["cosine_mean"] > 0.9999  # the weights were put back


def test_the_export_after_int4_qat_rounds_to_nearest_on_the_build_grid():
    options = ExportOptions([], int4=Int4Settings(group_size=64, algorithm="gptq", embeddings=True))
    assert get_pass("int4-qat").export_options(options).int4 == Int4Settings(64, 1.0, "rtn", True)


def test_a_search_offers_int4_qat_only_at_int4_weights():
    from deploykit.pareto_search.space import search_space
    from deploykit.target_loader import load_target

    target = load_target("intel-cpu")
    space = search_space(target, list(target.precisions), None, True, None, None, {},
                         backend_passes=("int4-qat",))
    assert "int4-qat" in [p.name for p in space.passes]

    class Trial:  # answers every categorical with its last choice: the precision int8 / int4-weights, passes on
        def __init__(self, precision):
            self.precision = precision

        def suggest_categorical(self, name, choices):
            return self.precision if name == "precision" else choices[-1]

        def suggest_int(self, name, low, high, step=1, log=False):
            return low

        def suggest_float(self, name, low, high, step=None, log=False):
            return low

    assert "int4-qat" in space.suggest(Trial("int4-weights")).passes
    assert "int4-qat" not in space.suggest(Trial("int8")).passes


@pytest.mark.parametrize("target, precision, message", [
    ("intel-cpu", "fp32", "pass --precision int4-weights or drop int4-qat"),
    ("arm-cpu", "int4-weights", "which trains for the openvino backend's rounding"),
])
def test_a_recipe_ending_in_int4_qat_is_refused_where_it_cannot_pay(tiny_backbone_file, labelled_data, tmp_path,
                                                                    target, precision, message):
    with pytest.raises(DeployKitError, match=message):
        build(tiny_backbone_file, target, labelled_data, out=tmp_path, recipe="int4-qat", precision=precision)
