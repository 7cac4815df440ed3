"""Report text -> finding mentions with a status, read by the medSpaCy pipeline of ``reports.pipeline``.

A mention is kept for grounding when ConText finds it neither negated, hypothetical, historical nor about
family, and it does not sit in a section that describes the request rather than the image (indication, history,
comparison, technique, recommendation).

What ``read_mentions`` does before and around the pipeline, and why:

- Normalisation and the English-only rule: ``medground.reports.normalise``.
- Mentions stay within a sentence: line breaks may fall inside one (wrapped lines), but a mention is cut to the
  sentence of its head word.
- Question marks: a positive mention followed in its sentence by a "?" before any full stop, semicolon or
  exclamation mark ("Pneumothorax?", "Effusion or consolidation?"), or written right after one ("?pneumonia"), is
  uncertain. A question answered by a lone "No"/"None"/"Negative"/"Absent" ("Pneumothorax? No.") is negated; one
  answered "Yes" stays positive. Negated, hypothetical, historical and family mentions keep their status.
- Linear time: ConText and the TargetMatcher grow faster than the length of the text they are given, so a long
  report is read in windows of about ``window_chars`` characters (``MIN_WINDOW_CHARS``, or twice the sentence limit and
  a margin). From each window only the sentences PyRuSH ended well before its end are kept, the next window starts
  at the first sentence not kept, and each window also reads a few sentences before its own, so PyRuSH splits
  sentences as in the whole text; ConText never looks past a sentence, and a window without a header continues the
  section of the one before: windows read as the whole report would (checked on the test reports with windows of
  500 characters, and on random text). Only the last ``MAX_MODIFIER_RUN`` modifiers before a head word can start a
  mention, so the TargetMatcher stays linear in a window too. Realistic text reads in about 0.04 ms a character;
  text packed with ConText cues (hundreds of "no" in each sentence) in up to 0.35 ms, as ConText compares every cue
  of a window with every other.
- Limits, each refused with a ReportError naming it (the environment variable raises it):
  ``MAX_REPORT_CHARS`` characters (``MEDGROUND_MAX_REPORT_CHARS``, 100,000; MIMIC-CXR reports have a few thousand),
  ``MAX_MENTIONS`` finding mentions, negated ones included (``MEDGROUND_MAX_REPORT_MENTIONS``, 64; each kept one is
  a grounding), and ``MAX_SENTENCE_CHARS`` characters in one sentence as PyRuSH splits them (wrapped lines join)
  (``MEDGROUND_MAX_REPORT_SENTENCE_CHARS``, 2,000). Raising the sentence limit widens the windows, so reading slows
  down again for reports with such sentences.
"""


from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medground.errors import ReportError
from medground.reports.normalise import normalise, require_english
from medground.reports.pipeline import report_pipeline
from medground.results import Mention
from medground.text_input import env_limit

MAX_REPORT_CHARS = 100_000
"""Characters in one report; MIMIC-CXR reports have a few thousand, so more is likely several reports pasted."""
MAX_REPORT_CHARS_ENV = "MEDGROUND_MAX_REPORT_CHARS"
MAX_MENTIONS = 64
"""Finding mentions in one report, negated ones included; every kept one is grounded (one heatmap each)."""
MAX_MENTIONS_ENV = "MEDGROUND_MAX_REPORT_MENTIONS"
MAX_SENTENCE_CHARS = 2_000
"""Characters in one sentence: longer is not prose, and ConText's time grows with the square of a sentence's length."""
MAX_SENTENCE_CHARS_ENV = "MEDGROUND_MAX_REPORT_SENTENCE_CHARS"
MIN_WINDOW_CHARS = 3_000
"""Fewest characters the pipeline reads at once (more when twice the sentence limit is more): ConText's and the
TargetMatcher's time grows with the square of what they read, so a long report is read in windows of this size."""
KEPT_STATUSES = ("positive", "uncertain")
"""Statuses that are grounded; ``uncertain`` findings are grounded and flagged as such."""
STATUS_ATTRIBUTES = (("negated", "is_negated"), ("hypothetical", "is_hypothetical"),
                     ("historical", "is_historical"), ("family", "is_family"), ("uncertain", "is_uncertain"))
"""ConText's span attributes in order of precedence: "no possible effusion" is negated, not uncertain."""
REQUEST_SECTIONS = frozenset({"indication", "history", "comparison", "technique", "recommendation"})
"""Sections that describe the request or the follow-up, not what the image shows: their mentions are not grounded."""
_CLAUSE_ENDS = frozenset(".;!?")
_ANSWERS = {"no": "negated", "none": "negated", "negative": "negated", "absent": "negated", "yes": "positive"}
"""A lone word after a question, and the status it gives the question's positive mentions."""
_LOOKAHEAD = 200
"""Characters PyRuSH must see after a sentence's end before that end is trusted (its rules look a few tokens ahead)."""
_LOOKBEHIND = (200, 1_000)
"""How far before its own part a window's doc starts (at a sentence start): PyRuSH pairs sentence begins and ends in
order and treats a text's start specially, so its split can depend on text before."""
_SPACES = re.compile(r"\s*")


