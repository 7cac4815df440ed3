"""Report text as the pipeline reads it, and the English-only rule.

Normalisation (``normalise``): a byte-order mark, control, zero-width and bidirectional-mark characters and lone
surrogates are removed, non-breaking and other fixed-width spaces become spaces, form feeds and Unicode line
separators become line breaks, and full-width punctuation ("？", "：") its ASCII form. Invisible characters otherwise
split words ("pneumo\\u200bthorax" is no mention) and headers ("\\ufeffINDICATION:"). ``Mention.start`` is still an
offset into the text the caller passed.

English only (``require_english``): the vocabulary and ConText's cues are English, so a German or French report
("Kein Pneumothorax", "Pas de pneumothorax") would be read as positive findings. A report in which words of other
languages (their common function words, or words with letters English does not use) outnumber common English report
words ("the", "no", "with", "left", "lung", ...) is refused with a ReportError (``require_english``). Short reports
without such words ("Pneumothorax.") pass; a very short English report whose only non-vocabulary word looks foreign
("Consolidation, de novo.") is refused too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from medground.errors import ReportError
from medground.text_input import clean_text


def word_set(words: str) -> frozenset[str]:
    """The words of a whitespace-separated list (the vocabularies here and in ``reports.pipeline``)."""
    return frozenset(words.split())


ENGLISH_WORDS = word_set("""
    the a an of and or no not is are was were be been being there this that these those with without at to for from
    by as it its which has have had may might can could should would but both than then since new small large mild
    moderate left right lung lungs heart size clear seen noted evidence unchanged prior compared again otherwise acute
    any some other likely within
""")
"""Common words of English chest X-ray reports. Words German or French reports use too ("in", "an", "die",
"normal", "stable", "pleural") are left out; "a" and "no" are kept although Spanish shares them."""
FOREIGN_WORDS = word_set("""
    kein keine keinen keiner keinem nicht und oder mit ohne der das dem den ein eine einer eines ist sind wird links
    rechts beidseits beidseitig kleiner kleine kleines geringer geringe bei nach zum zur vom
    pas de du des le la les et sans avec un une sont dans sur gauche droit droite aucun aucune ni
    sin con el los las y del una es hay derecho derecha izquierdo izquierda lo se
    di della delle nessun nessuna senza destro destra sinistro sinistra il
    sem da com direito esquerdo esquerda
    geen niet een het van zonder kleine klein er
""")
"""Frequent function words (and sides) of German, French, Spanish, Italian, Portuguese and Dutch reports that are not
English words; words of three or more letters with letters English does not use (é, ü, ñ, Cyrillic, ...) count as
foreign too (shorter ones are units such as "μm")."""
_WORD = re.compile(r"[^\W\d_]+")
_PUNCTUATION = frozenset(".,;:!?")
"""Punctuation whose full-width and other compatibility forms ("？", "：") are read as the ASCII character: PyRuSH and
the header rules know only these."""
_LINE_BREAKS = frozenset("\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
"""Form feed, vertical tab, record separators and Unicode line/paragraph separators: they end lines in reports
exported from other systems, so they become line breaks rather than disappearing and joining two words."""


def normalise(report: str) -> tuple[str, Sequence[int]]:
    """The text the pipeline reads (see the module's docstring) and, for each of its characters, the offset of that
    character in ``report``: characters are only removed or replaced one for one, so offsets map back exactly."""
    table = {char: _normal_char(char) for char in set(report)}
    changed = {ord(char): new for char, new in table.items() if new != char}
    if not changed:
        return report, range(len(report))
    text = report.translate(changed)
    if len(text) == len(report):
        return text, range(len(report))
    return text, [i for i, char in enumerate(report) if table[char]]


def _normal_char(char: str) -> str:
    """One character as the pipeline reads it: the shared ``clean_text``, plus line separators kept as line breaks,
    full-width punctuation made ASCII, and bidirectional marks, other format characters and lone surrogates removed
    (spaCy cannot encode those)."""
    if char in _LINE_BREAKS:
        return "\n"
    if not char.isascii() and unicodedata.normalize("NFKC", char) in _PUNCTUATION:
        return unicodedata.normalize("NFKC", char)
    cleaned = clean_text(char)
    if cleaned and cleaned not in "\t\n\r" and unicodedata.category(cleaned) in ("Cc", "Cf", "Cs"):
        return ""
    return cleaned


def require_english(text: str) -> None:
    """Refuse a report whose words of other languages outnumber its common English words (see ``FOREIGN_WORDS``):
    the reader's vocabulary and negation cues are English, so "Kein Pneumothorax" would come out positive."""
    english = foreign = 0
    examples: list[str] = []
    for match in _WORD.finditer(text):
        word = match.group().lower()
        if word in ENGLISH_WORDS:
            english += 1
        elif word in FOREIGN_WORDS or (not word.isascii() and len(word) > 2):
            foreign += 1
            if len(examples) < 3:
                examples.append(match.group())
    if foreign > english:
        raise ReportError(f"the report does not read as English (words such as {', '.join(map(repr, examples))}): "
                          "the report reader understands English reports only; pass the report in English")
