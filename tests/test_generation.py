"""Generative decoders on tiny random models built here: the cached step against the full sequence, every target's
export and runtime, the gates, `build` and `generate` through the CLI, and bad input as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deploykit.cli import main
from deploykit.errors import DeployKitError

SENTENCES = Path(__file__).resolve().parent.parent / "deploykit" / "resources" / "sentences.jsonl"
CACHE = 96


def _tokenizer_json() -> str:
    """A byte-level BPE trained on the bundled sentences (a few hundred tokens, as GPT-2 style vocabularies do)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [json.loads(line)["text"] for line in SENTENCES.read_text().splitlines()]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer.to_str()


def _causal_lm(architecture: str, vocabulary: int):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    models = keras_hub.models
    if architecture == "llama":
        backbone = models.LlamaBackbone(vocabulary_size=vocabulary, num_layers=2, num_query_heads=4,
                                        num_key_value_heads=2, hidden_dim=64, intermediate_dim=128,
                                        max_sequence_length=512)
        return models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    if architecture == "qwen":
        backbone = models.QwenBackbone(vocabulary_size=vocabulary, num_layers=2, num_query_heads=4,
                                       num_key_value_heads=2, hidden_dim=64, intermediate_dim=128)
        return models.QwenCausalLM(backbone=backbone, preprocessor=None)
    if architecture == "gpt2":
        backbone = models.GPT2Backbone(vocabulary_size=vocabulary, num_layers=2, num_heads=4, hidden_dim=64,
                                       intermediate_dim=128, max_sequence_length=512)
        return models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    backbone = models.Gemma3Backbone(vocabulary_size=vocabulary, image_size=16, num_layers=2, num_query_heads=4,
                                     num_key_value_heads=2, hidden_dim=64, intermediate_dim=128, head_dim=16,
                                     sliding_window_size=32, vision_encoder=None)
    return models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    return _tokenizer_json()


@pytest.fixture(scope="module")
def decoders(tokenizer_json):
    from deploykit.generation.decoder import DecoderBundle
    from tokenizers import Tokenizer

    vocabulary = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    return {name: DecoderBundle(_causal_lm(name, vocabulary), tokenizer_json, f"tiny {name}", 512,
                                {"architecture": name})
            for name in ("llama", "qwen", "gpt2", "gemma3")}


@pytest.fixture(scope="module")
def llama_file(tmp_path_factory, decoders) -> Path:
    """The tiny Llama saved as a .keras CausalLM with its tokenizer.json beside it: a source `build` takes."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    decoders["llama"].causal_lm.save(folder / "model.keras")
    (folder / "tokenizer.json").write_text(decoders["llama"].tokenizer_json)
    return folder / "model.keras"


def _ids(bundle, count: int = 40) -> list[int]:
    text = " ".join(json.loads(line)["text"] for line in SENTENCES.read_text().splitlines()[:10])
    return bundle.encode(text)[:count]


@pytest.mark.parametrize("architecture", ["llama", "qwen", "gpt2", "gemma3"])
def test_decode_after_prefill_equals_the_full_sequence(decoders, architecture):
    bundle = decoders[architecture]
    ids = _ids(bundle)
    full = bundle.full_logits(ids)
    decoder = bundle.loaded(CACHE)
    prompt = 25
    logits, cache = decoder.prefill(ids[:prompt])
    rows = [logits]
    for position in range(prompt, len(ids)):
        last, cache = decoder.decode(ids[position], cache, position)
        rows.append(last[None])
    np.testing.assert_allclose(np.concatenate(rows), full, atol=2e-5)


@pytest.mark.parametrize("runtime,architecture", [("litert", "llama"), ("openvino", "llama"),
                                                  ("tensorrt", "llama"), ("litert", "gpt2"), ("openvino", "qwen"),
                                                  ("litert", "gemma3")])
def test_every_runtime_runs_the_cached_step_as_the_original(decoders, tmp_path, runtime, architecture):
    """fp32 artifacts, prefilled in chunks (LiteRT: fixed 16-token chunks, the last padded) and then decoded one
    token at a time, give the original's full-sequence logits."""
    from deploykit.generation.backends.base import DecoderExport, get_decoder_backend

    bundle = decoders[architecture]
    backend = get_decoder_backend(runtime)
    export = DecoderExport(weights="fp32", cache_length=CACHE, prefill_length=16)
    bundle.write_saved_model(tmp_path / "saved", CACHE, backend.signatures(export))
    artifact = backend.export(tmp_path / "saved", export, tmp_path / "out")
    decoder = backend.load(artifact.path, 1, artifact.runtime_config)
    ids = _ids(bundle)
    logits, cache = decoder.prefill(ids[:21])
    last, _ = decoder.decode(ids[21], cache, 21)
    full = bundle.full_logits(ids[:22])
    np.testing.assert_allclose(logits, full[:21], atol=1e-4)
    np.testing.assert_allclose(last, full[21], atol=1e-4)