def dropped_reason(status: str, section: str | None) -> str:
    """Why a mention is not grounded (empty when it is): its status, or a section that describes the request."""
    if status not in KEPT_STATUSES:
        return status
    return f"{section} section" if section in REQUEST_SECTIONS else ""


def read_report(source: str | Path) -> str:
    """A report from a UTF-8 file (a byte-order mark is accepted), or from standard input for ``-``; at most four
    bytes per character of ``MAX_REPORT_CHARS`` are read (``read_mentions`` checks the characters)."""
    from medground.text_input import read_text

    limit = 4 * env_limit(MAX_REPORT_CHARS_ENV, MAX_REPORT_CHARS, ReportError)
    return read_text(source, "report", ReportError, limit, f"; set {MAX_REPORT_CHARS_ENV} to read a longer one")


def read_mentions(report: str) -> list[Mention]:
    """Every finding mention of ``report``, in reading order, with its status and section (see the module's
    docstring for the normalisation, the English-only rule, question marks and the limits)."""
    if not isinstance(report, str):
        raise ReportError(f"a report must be text, got {type(report).__name__}")
    _check_report_size(report)
    text, origin = normalise(report)
    if not text.strip():
        raise ReportError("the report is empty: paste or pass the report's text (e.g. its FINDINGS and IMPRESSION)")
    require_english(text)
    max_sentence = env_limit(MAX_SENTENCE_CHARS_ENV, MAX_SENTENCE_CHARS, ReportError)
    max_mentions = env_limit(MAX_MENTIONS_ENV, MAX_MENTIONS, ReportError)
    mentions: list[Mention] = []
    section = None
    for offset, doc, begin, end in read_windows(text, origin, max_sentence):
        _check_sentences(doc, begin, end, offset, origin, max_sentence)
        mentions.extend(_doc_mentions(doc, begin, end, offset, origin, section))
        if len(mentions) > max_mentions:
            raise ReportError(f"the report has more than {max_mentions} finding mentions (the limit; the one past it "
                              f"is {mentions[max_mentions].text!r} at character {mentions[max_mentions].start:,}): "
                              f"is it several reports pasted together? Pass one report, or raise the limit: set "
                              f"{MAX_MENTIONS_ENV} to a larger number")
        section = _section_at(doc, end, section)
    return mentions


def read_windows(text: str, origin: Sequence[int], max_sentence: int) -> Iterator[tuple[int, Any, int, int]]:
    """``(offset, doc, begin, end)`` in reading order: ``doc`` is the pipeline's reading of ``text`` from ``offset``;
    the part from ``begin`` to ``end`` (characters of ``doc``) is this window's. Before it, ``doc`` holds up to
    ``_LOOKBEHIND`` characters of the previous window's sentences, after it at least ``_LOOKAHEAD`` characters, so
    PyRuSH splits the part as in the whole text. The next window's part starts at ``end``; every window advances by a
    sentence at least and its doc has at most ``window_chars`` + 1,000 characters, so reading is linear."""
    nlp = report_pipeline()
    window = window_chars(max_sentence)
    start = context = _SPACES.match(text).end()  # this window's part, and where its doc starts
    while start < len(text):
        doc = nlp(text[context : start + window])
        begin = start - context
        if start + window >= len(text):
            yield context, doc, begin, len(doc.text)
            return
        end = _window_end(doc, begin, begin + window - _LOOKAHEAD)
        if not end:
            raise _sentence_error(origin[start], f"more than {window - _LOOKAHEAD:,}", text[start : start + 100],
                                  max_sentence)
        yield context, doc, begin, end
        following = _SPACES.match(text, context + end).end()
        context += _window_end(doc, max(begin, end - _LOOKBEHIND[1]), end - _LOOKBEHIND[0]) or end
        start = following


def _window_end(doc, after: int, limit: int) -> int:
    """The last sentence start of ``doc`` after character ``after`` and up to ``limit`` that begins a line with a
    letter (a header, a line of prose), else one that begins a line, else the last one (0 when there is none):
    PyRuSH treats a text's start specially ("2." starting a text is a sentence of its own), less so at such lines."""
    starts = [s.start_char for s in doc.sents if after < s.start_char <= limit]
    text = doc.text
    line_starts = [start for start in starts if "\n" in text[start - 1]]
    lettered = [start for start in line_starts if text[start].isalpha()]
    return next((found[-1] for found in (lettered, line_starts, starts) if found), 0)


