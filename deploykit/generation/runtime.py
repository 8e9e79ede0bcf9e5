"""Running a decoder artifact: loading it in its runtime, chunked prefill, then decode one token at a time over the
fixed-size cache.

Imports nothing but NumPy and (lazily) the one runtime an artifact needs: the decoder worker copies this file to a
device (deploykit.generation.device) and runs it there with only the runtime installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

Step = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class PromptTooLong(ValueError):
    """A prompt (plus the tokens asked for) that does not fit the artifact's cache."""


def check_fits(cache_length: int, prompt_tokens: int, new_tokens: int = 0) -> None:
    if prompt_tokens + new_tokens > cache_length:
        raise PromptTooLong(
            f"the prompt has {prompt_tokens} tokens and {new_tokens} more were asked for, over the artifact's "
            f"cache of {cache_length}; shorten the prompt, ask for fewer tokens, or rebuild with a larger "
            "--cache-length."
        )


@dataclass
class LoadedDecoder:
    """A loaded decoder artifact: `step(tokens [1, T], cache, index) -> (logits [1, T, vocab], new_kv)`, where
    new_kv [1, layers, 2, T, kv heads, head dim] are the keys and values of the T tokens, written into the cache
    here (the cache stays in this process: the model reads it and returns only what is new)."""

    step: Step
    cache_shape: tuple[int, ...]
    prefill_length: int | None  # fixed chunk of static-shape runtimes; None: one call takes any length
    description: str = ""  # runtime, version and what it runs on, for the report

    @property
    def cache_length(self) -> int:
        return int(self.cache_shape[3])

    def empty_cache(self) -> np.ndarray:
        return np.zeros(self.cache_shape, dtype=np.float32)

    def check_fits(self, prompt_tokens: int, new_tokens: int = 0) -> None:
        check_fits(self.cache_length, prompt_tokens, new_tokens)

    def prefill(self, token_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Logits [T, vocab] at every prompt position, and the cache holding the prompt."""
        self.check_fits(len(token_ids))
        cache = self.empty_cache()
        chunk = self.prefill_length or len(token_ids)
        logits = []
        for start in range(0, len(token_ids), chunk):
            piece = token_ids[start:start + chunk]
            tokens = np.zeros((1, chunk), dtype=np.int32)
            tokens[0, :len(piece)] = piece  # a short last chunk is padded: those positions are overwritten later
            out, new_kv = self.step(tokens, cache, start)
            self._write(cache, new_kv, start)
            logits.append(np.asarray(out, dtype=np.float32)[0, :len(piece)])
        return np.concatenate(logits), cache

    def decode(self, token: int, cache: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Logits [vocab] after `token` at position `index`, and the cache holding it."""
        out, new_kv = self.step(np.asarray([[token]], dtype=np.int32), cache, index)
        self._write(cache, new_kv, index)
        return np.asarray(out, dtype=np.float32)[0, -1], cache

    def _write(self, cache: np.ndarray, new_kv: np.ndarray, index: int) -> None:
        count = min(new_kv.shape[3], self.cache_length - index)
        cache[:, :, :, index:index + count] = new_kv[:, :, :, :count]


@dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is 0, else sampling from the top_k most likely tokens with a seeded generator."""

    temperature: float = 0.0
    top_k: int = 40
    seed: int = 0

    def chooser(self) -> Callable[[np.ndarray], int]:
        if self.temperature <= 0:
            return lambda logits: int(np.argmax(logits))
        rng = np.random.default_rng(self.seed)

        def choose(logits: np.ndarray) -> int:
            top = np.argsort(logits)[::-1][:max(1, self.top_k)]
            scaled = logits[top] / self.temperature
            weights = np.exp(scaled - scaled.max())
            return int(top[rng.choice(len(top), p=weights / weights.sum())])

        return choose


def generate(decoder: LoadedDecoder, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling = Sampling(),
             stop_ids: frozenset[int] = frozenset()) -> Iterator[int]:
    """Yield new token ids one by one (stream them), stopping at a stop token or after `max_new_tokens`."""
    decoder.check_fits(len(prompt_ids), max_new_tokens)
    choose = sampling.chooser()
    logits, cache = decoder.prefill(prompt_ids)
    token = choose(logits[-1])
    index = len(prompt_ids)
    for produced in range(max_new_tokens):
        yield token
        if token in stop_ids or produced + 1 == max_new_tokens:
            return
        last, cache = decoder.decode(token, cache, index)
        index += 1
        token = choose(last)


def load_artifact(runtime: str, path: str, threads: int | None, settings: dict) -> LoadedDecoder:
    """An artifact file in its runtime: "litert" (.tflite, prefill and decode signatures), "openvino" (.xml) or
    "tensorrt" (.onnx, run by onnxruntime). `settings`: runtime settings already checked by the caller."""
    return LOADERS[runtime](str(path), threads, settings)


def _load_litert(path: str, threads: int | None, settings: dict) -> LoadedDecoder:
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter

    version = getattr(ai_edge_litert, "__version__", "")
    interpreter = Interpreter(model_path=path, num_threads=threads)
    cache = interpreter.get_signature_runner("decode").get_input_details()["cache"]
    # XNNPACK takes float and int8 graphs; int16 activations run on LiteRT's reference kernels on a CPU.
    kernels = "reference int16 kernels" if np.dtype(cache["dtype"]) == np.int16 else "XNNPACK"
    return litert_signatures(interpreter, f"LiteRT {version} ({kernels}, CPU)".replace("  ", " "))


def litert_signatures(interpreter, description: str) -> LoadedDecoder:
    """A LiteRT interpreter's prefill and decode signatures as a LoadedDecoder; integer inputs and outputs (a
    full-integer graph's int16 cache and logits) are quantized and dequantized at the interface."""
    runners = {name: interpreter.get_signature_runner(name) for name in ("prefill", "decode")}
    prefill_shape = runners["prefill"].get_input_details()["tokens"]["shape"]
    cache_shape = tuple(int(d) for d in runners["decode"].get_input_details()["cache"]["shape"])

    inputs = {name: runner.get_input_details() for name, runner in runners.items()}
    outputs = {name: runner.get_output_details() for name, runner in runners.items()}

    def step(tokens: np.ndarray, cache: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        name = "decode" if tokens.shape[1] == 1 else "prefill"
        values = {"tokens": tokens, "cache": cache, "index": np.asarray(index, dtype=np.int32)}
        out = runners[name](**{key: _as_input(value, inputs[name][key]) for key, value in values.items()})
        return _as_float(out["logits"], outputs[name]["logits"]), _as_float(out["new_kv"], outputs[name]["new_kv"])

    return LoadedDecoder(step, cache_shape, int(prefill_shape[1]), description)


def _as_input(value: np.ndarray, detail: dict) -> np.ndarray:
    """A float value quantized to an integer input's scale (full-integer graphs take the cache as int16)."""
    scale, zero_point = detail["quantization"]
    dtype = np.dtype(detail["dtype"])
    if not scale or value.dtype == dtype:
        return value.astype(dtype, copy=False)
    limits = np.iinfo(dtype)
    return np.clip(np.rint(value / scale) + zero_point, limits.min, limits.max).astype(dtype)


def _as_float(value: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if not scale or value.dtype == np.float32:
        return value
    return (value.astype(np.float32) - zero_point) * scale


def _load_openvino(path: str, threads: int | None, settings: dict) -> LoadedDecoder:
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_NUM_THREADS": threads} if threads else {}), **settings}
    compiled = ov.Core().compile_model(path, "CPU", config)
    request = compiled.create_infer_request()
    by_rank = {len(port.get_partial_shape()): port for port in compiled.outputs}  # the converter may rename outputs
    logits_port, kv_port = by_rank[3], by_rank[6]
    cache_shape = tuple(int(d) for d in compiled.input("cache").get_partial_shape().to_shape())

    def step(tokens: np.ndarray, cache: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        out = request.infer({"tokens": tokens, "cache": cache, "index": np.asarray(index, dtype=np.int32)})
        return np.array(out[logits_port], copy=True), np.array(out[kv_port], copy=True)

    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    return LoadedDecoder(step, cache_shape, None, f"OpenVINO {ov.__version__} (CPU plugin, inference precision "
                                                  f"{precision})")


def _load_onnxruntime(path: str, threads: int | None, settings: dict) -> LoadedDecoder:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = {i.name.split(":")[0]: i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    ranks = [len(o.shape) for o in session.get_outputs()]
    logits_name, kv_name = outputs[ranks.index(3)], outputs[ranks.index(6)]
    cache_shape = tuple(int(d) for d in next(i.shape for i in session.get_inputs() if i.name == inputs["cache"]))

    def step(tokens: np.ndarray, cache: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        feed = {inputs["tokens"]: tokens, inputs["cache"]: cache, inputs["index"]: np.asarray(index, dtype=np.int32)}
        logits, new_kv = session.run([logits_name, kv_name], feed)
        return logits, new_kv

    return LoadedDecoder(step, cache_shape, None, f"onnxruntime {ort.__version__} (CPU; the engine itself needs "
                                                  "TensorRT on the GPU)")


LOADERS = {"litert": _load_litert, "openvino": _load_openvino, "tensorrt": _load_onnxruntime}
# What each loader imports: memory measured after it is imported is the model's.
RUNTIME_MODULES = {"litert": "ai_edge_litert.interpreter", "openvino": "openvino", "tensorrt": "onnxruntime"}
