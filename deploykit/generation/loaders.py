"""Loading a generative decoder from any supported source into a DecoderBundle.

Sources: a GGUF file (llama.cpp's format, dequantized: that is "the original"), a Hugging Face causal-LM folder
keras-hub converts, a keras-hub preset folder or `.keras` file holding a CausalLM (with tokenizer.json beside it),
or an alias of a packaged model (`smollm2-135m`, `gemma3-270m`: deploykit.generation.packaged).
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from deploykit.errors import DeployKitError
from deploykit.generation.decoder import DecoderBundle, read_tokenizer_json
from deploykit.generation.packaged import PACKAGED
from deploykit.user_files import read_json

# Hugging Face model_type values whose causal LMs keras-hub converts (keras_hub/src/utils/transformers).
HUGGING_FACE_DECODERS = {"llama": "Llama", "qwen2": "Qwen", "gpt2": "GPT-2", "gemma3_text": "Gemma 3",
                         "gemma3": "Gemma 3", "mistral": "Mistral"}
ALIASES = {alias: packaged.description for alias, packaged in PACKAGED.items()}
SOURCE_HELP = ("pass a .gguf file, a Hugging Face causal-LM folder (config.json, safetensors, tokenizer.json), a "
               f".keras CausalLM file with tokenizer.json beside it, or the alias {', '.join(ALIASES)}")
KERAS_CONFIG_LIMIT = 8 << 20  # a .keras file's config.json: a model description, never megabytes


def is_decoder_source(source: str | Path) -> bool:
    """Whether `source` names a generative decoder (so a build takes the generation path)."""
    name = str(source)
    if name in ALIASES:
        return True
    path = Path(name).expanduser()
    if path.is_file():
        return path.suffix == ".gguf" or (path.suffix == ".keras" and _keras_file_class(path).endswith("CausalLM"))
    config = path / "config.json"
    if path.is_dir() and config.is_file() and not (path / "metadata.json").exists():
        return read_json(config, dict).get("model_type") in HUGGING_FACE_DECODERS
    if path.is_dir() and (path / "metadata.json").exists() and config.is_file():
        return str(read_json(config, dict).get("class_name", "")).endswith("Backbone") and \
            (path / "tokenizer.json").is_file() and _preset_is_causal(path)
    return False


def load_decoder(source: str | Path) -> DecoderBundle:
    """Load any supported decoder source, with weights in float32."""
    import keras

    keras.backend.clear_session()  # layer names reach the exported graph: the same bytes however many loads ran
    name = str(source)
    path = alias_path(name) if name in ALIASES else Path(name).expanduser().resolve()
    if not path.exists():
        raise DeployKitError(f"model path {name!r} does not exist; {SOURCE_HELP}.")
    if path.is_file() and path.suffix == ".gguf":
        bundle = _load_gguf(path)
    elif path.is_file() and path.suffix == ".keras":
        bundle = _load_keras_file(path)
    elif path.is_dir() and (path / "config.json").is_file():
        bundle = _load_folder(path, {"format": "keras-hub preset" if (path / "metadata.json").exists()
                                     else "Hugging Face folder"})
    else:
        raise DeployKitError(f"cannot tell what kind of decoder {name!r} is; {SOURCE_HELP}.")
    bundle.source = name
    return bundle


def alias_path(alias: str) -> Path:
    """The GGUF file an alias names (see deploykit.generation.packaged)."""
    return PACKAGED[alias].path(alias)


def _load_gguf(path: Path) -> DecoderBundle:
    from deploykit.generation.gguf import gguf_to_hugging_face

    with tempfile.TemporaryDirectory(prefix="deploykit-gguf-") as scratch:
        provenance = gguf_to_hugging_face(path, Path(scratch))
        return _load_folder(Path(scratch), {**provenance, "already_quantized": True})


def _load_folder(folder: Path, details: dict) -> DecoderBundle:
    import keras_hub

    tokenizer_json = read_tokenizer_json(folder / "tokenizer.json")
    try:
        backbone = keras_hub.models.Backbone.from_preset(str(folder), dtype="float32", **_config_overrides(folder))
        causal_lm = _causal_lm_class(type(backbone))(backbone=backbone, preprocessor=None)
    except DeployKitError:
        raise
    except Exception as error:  # keras-hub's converters raise anything from KeyError to ValueError
        raise DeployKitError(f"keras-hub cannot load a causal LM from {folder}: {str(error).splitlines()[0]}") \
            from None
    return _bundle(causal_lm, tokenizer_json, str(folder), details)


def _config_overrides(folder: Path) -> dict:
    """Backbone settings keras-hub's converters leave at their defaults: the RMS norm epsilon (1e-6 in keras-hub's
    Llama converter, 1e-5 in SmolLM2's config)."""
    config = read_json(folder / "config.json", dict)
    epsilon = config.get("rms_norm_eps")
    if not (folder / "metadata.json").exists() and isinstance(epsilon, float) and epsilon > 0:
        return {"layer_norm_epsilon": epsilon}
    return {}


def _causal_lm_class(backbone_class: type) -> type:
    """The keras-hub CausalLM task built on `backbone_class`."""
    import keras_hub

    pending = [keras_hub.models.CausalLM]
    while pending:
        task = pending.pop()
        if getattr(task, "backbone_cls", None) is backbone_class:
            return task
        pending.extend(task.__subclasses__())
    raise DeployKitError(f"keras-hub has no causal LM on {backbone_class.__name__}; deploykit generates with "
                         f"{', '.join(sorted(set(HUGGING_FACE_DECODERS.values())))} decoders.")


def _load_keras_file(path: Path) -> DecoderBundle:
    import keras

    tokenizer_json = read_tokenizer_json(path.parent / "tokenizer.json")
    try:
        causal_lm = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:
        raise DeployKitError(f"cannot load {path} as a Keras model: {str(error).splitlines()[0]}") from None
    if not hasattr(causal_lm, "call_with_cache"):
        raise DeployKitError(f"{path} holds a {type(causal_lm).__name__}, not a keras-hub CausalLM; save the CausalLM "
                             "task (e.g. keras_hub.models.LlamaCausalLM) to generate with it.")
    return _bundle(causal_lm, tokenizer_json, str(path), {"format": ".keras"})


def _bundle(causal_lm, tokenizer_json: str, source: str, details: dict) -> DecoderBundle:
    backbone = causal_lm.backbone
    length = getattr(backbone, "max_sequence_length", None) or details.get("context_length") or 2048
    parameters = int(backbone.count_params())
    return DecoderBundle(causal_lm, tokenizer_json, source, int(length),
                         {"architecture": type(backbone).__name__.removesuffix("Backbone"), "parameters": parameters,
                          **details})


def _keras_file_class(path: Path) -> str:
    """The class name a .keras archive's config.json declares, read without loading anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > KERAS_CONFIG_LIMIT:
                return ""
            import json

            return str(json.loads(archive.read(info)).get("class_name", ""))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return ""


def _preset_is_causal(folder: Path) -> bool:
    task = folder / "task.json"
    return task.is_file() and str(read_json(task, dict).get("class_name", "")).endswith("CausalLM")
