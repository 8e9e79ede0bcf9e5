"""--max-size-mb in the plan: candidates that cannot fit are skipped before any export."""

import pytest

from deploykit.backends.base import get_backend
from deploykit.pipeline import build
from deploykit.planner import plan_candidates
from deploykit.size_budget import ParameterCounts, skip_too_large
from deploykit.profiling.local import ProfileSettings
from deploykit.target_loader import load_target


def _intel_candidates():
    target = load_target("intel-cpu")
    return plan_candidates(target, get_backend(target.runtime), None, forced=None)


def test_candidates_whose_weights_alone_exceed_the_budget_are_skipped():
    candidates = _intel_candidates()  # int8, mixed, bf16, fp32, int4-weights, int4-qat + int4-weights
    checked = skip_too_large(candidates, ParameterCounts(22_700_000), max_size_mb=20.0)
    assert [c.label for c in checked.kept] == ["int4-weights", "int4-qat + int4-weights"]  # 22.7 MB at int8 > 20
    assert len(checked.step["skipped"]) == 4 and "at least 22.7 MB (22,700,000 weights its passes cannot remove, at int8)" in checked.step["skipped"][0]
    roomy = skip_too_large(candidates, ParameterCounts(22_700_000), max_size_mb=50.0)
    assert [c.precision for c in roomy.kept] == ["int8", "mixed", "bf16", "int4-weights", "int4-weights"]  # fp32: 91 MB


def test_the_smallest_is_still_built_when_nothing_fits_and_structural_passes_are_kept():
    candidates = _intel_candidates()
    checked = skip_too_large(candidates, ParameterCounts(22_700_000), max_size_mb=1.0)
    assert [c.precision for c in checked.kept] == ["int4-weights"]
    target = load_target("intel-cpu")
    pruned = plan_candidates(target, get_backend(target.runtime), "int8", forced=("prune",))
    assert skip_too_large(pruned, ParameterCounts(22_700_000), max_size_mb=1.0).kept == pruned  # size unknown before it runs


def test_the_plan_names_what_the_size_budget_skipped(tiny_classifier, labelled_data, tmp_path):
    result = build(tiny_classifier, "arm-cpu", labelled_data, out=tmp_path, precision=None, max_size_mb=1e-3,
                   calibration_samples=10, evaluation_samples=10, profile=ProfileSettings(runs=3, warmup=1))
    steps = {step["step"]: step for step in result.report["plan"]}
    tried = [candidate["candidate"] for candidate in result.report["candidates"]]
    assert len(tried) == 1 and steps["size_budget"]["skipped"]
    assert not result.passed and any(check["name"] == "size_mb" and not check["passed"]
                                     for check in result.report["gates"]["checks"])


UNREACHABLE = ["[unused0]", "Goal", "é"]  # never produced: a free slot, lowercased, accent stripped