def window_chars(max_sentence: int) -> int:
    """Characters of a window's own part and look-ahead: room for two longest sentences and the look-ahead, so a
    window without a final sentence end holds a sentence over the limit."""
    return max(MIN_WINDOW_CHARS, 2 * max_sentence + _LOOKAHEAD)


def _check_report_size(report: str) -> None:
    limit = env_limit(MAX_REPORT_CHARS_ENV, MAX_REPORT_CHARS, ReportError)
    if len(report) > limit:
        raise ReportError(f"the report has {len(report):,} characters, over the limit of {limit:,}: is it several "
                          f"reports pasted together? Pass one report, or raise the limit: set {MAX_REPORT_CHARS_ENV} "
                          "to a larger number")


def _sentence_error(at: int, length: str, text: str, limit: int) -> ReportError:
    """A sentence (``text``, at character ``at`` of the caller's report, of ``length`` characters) over ``limit``."""
    preview = " ".join(text[:60].split())
    return ReportError(f"a sentence at character {at:,} has {length} characters, over the limit of {limit:,} "
                       f"({preview!r}...): end its sentences with full stops, or raise the limit: set "
                       f"{MAX_SENTENCE_CHARS_ENV} to a larger number")


def _check_sentences(doc, begin: int, end: int, offset: int, origin: Sequence[int], limit: int) -> None:
    """Refuse a sentence of the window (as PyRuSH splits them: wrapped lines join) longer than ``limit`` characters."""
    for sentence in doc.sents:
        if sentence.start_char >= end:
            break
        if sentence.end_char <= begin:
            continue
        stripped = sentence.text.strip()
        if len(stripped) > limit:
            start = offset + sentence.start_char + len(sentence.text) - len(sentence.text.lstrip())
            raise _sentence_error(origin[start], f"{len(stripped):,}", stripped, limit)


def _doc_mentions(doc, begin: int, end: int, offset: int, origin: Sequence[int], section: str | None) \
        -> list[Mention]:
    """The mentions starting from ``begin`` to ``end`` of a window's doc; ``section`` is the section open at
    ``begin`` (that of the doc's header before, else the one carried over)."""
    clause_end = _next_clause_ends(doc)
    mentions = []
    for span in doc.ents:
        if span.start_char < begin:
            continue
        if span.start_char >= end:
            break
        status = next((name for name, attribute in STATUS_ATTRIBUTES if getattr(span._, attribute)), "positive")
        if status == "positive":
            status = _question_status(span, clause_end) or status
        mentions.append(Mention(text=" ".join(span.text.split()), label=span.label_, status=status,
                                sentence=" ".join(span.sent.text.split()),
                                section=span[0]._.section_category or section,
                                start=origin[offset + span.start_char],
                                reason=dropped_reason(status, span[0]._.section_category or section)))
    return mentions


def _section_at(doc, end: int, section: str | None) -> str | None:
    """The section open at character ``end`` of ``doc``: that of its last header before, else still ``section``."""
    for part in doc._.sections:
        if part.category is not None and doc[part.title_start].idx < end:
            section = part.category
    return section


def _next_clause_ends(doc) -> list[int]:
    """For each token, the index of the first token at or after it that ends a clause (. ; ! ?), else len(doc)."""
    following = [len(doc)] * (len(doc) + 1)
    for i in range(len(doc) - 1, -1, -1):
        following[i] = i if _ends_clause(doc[i]) else following[i + 1]
    return following


def _ends_clause(token) -> bool:
    return bool(token.text) and set(token.text) <= _CLAUSE_ENDS


def _is_question(token) -> bool:
    return bool(token.text) and set(token.text) == {"?"}


def _question_status(span, clause_end: list[int]) -> str | None:
    """The status a question mark gives a positive mention, or None when it is not asked about: uncertain, or the
    status of a one-word answer ("Pneumothorax? No." is negated)."""
    doc = span.doc
    before = doc[span.start - 1] if span.start > 0 else None
    if before is not None and _is_question(before) and not before.whitespace_:
        return "uncertain"  # "?pneumonia"
    end = clause_end[span.end]
    if end >= span.sent.end or not _is_question(doc[end]):
        return None
    return _answer(doc, end + 1) or "uncertain"


def _answer(doc, i: int) -> str | None:
    """The status given by a lone answer word at token ``i`` (after more question marks and spaces on the same or
    the next line), when the word ends its clause or line."""
    while i < len(doc) and (_is_question(doc[i]) or (doc[i].is_space and doc[i].text.count("\n") <= 1)):
        i += 1
    if i >= len(doc) or doc[i].lower_ not in _ANSWERS:
        return None
    after = doc[i + 1] if i + 1 < len(doc) else None
    if after is None or after.text in (".", ",", ";", "!") or (after.is_space and "\n" in after.text):
        return _ANSWERS[doc[i].lower_]
    return None
