"""What happens to text before a BERT tokenizer splits it into words, done as the tokenizer a model was trained with
does it.

Two kinds, chosen by where the model came from:

- `HuggingFaceBertNormalizer` (Hugging Face folders, ONNX exports, a bare vocab.txt): Hugging Face's
  `BertNormalizer`, on the whole text before the split. Control, format and private-use characters are deleted,
  every Unicode white space becomes a space (a no-break space separates words), CJK ideographs are padded with
  spaces, accents are stripped (NFD, then nonspacing marks deleted), and each character is lowercased on its own
  (`ß` stays `ß`, `…` stays `…`, a final `Σ` becomes `σ`). keras-hub's tokenizer then only splits and looks up
  pieces. keras-hub alone case-folds each word with NFKC after splitting on ASCII white space, so "x\u00a0y"
  became one unknown word and `²`, `™`, `ﬁ` other tokens than the model saw in training.
- `KerasHubNormalizer` (keras-hub presets and tasks, trained with keras-hub's own preprocessing): keras-hub's
  tokenizer normalizes; deploykit deletes control and format characters first, as BERT's tokenizer does.

Unicode tables are Python's (`unicodedata`); Hugging Face's are older, so about 400 marks added to Unicode since
then (rare scripts) are stripped here and kept there.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

# Characters with Unicode's White_Space property (Rust's `char::is_whitespace`, what Hugging Face tests).
WHITE_SPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                         0x202F, 0x205F, 0x3000])
# The CJK ideograph blocks Hugging Face's BertNormalizer pads with spaces.
CJK_IDEOGRAPHS = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
                  (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# Deleted besides U+FFFD (tab, newline and carriage return always stay): Hugging Face also deletes private-use and
# surrogate code points, and keeps unassigned ones (Cn).
HUGGING_FACE_DELETED = ("Cc", "Cf", "Co", "Cs")
CONTROL_AND_FORMAT = ("Cc", "Cf")


def clean_texts(texts: list[str]) -> list[str]:
    """Texts as BERT's tokenizer cleans them before splitting: control and format characters (Unicode Cc and Cf:
    NUL, zero-width spaces, soft hyphens) and U+FFFD are deleted, tab, newline and carriage return kept. keras-hub
    splits words there instead, so a soft-hyphenated word would reach the model as two words where the tokenizer
    it was trained with gives one."""
    table = _deletion_table(CONTROL_AND_FORMAT)
    return [text.translate(table) for text in texts]


@dataclass(frozen=True)
class KerasHubNormalizer:
    """keras-hub's tokenizer normalizes (NFKC case folding per word, its own accent stripping); deploykit only cleans."""

    kind = "keras-hub"

    def __call__(self, texts: list[str]) -> list[str]:
        return clean_texts(texts)

    def settings(self, tokenizer) -> dict:
        return {"normalizer": self.kind, "lowercase": bool(getattr(tokenizer, "lowercase", False)),
                "strip_accents": bool(getattr(tokenizer, "strip_accents", False)),
                "split_on_cjk": bool(getattr(tokenizer, "split_on_cjk", False)), "clean_text": True}

    def can_emit(self, piece: str) -> bool:
        """Whether normalized text can hold `piece` inside a word (keras-hub's own rules decide the rest)."""
        return True


@dataclass(frozen=True)
class HuggingFaceBertNormalizer:
    """Hugging Face's BertNormalizer (clean_text on): the keras-hub tokenizer after it must neither lowercase nor
    strip accents nor split CJK itself (`KERAS_HUB_OPTIONS`)."""

    lowercase: bool = True
    strip_accents: bool = True
    chinese_characters: bool = True

    kind = "huggingface-bert"

    def __call__(self, texts: list[str]) -> list[str]:
        table = _character_table(self.chinese_characters)
        return [self.normalize_word(text.translate(table)) for text in texts]

    def normalize_word(self, text: str) -> str:
        """Accent stripping and lowercasing, per character as Hugging Face does (no context-dependent final sigma)."""
        if self.strip_accents:
            text = unicodedata.normalize("NFD", text).translate(_nonspacing_marks())
        if self.lowercase:
            text = text.replace("\u03a3", "\u03c3").lower()  # Python alone would write a word-final Σ as ς
        return text

    def settings(self, tokenizer) -> dict:
        return {"normalizer": self.kind, "lowercase": self.lowercase, "strip_accents": self.strip_accents,
                "split_on_cjk": self.chinese_characters, "clean_text": True}

    def can_emit(self, piece: str) -> bool:
        """Whether normalized text can hold `piece` inside a word: normalization leaves it as it is, and a CJK
        ideograph, padded into a word of its own, is the whole piece."""
        if self.normalize_word(piece) != piece or any(ord(c) in _deleted(HUGGING_FACE_DELETED) for c in piece):
            return False
        return not self.chinese_characters or len(piece) == 1 or not any(_is_cjk_ideograph(ord(c)) for c in piece)


TextNormalizer = KerasHubNormalizer | HuggingFaceBertNormalizer

# keras-hub BertTokenizer options under a Hugging Face normalizer: it has done all of that already.
KERAS_HUB_OPTIONS = {"lowercase": False, "strip_accents": False, "split_on_cjk": False}


def _is_cjk_ideograph(code: int) -> bool:
    return any(low <= code <= high for low, high in CJK_IDEOGRAPHS)


@functools.cache
def _deleted(categories: tuple[str, ...]) -> frozenset[int]:
    """U+FFFD and the code points of `categories` except tab, newline and carriage return: one scan of Unicode."""
    return frozenset(code for code in range(0x110000)
                     if chr(code) not in "\t\n\r" and (code == 0xFFFD or unicodedata.category(chr(code)) in categories))


@functools.cache
def _deletion_table(categories: tuple[str, ...]) -> dict[int, None]:
    return dict.fromkeys(_deleted(categories))


@functools.cache
def _character_table(chinese_characters: bool) -> dict[int, str | None]:
    """str.translate table of clean_text (delete, then white space to a space) and CJK padding."""
    table: dict[int, str | None] = dict(_deletion_table(HUGGING_FACE_DELETED))
    table.update({code: " " for code in WHITE_SPACE if code not in table})  # \v, \f and U+0085 are Cc: deleted
    if chinese_characters:
        table.update({code: f" {chr(code)} " for low, high in CJK_IDEOGRAPHS for code in range(low, high + 1)})
    return table


@functools.cache
def _nonspacing_marks() -> dict[int, None]:
    return {code: None for code in range(0x110000) if unicodedata.category(chr(code)) == "Mn"}