@pytest.mark.parametrize("runtime,int4", [("litert", "int4-dynamic"), ("openvino", "int4")])
def test_int4_weights_are_smaller_and_close(decoders, tmp_path, runtime, int4):
    from deploykit.generation.backends.base import DecoderExport, get_decoder_backend
    from deploykit.generation.metrics import measure_fidelity

    bundle = decoders["llama"]
    backend = get_decoder_backend(runtime)
    sizes, fidelity = {}, {}
    ids = _ids(bundle, 64)
    for weights in ("fp32", "int8", int4):
        export = DecoderExport(weights=weights, cache_length=CACHE, prefill_length=16, group_size=32)
        bundle.write_saved_model(tmp_path / weights / "saved", CACHE, backend.signatures(export))
        artifact = backend.export(tmp_path / weights / "saved", export, tmp_path / weights / "out")
        sizes[weights] = sum(p.stat().st_size for p in artifact.files)
        decoder = backend.load(artifact.path, 1, artifact.runtime_config)
        fidelity[weights] = measure_fidelity([bundle.full_logits(ids)], [ids], decoder)
    assert sizes[int4] < sizes["int8"] < sizes["fp32"]
    assert fidelity["fp32"].mean_kl < 1e-6
    assert fidelity["int8"].mean_kl < fidelity[int4].mean_kl < 0.05


def test_a16w8_is_an_integer_graph_calibrated_on_prefill_and_decode(decoders, tmp_path):
    """mobile-npu's decoders: int8 weights and int16 activations, ranges from the float model's prefill and decode
    on calibration text, run under LiteRT's reference kernels with the cache quantized at the interface."""
    from deploykit.backends.litert import activation_precisions
    from deploykit.generation.backends.base import DecoderExport, get_decoder_backend
    from deploykit.generation.metrics import measure_fidelity

    bundle = decoders["llama"]
    backend = get_decoder_backend("litert")
    texts = [json.loads(line)["text"] for line in SENTENCES.read_text().splitlines()[20:28]]
    calibration = tuple(tuple(bundle.encode(text)[:40]) for text in texts)
    ids = _ids(bundle, 64)
    sizes, fidelity = {}, {}
    for weights in ("fp32", "a16w8"):
        export = DecoderExport(weights=weights, cache_length=CACHE, prefill_length=16, calibration=calibration)
        bundle.write_saved_model(tmp_path / weights / "saved", CACHE, backend.signatures(export))
        artifact = backend.export(tmp_path / weights / "saved", export, tmp_path / weights / "out")
        sizes[weights] = artifact.path.stat().st_size
        decoder = backend.load(artifact.path, 1, artifact.runtime_config)
        fidelity[weights] = measure_fidelity([bundle.full_logits(ids)], [ids], decoder)
    activations = activation_precisions(artifact.path)
    assert activations["int16"]["byte_share"] > 0.6  # float is left to the position-only rotary angles
    assert "reference int16 kernels" in decoder.description
    assert sizes["a16w8"] < 0.6 * sizes["fp32"]
    assert fidelity["fp32"].mean_kl < 1e-6 and fidelity["a16w8"].mean_kl < 0.05
    with pytest.raises(DeployKitError, match="calibrate"):
        backend.export(tmp_path / "a16w8" / "saved", DecoderExport("a16w8", CACHE, 16), tmp_path / "none")


