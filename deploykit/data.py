"""TextDataset: text (and optional labels) from JSONL or CSV, split into calibration and evaluation.

Also chooses the static sequence length from the data, because NPUs and Edge TPUs
need static shapes, and padding short real sentences to 128 tokens wastes most of
the compute on every target.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.errors import DeployKitError

DEFAULT_DATA = Path(__file__).resolve().parent / "resources" / "sentences.jsonl"
# CSV cells up to 100 M characters are read (csv's default limit, 131,072, refuses long documents); the tokenizer
# keeps only the first sequence-length tokens of any text.
MAX_CELL_CHARACTERS = 100_000_000
INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() also accepts '²', which int() rejects
JSON_KINDS = {type(None): "null", bool: "true/false", int: "a number", float: "a number", list: "an array",
              dict: "an object"}
# 300 calibration samples is NNCF's default subset size; 500 evaluation samples put the standard error of an
# accuracy near 90% at about 1.3 points; the 99th percentile of token lengths pads few texts and truncates 1%.
DEFAULT_CALIBRATION_SAMPLES = 300
DEFAULT_EVALUATION_SAMPLES = 500
DEFAULT_LENGTH_PERCENTILE = 99.0
FORMAT_HELP = "a .jsonl file of objects, or a .csv file with a header, with a 'text' column and an optional 'label' column"


@dataclass(frozen=True)
class TextDataset:
    """Texts with optional labels (strings or integers), in file order."""

    texts: list[str]
    labels: list[str | int] | None
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int] | np.ndarray) -> "TextDataset":
        labels = [self.labels[i] for i in indices] if self.labels is not None else None
        return TextDataset([self.texts[i] for i in indices], labels, self.source)


@dataclass(frozen=True)
class DataSplit:
    """Calibration feeds quantization, training feeds training-time passes, evaluation measures the artifact.

    Evaluation is disjoint from both others; calibration is a subset of training.
    """

    calibration: TextDataset
    evaluation: TextDataset
    training: TextDataset


def load_dataset(path: str | Path) -> TextDataset:
    """Read a JSONL or CSV file (UTF-8, with or without a BOM) with a 'text' column and an optional 'label'."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DeployKitError(f"data file {str(path)!r} does not exist; pass {FORMAT_HELP}.")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise DeployKitError(f"data file {path} has suffix {path.suffix!r}; pass {FORMAT_HELP}.")
    text = _read_text(path)
    rows = _read_jsonl(text, path) if suffix in (".jsonl", ".json") else _read_csv(text, path)
    if not rows:
        raise DeployKitError(f"data file {path} has no rows; it needs at least 2 texts.")
    texts = [_text_value(row, number, path) for number, row in rows]
    labels = _labels(rows, path)
    if len(texts) < 2:
        raise DeployKitError(f"data file {path} has {len(texts)} row; it needs at least 2 texts.")
    return TextDataset(texts, labels, str(path))


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 (a leading BOM dropped); any other encoding is named by its first bad line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DeployKitError(
            f"data file {path}: line {line} is not UTF-8 (byte 0x{data[error.start]:02x}); save the file as UTF-8."
        ) from None


def _read_jsonl(text: str, path: Path) -> list[tuple[int, dict]]:
    """(line number, object) per non-blank line. Lines end at \\n only: JSON strings may hold U+2028 and kin."""
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DeployKitError(f"data file {path}: line {number} is not JSON ({error.msg}); fix or remove it.") from None
        except RecursionError:
            raise DeployKitError(f"data file {path}: line {number} nests JSON too deeply; each line needs one flat object.") from None
        if not isinstance(row, dict):
            raise DeployKitError(f"data file {path}: line {number} is not a JSON object with a 'text' field.")
        rows.append((number, row))
    return rows


