"""A llama.cpp GGUF file as the Hugging Face causal-LM folder that keras-hub's Transformers converters load.

GGUF keeps quantized weights in llama.cpp's layout and the tokenizer as metadata; keras-hub reads config.json,
model.safetensors, tokenizer.json and tokenizer_config.json. The weights are dequantized to float32 (deploykit
compresses again for each target) and llama.cpp's RoPE permutation of the llama q/k projections is undone. A GGUF
file is untrusted input: its header is walked with explicit bounds first, because gguf's reader believes every
count it reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import struct
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from deploykit.errors import DeployKitError, quoted
from deploykit.generation.gguf_metadata import count, value
from deploykit.generation.gguf_tokenizer import tokenizer_files

_MAX_TENSORS = _MAX_FIELDS = 1 << 16
_MAX_NAME = 1 << 10
_MAX_STRING = 1 << 20  # a chat template is kilobytes; a token a few bytes
_MAX_ARRAY_ITEMS = 1 << 22  # in all metadata arrays together: a 262k-token vocabulary with its merges fits
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_ELEMENTS = 1 << 40
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes

# GGUF architecture -> (config.json model_type, architectures[0]); both read by keras-hub's preset loader.
_ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM"),
                  "gemma3": ("gemma3_text", "Gemma3ForCausalLM")}
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Gemma 3 normalizes before and after both attention and the feed-forward block, and the queries and keys per head.
_GEMMA3_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight", "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight", "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
}
# keras-hub's Gemma 3 layers (like llama.cpp's) hard-code what GGUF does not store: every sixth layer attends to the
# whole context with RoPE base 1e6, the others to a sliding window with base 1e4.
_GEMMA3_GLOBAL_EVERY = 6
_GEMMA3_ROPE_BASES = (10_000.0, 1_000_000.0)
_QWEN2_BIASES = {"attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
                 "attn_v.bias": "self_attn.v_proj.bias"}

def gguf_to_hugging_face(path: Path, folder: Path) -> dict:
    """Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json for the GGUF file at `path`
    into `folder`; return provenance: {"format": "gguf", "architecture", "file_type" (e.g. "MOSTLY_Q4_1"),
    "tensor_types" ({"Q4_1": n, "F32": m, ...}), "parameters", "sha256" of the GGUF file}.

    Everything is read and checked before the first file is written, so a rejected file leaves `folder` as it was.
    """
    path = Path(path)
    _check_layout(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as error:
        raise _invalid(path, quoted(str(error), plain=True)) from None
    architecture = value(reader, "general.architecture", str)
    if architecture not in _ARCHITECTURES:
        raise DeployKitError(f"GGUF architecture {quoted(architecture)} is not supported; deploykit converts "
                             f"{', '.join(_ARCHITECTURES)}")
    config = _config(reader, architecture)
    tokenizer, tokenizer_config = tokenizer_files(reader, config)
    weights = _weights(reader, config)
    config["tie_word_embeddings"] = "lm_head.weight" not in weights

    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    tokenizer.save(str(folder / "tokenizer.json"))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return {
        "format": "gguf", "architecture": architecture, "file_type": _file_type(reader),
        "tensor_types": dict(Counter(tensor.tensor_type.name for tensor in reader.tensors)),
        "parameters": sum(int(weight.size) for weight in weights.values()), "sha256": digest,
        "context_length": config["max_position_embeddings"],
    }


def _file_type(reader: gguf.GGUFReader) -> str:
    """general.file_type by llama.cpp's name for it (the predominant quantization), "UNKNOWN" when absent or new."""
    try:
        return LlamaFileType(value(reader, "general.file_type", int)).name
    except (DeployKitError, ValueError):
        return "UNKNOWN"


def _invalid(path: Path, why: str) -> DeployKitError:
    return DeployKitError(f"{quoted(str(path))} is not a GGUF file deploykit can read: {why}")


@dataclass
class _Cursor:
    """Little-endian values from the file's bytes, refusing to step past the end of the file."""

    data: mmap.mmap
    path: Path
    pos: int = 0

    def skip(self, count: int) -> None:
        if count > len(self.data) - self.pos:
            raise _invalid(self.path, "it ends inside its header (truncated?)")
        self.pos += count

    def take(self, fmt: str) -> int:
        start = self.pos
        self.skip(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.data, start)[0]

    def string(self, limit: int) -> bytes:
        length = self.take("<Q")
        if length > limit:
            raise _invalid(self.path, f"a string of {length} bytes in its header (at most {limit} expected)")
        start = self.pos
        self.skip(length)
        return self.data[start:self.pos]


