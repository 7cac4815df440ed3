"""Phrases -> token ids and the token positions whose attention is averaged.

The paper tokenises the phrase without padding and keeps every position between the start and end tokens
(``between_special``). ``content_words`` keeps the tokens of words that are not stop words (a lexical choice in the
spirit of Generate-to-Ground, which keeps adjectives, nouns and verbs by a part-of-speech tagger; a stop-word rule
needs no tagger model); ``last`` keeps the last token before the end token. A phrase longer than the encoder's
context is an error here (the official code silently truncated; MS-CXR phrases never reach the limit).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medground.errors import PhraseError


@dataclass(frozen=True)
class PhraseTokens:
    """A phrase, its unpadded token ids and the positions whose attention maps are averaged."""

    phrase: str
    input_ids: tuple[int, ...]
    positions: tuple[int, ...]


STOP_WORDS = frozenset((
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "with", "without", "within", "and", "or", "but", "nor",
    "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "do", "does", "did", "this", "that",
    "these", "those", "there", "here", "it", "its", "as", "by", "from", "into", "onto", "upon", "near", "than",
    "then", "also", "which", "who", "whose", "per", "vs", "versus", "no", "not", "seen", "noted", "there", "is",
    "are", "may", "might", "can", "could", "should", "would", "will", "shall", "very", "some", "any", "each", "both",
    "either",
))
"""Function words that say nothing about where a finding is (``token_rule="content_words"``)."""


def phrase_tokens(tokenizer: Any, phrase: str, rule: str = "between_special") -> PhraseTokens:
    """Tokenise ``phrase`` as the official code does and keep the positions that ``rule`` selects.

    Args:
        tokenizer: the model's tokenizer.
        phrase: the phrase to ground.
        rule: the config's ``token_rule``: ``between_special`` (every token between the start and end tokens),
            ``content_words`` (the tokens of words that are not stop words; all when there are none) or ``last``.

    Raises:
        PhraseError: an empty phrase, one with a NUL character or the tokenizer's special tokens, one longer than the
            text encoder takes, or an unknown rule.
    """
    if not isinstance(phrase, str) or not phrase.strip():
        raise PhraseError(f"phrase must be a non-empty string, got {phrase!r}")
    invisible = invisible_characters(phrase)
    if invisible:
        raise PhraseError(f"phrase contains invisible characters {invisible} that split its words for the text "
                          f"encoder; remove them: {phrase!r}")
    ids = tuple(tokenizer(phrase, truncation=False)["input_ids"])
    limit = tokenizer.model_max_length
    if len(ids) > limit:
        raise PhraseError(
            f"phrase has {len(ids)} tokens including start and end, but the text encoder takes at most "
            f"{limit}; shorten it: {phrase[:60]!r}..."
        )
    positions = tuple(range(1, len(ids) - 1))
    if not positions:
        raise PhraseError(f"phrase {phrase!r} tokenises to no tokens between the start and end tokens")
    special = set(getattr(tokenizer, "all_special_ids", ())) & {ids[p] for p in positions}
    if special:
        names = tokenizer.convert_ids_to_tokens(sorted(special))
        raise PhraseError(f"phrase {phrase!r} contains the text encoder's special tokens {names}; their attention "
                          "is not about the phrase")
    if rule == "last":
        positions = positions[-1:]
    elif rule == "content_words":
        positions = content_word_positions(tokenizer, phrase, positions) or positions
    elif rule != "between_special":
        raise PhraseError(f"unknown token rule {rule!r}")
    return PhraseTokens(phrase=phrase, input_ids=ids, positions=positions)


def invisible_characters(text: str) -> list[str]:
    """The control, zero-width and surrogate characters of ``text`` as U+XXXX (a NUL is U+0000)."""
    from medground.text_input import clean_text

    found = [char for char in text if not clean_text(char) and char not in "\t\n\r" or 0xD800 <= ord(char) < 0xE000]
    return [f"U+{ord(char):04X}" for char in dict.fromkeys(found)]


def unique_phrases(phrases: Sequence[str]) -> list[str]:
    """The phrases in order, each once: a repeated phrase would only be grounded twice to the same map."""
    return list(dict.fromkeys(phrases))


def content_word_positions(tokenizer: Any, phrase: str, positions: tuple[int, ...]) -> tuple[int, ...]:
    """Positions of tokens inside words that are not stop words (by the tokenizer's character offsets); empty when
    the phrase has none, and the caller then keeps every token.

    Args:
        tokenizer: the model's tokenizer; it must give character offsets (``return_offsets_mapping``).
        phrase: the phrase as ``phrase_tokens`` tokenised it.
        positions: the candidate token positions (those between the start and end tokens).
    """
    offsets = tokenizer(phrase, truncation=False, return_offsets_mapping=True)["offset_mapping"]
    content = [(m.start(), m.end()) for m in re.finditer(r"[^\W_]+", phrase) if m.group().lower() not in STOP_WORDS]
    return tuple(p for p in positions
                 if any(start < offsets[p][1] and offsets[p][0] < end for start, end in content))


def token_weights(tokens: Sequence[PhraseTokens], length: int) -> torch.Tensor:
    """(P, length) weights that average each phrase's kept positions (uniform 1/n on them)."""
    weights = torch.zeros(len(tokens), length, dtype=torch.float32)
    for row, phrase in enumerate(tokens):
        weights[row, list(phrase.positions)] = 1.0 / len(phrase.positions)
    return weights
