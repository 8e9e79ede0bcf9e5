"""Fine-tune a keras-hub BertTextClassifier on a labelled JSONL/CSV and save it as deploykit input.

Writes OUT/classifier.keras (with its preprocessor, so the vocabulary travels),
OUT/labels.txt (class names in output order), and OUT/train.jsonl / OUT/test.jsonl,
the seeded split it used, so a build can calibrate on the training rows and
evaluate on rows the classifier never saw:

    python tools/train_classifier.py --out /tmp/minilm-topics
    deploykit build /tmp/minilm-topics/classifier.keras --target intel-cpu \
        --data /tmp/minilm-topics/train.jsonl --eval-data /tmp/minilm-topics/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deploykit.data import DEFAULT_DATA, load_dataset
from deploykit import runtime_env  # noqa: F401  (Keras backend before keras is imported)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="minilm-l6", help="backbone source (alias or Hugging Face BERT folder)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="labelled JSONL/CSV")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--train-limit", type=int, default=None, help="use at most this many training rows")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import keras_hub

    keras.utils.set_random_seed(args.seed)
    data = load_dataset(args.data)
    if data.labels is None:
        raise SystemExit(f"{args.data} has no 'label' column")
    names = sorted({str(label) for label in data.labels})
    order = np.random.default_rng(args.seed).permutation(len(data))
    test_count = int(len(data) * args.test_fraction)
    test, train = data.subset(order[:test_count]), data.subset(order[test_count:])
    if args.train_limit:
        train = train.subset(list(range(min(args.train_limit, len(train)))))

    folder = _preset_folder(args.base)
    backbone = keras_hub.models.BertBackbone.from_preset(folder)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(folder)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=args.sequence_length)
    classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=len(names), preprocessor=preprocessor)
    classifier.compile(
        optimizer=keras.optimizers.AdamW(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    labels = np.asarray([names.index(str(label)) for label in train.labels])
    started = time.perf_counter()
    classifier.fit(train.texts, labels, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    test_labels = np.asarray([names.index(str(label)) for label in test.labels])
    _, test_accuracy = classifier.evaluate(test.texts, test_labels, batch_size=64, verbose=0)

    args.out.mkdir(parents=True, exist_ok=True)
    classifier.save(args.out / "classifier.keras")
    (args.out / "labels.txt").write_text("\n".join(names) + "\n")
    for split_name, split in (("train", train), ("test", test)):
        rows = (json.dumps({"text": t, "label": str(l)}) for t, l in zip(split.texts, split.labels, strict=True))
        (args.out / f"{split_name}.jsonl").write_text("\n".join(rows) + "\n")
    print(json.dumps({"train_rows": len(train), "test_rows": len(test), "classes": names,
                      "test_accuracy": round(float(test_accuracy), 4), "backbone": folder,
                      "seconds": round(time.perf_counter() - started, 1)}))


def _preset_folder(base: str) -> str:
    if base == "minilm-l6":
        from deploykit.models import alias_path

        return str(alias_path(base))
    return base


if __name__ == "__main__":
    main()
