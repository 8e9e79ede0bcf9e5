"""Loading models: keras-hub tasks and backbones from .keras files, with clear errors for bad input."""

import json
import shutil

import numpy as np
import pytest

from deploykit.errors import DeployKitError
from deploykit.models import load_model


def test_keras_classifier_with_preprocessor_is_a_classification_bundle(tiny_classifier):
    bundle = load_model(tiny_classifier)
    assert bundle.task == "classification"
    assert bundle.class_names == ["food", "sports"]
    assert bundle.max_sequence_length == 32


def test_backbone_with_vocab_is_an_embedding_bundle(tiny_backbone_file):
    bundle = load_model(tiny_backbone_file)
    assert bundle.task == "embedding" and bundle.output_name == "embedding"


def test_deployment_model_has_static_int32_inputs(tiny_classifier):
    bundle = load_model(tiny_classifier)
    model = bundle.deployment_model(16)
    inputs = bundle.encode(["team goal", "bread soup cheese"], 16)
    assert inputs["token_ids"].shape == (2, 16) and inputs["token_ids"].dtype == np.int32
    assert model.predict(inputs, verbose=0).shape == (2, 2)


def test_embedding_ignores_padding(tiny_backbone_file):
    bundle = load_model(tiny_backbone_file)
    short = bundle.predict(bundle.encode(["team goal"], 8))
    long = bundle.predict(bundle.encode(["team goal"], 24))
    np.testing.assert_allclose(short, long, atol=1e-5)


def test_token_lengths_count_special_tokens(tiny_classifier):
    bundle = load_model(tiny_classifier)
    assert bundle.token_lengths(["team goal", "bread"]).tolist() == [4, 3]


def test_tokenizer_files_travel(tiny_classifier, tmp_path):
    bundle = load_model(tiny_classifier)
    written = bundle.write_tokenizer(tmp_path, 16)
    assert {p.name for p in written} == {"vocab.txt", "tokenizer.json"}
    assert (tmp_path / "vocab.txt").read_text().splitlines()[:2] == ["[PAD]", "[UNK]"]
    config = json.loads((tmp_path / "tokenizer.json").read_text())
    assert (config["lowercase"], config["strip_accents"], config["split_on_cjk"]) == (True, False, True)


def test_control_and_format_characters_are_deleted_not_word_breaks(tiny_backbone_file):
    bundle = load_model(tiny_backbone_file)
    cleaned, plain = bundle.encode(["sco\u00adre tea\u200bm\x00 goal\tbread", "score team goal bread"], 12)["token_ids"]
    assert (cleaned == plain).all()


@pytest.mark.parametrize("config, stripped", [
    (None, True),  # Hugging Face's defaults: an uncased vocabulary strips accents
    ({"do_lower_case": True, "strip_accents": None}, True),
    ({"do_lower_case": True, "strip_accents": False}, False),
    ({"do_lower_case": False}, False),
])
def test_a_vocabulary_is_normalized_as_its_tokenizer_config_says(tiny_backbone_file, tmp_path, config, stripped):
    folder = tmp_path / "model"
    shutil.copytree(tiny_backbone_file.parent, folder)
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    bundle = load_model(folder / tiny_backbone_file.name)
    plain, accented = bundle.encode(["team goal", "téam gôal"], 8)["token_ids"]
    assert (plain == accented).all() == stripped
    assert bundle.text_normalizer.strip_accents == stripped


@pytest.mark.parametrize("lowercase", [True, False])
def test_a_hugging_face_tokenizer_json_alone_is_read_as_that_tokenizer(tiny_backbone_file, vocabulary, tmp_path,
                                                                       lowercase):
    """Folders that ship only the fast tokenizer: its WordPiece vocabulary and BertNormalizer settings are used,
    and the ids match Hugging Face's `tokenizers` on the same file."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_backbone_file, folder)
    shuffled = [vocabulary[0], *reversed(vocabulary[1:])]  # ids in the file's order, not the fixture's
    BertWordPieceTokenizer({token: i for i, token in enumerate(shuffled)}, lowercase=lowercase).save(
        str(folder / "tokenizer.json"))
    reference = Tokenizer.from_file(str(folder / "tokenizer.json"))
    texts = ["team goal bread", "Team GOAL bread", "téam gôal"]
    encoded = load_model(folder / tiny_backbone_file.name).encode(texts, 12)
    for text, ids, mask in zip(texts, encoded["token_ids"], encoded["padding_mask"]):
        assert ids[mask == 1].tolist() == reference.encode(text).ids
    assert (encoded["token_ids"][0] == encoded["token_ids"][1]).all() == lowercase


def test_a_tokenizer_json_of_another_kind_is_a_clear_error(tiny_backbone_file, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}}}))
    with pytest.raises(DeployKitError, match="holds a BPE tokenizer; deploykit reads BERT's WordPiece"):
        load_model(tiny_backbone_file, tokenizer=path)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DeployKitError, match="does not exist"):
        load_model(tmp_path / "missing")


def test_corrupt_keras_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip file")
    with pytest.raises(DeployKitError, match="could not load") as error:
        load_model(path)
    assert "\n" not in str(error.value)


def test_unknown_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DeployKitError, match="cannot tell what kind of model"):
        load_model(tmp_path)


def test_backbone_without_vocabulary_asks_for_one(tiny_backbone_file, tmp_path):
    lonely = tmp_path / "encoder.keras"
    lonely.write_bytes(tiny_backbone_file.read_bytes())
    with pytest.raises(DeployKitError, match="--tokenizer"):
        load_model(lonely)


def test_too_long_sequence_is_rejected(tiny_classifier):
    with pytest.raises(DeployKitError, match=r"outside what the model accepts \(2..32\)"):
        load_model(tiny_classifier).deployment_model(64)


def test_keras_hub_preset_folder_loads_with_its_task(tiny_classifier, tmp_path):
    import keras
    import keras_hub  # noqa: F401  (registers the classes saved in the file)

    classifier = keras.saving.load_model(tiny_classifier, compile=False)
    classifier.save_to_preset(str(tmp_path / "preset"))
    bundle = load_model(tmp_path / "preset")
    assert bundle.task == "classification" and bundle.details["format"] == "keras-hub-preset"
    as_encoder = load_model(tmp_path / "preset", task="embedding")
    assert as_encoder.task == "embedding"
