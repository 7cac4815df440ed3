"""Phrases -> token ids and the token positions whose attention is averaged.

The paper tokenises the phrase without padding and keeps every position between the start and end
tokens. A phrase longer than the encoder's context is an error here (the official code silently
truncated; MS-CXR phrases never reach the limit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medground.errors import PhraseError


@dataclass(frozen=True)
class PhraseTokens:
    """A phrase, its unpadded token ids and the positions whose attention maps are averaged."""

    phrase: str
    input_ids: tuple[int, ...]
    positions: tuple[int, ...]


def phrase_tokens(tokenizer, phrase: str) -> PhraseTokens:
    """Tokenise ``phrase`` as the official code does and keep the positions between start and end."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise PhraseError(f"phrase must be a non-empty string, got {phrase!r}")
    if "\x00" in phrase:
        raise PhraseError(f"phrase contains a NUL character: {phrase!r}")
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
    return PhraseTokens(phrase=phrase, input_ids=ids, positions=positions)


def token_weights(tokens: Sequence[PhraseTokens], length: int) -> torch.Tensor:
    """(P, length) weights that average each phrase's kept positions (uniform 1/n on them)."""
    weights = torch.zeros(len(tokens), length, dtype=torch.float32)
    for row, phrase in enumerate(tokens):
        weights[row, list(phrase.positions)] = 1.0 / len(phrase.positions)
    return weights