def _check_layout(path: Path) -> None:
    """Walk the header with explicit bounds: gguf's reader believes the counts it reads (an array of 2**60 numbers
    past the end of the file keeps it looping), and reads a tensor that runs past the end of the file as short."""
    try:
        size = path.stat().st_size
        if size < 24:
            raise _invalid(path, f"it has only {size} bytes")
        file = path.open("rb")
    except OSError as error:
        raise DeployKitError(f"cannot read {quoted(str(path))}: {error.strerror}") from None
    with file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data, path)
        if data[:4] != b"GGUF":
            raise _invalid(path, "it does not start with the GGUF magic number")
        cursor.skip(4)
        version = cursor.take("<I")
        if version not in (2, 3):
            raise _invalid(path, f"version {version} (deploykit reads little-endian GGUF versions 2 and 3)")
        tensors, fields = cursor.take("<Q"), cursor.take("<Q")
        if tensors > _MAX_TENSORS or fields > _MAX_FIELDS:
            raise _invalid(path, f"it declares {tensors} tensors and {fields} metadata fields")
        budget, alignment = _MAX_ARRAY_ITEMS, gguf.GGUF_DEFAULT_ALIGNMENT
        for _ in range(fields):
            key, kind = cursor.string(_MAX_NAME), cursor.take("<I")
            if key == b"general.alignment" and kind == GGUFValueType.UINT32:
                alignment = cursor.take("<I")
            else:
                budget = _skip_value(cursor, kind, budget)
        infos = []
        for _ in range(tensors):
            name = cursor.string(_MAX_NAME).decode("utf-8", "replace")
            n_dims = cursor.take("<I")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise _invalid(path, f"tensor {quoted(name)} has {n_dims} dimensions")
            dims = [cursor.take("<Q") for _ in range(n_dims)]
            infos.append((name, dims, cursor.take("<I"), cursor.take("<Q")))
        if alignment == 0 or alignment & (alignment - 1):
            raise _invalid(path, f"alignment {alignment} is not a power of two")
        start = -(-cursor.pos // alignment) * alignment
        for name, dims, type_id, offset in infos:
            try:
                qtype = GGMLQuantizationType(type_id)
            except ValueError:
                raise _invalid(path, f"tensor {quoted(name)} has unknown type id {type_id}") from None
            if qtype not in _dequantizable():  # refused now, not after a minute of dequantizing the others
                raise DeployKitError(
                    f"GGUF tensor {quoted(name)} has quantization type {qtype.name}, which deploykit cannot "
                    f"dequantize; supported: {', '.join(supported.name for supported in _dequantizable())}")
            block, type_size = GGML_QUANT_SIZES[qtype]
            if min(dims) < 1 or math.prod(dims) > _MAX_ELEMENTS or dims[0] % block:
                raise _invalid(path, f"tensor {quoted(name)} has shape {dims}")
            if start + offset + math.prod(dims) // block * type_size > size:
                raise _invalid(path, f"tensor {quoted(name)} runs past the end of the file (truncated?)")


def _skip_value(cursor: _Cursor, kind: int, budget: int) -> int:
    """Step over one metadata value; return what is left of the array-item budget."""
    if kind in _SCALAR_SIZES:
        cursor.skip(_SCALAR_SIZES[kind])
    elif kind == GGUFValueType.STRING:
        cursor.string(_MAX_STRING)
    elif kind == GGUFValueType.ARRAY:
        item, count = cursor.take("<I"), cursor.take("<Q")
        if count > budget:
            raise _invalid(cursor.path, f"its metadata arrays hold more than {_MAX_ARRAY_ITEMS} items")
        budget -= count
        if item in _SCALAR_SIZES:
            cursor.skip(count * _SCALAR_SIZES[item])
        elif item == GGUFValueType.STRING:
            for _ in range(count):
                cursor.string(_MAX_STRING)
        else:
            raise _invalid(cursor.path, f"a metadata array of value type {item}")
    else:
        raise _invalid(cursor.path, f"a metadata value of unknown type {kind}")
    return budget


@cache
def _dequantizable() -> tuple[GGMLQuantizationType, ...]:
    """The types gguf.quants.dequantize implements, found by dequantizing one zero block of each."""
    found = []
    for qtype in GGMLQuantizationType:
        try:
            gguf.quants.dequantize(np.zeros(GGML_QUANT_SIZES[qtype][1], np.uint8), qtype)
        except NotImplementedError:
            continue
        found.append(qtype)
    return tuple(found)


def _config(reader: gguf.GGUFReader, architecture: str) -> dict:
    """config.json from the GGUF hyperparameters, checked for the shapes keras-hub's decoder layers take."""
    prefix = f"{architecture}."
    hidden, heads = count(reader, prefix + "embedding_length"), count(reader, prefix + "attention.head_count")
    kv_heads = count(reader, prefix + "attention.head_count_kv")
    head_dim = value(reader, prefix + "attention.key_length", int, hidden // heads)
    gemma = architecture == "gemma3"  # the only one whose head size is not hidden / heads
    if not 1 <= head_dim <= 1 << 12 or heads % kv_heads or head_dim % 2 or (not gemma and head_dim * heads != hidden):
        raise DeployKitError(f"GGUF attention shape {hidden=} {heads=} {kv_heads=} {head_dim=} is not one deploykit "
                             "converts")
    for key in ("rope.dimension_count", "attention.value_length"):
        if value(reader, prefix + key, int, head_dim) != head_dim:
            raise DeployKitError(f"GGUF metadata {prefix + key} differs from the head size {head_dim}; not supported")
    scaling = value(reader, prefix + "rope.scaling.type", str, "none")
    if scaling != "none" and not (gemma and scaling == "linear"):
        raise DeployKitError(f"GGUF RoPE scaling {quoted(scaling)} is not supported; deploykit converts plain RoPE, "
                             "Llama 3's rope_freqs and Gemma 3's linear scaling")
    model_type, hf_class = _ARCHITECTURES[architecture]
    context = count(reader, prefix + "context_length", 1 << 24)
    theta = _float32(value(reader, prefix + "rope.freq_base", float, 10000.0))
    layers = count(reader, prefix + "block_count", 1 << 12)
    config = {
        "architectures": [hf_class], "model_type": model_type,
        "hidden_size": hidden, "intermediate_size": count(reader, prefix + "feed_forward_length"),
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "hidden_act": "silu", "max_position_embeddings": context,
        "rms_norm_eps": _float32(value(reader, prefix + "attention.layer_norm_rms_epsilon", float)),
        "rope_theta": theta, "rope_scaling": _rope_scaling(reader, theta, head_dim),
        "torch_dtype": "float32",
    }
    if architecture == "qwen2":
        config.update(use_sliding_window=False, sliding_window=context, max_window_layers=layers)
    elif gemma:
        config.update(_gemma3_config(reader, prefix, layers, theta, hidden // heads, head_dim))
    else:
        config.update(attention_bias=False, mlp_bias=False)
    return config


def _gemma3_config(reader: gguf.GGUFReader, prefix: str, layers: int, theta: float, hidden_per_head: int,
                   head_dim: int) -> dict:
    """Gemma 3's own config.json keys. The query scale is not in GGUF: llama.cpp scales by the head size except in
    the 27B model (62 layers), which scales by hidden / heads, and so does this."""
    local_theta = _float32(value(reader, prefix + "rope.freq_base_swa", float, _GEMMA3_ROPE_BASES[0]))
    if (local_theta, theta) != _GEMMA3_ROPE_BASES:
        raise DeployKitError(f"GGUF Gemma 3 RoPE bases {local_theta:g} (local) and {theta:g} (global) differ from "
                             f"the {_GEMMA3_ROPE_BASES[0]:g} and {_GEMMA3_ROPE_BASES[1]:g} keras-hub's Gemma 3 uses")
    factor = value(reader, prefix + "rope.scaling.factor", float, 1.0)
    window = count(reader, prefix + "attention.sliding_window", 1 << 24)
    types = ["full_attention" if (layer + 1) % _GEMMA3_GLOBAL_EVERY == 0 else "sliding_attention"
             for layer in range(layers)]
    pattern = reader.fields.get(prefix + "attention.sliding_window_pattern")
    if pattern is not None and pattern.contents() not in (_GEMMA3_GLOBAL_EVERY, [kind == "sliding_attention"
                                                                                for kind in types]):
        raise DeployKitError(f"GGUF Gemma 3 attends globally in other layers than every {_GEMMA3_GLOBAL_EVERY}th, "
                             "the pattern keras-hub's Gemma 3 is built with; not supported")
    return {
        "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": hidden_per_head if layers == 62 else head_dim,
        "sliding_window": window, "layer_types": types, "rope_local_base_freq": local_theta,
        "rope_scaling": {"rope_type": "linear", "factor": factor} if factor != 1.0 else None,
        "attn_logit_softcapping": None, "final_logit_softcapping": None, "attention_bias": False,
    }


def _float32(number: float) -> float:
    """A GGUF float32 as its shortest decimal (1e-05, not 9.999999747378752e-06), as the HF config had it."""
    return float(str(np.float32(number)))


def _rope_scaling(reader: gguf.GGUFReader, theta: float, head_dim: int) -> dict | None:
    """llama.cpp stores Llama 3.1's RoPE scaling as per-frequency factors (rope_freqs.weight), not as HF's four
    numbers: recover them under the defaults llama.cpp's converter assumes, and check they give the file's factors."""
    tensor = next((tensor for tensor in reader.tensors if tensor.name == "rope_freqs.weight"), None)
    if tensor is None:
        return None
    factors = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64).ravel()
    factor, low, high, original = float(factors.max()), 1.0, 4.0, 8192
    wavelength = 2 * np.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    smooth = (original / wavelength - low) / (high - low)
    middle = 1 / ((1 - smooth) / factor + smooth)
    expected = np.where(wavelength < original / high, 1.0, np.where(wavelength > original / low, factor, middle))
    if factors.shape != expected.shape or not np.allclose(factors, expected, rtol=1e-3):
        raise DeployKitError("GGUF rope_freqs.weight holds RoPE factors other than Llama 3's; not supported")
    if factor == 1.0:
        return None
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": original}


def _hf_shapes(config: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """GGUF tensor name -> (HF weight key, HF shape) for every tensor keras-hub's converter may read."""
    hidden, head_dim, ffn = config["hidden_size"], config["head_dim"], config["intermediate_size"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    table = {"token_embd.weight": ("model.embed_tokens.weight", (config["vocab_size"], hidden)),
             "output.weight": ("lm_head.weight", (config["vocab_size"], hidden)),
             "output_norm.weight": ("model.norm.weight", (hidden,))}
    shapes = {
        "attn_norm.weight": (hidden,), "ffn_norm.weight": (hidden,), "attn_q.weight": (q, hidden),
        "attn_k.weight": (kv, hidden), "attn_v.weight": (kv, hidden), "attn_output.weight": (hidden, q),
        "ffn_gate.weight": (ffn, hidden), "ffn_up.weight": (ffn, hidden), "ffn_down.weight": (hidden, ffn),
        "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,),
    }
    shapes.update({"attn_q_norm.weight": (head_dim,), "attn_k_norm.weight": (head_dim,),
                   "post_attention_norm.weight": (hidden,), "post_ffw_norm.weight": (hidden,)})
    names = _LAYER_TENSORS | {"qwen2": _QWEN2_BIASES, "gemma3_text": _GEMMA3_TENSORS}.get(config["model_type"], {})
    for layer in range(config["num_hidden_layers"]):
        for name, hf_name in names.items():
            table[f"blk.{layer}.{name}"] = (f"model.layers.{layer}.{hf_name}", shapes[name])
    return table


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Invert llama.cpp's LlamaModel.permute: it interleaves each head's two rotary halves (ggml's llama RoPE rotates
    adjacent pairs), while keras-hub, like HF, rotates the first half of each head against the second."""
    pairs = weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:])
    return pairs.swapaxes(1, 2).reshape(weight.shape)


def _weights(reader: gguf.GGUFReader, config: dict) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32 under its HF key, in HF's (out, in) layout."""
    table = _hf_shapes(config)
    heads = {"attn_q.weight": config["num_attention_heads"], "attn_k.weight": config["num_key_value_heads"]}
    weights = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight" and config["model_type"] == "llama":
            continue  # read into config.json's rope_scaling
        if tensor.name not in table:
            raise DeployKitError(f"GGUF tensor {quoted(tensor.name)} has no place in a {config['model_type']} model")
        key, shape = table[tensor.name]
        if tuple(int(dim) for dim in reversed(tensor.shape)) != shape:  # GGUF lists dimensions innermost first
            raise DeployKitError(f"GGUF tensor {quoted(tensor.name)} has shape {tensor.shape.tolist()}, "
                                 f"not {list(reversed(shape))}")
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        suffix = tensor.name.split(".", 2)[-1]
        if config["model_type"] == "llama" and suffix in heads:
            weight = _unpermute(weight, heads[suffix])
        if config["model_type"] == "gemma3_text" and tensor.name.endswith("norm.weight"):
            weight = weight - 1  # llama.cpp stores Gemma's RMS norm scales as 1 + w (its norm multiplies by w)
        if not np.isfinite(weight).all():
            raise DeployKitError(f"GGUF tensor {quoted(tensor.name)} holds NaN or infinite values")
        weights[key] = np.ascontiguousarray(weight, dtype=np.float32)
    missing = [key for key, _ in table.values() if key not in weights and key != "lm_head.weight"]
    if missing:
        raise DeployKitError(f"GGUF file lacks {len(missing)} tensors deploykit needs, e.g. {quoted(missing[0])}")
    return weights
