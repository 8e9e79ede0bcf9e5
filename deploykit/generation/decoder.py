"""DecoderBundle: a keras-hub causal LM, its tokenizer.json and provenance, and the one step every artifact exports.

Every decoder artifact computes the same function, `step(tokens, cache, index) -> (logits, new_kv)`: the tokens
[1, T] at positions index..index+T-1 attend to the cache's first index positions and to each other; `new_kv` are
their keys and values, which the caller writes into its cache at index (only those T positions leave the model,
not the whole cache: at a 512-token cache that is 46 KB per decode step instead of 24 MB for SmolLM2). Prefill is a step with T = the prompt (or a chunk of it), decode a
step with T = 1. The cache is one float tensor [1, layers, 2 (key, value), cache length, kv heads, head dim],
whatever the architecture keeps internally, so one runner, one set of gates and one profiler serve them all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from deploykit import runtime_env  # noqa: F401  (sets the Keras backend before keras is imported)
from deploykit.errors import DeployKitError

STEP_INPUTS = ("tokens", "cache", "index")
STEP_OUTPUTS = ("logits", "new_kv")
# End-of-text and end-of-turn tokens of the common decoder vocabularies: generation stops at whichever exist.
STOP_TOKENS = ("<|endoftext|>", "<|im_end|>", "</s>", "<eos>", "<end_of_turn>", "<|eot_id|>", "<|end_of_text|>")


@dataclass
class DecoderBundle:
    """A generative decoder ready for deployment: the Keras causal LM and the tokenizer.json it ships with."""

    causal_lm: object  # a keras_hub.models.CausalLM (its call_with_cache is the step)
    tokenizer_json: str  # Hugging Face tokenizers' JSON, copied next to every artifact
    source: str
    max_sequence_length: int
    details: dict = field(default_factory=dict)  # architecture, parameters, and for GGUF how the source was quantized

    task = "generation"

    @cached_property
    def tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.tokenizer_json)

    @property
    def backbone(self):
        return self.causal_lm.backbone

    @property
    def architecture(self) -> str:
        return str(self.details.get("architecture", type(self.backbone).__name__))

    def cache_shape(self, cache_length: int) -> tuple[int, ...]:
        backbone = self.backbone
        kv_heads = getattr(backbone, "num_key_value_heads", None) or backbone.num_heads
        query_heads = getattr(backbone, "num_query_heads", None) or backbone.num_heads
        head_dim = getattr(backbone, "head_dim", None) or backbone.hidden_dim // query_heads
        return (1, backbone.num_layers, 2, cache_length, kv_heads, head_dim)

    def stop_ids(self) -> list[int]:
        vocabulary = self.tokenizer.get_vocab()
        return sorted(vocabulary[token] for token in STOP_TOKENS if token in vocabulary)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as the shipped tokenizer.json makes them (with its BOS token where it adds one)."""
        return list(self.tokenizer.encode(text).ids)

    def step(self, tokens, cache, index):
        """One cached step on the Keras model (eager or traced): logits [1, T, vocab] and the updated cache."""
        from keras import ops

        lm = self.causal_lm
        if _per_layer_cache(lm):
            layers = tuple((cache[:, i, 0], cache[:, i, 1]) for i in range(self.backbone.num_layers))
            logits, _, updated = lm.call_with_cache(tokens, layers, index)
            return logits, ops.stack([ops.stack(pair, axis=1) for pair in updated], axis=1)
        logits, _, updated = lm.call_with_cache(tokens, cache, index)
        return logits, updated

    def full_logits(self, token_ids: list[int]) -> np.ndarray:
        """Logits [T, vocab] of the whole sequence in one uncached forward pass: "the original" gates compare with."""
        self.check_length(len(token_ids))
        ids = np.asarray([token_ids], dtype=np.int32)
        outputs = self.causal_lm({"token_ids": ids, "padding_mask": np.ones_like(ids)}, training=False)
        return np.asarray(outputs, dtype=np.float32)[0]

    def loaded(self, cache_length: int):
        """The Keras model itself as a LoadedDecoder: the original's greedy continuations come from it."""
        import tensorflow as tf

        from deploykit.generation.runtime import LoadedDecoder

        shape = self.cache_shape(cache_length)

        @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32), tf.TensorSpec(shape, tf.float32),
                                      tf.TensorSpec([], tf.int32)], reduce_retracing=True)
        def traced(tokens, cache, index):
            return self.step(tokens, cache, index)

        def step(tokens, cache, index):
            logits, updated = traced(tokens, cache, np.int32(index))
            return logits.numpy(), updated.numpy()[:, :, :, index:index + tokens.shape[1]]

        return LoadedDecoder(step, shape, None, "Keras (TensorFlow), float32: the original")

    def check_length(self, length: int) -> None:
        if length > self.max_sequence_length:
            raise DeployKitError(
                f"{length} tokens are more than {self.source} was trained on ({self.max_sequence_length}); "
                "pass shorter texts or a smaller --cache-length."
            )

    def write_saved_model(self, folder: Path, cache_length: int, lengths: dict[str, int | None]) -> None:
        """The step as a TF SavedModel with one signature per entry of `lengths` (name -> tokens per call; None:
        any), the common input of every decoder exporter. Cache writes are traced as gather + select, which every
        converter maps (OpenVINO has no XlaDynamicUpdateSlice, keras' TF lowering of slice_update)."""
        import tensorflow as tf
        from keras.export import ExportArchive

        self.check_length(cache_length)
        for name, length in lengths.items():
            if length and cache_length % length:
                raise DeployKitError(f"the cache length {cache_length} is not a multiple of the prefill length {length}"
                                     "; pass a --cache-length that is (prefill chunks must end inside the cache).")
        archive = ExportArchive()
        archive.track(self.causal_lm)
        cache_spec = tf.TensorSpec(self.cache_shape(cache_length), tf.float32, name="cache")

        def serve(tokens, cache, index):
            from keras import ops

            logits, updated = self.step(tokens, cache, index)
            shape = list(self.cache_shape(cache_length))
            shape[3] = ops.shape(tokens)[1]
            return {"logits": logits, "new_kv": ops.slice(updated, (0, 0, 0, index, 0, 0), shape)}

        with portable_cache_updates(), projections_as_matmuls(), bounded_softmax_masks(), integer_causal_masks():
            for name, length in lengths.items():
                specs = [tf.TensorSpec([1, length], tf.int32, name="tokens"), cache_spec,
                         tf.TensorSpec([], tf.int32, name="index")]
                archive.add_endpoint(name, serve, input_signature=specs)
            archive.write_out(str(folder), verbose=False)

    def write_tokenizer(self, folder: Path) -> Path:
        path = folder / "tokenizer.json"
        path.write_text(self.tokenizer_json, encoding="utf-8")
        return path

    def describe(self) -> dict:
        return {"task": self.task, "architecture": self.architecture, "source": self.source,
                "max_sequence_length": self.max_sequence_length, **self.details}