def test_an_export_in_a_child_process_writes_the_same_artifact(decoders, tmp_path):
    """Large models are exported in a child process (its memory goes back when it ends); the bytes are the same."""
    from deploykit.generation.backends.base import DecoderExport, export_in_child, get_decoder_backend

    bundle = decoders["llama"]
    backend = get_decoder_backend("litert")
    export = DecoderExport(weights="int8", cache_length=CACHE, prefill_length=16)
    bundle.write_saved_model(tmp_path / "saved", CACHE, backend.signatures(export))
    here = backend.export(tmp_path / "saved", export, tmp_path / "here")
    child = export_in_child("litert", tmp_path / "saved", export, tmp_path / "child")
    assert child.path.read_bytes() == here.path.read_bytes() and child.method == here.method
    with pytest.raises(DeployKitError, match="not available"):  # an error in the child is the same one-line error
        export_in_child("litert", tmp_path / "saved", DecoderExport("int3", CACHE, 16), tmp_path / "bad")


def test_nvidia_gpu_int8_and_int4_are_weight_only_qdq_that_tensorrt_takes(decoders, tmp_path):
    """Every MatMul weight and the token table int8 behind a DequantizeLinear with zero point 0 (TensorRT's only
    form), or the MatMul weights int4 in blocks (opset 21); float activations; validated under onnxruntime."""
    import onnx
    from onnx import TensorProto, numpy_helper

    from deploykit.generation.backends.base import DecoderExport, get_decoder_backend
    from deploykit.generation.metrics import measure_fidelity

    bundle = decoders["qwen"]
    backend = get_decoder_backend("tensorrt")
    ids = _ids(bundle, 64)
    sizes, fidelity, graphs = {}, {}, {}
    for weights in ("fp32", "int8", "int4"):
        export = DecoderExport(weights=weights, cache_length=CACHE, prefill_length=16, group_size=32)
        bundle.write_saved_model(tmp_path / weights / "saved", CACHE, backend.signatures(export))
        artifact = backend.export(tmp_path / weights / "saved", export, tmp_path / weights / "out")
        sizes[weights] = artifact.path.stat().st_size
        fidelity[weights] = measure_fidelity([bundle.full_logits(ids)], [ids], backend.load(artifact.path, 1))
        graphs[weights] = onnx.load(str(artifact.path)).graph
    for weights in ("int8", "int4"):
        graph = graphs[weights]
        initializers = {init.name: init for init in graph.initializer}
        dequantized = {node.output[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
        weight_inputs = [node.input[1] for node in graph.node
                         if node.op_type == "MatMul" and node.input[1] in dequantized]
        assert len(weight_inputs) >= 2 * 6  # the projections of both blocks (the rest: attention on activations)
        assert not [init.name for init in initializers.values() if init.data_type == TensorProto.FLOAT
                    and len(init.dims) == 2 and min(init.dims) >= 16]  # no float weight matrix is left
        for name in weight_inputs:
            node = dequantized[name]
            stored, zero = initializers[node.input[0]], numpy_helper.to_array(initializers[node.input[2]])
            assert stored.data_type == (TensorProto.INT8 if weights == "int8" else TensorProto.INT4)
            assert len(stored.raw_data) == -(-np.prod(stored.dims) // (1 if weights == "int8" else 2))
            assert not zero.any()
            blocks = [attribute.i for attribute in node.attribute if attribute.name == "block_size"]
            assert blocks == ([32] if weights == "int4" else [])
    assert sizes["int8"] < 0.4 * sizes["fp32"] and sizes["int4"] < sizes["int8"]  # the int8 token table dominates
    assert fidelity["int8"].mean_kl < 1e-4 and fidelity["int8"].top1_agreement > 0.9
    assert fidelity["int8"].mean_kl < fidelity["int4"].mean_kl < 0.05 and fidelity["int4"].top1_agreement > 0.7


def test_bounded_softmax_masks_give_keras_probabilities():
    """Masked scores traced at the row's lowest minus a margin (an integer graph can then resolve the scores)
    give the probabilities Keras' -1e9 gives."""
    import keras

    from deploykit.generation.decoder import bounded_softmax_masks

    scores = np.random.default_rng(0).normal(size=(1, 2, 4, 6)).astype("float32") * 8
    mask = np.tril(np.ones((4, 6), bool), 2)[None, None]
    layer = keras.layers.Softmax(axis=-1)
    expected = np.asarray(layer(scores, mask=mask))
    with bounded_softmax_masks():
        bounded = np.asarray(layer(scores, mask=mask))
    np.testing.assert_allclose(bounded, expected, atol=1e-7)
    assert np.asarray(layer(scores, mask=mask)).tolist() == expected.tolist()  # put back after


def test_metrics_score_a_perturbed_model_worse():
    from deploykit.generation.metrics import next_token_scores

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(30, 50)).astype(np.float32) * 3
    ids = [int(i) for i in reference.argmax(-1)]
    ids = [0, *ids[:-1]]  # each next token is the reference's top choice
    same = next_token_scores(reference, reference, ids)
    noisy = next_token_scores(reference, reference + rng.normal(size=reference.shape) * 2, ids)
    assert same["agree"].all() and np.allclose(same["kl"], 0)
    assert noisy["agree"].mean() < 1 and noisy["kl"].mean() > 0.1
    assert noisy["candidate_nll"].mean() > same["candidate_nll"].mean()


def test_build_generate_and_verify_through_the_cli(llama_file, tmp_path):
    out = tmp_path / "dist"
    result = CliRunner().invoke(main, ["build", str(llama_file), "--target", "arm-cpu,intel-cpu,mobile-npu,nvidia-gpu",
                                       "--out", str(out), "--cache-length", "128", "--prefill-length", "16", "--runs",
                                       "3", "--min-top1-agreement", "0"])
    assert result.exit_code == 0, result.output
    engine = json.loads((out / "nvidia-gpu" / "report.json").read_text())["device_compile"]
    assert engine["status"] in ("not run", "compiled") and "build_engine.sh" in engine["files"]
    assert "--minShapes=tokens:1x1" in engine["command"] and "--maxShapes=tokens:1x128" in engine["command"]
    for target, weights in (("arm-cpu", "int4"), ("intel-cpu", "int4"), ("mobile-npu", "a16w8"), ("nvidia-gpu", "int4")):
        report = json.loads((out / target / "report.json").read_text())
        assert report["task"] == "generation" and report["artifact"]["weights"].startswith(weights)
        assert report["passed"] and report["candidates"][-1]["gates_failed"] == []
        assert report["fidelity"]["perplexity_ratio"] < 1.10
        assert report["fidelity"]["greedy_tokens"] == 16 and len(report["fidelity"]["first_divergence"]) == 4
        timing = report["timing"]["artifacts"]
        assert set(timing) == {"artifact", "fp32"} and "speedup" in timing["artifact"]["decode_tokens_per_s@64"]
        assert timing["artifact"]["ttft_ms@32"]["median"] > 0
        memory = report["timing"]["memory"]
        assert set(memory) == {"artifact", "fp32"}
        assert 0 < memory["artifact"]["model_mb"] < memory["artifact"]["peak_rss_mb"]
        assert (out / target / "tokenizer.json").is_file()
    generated = CliRunner().invoke(main, ["generate", str(out / "arm-cpu"), "The team", "-n", "8"])
    assert generated.exit_code == 0, generated.output
    assert generated.output.strip()
    import deploykit as dk  # the Python API streams the same greedy text

    assert "".join(dk.generate(out / "arm-cpu", "The team", max_new_tokens=8)) == generated.output.rstrip("\n")
    with pytest.raises(DeployKitError, match="cache of 128"):
        dk.generate(out / "arm-cpu", "word " * 200)
    verified = CliRunner().invoke(main, ["verify", str(out)])
    assert verified.exit_code == 0, verified.output
    assert "decoder ran" in verified.output
    # A prompt longer than the cache: one line, exit 2.
    long_prompt = CliRunner().invoke(main, ["generate", str(out / "arm-cpu"), "word " * 200, "-n", "4"])
    assert long_prompt.exit_code == 2 and "cache of 128" in long_prompt.output
    # A changed artifact is refused before it is loaded.
    model = out / "arm-cpu" / "model.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    tampered = CliRunner().invoke(main, ["generate", str(out / "arm-cpu"), "The team"])
    assert tampered.exit_code == 2 and "does not match its manifest" in tampered.output


@pytest.mark.parametrize("arguments,message", [
    (["--target", "edge-tpu"], "does not run generative decoders"),
    (["--task", "embedding"], "--task applies to encoder builds"),
    (["--cache-length", "4096"], "more than"),
])
def test_bad_decoder_builds_are_one_line_errors(llama_file, tmp_path, arguments, message):
    result = CliRunner().invoke(main, ["build", str(llama_file), "--out", str(tmp_path / "dist"), *arguments])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and message in error[0]
    assert not (tmp_path / "dist").exists()  # refused before any work


def test_a_keras_file_that_is_no_causal_lm_is_refused(tmp_path, tokenizer_json):
    import keras

    from deploykit.generation.loaders import is_decoder_source, load_decoder

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "plain.keras")
    (tmp_path / "tokenizer.json").write_text(tokenizer_json)
    assert not is_decoder_source(tmp_path / "plain.keras")
    with pytest.raises(DeployKitError, match="not a keras-hub CausalLM"):
        load_decoder(tmp_path / "plain.keras")


def test_a_missed_gate_exits_3_with_the_candidates_reported_and_nothing_shipped(llama_file, tmp_path):
    out = tmp_path / "dist"
    result = CliRunner().invoke(main, ["build", str(llama_file), "--target", "arm-cpu", "--out", str(out),
                                       "--cache-length", "128", "--prefill-length", "16", "--weights", "int4-dynamic",
                                       "--max-perplexity-ratio", "1", "--min-top1-agreement", "1"])
    assert result.exit_code == 3, result.output
    report = json.loads((out / "arm-cpu" / "report.json").read_text())
    assert report["passed"] is False and report["candidates"][0]["gates_failed"]
    assert "nothing was shipped" in (out / "arm-cpu" / "report.md").read_text()
    assert not list((out / "arm-cpu").glob("*.tflite"))


def test_a_tied_lm_head_is_stored_once_in_litert(tokenizer_json, tmp_path):
    """ai-edge-quantizer quantizes the token table and the tied LM head apart; the export keeps one copy."""
    import keras
    import keras_hub
    from tokenizers import Tokenizer

    from deploykit.generation.backends.base import DecoderExport, get_decoder_backend
    from deploykit.generation.decoder import DecoderBundle

    keras.utils.set_random_seed(0)
    vocabulary = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    backbone = keras_hub.models.LlamaBackbone(vocabulary_size=vocabulary, num_layers=1, num_query_heads=2,
                                              num_key_value_heads=1, hidden_dim=64, intermediate_dim=128,
                                              tie_word_embeddings=True)
    bundle = DecoderBundle(keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None), tokenizer_json,
                           "tied", 512)
    backend = get_decoder_backend("litert")
    export = DecoderExport(weights="int8", cache_length=CACHE, prefill_length=16)
    bundle.write_saved_model(tmp_path / "saved", CACHE, backend.signatures(export))
    artifact = backend.export(tmp_path / "saved", export, tmp_path / "out")
    assert "held twice" in artifact.method
    decoder = backend.load(artifact.path, 1)
    ids = _ids(bundle, 20)
    np.testing.assert_allclose(decoder.prefill(ids)[0], bundle.full_logits(ids), atol=0.05)
