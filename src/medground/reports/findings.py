"""Report text -> finding mentions with a status, through medspaCy on a blank spaCy ``en`` pipeline (no model download).

The pipeline: medspaCy's tokenizer, PyRuSH sentence splitter, TargetMatcher (the finding vocabulary below, as spaCy
token patterns), Sectionizer (chest X-ray report headers) and ConText (its default rules plus the radiology phrasings
below). A mention is kept for grounding when ConText finds it neither negated, hypothetical, historical nor about
family, and it does not sit in a section that describes the request rather than the image (indication, history,
comparison, technique).

What ``read_mentions`` does before and around the pipeline, and why:

- Normalisation (``normalise``): a byte-order mark, control, zero-width and bidirectional-mark characters and lone
  surrogates are removed, non-breaking and other fixed-width spaces become spaces, form feeds and Unicode line
  separators become line breaks, and full-width punctuation ("？", "：") its ASCII form. Invisible characters
  otherwise split words ("pneumo\\u200bthorax" is no mention) and headers ("\\ufeffINDICATION:"). ``Mention.start``
  is still an offset into the text the caller passed.
- Mentions stay within a sentence: line breaks may fall inside one (wrapped lines), but a mention is cut to the
  sentence of its head word.
- English only: the vocabulary and ConText's cues are English, so a German or French report ("Kein Pneumothorax",
  "Pas de pneumothorax") would be read as positive findings. A report in which words of other languages (their common
  function words, or words with letters English does not use) outnumber common English report words ("the", "no",
  "with", "left", "lung", ...) is refused with a ReportError (``require_english``). Short reports without such words
  ("Pneumothorax.") pass; a very short English report whose only non-vocabulary word looks foreign ("Consolidation,
  de novo.") is refused too.
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

import functools
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medground.errors import ExtraNotInstalledError, ReportError
from medground.text_input import clean_text, env_limit


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


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

FINDING_HEADS: dict[str, tuple[str, ...]] = {
    "pleural effusion": ("effusion", "effusions", "hydrothorax"),
    "pneumothorax": ("pneumothorax", "pneumothoraces", "hydropneumothorax"),
    "atelectasis": ("atelectasis", "collapse"),
    "consolidation": ("consolidation", "consolidations"),
    "opacity": ("opacity", "opacities", "opacification", "infiltrate", "infiltrates", "airspace disease"),
    "pneumonia": ("pneumonia",),
    "edema": ("edema", "oedema", "congestion"),
    "cardiomegaly": ("cardiomegaly", "cardiac enlargement"),
    "nodule": ("nodule", "nodules"),
    "mass": ("mass", "masses", "lesion", "lesions"),
    "fracture": ("fracture", "fractures"),
    "emphysema": ("emphysema", "hyperinflation"),
    "fibrosis": ("fibrosis", "scarring"),
    "pleural thickening": ("thickening",),
    "calcification": ("calcification", "calcifications", "granuloma", "granulomas"),
    "hernia": ("hernia",),
    "widened mediastinum": ("widening", "widened mediastinum"),
    "support device": ("tube", "tubes", "catheter", "pacemaker", "picc line", "wires"),
}
"""Finding label -> the head words of its mentions (CheXpert's observations, MS-CXR's classes and common others)."""

MODIFIERS = _word_set("""
    small tiny trace minimal minimally mild mildly moderate moderately large massive severe severely marked markedly
    extensive slight slightly subtle early sized sided - to greater than
    left right bilateral bibasilar bibasal biapical basilar basal apical lateral medial anterior posterior adjacent
    upper middle mid lower lobe zone lung lingular retrocardiac perihilar hilar subpleural pleural pulmonary
    parenchymal costophrenic pericardial peribronchial mediastinal rib ribs vertebral clavicular
    patchy focal multifocal diffuse hazy streaky linear plate platelike discoid subsegmental segmental lobar nodular
    reticular reticulonodular interstitial alveolar airspace loculated layering dependent calcified noncalcified
    spiculated rounded round confluent ground glass compression healed displaced nondisplaced hiatal vascular
    endotracheal nasogastric orogastric enteric feeding chest tracheostomy central venous jugular internal subclavian
    pigtail dual lead chamber sternotomy