def _read_csv(text: str, path: Path) -> list[tuple[int, dict]]:
    """(line number, row) per CSV record; cells of any length are read (long texts are truncated at tokenization)."""
    csv.field_size_limit(MAX_CELL_CHARACTERS)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            raise DeployKitError(
                f"data file {path} has columns {reader.fieldnames or []}; it needs a header with a 'text' column."
            )
        for row in reader:
            rows.append((reader.line_num, {k: v for k, v in row.items() if v not in (None, "") or k == "text"}))
    except csv.Error as error:
        raise DeployKitError(f"data file {path}: line {reader.line_num} is not valid CSV ({error}); fix it.") from None
    return rows


def _text_value(row: dict, number: int, path: Path) -> str:
    """The row's text: a non-blank string that encodes as UTF-8 (the tokenizer's input)."""
    if "text" not in row:
        raise DeployKitError(f"data file {path}: line {number} has no 'text' column; every row needs one.")
    text = row["text"]
    if not isinstance(text, str):
        shown = JSON_KINDS.get(type(text), "a value")
        raise DeployKitError(f"data file {path}: line {number} has {shown} as 'text'; every text must be a string.")
    if not text.strip():
        raise DeployKitError(f"data file {path}: line {number} has an empty 'text'; remove it or fill it in.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DeployKitError(
            f"data file {path}: line {number} has a 'text' with an unpaired surrogate escape (e.g. \\ud800); "
            "fix the text."
        ) from None
    return text


def _labels(rows: list[tuple[int, dict]], path: Path) -> list[str | int] | None:
    present = ["label" in row and row["label"] is not None for _, row in rows]
    if not any(present):
        return None
    if not all(present):
        line = rows[present.index(False)][0]
        raise DeployKitError(f"data file {path}: line {line} has no 'label' while others do; label every row or none.")
    return [_label_value(row["label"], number, path) for number, row in rows]


def _label_value(value, number: int, path: Path) -> str | int:
    """Integers (and integer-valued numbers or digit strings) are class indices; other strings are class names."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        return int(text) if INTEGER.fullmatch(text) else text
    raise DeployKitError(
        f"data file {path}: line {number} has the label {value!r}; a label is a class name (string) "
        "or a class index (integer)."
    )


def split_dataset(
    data: TextDataset,
    evaluation_data: TextDataset | None = None,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    evaluation_samples: int = DEFAULT_EVALUATION_SAMPLES,
    seed: int = 0,
) -> DataSplit:
    """Deterministic disjoint split (seeded shuffle): evaluation first, calibration from the rest.

    With `evaluation_data`, all of `data` is available for calibration. 300 calibration
    samples is the NNCF default subset size; 500 evaluation samples put the standard
    error of an accuracy near 90% at about 1.3 points.
    """
    order = np.random.default_rng(seed).permutation(len(data))
    if evaluation_data is not None:
        evaluation_order = np.random.default_rng(seed).permutation(len(evaluation_data))
        evaluation = evaluation_data.subset(evaluation_order[:evaluation_samples])
        training = data.subset(order)
    else:
        evaluation_count = min(evaluation_samples, len(data) // 2)
        evaluation = data.subset(order[:evaluation_count])
        training = data.subset(order[evaluation_count:])
    calibration = training.subset(list(range(min(calibration_samples, len(training)))))
    return DataSplit(calibration=calibration, evaluation=evaluation, training=training)


def choose_sequence_length(
    token_lengths: np.ndarray, model_maximum: int, percentile: float = DEFAULT_LENGTH_PERCENTILE, multiple: int = 8
) -> int:
    """The `percentile` of token lengths, rounded up to `multiple`, capped by the model.

    Multiples of 8 keep int8/fp16 kernels on their fast tiled paths.
    """
    if len(token_lengths) == 0:
        raise DeployKitError("cannot choose a sequence length from no texts; pass --sequence-length.")
    wanted = float(np.percentile(token_lengths, percentile))
    rounded = int(math.ceil(wanted / multiple) * multiple)
    return max(multiple, min(rounded, model_maximum))
