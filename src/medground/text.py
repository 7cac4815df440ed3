"""Phrases -> token ids and the token positions whose attention is averaged; a CLIP BPE builder.

The paper tokenises the phrase without padding and keeps every position between the start and end
tokens. A phrase longer than the encoder's context is an error here (the official code silently
truncated; MS-CXR phrases never reach the limit).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    return PhraseTokens(phrase=phrase, input_ids=ids, positions=positions)


def token_weights(tokens: Sequence[PhraseTokens], length: int) -> torch.Tensor:
    """(P, length) weights that average each phrase's kept positions (uniform 1/n on them)."""
    weights = torch.zeros(len(tokens), length, dtype=torch.float32)
    for row, phrase in enumerate(tokens):
        weights[row, list(phrase.positions)] = 1.0 / len(phrase.positions)
    return weights


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE vocabularies (GPT-2/CLIP layout)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, spare = [], 256
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(spare))
            spare += 1
    return symbols


def learn_bpe_merges(words: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE over lower-cased words with CLIP's end-of-word marker; deterministic (ties by name)."""
    counts = Counter(word.lower() for word in words if word)
    corpus = {tuple(word[:-1]) + (word[-1] + "</w>",): n for word, n in counts.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in corpus.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        corpus = {_merge(symbols, best): n for symbols, n in corpus.items()}
    return merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def build_clip_tokenizer(words: Iterable[str], out_dir: Path, num_merges: int = 200, max_length: int = 77):
    """Write and load a ``transformers.CLIPTokenizer`` whose BPE merges were learnt from ``words``.

    The vocabulary has CLIP's layout (256 byte symbols, the same with ``</w>``, merges, start/end
    tokens), so it exercises the same tokenizer class and code path as the real model's.
    """
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    merges = learn_bpe_merges(words, num_merges)
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(dict.fromkeys(vocab))}))
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=max_length)
    vocab_file.unlink()
    merges_file.unlink()
    tokenizer.save_pretrained(out_dir)
    return CLIPTokenizer.from_pretrained(out_dir)