""")
"""Words that belong to a finding when they precede its head: size, side, place, appearance, device kind. Words of
change (new, stable, unchanged, improved) are left out: they describe the comparison, not where to look."""

MAX_MODIFIER_RUN = 12
"""Modifier tokens (line breaks included) that may precede a head: "moderate to large right - sided pleural" has 7.
Only these are marked as modifiers (``_mark_modifiers``): the TargetMatcher extends a partial match from every
modifier through the whole run, so a long run far from any head ("- - - ...", "small small ...") made it quadratic,
seconds for a few thousand characters. (spaCy's bounded "{0,12}" operator branches on each token and is slower.)"""

CONNECTORS = frozenset({"-", "to", "greater", "than"})
"""Modifiers that only join others ("small to moderate", "left greater than right"), never start a mention."""

LOCATION_WORDS = _word_set("""
    left right bilateral both upper middle mid lower lobe lobes zone zones base bases lung lungs apex apices hemithorax
    costophrenic angle angles lingula hilum hila perihilar retrocardiac region regions field fields medial lateral
    basilar apical
""")
"""Words of a trailing location: "opacity in the right lower lobe", "effusion at the left base"."""

HEART_ENLARGEMENT = (
    [{"LOWER": {"IN": ["heart", "cardiac"]}}, {"LOWER": {"IN": ["size", "silhouette", "contour"]}, "OP": "?"},
     {"LOWER": {"IN": ["is", "are", "appears", "remains"]}}, {"_": {"finding_modifier": True}, "OP": "*"},
     {"LOWER": "enlarged"}],
    [{"_": {"finding_modifier": True}, "OP": "*"}, {"LOWER": "enlarged"}, {"LOWER": {"IN": ["heart", "cardiac"]}},
     {"LOWER": {"IN": ["size", "silhouette", "contour"]}, "OP": "?"}],
)
"""Cardiomegaly in words: "heart size is mildly enlarged", "enlarged cardiac silhouette"."""

SECTION_HEADERS: dict[str, tuple[str, ...]] = {
    "findings": ("findings",),
    "impression": ("impression", "conclusion", "opinion"),
    "indication": ("indication", "clinical indication", "reason for exam", "reason for examination",
                   "clinical information", "clinical history"),
    "history": ("history",),
    "comparison": ("comparison", "comparisons", "prior"),
    "technique": ("technique", "examination", "exam", "procedure"),
    "recommendation": ("recommendation", "recommendations"),
}
"""Report headers (each followed by a colon) and the section they open."""
REQUEST_SECTIONS = frozenset({"indication", "history", "comparison", "technique", "recommendation"})
"""Sections that describe the request or the follow-up, not what the image shows: their mentions are not grounded."""

CHECKLIST_RULES = frozenset({": no", ": none"})
"""ConText defaults for clinical-note checklists ("Fever: no") that misfire on report headers: in "FINDINGS: No
pneumothorax" the backward ": no" outranks the forward "no", and the pneumothorax would come out positive."""


ENGLISH_WORDS = _word_set("""
    the a an of and or no not is are was were be been being there this that these those with without at to for from
    by as it its which has have had may might can could should would but both than then since new small large mild
    moderate left right lung lungs heart size clear seen noted evidence unchanged prior compared again otherwise acute
    any some other likely within
""")
"""Common words of English chest X-ray reports. Words German or French reports use too ("in", "an", "die",
"normal", "stable", "pleural") are left out; "a" and "no" are kept although Spanish shares them."""
FOREIGN_WORDS = _word_set("""
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
_CLAUSE_ENDS = frozenset(".;!?")
_PUNCTUATION = frozenset(".,;:!?")
"""Punctuation whose full-width and other compatibility forms ("？", "：") are read as the ASCII character: PyRuSH and
the header rules know only these."""
_ANSWERS = {"no": "negated", "none": "negated", "negative": "negated", "absent": "negated", "yes": "positive"}
"""A lone word after a question, and the status it gives the question's positive mentions."""
_HEAD_WORDS = {label: frozenset(head.split()[-1] for head in heads)
               | ({"enlarged"} if label == "cardiomegaly" else set()) for label, heads in FINDING_HEADS.items()}
"""The last word of each finding's heads (and "enlarged" of "heart size is enlarged"): the word a mention is about."""
_HEAD_STARTS = frozenset(head.split()[0] for heads in FINDING_HEADS.values() for head in heads) | {"enlarged"}
"""First words of heads ("enlarged" of "mildly enlarged heart"): modifiers are words before one of these."""
_LINE_BREAKS = frozenset("\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
"""Form feed, vertical tab, record separators and Unicode line/paragraph separators: they end lines in reports
exported from other systems, so they become line breaks rather than disappearing and joining two words."""
_LOOKAHEAD = 200
"""Characters PyRuSH must see after a sentence's end before that end is trusted (its rules look a few tokens ahead)."""
_LOOKBEHIND = (200, 1_000)
"""How far before its own part a window's doc starts (at a sentence start): PyRuSH pairs sentence begins and ends in
order and treats a text's start specially, so its split can depend on text before."""
_SPACES = re.compile(r"\s*")


def _radiology_context_rules() -> list:
    """Phrasings of chest X-ray reports that ConText's default (clinical-note) rules miss or misread."""
    from medspacy.context import ConTextRule

    def words(*choices: Sequence[str] | str, optional: tuple[int, ...] = ()) -> list[dict[str, Any]]:
        tokens = []
        for i, choice in enumerate(choices):
            token: dict[str, Any] = {"LOWER": choice} if isinstance(choice, str) else {"LOWER": {"IN": list(choice)}}
            if i in optional:
                token["OP"] = "?"
            tokens.append(token)
        return tokens

    seen = ["seen", "visible", "visualized", "evident", "identified", "present", "appreciated", "demonstrated"]
    negated, possible = "NEGATED_EXISTENCE", "POSSIBLE_EXISTENCE"
    return [
        ConTextRule("has resolved", negated, words(["has", "have", "is", "are"], ["resolved", "cleared"]),
                    direction="BACKWARD"),
        ConTextRule("resolution of", negated, words(["resolution", "clearing"], "of"), direction="FORWARD"),
        ConTextRule("no longer seen", negated, words("no", "longer", seen), direction="BACKWARD"),
        ConTextRule("is not seen", negated, words(["is", "are", "was", "were"], "not", seen), direction="BACKWARD"),
        ConTextRule("cannot be excluded", possible,
                    words(["can", "could", "cannot"], ["not", "n't"], "be", ["excluded", "ruled"], "out",
                          optional=(1, 4)), direction="BACKWARD"),
        ConTextRule("is not excluded", possible, words(["is", "are"], "not", "excluded"), direction="BACKWARD"),
        ConTextRule("cannot exclude", possible,
                    words(["can", "could", "cannot"], ["not", "n't"], ["exclude", "rule"], "out", optional=(1, 3)),
                    direction="FORWARD"),
        ConTextRule("may represent", possible,
                    words(["may", "might", "could"], ["represent", "reflect", "indicate"]), direction="FORWARD"),
        ConTextRule("questionable", possible,
                    words(["questionable", "probable", "possibly", "suspected", "presumed", "equivocal"]),
                    direction="FORWARD"),
        ConTextRule(";", "CLAUSE_BREAK", words(";"), direction="TERMINATE"),
    ]


def _target_rules() -> list:
    """Every finding head with its preceding modifiers, alone, with a trailing location, or with "left greater than
    right" after it; the TargetMatcher keeps the longest of overlapping matches. Line breaks may fall anywhere in a
    mention (reports are often wrapped at a fixed width)."""
    from medspacy.target_matcher import TargetRule
    from spacy.tokens import Token

    Token.set_extension("finding_modifier", default=False, force=True)  # set by _mark_modifiers
    Token.set_extension("finding_location", getter=lambda t: t.is_space or t.lower_ in LOCATION_WORDS, force=True)
    space = {"IS_SPACE": True, "OP": "*"}
    number = [{"LIKE_NUM": True, "OP": "?"}, {"LOWER": {"IN": ["cm", "mm"]}, "OP": "?"}]
    location = [space, {"LOWER": {"IN": ["in", "at", "of", "within", "involving", "along", "overlying"]}}, space,
                {"LOWER": {"IN": ["the", "both"]}, "OP": "?"}, {"_": {"finding_location": True}, "OP": "+"}]
    sides = ["left", "right"]
    laterality = [{"LOWER": ",", "OP": "?"}, space, {"LOWER": {"IN": sides}}, space,
                  {"LOWER": {"IN": ["greater", "more"]}}, space, {"LOWER": "than"}, space, {"LOWER": {"IN": sides}}]
    rules = []
    for label, heads in FINDING_HEADS.items():
        for head in heads:
            words = [token for word in head.split() for token in (space, {"LOWER": word})][1:]
            core = [*number, {"_": {"finding_modifier": True}, "OP": "*"}, *words]
            rules.extend(TargetRule(head, label, pattern=core + tail) for tail in ([], location, laterality))
    rules.extend(TargetRule("enlarged heart", "cardiomegaly", pattern=pattern) for pattern in HEART_ENLARGEMENT)
    return rules


def _section_rules() -> list:
    """Each header followed by a colon, with spaces allowed before the colon ("FINDINGS :", "FINDINGS\\u00a0:" once
    normalised); a single space is no token of its own, more are one."""
    from medspacy.section_detection import SectionRule

    spaces = {"TEXT": {"REGEX": r"^[ \t]+$"}, "OP": "?"}
    return [SectionRule(f"{header}:", category,
                        pattern=[*({"LOWER": w} for w in header.split()), spaces, {"LOWER": ":"}])
            for category, headers in SECTION_HEADERS.items() for header in headers]


@functools.lru_cache(maxsize=1)
def report_pipeline():
    """The spaCy pipeline, built once per process (a second or two)."""
    try:
        import medspacy
        from loguru import logger
        from medspacy.context import ConTextRule
        from spacy.language import Language
    except ImportError as exc:
        raise ExtraNotInstalledError(f"reading reports needs medspaCy: pip install 'medground[reports]' ({exc})") \
            from exc
    logger.disable("PyRuSH")  # PyRuSH logs every sentence boundary at DEBUG level
    nlp = medspacy.load(medspacy_enable=["medspacy_tokenizer", "medspacy_pyrush", "medspacy_target_matcher"])
    nlp.max_length = 10**9  # spaCy's 1,000,000 guards the memory of parsers this pipeline lacks; read_mentions's
    # own limits bound what it is given (windows of window_chars)
    nlp.get_pipe("medspacy_target_matcher").add(_target_rules())
    if not Language.has_factory("medground_trim_mentions"):
        Language.component("medground_trim_mentions", func=_trim_mentions)
    if not Language.has_factory("medground_mark_modifiers"):
        Language.component("medground_mark_modifiers", func=_mark_modifiers)
    nlp.add_pipe("medground_mark_modifiers", before="medspacy_target_matcher")
    nlp.add_pipe("medground_trim_mentions")
    nlp.add_pipe("medspacy_sectionizer", config={"rules": None, "span_attrs": None}).add(_section_rules())
    context = nlp.add_pipe("medspacy_context", config={"rules": None})
    defaults = ConTextRule.from_json(context.DEFAULT_RULES_FILEPATH)
    context.add([rule for rule in defaults if rule.literal not in CHECKLIST_RULES] + _radiology_context_rules())
    return nlp


@dataclass(frozen=True)
class Mention:
    """One finding mention in a report."""

    text: str
    """The finding as written, whitespace collapsed, e.g. "small left pleural effusion"; this is what gets grounded."""
    label: str
    """The finding it names (a key of FINDING_HEADS), e.g. "pleural effusion"."""
    status: str
    """positive, uncertain, negated, hypothetical, historical or family (ConText)."""
    sentence: str
    section: str | None
    """The report section (findings, impression, indication, ...) or None before the first header."""
    start: int
    """Character offset of the mention in the report as it was passed (before invisible characters were removed)."""

    @property
    def kept(self) -> bool:
        """Whether the mention asserts something visible in the image, so it is grounded."""
        return self.status in KEPT_STATUSES and self.section not in REQUEST_SECTIONS

    @property
    def reason(self) -> str:
        """Why a mention is dropped (empty when it is kept)."""
        if self.kept:
            return ""
        if self.status not in KEPT_STATUSES:
            return self.status
        return f"{self.section} section"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
                                start=origin[offset + span.start_char]))
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


def _mark_modifiers(doc):
    """Mark as ``finding_modifier`` the modifier words and line breaks that are at most ``MAX_MODIFIER_RUN`` modifier
    tokens before a head's first word, so that the TargetMatcher's runs of modifiers stay short (one backward pass)."""
    run = None  # modifier tokens between this token and the next head word; None when something else comes first
    for token in reversed(doc):
        modifier = token.is_space or token.lower_ in MODIFIERS
        token._.finding_modifier = modifier and run is not None and run < MAX_MODIFIER_RUN
        if token.lower_ in _HEAD_STARTS:
            run = 0
        elif modifier and run is not None:
            run += 1
        else:
            run = None
    return doc


def _trim_mentions(doc):
    """Mentions without the connectors and line breaks the modifier patterns let them start with ("due to
    atelectasis" -> "atelectasis", a bullet's "- small effusion" -> "small effusion"), and only the part in the
    sentence of their head word: line breaks may fall inside a mention, but "1.5" ending one paragraph and
    "Infiltrates" starting the next are not one finding. Before ConText reads them."""
    from spacy.tokens import Span

    trimmed = []
    for span in doc.ents:
        start, end = _head_sentence_part(span)
        while start < end - 1 and (doc[start].is_space or doc[start].lower_ in CONNECTORS):
            start += 1
        while end > start + 1 and doc[end - 1].is_space:
            end -= 1
        trimmed.append(Span(doc, start, end, label=span.label_))
    doc.ents = trimmed
    return doc


def _head_sentence_part(span) -> tuple[int, int]:
    """Token bounds of the part of ``span`` within one sentence that holds its first head word (the whole span when
    it lies in one sentence)."""
    heads = _HEAD_WORDS.get(span.label_, frozenset())
    start = span.start
    for token in span:
        if token.i > span.start and token.is_sent_start:
            if any(word.lower_ in heads for word in span.doc[start : token.i]):
                return start, token.i
            start = token.i
    return start, span.end