def _per_layer_cache(lm) -> bool:
    """Gemma 3 keeps a (key, value) tuple per layer; the other keras-hub decoders one stacked tensor."""
    return type(lm).__name__.startswith("Gemma3")


def portable_slice_update(inputs, start_indices, updates):
    """keras.ops.slice_update written with arange, gather and where: the same values, in ops every exporter maps."""
    from keras import ops

    result, inside = updates, None
    rank = len(inputs.shape)
    for axis, start in enumerate(start_indices):
        size = inputs.shape[axis]
        if isinstance(start, int) and start == 0 and size is not None and size == updates.shape[axis]:
            continue
        count = ops.shape(updates)[axis]
        offsets = ops.arange(size, dtype="int32") - ops.cast(start, "int32")
        written = ops.logical_and(offsets >= 0, offsets < count)
        result = ops.take(result, ops.clip(offsets, 0, count - 1), axis=axis)
        shape = [1] * rank
        shape[axis] = size
        written = ops.reshape(written, shape)
        inside = written if inside is None else ops.logical_and(inside, written)
    return result if inside is None else ops.where(inside, result, inputs)


# How far below a row's lowest attention score its masked positions go: e^-30 (1e-13) is under float32's
# resolution next to the row's largest probability, so the softmax is the same as with Keras' -1e9.
MASK_MARGIN = 30.0


@contextlib.contextmanager
def bounded_softmax_masks():
    """Trace Keras' masked softmax with masked scores at the row's lowest score minus MASK_MARGIN instead of -1e9.

    Same probabilities in float; but an integer graph gives each tensor one scale over its range, and -1e9 in the
    attention scores would leave an int16 step of 30,000 for scores that span tens."""
    import keras
    from keras import ops

    original = keras.layers.Softmax.call

    def call(self, inputs, mask=None):
        if mask is None:
            return original(self, inputs)
        keep = mask if mask.dtype == "bool" else ops.greater(mask, 0.5)
        lowest = ops.min(inputs, axis=self.axis, keepdims=True)
        return original(self, ops.where(keep, inputs, lowest - MASK_MARGIN))

    keras.layers.Softmax.call = call
    try:
        yield
    finally:
        keras.layers.Softmax.call = original


