"""Text datasets: reading JSONL/CSV, seeded splits, and the sequence length chosen from data."""

import numpy as np
import pytest

from deploykit.data import DEFAULT_DATA, choose_sequence_length, load_dataset, split_dataset
from deploykit.errors import DeployKitError


def test_jsonl_with_labels(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a b", "label": "x"}\n\n{"text": "c", "label": "y"}\n')
    data = load_dataset(path)
    assert data.texts == ["a b", "c"] and data.labels == ["x", "y"]


def test_csv_without_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,text\n1,hello there\n2,\"quoted, text\"\n")
    data = load_dataset(path)
    assert data.texts == ["hello there", "quoted, text"] and data.labels is None


def test_integer_labels_from_csv_are_ints(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,0\nb,1\n")
    assert load_dataset(path).labels == [0, 1]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("d.jsonl", '{"sentence": "a"}\n{"sentence": "b"}\n', "no 'text' column"),
        ("d.jsonl", "", "no rows"),
        ("d.jsonl", '{"text": "a"}\nnot json\n', "line 2 is not JSON"),
        ("d.csv", "sentence\na\nb\n", "needs a header with a 'text' column"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', "line 2 has no 'label'"),
        ("d.txt", "a\nb\n", "suffix"),
        ("d.jsonl", '{"text": "only one"}\n', "at least 2"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DeployKitError, match=message):
        load_dataset(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DeployKitError, match="does not exist"):
        load_dataset(tmp_path / "none.jsonl")


def test_split_is_disjoint_and_deterministic(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(f'{{"text": "t{i}"}}\n' for i in range(100)))
    data = load_dataset(path)
    first = split_dataset(data, calibration_samples=30, evaluation_samples=20)
    second = split_dataset(data, calibration_samples=30, evaluation_samples=20)
    assert first == second
    assert len(first.calibration) == 30 and len(first.evaluation) == 20
    assert not set(first.calibration.texts) & set(first.evaluation.texts)


def test_small_data_is_split_in_half(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(f'{{"text": "t{i}"}}\n' for i in range(10)))
    split = split_dataset(load_dataset(path))
    assert len(split.evaluation) == 5 and len(split.calibration) == 5


def test_eval_data_leaves_all_data_for_calibration(tmp_path):
    train, evaluation = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    train.write_text("".join(f'{{"text": "a{i}"}}\n' for i in range(10)))
    evaluation.write_text("".join(f'{{"text": "b{i}"}}\n' for i in range(4)))
    split = split_dataset(load_dataset(train), load_dataset(evaluation))
    assert len(split.calibration) == 10 and sorted(split.evaluation.texts) == [f"b{i}" for i in range(4)]


def test_sequence_length_is_rounded_percentile_capped_by_model():
    lengths = np.array([5] * 98 + [21, 200])
    assert choose_sequence_length(lengths, model_maximum=512) == 24
    assert choose_sequence_length(lengths, model_maximum=512, percentile=100) == 200
    assert choose_sequence_length(lengths, model_maximum=64, percentile=100) == 64
    assert choose_sequence_length(np.array([3, 4]), model_maximum=512) == 8


def test_bundled_default_data_has_text_and_labels():
    data = load_dataset(DEFAULT_DATA)
    assert len(data) >= 1000 and data.labels is not None and len(set(data.labels)) >= 6


def test_a_byte_order_mark_is_read_as_utf8(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\ncafé,1\nthé,0\n".encode("utf-8-sig"))
    dataset = load_dataset(path)
    assert dataset.texts == ["café", "thé"] and dataset.labels == [1, 0]


def test_a_very_long_csv_cell_is_read(tmp_path):
    path = tmp_path / "d.csv"
    long_text = "word " * 100_000  # 500,000 characters: beyond csv's default field limit
    path.write_text(f"text\n{long_text}\nshort\n")
    assert load_dataset(path).texts[0] == long_text


def test_digit_like_unicode_labels_are_class_names(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "²"}\n{"text": "b", "label": "3"}\n{"text": "c", "label": 2.0}\n')
    assert load_dataset(path).labels == ["²", 3, 2]


def test_line_separators_inside_json_strings_stay_in_the_text(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one\u2028two"}\n{"text": "b"}\n', encoding="utf-8")
    assert load_dataset(path).texts[0] == "one\u2028two"
