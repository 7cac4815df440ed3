"""The medSpaCy pipeline a report is read with, and the vocabulary it matches.

On a blank spaCy ``en`` pipeline (no model download): medSpaCy's tokenizer, PyRuSH sentence splitter, TargetMatcher
(the finding vocabulary below, as spaCy token patterns), Sectionizer (chest X-ray report headers) and ConText (its
default rules plus the radiology phrasings below). Only the last ``MAX_MODIFIER_RUN`` modifiers before a head word can
start a mention, so the TargetMatcher stays linear; mentions are cut to the sentence of their head word (line breaks
may fall inside one, wrapped lines, but not a paragraph break).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from medground.extras import extra_missing
from medground.reports.normalise import word_set

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
MODIFIERS = word_set("""
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
LOCATION_WORDS = word_set("""
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
CHECKLIST_RULES = frozenset({": no", ": none"})
"""ConText defaults for clinical-note checklists ("Fever: no") that misfire on report headers: in "FINDINGS: No
pneumothorax" the backward ": no" outranks the forward "no", and the pneumothorax would come out positive."""
_HEAD_WORDS = {label: frozenset(head.split()[-1] for head in heads)
               | ({"enlarged"} if label == "cardiomegaly" else set()) for label, heads in FINDING_HEADS.items()}
"""The last word of each finding's heads (and "enlarged" of "heart size is enlarged"): the word a mention is about."""
_HEAD_STARTS = frozenset(head.split()[0] for heads in FINDING_HEADS.values() for head in heads) | {"enlarged"}
"""First words of heads ("enlarged" of "mildly enlarged heart"): modifiers are words before one of these."""


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
        raise extra_missing("reports", "reading reports", exc) from exc
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
