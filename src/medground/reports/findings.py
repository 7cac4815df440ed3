"""Report text -> finding mentions with a status, through medspaCy on a blank spaCy ``en`` pipeline (no model download).

The pipeline: medspaCy's tokenizer, PyRuSH sentence splitter, TargetMatcher (the finding vocabulary below, as spaCy
token patterns), Sectionizer (chest X-ray report headers) and ConText (its default rules plus the radiology phrasings
below). A mention is kept for grounding when ConText finds it neither negated, hypothetical, historical nor about
family, and it does not sit in a section that describes the request rather than the image (indication, history,
comparison, technique).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medground.errors import ExtraNotInstalledError, ReportError
from medground.results import Mention


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


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

    Token.set_extension("finding_modifier", getter=lambda t: t.is_space or t.lower_ in MODIFIERS, force=True)
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
    from medspacy.section_detection import SectionRule

    return [SectionRule(f"{header}:", category, pattern=[*({"LOWER": w} for w in header.split()), {"LOWER": ":"}])
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
    nlp.get_pipe("medspacy_target_matcher").add(_target_rules())
    if not Language.has_factory("medground_trim_mentions"):
        Language.component("medground_trim_mentions", func=_trim_mentions)
    nlp.add_pipe("medground_trim_mentions")
    nlp.add_pipe("medspacy_sectionizer", config={"rules": None, "span_attrs": None}).add(_section_rules())
    context = nlp.add_pipe("medspacy_context", config={"rules": None})
    defaults = ConTextRule.from_json(context.DEFAULT_RULES_FILEPATH)
    context.add([rule for rule in defaults if rule.literal not in CHECKLIST_RULES] + _radiology_context_rules())
    return nlp


def dropped_reason(status: str, section: str | None) -> str:
    """Why a mention is not grounded (empty when it is): its status, or a section that describes the request."""
    if status not in KEPT_STATUSES:
        return status
    return f"{section} section" if section in REQUEST_SECTIONS else ""


MAX_REPORT_BYTES = 100_000
"""A chest X-ray report is a few thousand characters (MIMIC-CXR's longest are under 10 KB)."""
MAX_REPORT_BYTES_ENV = "MEDGROUND_MAX_REPORT_BYTES"


def read_report(source: str | Path) -> str:
    """A report from a UTF-8 file (a byte-order mark is accepted), or from standard input for ``-``."""
    from medground.text_input import env_limit, read_text

    limit = env_limit(MAX_REPORT_BYTES_ENV, MAX_REPORT_BYTES, ReportError)
    return read_text(source, "report", ReportError, limit, f"; set {MAX_REPORT_BYTES_ENV} to read a longer one")


def read_mentions(report: str) -> list[Mention]:
    """Every finding mention of ``report``, in reading order, with its status and section."""
    if not isinstance(report, str):
        raise ReportError(f"a report must be text, got {type(report).__name__}")
    if not report.strip():
        raise ReportError("the report is empty: paste or pass the report's text (e.g. its FINDINGS and IMPRESSION)")
    doc = report_pipeline()(report)
    mentions = []
    for span in doc.ents:
        status = next((name for name, attribute in STATUS_ATTRIBUTES if getattr(span._, attribute)), "positive")
        mentions.append(Mention(text=" ".join(span.text.split()), label=span.label_, status=status,
                                sentence=" ".join(span.sent.text.split()), section=span[0]._.section_category,
                                start=span.start_char, reason=dropped_reason(status, span[0]._.section_category)))
    return mentions


def _trim_mentions(doc):
    """Mentions without the connectors and line breaks the modifier patterns let them start with ("due to
    atelectasis" -> "atelectasis", a bullet's "- small effusion" -> "small effusion"), before ConText reads them."""
    from spacy.tokens import Span

    trimmed = []
    for span in doc.ents:
        start = span.start
        while start < span.end - 1 and (doc[start].is_space or doc[start].lower_ in CONNECTORS):
            start += 1
        trimmed.append(Span(doc, start, span.end, label=span.label_))
    doc.ents = trimmed
    return doc
