"""A CLIP byte-level BPE tokenizer learnt from a word list, for the toy models and the tests' random models.

The vocabulary has CLIP's layout (256 byte symbols, the same with ``</w>``, merges, start/end tokens), so models
built here exercise the same tokenizer class and code path as the real ones; nothing is downloaded.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path


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


def build_clip_tokenizer(words: Iterable[str], out_dir: Path, num_merges: int = 200, max_length: int = 77,
                         pad_token: str = "<|endoftext|>"):
    """Write and load a ``transformers.CLIPTokenizer`` whose BPE merges were learnt from ``words``.

    Args:
        words: the words it must know (lower-cased; a word listed twice counts twice in the merge counts).
        out_dir: where the tokenizer is saved (transformers layout), created if needed.
        num_merges: the most BPE merges learnt (fewer once every word is one symbol).
        max_length: ``model_max_length``: prompts are padded to it.
        pad_token: SD 1.x pads with the end token, SD 2.x with ``!``.
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
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=max_length,
                              pad_token=pad_token)
    vocab_file.unlink()
    merges_file.unlink()
    tokenizer.save_pretrained(out_dir)
    return CLIPTokenizer.from_pretrained(out_dir)
