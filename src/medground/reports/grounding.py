"""Ground what a report asserts in its image: every kept finding shares one inversion of the image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from medground.errors import PhraseError
from medground.geometry import PreparedImage, prepare_image
from medground.grounder import Grounder
from medground.images import ImageInput
from medground.reports.findings import read_mentions
from medground.results import TYPED_PHRASE, GroundedFinding, Mention, ReportGrounding
from medground.text import phrase_tokens


def ground_report(grounder: Grounder, image: ImageInput | PreparedImage, report: str,
                  max_findings: int | None = None) -> ReportGrounding:
    """Ground the positive and uncertain findings of ``report``; a finding written twice (FINDINGS and IMPRESSION)
    is grounded once, as positive if either mention is. With nothing to ground, no inversion runs; with more than
    ``max_findings`` (a server's bound on one query), nothing runs and the error says so.

    Args:
        grounder: the model and recipe.
        image: as ``Grounder.ground`` takes it; it is read before the report, so a bad image fails first.
        report: the report's text (English).
        max_findings: the most findings one call grounds; None: no bound.

    Raises:
        ReportError: a report that is not text or is empty.
        PhraseError: more findings than ``max_findings``.
        ExtraNotInstalledError: medSpaCy is not installed (``medground[reports]``).
    """
    prepared = prepare_image(image, grounder.model.image_size)  # a bad image fails first, whatever the report says
    mentions = [_groundable(grounder, mention) for mention in read_mentions(report)]
    kept: dict[str, Mention] = {}
    for mention in mentions:
        if mention.kept:
            first = kept.setdefault(mention.text.lower(), mention)
            if mention.status == "positive" and first.status != "positive":
                kept[mention.text.lower()] = replace(first, status="positive")
    dropped = [mention for mention in mentions if not mention.kept]
    if max_findings is not None and len(kept) > max_findings:
        raise PhraseError(f"the report asserts {len(kept)} findings; at most {max_findings} are grounded per query")
    if not kept:
        return ReportGrounding(findings=[], dropped=dropped, report=report)
    results = grounder.ground(prepared, [mention.text for mention in kept.values()])
    findings = [GroundedFinding(number, m.text, m.status, result, m.label, m.sentence, m.section)
                for number, (m, result) in enumerate(zip(kept.values(), results), start=1)]
    return ReportGrounding(findings=findings, dropped=dropped, report=report)


def _groundable(grounder: Grounder, mention: Mention) -> Mention:
    """A kept mention the text encoder cannot take (too long, special tokens) is dropped with the reason, so one
    odd mention does not stop the others from being grounded."""
    if not mention.kept:
        return mention
    try:
        phrase_tokens(grounder.model.tokenizer, mention.text, grounder.config.token_rule)
    except PhraseError as exc:
        return replace(mention, reason=f"not groundable: {exc}")
    return mention


def ground_phrases(grounder: Grounder, image: ImageInput | PreparedImage, phrases: Sequence[str]) -> ReportGrounding:
    """Phrases grounded as given (no negation reading), in the same form as a report's findings.

    Args:
        grounder: the model and recipe.
        image: as ``Grounder.ground`` takes it.
        phrases: the phrases, numbered in order; a repeated one is grounded once.
    """
    unique = list(dict.fromkeys(phrases))
    results = grounder.ground(image, unique)
    findings = [GroundedFinding(number, phrase, TYPED_PHRASE, result)
                for number, (phrase, result) in enumerate(zip(unique, results), start=1)]
    return ReportGrounding(findings=findings, dropped=[])