def integer_causal_mask(batch_size, input_length, output_length, cache_index=0):
    """keras-hub's causal mask with the positions compared as int32 (keras-hub compares float32 aranges)."""
    from keras import ops

    query = ops.expand_dims(ops.arange(output_length, dtype="int32") + ops.cast(cache_index, "int32"), axis=1)
    mask = ops.expand_dims(query >= ops.arange(input_length, dtype="int32"), axis=0)
    return ops.broadcast_to(mask, (batch_size, output_length, input_length))


@contextlib.contextmanager
def integer_causal_masks():
    """Trace keras-hub's causal masks with integer positions: same mask in float, but a full-integer graph gives
    float32 positions an int16 scale each, and `query >= key` then fails on the diagonal (SmolLM2 at a16w8: tokens
    that could not see themselves, perplexity ratio 658). Integer tensors are never quantized."""
    import sys

    from keras_hub.src.layers.modeling import transformer_layer_utils

    original = transformer_layer_utils.compute_causal_mask
    users = [module for name, module in list(sys.modules.items()) if name.startswith("keras_hub.")
             and getattr(module, "compute_causal_mask", None) is original]
    for module in users:
        module.compute_causal_mask = integer_causal_mask
    try:
        yield
    finally:
        for module in users:
            module.compute_causal_mask = original


@contextlib.contextmanager
def portable_cache_updates():
    """Trace keras-hub's cache writes with `portable_slice_update` (they call keras.ops.slice_update)."""
    import keras

    original = keras.ops.slice_update
    keras.ops.slice_update = portable_slice_update
    try:
        yield
    finally:
        keras.ops.slice_update = original


def _matmul_form(equation: str) -> tuple[int, int] | None:
    """(contracted axes, kernel output axes) when `equation` is a dense projection: the input's trailing axes
    contract with the kernel's leading ones and the output is the input's other axes then the kernel's. None
    otherwise."""
    inputs, output = equation.replace(" ", "").split("->")
    left, _, kernel = inputs.partition(",")
    contracted = [axis for axis in left if axis in kernel and axis not in output]
    count = len(contracted)
    if not kernel or not count or left[len(left) - count:] != kernel[:count]:
        return None
    if output != left[:len(left) - count] + kernel[count:]:
        return None
    return count, len(kernel) - count


@contextlib.contextmanager
def projections_as_matmuls():
    """Trace Keras EinsumDense projections as reshape + MatMul. keras-hub writes attention's query, key, value and
    output projections as einsums; OpenVINO keeps those as Einsum ops, which NNCF's weight compression skips (on
    SmolLM2 the attention weights stayed float32, about 100 of 218 MB of an "int8" IR). A MatMul it compresses."""
    import keras
    from keras.src import ops as keras_ops

    original = keras_ops.einsum

    def einsum(equation, *operands, **kwargs):
        form = _matmul_form(equation) if len(operands) == 2 and not kwargs else None
        inputs, kernel = operands if len(operands) == 2 else (None, None)
        if form is None or not isinstance(kernel, keras.Variable):
            return original(equation, *operands, **kwargs)
        contracted, kept = form
        kernel_shape = tuple(kernel.shape)
        depth = int(np.prod(kernel_shape[:contracted]))
        width = int(np.prod(kernel_shape[contracted:]))
        leading = keras.ops.shape(inputs)[:len(inputs.shape) - contracted]
        flat = keras.ops.reshape(inputs, (-1, depth))
        product = keras.ops.matmul(flat, keras.ops.reshape(kernel, (depth, width)))
        return keras.ops.reshape(product, (*leading, *kernel_shape[contracted:]))

    keras_ops.einsum = einsum
    try:
        yield
    finally:
        keras_ops.einsum = original


def read_tokenizer_json(path: Path, limit_bytes: int = 64 << 20) -> str:
    """A tokenizer.json, checked to be one that Hugging Face tokenizers can load."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise DeployKitError(f"{path.parent} has no tokenizer.json; a decoder ships with its Hugging Face tokenizer.json, "
                             "put it beside the model.")
    if path.stat().st_size > limit_bytes:
        raise DeployKitError(f"{path} is over {limit_bytes >> 20} MiB; that is not a tokenizer.json.")
    text = path.read_text(encoding="utf-8")
    try:
        Tokenizer.from_str(text)
    except Exception as error:  # tokenizers raises its own Exception subclass
        raise DeployKitError(f"{path} is not a tokenizer.json Hugging Face tokenizers can read: "
                             f"{str(error).splitlines()[0]}") from None
    return text