@pytest.fixture(scope="module")
def encoder_with_unreachable_tokens(tmp_path_factory, vocabulary):
    """A tiny BertBackbone .keras whose vocab.txt also lists tokens its tokenizer can never produce."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    tokens = [*vocabulary, *UNREACHABLE]
    folder = tmp_path_factory.mktemp("unreachable")
    keras_hub.models.BertBackbone(vocabulary_size=len(tokens), num_layers=1, num_heads=2, hidden_dim=32,
                                  intermediate_dim=64, max_sequence_length=32).save(folder / "encoder.keras")
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return folder / "encoder.keras"


@pytest.mark.parametrize("max_size_mb", [None, 100.0])
def test_a_size_budget_drops_the_vocabulary_rows_no_text_can_reach(encoder_with_unreachable_tokens, labelled_data,
                                                                   tmp_path, max_size_mb):
    result = build(encoder_with_unreachable_tokens, "arm-cpu", labelled_data, out=tmp_path, precision="fp32",
                   max_size_mb=max_size_mb, calibration_samples=10, evaluation_samples=20,
                   profile=ProfileSettings(runs=3, warmup=1))
    shipped = (result.folder / "vocab.txt").read_text().split("\n")
    steps = {step["step"]: step for step in result.report["plan"]}
    if max_size_mb is None:  # without a budget the vocabulary, and the ids a device app sends, stay as they were
        assert "size_budget" not in steps and set(UNREACHABLE) <= set(shipped)
        return
    assert "3 vocabulary rows (96 weights)" in steps["size_budget"]["lossless"]
    assert not set(UNREACHABLE) & set(shipped) and len(shipped) > len(UNREACHABLE)
    assert result.report["candidates"][0]["candidate"] == "trim-vocab:keep=reachable + fp32"
    assert result.report["metrics"]["fidelity"]["cosine_min"] > 0.99999  # changes no output
    assert "teacher" not in result.report["timings_s"]  # trim-vocab never reads the original's outputs



# ---- the planner reaches a budget the target's own precisions cannot --------------------------------------------

def _model(layers: int = 6, vocabulary: int = 30_000, hidden: int = 384, per_layer: int = 1_800_000):
    embedding = vocabulary * hidden
    return ParameterCounts(embedding + layers * per_layer + 200_000, embedding, per_layer, layers)


def test_the_floor_of_a_candidate_leaves_out_only_what_its_passes_can_remove():
    from deploykit.candidate import Candidate
    from deploykit.passes.recipe import recipe

    counts = _model()
    assert counts.floor(Candidate("int4-weights")) == counts.total
    assert counts.floor(Candidate("int4-weights", recipe(("trim-vocab",)))) == counts.total - counts.token_embedding
    half = counts.total - 3 * counts.per_layer  # a 6-layer teacher's default student keeps 3
    assert counts.floor(Candidate("int8", recipe(("distill",)))) == half
    assert counts.floor(Candidate("int8", recipe(("distill",), {"distill": {"layers": 2}}))) == half - counts.per_layer
    assert counts.floor(Candidate("int8", recipe(("distill",), {"distill": {"ffn_width": 0.5}}))) is None
    assert counts.floor(Candidate("int8", recipe(("prune",)))) is None  # how much it removes is known only after


def test_the_ladder_adds_int4_embeddings_then_a_lossy_trim_then_a_student_in_that_order():
    from types import SimpleNamespace

    from deploykit.size_budget import size_ladder

    bundle = SimpleNamespace(check_rebuildable=lambda: None)
    ladder = size_ladder(_intel_candidates(), bundle, int4_embeddings=False, pass_parameters={})
    assert [c.label for c in ladder] == ["int4-weights (int4 embeddings)", "trim-vocab + int4-weights (int4 embeddings)",
                                         "distill + trim-vocab + int4-weights (int4 embeddings)"]
    asked = size_ladder(_intel_candidates(), bundle, int4_embeddings=True, pass_parameters={"distill": {"layers": 2}})
    assert [c.label for c in asked] == ["trim-vocab + int4-weights", "distill + trim-vocab + int4-weights"]
    assert dict(asked[1].recipe[0][1])["layers"] == 2  # --set reaches the ladder's passes


@pytest.fixture(scope="module")
def encoder_with_a_large_vocabulary(tmp_path_factory, vocabulary):
    """Two layers and 3,000 tokens the data never uses: the embedding table is most of the weights, as in MiniLM."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    tokens = [*vocabulary, *(f"zz{number:04d}" for number in range(3000))]
    folder = tmp_path_factory.mktemp("large-vocabulary")
    keras_hub.models.BertBackbone(vocabulary_size=len(tokens), num_layers=2, num_heads=2, hidden_dim=32,
                                  intermediate_dim=64, max_sequence_length=32).save(folder / "encoder.keras")
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return folder / "encoder.keras"


def test_a_size_budget_tries_int4_embeddings_and_a_lossy_trim_on_its_own(encoder_with_a_large_vocabulary,
                                                                        labelled_data, tmp_path):
    """Without --int4-embeddings or --recipe: int4 weights (0.17 MB) and int4 embeddings (0.10 MB) miss 0.06 MB, the
    vocabulary cut to the texts' tokens reaches it, and the report lists each try with its size."""
    result = build(encoder_with_a_large_vocabulary, "arm-cpu", labelled_data, out=tmp_path, max_size_mb=0.06,
                   calibration_samples=10, evaluation_samples=20, profile=ProfileSettings(runs=3, warmup=1))
    tried = {c["candidate"]: c for c in result.report["candidates"]}
    assert "int4-weights (int4 embeddings)" in tried and not tried["int4-weights (int4 embeddings)"]["passed"]
    assert tried["int4-weights (int4 embeddings)"]["bytes"] < tried["int4-weights"]["bytes"]
    assert result.passed and result.report["artifact"]["candidate"] == "trim-vocab + int4-weights (int4 embeddings)"
    assert result.report["artifact"]["bytes"] <= 60_000
    assert result.report["candidates_not_tried"] == ["distill + trim-vocab + int4-weights (int4 embeddings)"]
    steps = {step["step"]: step for step in result.report["plan"]}
    assert steps["size_budget"]["then_tries"][0] == "int4-weights (int4 embeddings)"
