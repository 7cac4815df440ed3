"""The report reader's robustness: normalised input with offsets into the caller's text, question marks, the
English-only rule, the size/mention/sentence limits, reading in windows (linear time), and a fuzz pass."""

from __future__ import annotations

import random
import time

import pytest
from test_reports import REPORTS

import medground.reports.findings as findings
from medground.errors import ReportError
from medground.reports.findings import (
    MAX_MENTIONS,
    MAX_MENTIONS_ENV,
    MAX_REPORT_CHARS,
    MAX_REPORT_CHARS_ENV,
    MAX_SENTENCE_CHARS,
    MAX_SENTENCE_CHARS_ENV,
    read_mentions,
    read_windows,
    window_chars,
)
from medground.reports.normalise import normalise, require_english
from medground.reports.pipeline import FINDING_HEADS, MAX_MODIFIER_RUN, SECTION_HEADERS

STATUSES = {"positive", "uncertain", "negated", "hypothetical", "historical", "family"}


def statuses(report: str) -> list[tuple[str, str, str | None]]:
    return [(m.text, m.status, m.section) for m in read_mentions(report)]


# --- normalisation: invisible characters, offsets into the caller's text -------------------------------------------

def test_byte_order_mark_keeps_the_first_header():
    report = "\ufeffINDICATION: Pneumonia.\nFINDINGS: Small left pleural effusion."
    pneumonia, effusion = read_mentions(report)
    assert (pneumonia.section, pneumonia.kept) == ("indication", False)
    assert report[pneumonia.start:].startswith("Pneumonia") and report[effusion.start:].startswith("Small left")


@pytest.mark.parametrize("odd", ["\u200b", "\x00", "\u2060", "\u00ad", "\u200e", "\u200f", "\u202e", "\ud800",
                                 "\udfff", "\x7f", "\x9f"])
def test_invisible_character_inside_a_word_does_not_hide_it(odd):
    report = f"FINDINGS: Small pneumo{odd}thorax. No effusion."
    pneumothorax, effusion = read_mentions(report)
    assert (pneumothorax.text, pneumothorax.status) == ("Small pneumothorax", "positive")
    assert report[pneumothorax.start:].startswith("Small pneumo" + odd)
    assert report[effusion.start:].startswith("effusion") and effusion.status == "negated"


def test_offsets_index_the_original_text_after_removed_characters():
    report = ("\ufeff\u200b\x00FINDINGS:\u00a0\u200bMild\u200b cardiomegaly.\ud800 No\u2060 pneumothorax. "
              "\U0001f600 Nodule.")
    found = read_mentions(report)
    assert [(m.text, m.status) for m in found] == \
        [("Mild cardiomegaly", "positive"), ("pneumothorax", "negated"), ("Nodule", "positive")]
    assert [report[m.start] for m in found] == ["M", "p", "N"]
    assert report[found[1].start:].startswith("pneumothorax")


def test_lone_surrogates_do_not_crash():
    for report in ["\ud800", "Pneumothorax \ud800.", "\udc00FINDINGS: Small effusion.\ud83d", "pneumo\ud800thorax"]:
        try:
            found = read_mentions(report)
        except ReportError as exc:
            assert "empty" in str(exc)
        else:
            assert all(m.text.encode("utf-8") and m.sentence.encode("utf-8") for m in found)


@pytest.mark.parametrize("separator", ["\x0c", "\x0b", "\u2028", "\u2029", "\x85"])
def test_line_separators_become_line_breaks_not_nothing(separator):
    report = f"FINDINGS: Small effusion.{separator}IMPRESSION:{separator}Pneumothorax."
    assert statuses(report) == [("Small effusion", "positive", "findings"),
                                ("Pneumothorax", "positive", "impression")]


@pytest.mark.parametrize("space", ["\u00a0", " ", "  ", "\u202f", "\u2007", "\t"])
def test_space_before_the_colon_of_a_header(space):
    assert statuses(f"INDICATION{space}: Pneumonia.\nFINDINGS{space}: No pneumothorax.") == \
        [("Pneumonia", "positive", "indication"), ("pneumothorax", "negated", "findings")]


def test_normalise_maps_every_character_back():
    report = "\ufeffA\u00a0b\u200bc\x00d\ud800e\u2028f"
    text, origin = normalise(report)
    assert text == "A bcde\nf"
    assert [report[i] for i in origin] == ["A", "\u00a0", "b", "c", "d", "e", "\u2028", "f"]
    assert normalise("plain text") == ("plain text", range(10))


def test_fuzz_regression_mention_does_not_run_across_sentences():
    """Found by the fuzz pass: the modifier patterns accept line breaks, so a number ending one paragraph and a
    finding starting the next were one mention ("1.5 infiltrates") whose sentence did not contain it."""
    assert [(m.text, m.sentence) for m in read_mentions("RECOMMENDATION:\npicc line oedema\n1.5\n\n\n\ninfiltrates")] \
        == [("picc line", "picc line oedema 1.5"), ("oedema", "picc line oedema 1.5"), ("infiltrates", "infiltrates")]
    assert [m.text for m in read_mentions("FINDINGS: Catheter tip 1.5\n\ninfiltrates in the left lung.")] == \
        ["Catheter", "infiltrates in the left lung"]
    assert [m.text for m in read_mentions("There is a small left\npleural effusion.")] == \
        ["small left pleural effusion"]  # a wrapped line within one sentence still joins


# --- question marks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("report", "expected"), [
    ("Pneumothorax?", [("Pneumothorax", "uncertain")]),
    ("Pneumothorax? No.", [("Pneumothorax", "negated")]),
    ("Pneumothorax? no", [("Pneumothorax", "negated")]),
    ("Pneumothorax?\nNone.", [("Pneumothorax", "negated")]),
    ("Pneumothorax? Yes.", [("Pneumothorax", "positive")]),
    ("Pneumothorax or effusion? Negative.", [("Pneumothorax", "negated"), ("effusion", "negated")]),
    ("Pneumothorax or effusion?", [("Pneumothorax", "uncertain"), ("effusion", "uncertain")]),
    ("FINDINGS: Pneumothorax? No effusion.", [("Pneumothorax", "uncertain"), ("effusion", "negated")]),
    ("Effusion?? Small nodule.", [("Effusion", "uncertain"), ("Small nodule", "positive")]),
    ("Small effusion. Pneumothorax\uff1f", [("Small effusion", "positive"), ("Pneumothorax", "uncertain")]),
    ("Cough, ?pneumonia. Nodule.", [("pneumonia", "uncertain"), ("Nodule", "positive")]),
    ("No pneumothorax?", [("pneumothorax", "negated")]),
    ("Possible effusion? Yes.", [("effusion", "uncertain")]),
    ("Small effusion; pneumothorax?", [("Small effusion", "positive"), ("pneumothorax", "uncertain")]),
    ("Pneumothorax. Is there an effusion? No.", [("Pneumothorax", "positive"), ("effusion", "negated")]),
])
def test_question_marks(report, expected):
    assert [(m.text, m.status) for m in read_mentions(report)] == expected


def test_question_in_the_indication_is_still_not_grounded():
    (pneumonia, consolidation) = read_mentions("INDICATION: ?pneumonia\nFINDINGS: Right lower lobe consolidation.")
    assert (pneumonia.status, pneumonia.kept) == ("uncertain", False) and consolidation.kept


# --- English only -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("report", [
    "Kein Pneumothorax", "Kein Pneumothorax.", "Pas de pneumothorax", "Pas de pneumothorax.",
    "BEFUND: Kein Pneumothorax. Kleiner Pleuraerguss links.", "Pneumothorax links.",
    "FINDINGS: Pas de pneumothorax. Opacité du lobe inférieur droit.",
    "No hay neumotórax ni derrame pleural.", "Sin neumotórax.", "Nessun pneumotorace. Versamento pleurico a destra.",
    "Geen pneumothorax. Er is een kleine effusie.", "Sem pneumotórax.", "Пневмоторакс не выявлен.", "无气胸。",
])
def test_reports_not_in_english_are_refused(report):
    with pytest.raises(ReportError, match="understands English reports only"):
        read_mentions(report)


@pytest.mark.parametrize("report", [case[1] for case in REPORTS] + [
    "Pneumothorax.", "Mild cardiomegaly.", "FINDINGS: Nodule 5 μm.", "Small effusion; LA enlargement.",
    "Pneumothorax? No.", "Consolidation in the right lower lobe, de novo.",
    "Small effusion in a patient with Sjögren syndrome.",
])
def test_english_reports_pass_the_language_check(report):
    require_english(report)
    read_mentions(report)


# --- limits -----------------------------------------------------------------------------------------------------

def test_report_size_limit_is_named_and_can_be_raised(monkeypatch):
    with pytest.raises(ReportError, match=f"100,001 characters, over the limit of {MAX_REPORT_CHARS:,}.*"
                                          f"{MAX_REPORT_CHARS_ENV}"):
        read_mentions("x" * (MAX_REPORT_CHARS + 1))
    report = "FINDINGS: Small left pleural effusion."
    monkeypatch.setenv(MAX_REPORT_CHARS_ENV, "20")
    with pytest.raises(ReportError, match=f"over the limit of 20.*{MAX_REPORT_CHARS_ENV}"):
        read_mentions(report)
    monkeypatch.setenv(MAX_REPORT_CHARS_ENV, "40")
    assert [m.text for m in read_mentions(report)] == ["Small left pleural effusion"]
    monkeypatch.setenv(MAX_REPORT_CHARS_ENV, "lots")
    with pytest.raises(ReportError, match=f"{MAX_REPORT_CHARS_ENV}='lots' is not an integer"):
        read_mentions(report)


def test_a_million_characters_is_a_report_error_not_spacy_e088():
    started = time.perf_counter()
    with pytest.raises(ReportError, match="over the limit of 100,000"):
        read_mentions("No pneumothorax. " * 70_000)
    assert time.perf_counter() - started < 1  # refused before any reading


def test_mention_limit_is_named_and_can_be_raised(monkeypatch):
    assert len(read_mentions("Small nodule. " * MAX_MENTIONS)) == MAX_MENTIONS
    with pytest.raises(ReportError, match=f"more than {MAX_MENTIONS} finding mentions.*'Small nodule' at character "
                                          f"{14 * MAX_MENTIONS:,}.*{MAX_MENTIONS_ENV}"):
        read_mentions("Small nodule. " * (MAX_MENTIONS + 1))
    monkeypatch.setenv(MAX_MENTIONS_ENV, "100")
    assert len(read_mentions("Small nodule. " * (MAX_MENTIONS + 1))) == MAX_MENTIONS + 1


def test_sentence_limit_is_named_and_can_be_raised(monkeypatch):
    unbroken = "FINDINGS: " + "small effusion and " * 120  # 2,290 characters without a full stop
    with pytest.raises(ReportError, match=f"a sentence at character 0 has 2,289 characters, over the limit of "
                                          f"{MAX_SENTENCE_CHARS:,}.*{MAX_SENTENCE_CHARS_ENV}"):
        read_mentions(unbroken)
    wrapped = "FINDINGS: No pneumothorax.\n" + "small effusion and\n" * 120 + "edema."  # PyRuSH joins wrapped lines
    with pytest.raises(ReportError, match=f"a sentence at character 27 has 2,286 characters, over the limit of "
                                          f"{MAX_SENTENCE_CHARS:,}"):
        read_mentions(wrapped)
    with pytest.raises(ReportError, match="at character 14 has 3,000 characters"):
        read_mentions("Pneumothorax. " + "x" * 3000)  # one very long token
    monkeypatch.setenv(MAX_SENTENCE_CHARS_ENV, "5000")
    monkeypatch.setenv(MAX_MENTIONS_ENV, "1000")
    assert len(read_mentions(unbroken)) == 120 and len(read_mentions(wrapped)) == 122


def test_a_sentence_longer_than_a_window_is_refused_at_once():
    started = time.perf_counter()
    report = "Small effusion. " + "no pneumothorax and " * 4900  # 98 KB, one sentence after the first
    with pytest.raises(ReportError, match=f"a sentence at character 16 has more than {window_chars(2000) - 200:,} "
                                          f"characters, over the limit of {MAX_SENTENCE_CHARS:,}"):
        read_mentions(report)
    assert time.perf_counter() - started < 5  # one window read, not the whole report


# --- reading in windows -----------------------------------------------------------------------------------------

ALL_REPORTS = "\n".join(case[1] for case in REPORTS) + "\n"


def test_windowed_reading_equals_reading_the_whole_report(monkeypatch):
    monkeypatch.setenv(MAX_MENTIONS_ENV, "200")
    monkeypatch.setattr(findings, "MIN_WINDOW_CHARS", 10**9)
    whole = read_mentions(ALL_REPORTS)
    monkeypatch.setattr(findings, "MIN_WINDOW_CHARS", 0)
    monkeypatch.setenv(MAX_SENTENCE_CHARS_ENV, "150")  # windows of 500 characters
    assert len(list(read_windows(ALL_REPORTS, range(len(ALL_REPORTS)), 150))) > 5
    windowed = read_mentions(ALL_REPORTS)
    assert windowed == whole and len(whole) == sum(len(case[2]) for case in REPORTS)


def test_sections_carry_across_windows(monkeypatch):
    monkeypatch.setattr(findings, "MIN_WINDOW_CHARS", 0)
    monkeypatch.setenv(MAX_SENTENCE_CHARS_ENV, "80")  # windows of 360 characters
    report = "INDICATION: Fever.\n" + "Cough for three days. " * 30 + "Rule out pneumonia.\n" + \
        "FINDINGS: Clear lungs. " * 30 + "Small left pleural effusion."
    assert len(list(read_windows(report, range(len(report)), 80))) > 4
    assert statuses(report) == [("pneumonia", "uncertain", "indication"),
                                ("Small left pleural effusion", "positive", "findings")]


def test_windows_tile_the_text_at_sentence_starts():
    text = "  \n" + ALL_REPORTS * 8
    parts = [(offset + begin, offset + end, doc) for offset, doc, begin, end in
             read_windows(text, range(len(text)), MAX_SENTENCE_CHARS)]
    assert parts[0][0] == 3 and parts[-1][1] == len(text) and len(parts) > 3
    for (_, end, doc), (following, _, _) in zip(parts, parts[1:]):
        assert len(doc.text) <= window_chars(MAX_SENTENCE_CHARS) + 1000
        assert text[end:following].isspace() or end == following
        assert text[following - 1] == "\n" and text[following].isalpha()  # a line that starts with a letter


def test_the_pipeline_never_reads_more_than_a_window(monkeypatch):
    """Reading time is linear in the report's length: the pipeline (whose ConText is quadratic in what it reads) is
    only ever given windows of bounded size, which overlap little."""
    pipeline = findings.report_pipeline()
    lengths = []

    def recording(text):
        lengths.append(len(text))
        return pipeline(text)

    monkeypatch.setattr(findings, "report_pipeline", lambda: recording)
    monkeypatch.setenv(MAX_MENTIONS_ENV, "10000")
    report = ALL_REPORTS * 10  # 25 KB
    found = read_mentions(report)
    assert len(found) == 10 * sum(len(case[2]) for case in REPORTS)
    assert max(lengths) <= window_chars(MAX_SENTENCE_CHARS) + 1000 and len(lengths) > 5
    assert len(report) <= sum(lengths) < 1.5 * len(report)


def test_long_modifier_runs_are_cut_so_matching_stays_linear():
    """Found while timing odd inputs: "- - - ..." or "small small ..." (2,000 characters) took the TargetMatcher
    seconds, as it extended a partial match from every modifier through the whole run. Only the last
    MAX_MODIFIER_RUN modifiers before a head word are modifiers now."""
    pipeline = findings.report_pipeline()
    doc = pipeline("small " * 300 + "effusion. " + "- " * 500 + "Nodule.")
    assert sum(token._.finding_modifier for token in doc) == 2 * MAX_MODIFIER_RUN  # before each head
    assert [m.text for m in read_mentions("small " * 300 + "effusion.")] == \
        [" ".join(["small"] * MAX_MODIFIER_RUN + ["effusion"])]
    report = "Moderate to large right-sided pleural\neffusion, left greater than right."
    assert [m.text for m in read_mentions(report)] \
        == ["Moderate to large right-sided pleural effusion, left greater than right"]


# --- fuzz -------------------------------------------------------------------------------------------------------

PIECES = [
    *(f"{header.upper()}:" for headers in SECTION_HEADERS.values() for header in headers), "FINDINGS :",
    "IMPRESSION\u00a0:", "findings:", *(head for heads in FINDING_HEADS.values() for head in heads),
    "small", "left", "right", "bilateral", "lower lobe", "mild", "moderate", "heart size is enlarged",
    "no", "No", "without", "no evidence of", "cannot be excluded", "has resolved", "possible", "may represent",
    "history of", "rule out", "unchanged", "stable", "and", "or", "but", "with", "the", "in the", "at the base",
    ".", ",", ";", ":", "?", "??", "!", "-", "(", ")", "1.", "2.", "4 cm", "1.5", "\n", "\n\n", "\r\n", "\t", "  ",
    "\ufeff", "\u00a0", "\u200b", "\x00", "\u2060", "\u200e", "\u200f", "\u202e", "\u2028", "\x0c", "\x85",
    "\ud800", "\udfff", "\U0001f600", "\U0001f468\u200d\u2695\ufe0f", "\u0301", "\uff1f", "é", "μm", "ß", "Kein",
    "pas de", "\u05e9\u05dc\u05d5\u05dd", "\u6c14\u80f8",
]


ENGLISH_PIECES = [piece for piece in PIECES if piece.isascii() or not any(char.isalpha() for char in piece)
                  if piece not in ("Kein", "pas de")]


def fuzz_report(rng: random.Random, pieces: list[str] = PIECES) -> str:
    """A random report-like text: headers, finding words, cues, punctuation and unicode oddities, with now and then
    a very long token, glued with or without spaces."""
    parts = []
    for _ in range(rng.randint(0, 40)):
        roll = rng.random()
        if roll < 0.01:
            parts.append(rng.choice("ax.\n ") * rng.randint(100, 2500))
        elif roll < 0.05:
            parts.append(chr(rng.randint(0, 0x2FFFF)))
        else:
            parts.append(rng.choice(pieces))
        parts.append(rng.choice([" ", " ", " ", "", "\n"]))
    return "".join(parts)


def check_mentions(report: str, found: list) -> None:
    """Each mention's text is what the (normalised) report says at its offset; statuses and sections are known."""
    last = -1
    for mention in found:
        assert 0 <= mention.start < len(report) and mention.start >= last
        last = mention.start
        rest = " ".join(normalise(report[mention.start:])[0].split())
        assert mention.text and rest.startswith(mention.text), (report, mention)
        assert mention.status in STATUSES and mention.label in FINDING_HEADS
        assert mention.section is None or mention.section in SECTION_HEADERS
        assert mention.text in mention.sentence, (report, mention)
        mention.to_json()


def check_cheap_path(report: str) -> None:
    """What read_mentions does before spaCy: normalisation and its offset map, and the language check."""
    text, origin = normalise(report)
    assert len(origin) == len(text) and list(origin) == sorted(set(origin))
    normal = {char: normalise(char)[0] for char in set(report)}
    assert all(normal[report[i]] == char for i, char in zip(origin, text))
    kept = set(origin)
    assert all(not normal[char] for i, char in enumerate(report) if i not in kept)  # the rest is removed
    text.encode("utf-8")
    try:
        require_english(text)
    except ReportError as exc:
        assert "English reports only" in str(exc)


FUZZ_CHEAP, FUZZ_FULL = 10_000, 1_000


def test_fuzz_reports_read_or_are_refused_cleanly():
    """10,000 random texts through the pre-spaCy path, the first 1,000 also through the whole pipeline (10-20 ms a
    report: all 10,000 would take minutes): a ReportError or consistent mentions, never another exception."""
    rng = random.Random(20240611)
    outcomes = {"mentions": 0, "none": 0, "refused": 0}
    for i in range(FUZZ_CHEAP):
        report = fuzz_report(rng)
        check_cheap_path(report)
        if i >= FUZZ_FULL:
            continue
        try:
            found = read_mentions(report)
        except ReportError as exc:
            assert str(exc)
            outcomes["refused"] += 1
            continue
        check_mentions(report, found)
        outcomes["mentions" if found else "none"] += 1
    assert outcomes["mentions"] > FUZZ_FULL // 2 and outcomes["refused"] > 10, outcomes


def test_windows_read_random_text_as_the_whole_text(monkeypatch):
    """Regression: PyRuSH's split at a window's start depended on the text before it ("2." starting a text is a
    sentence of its own; begins and ends are paired in order), so windows cut at any sentence start disagreed with
    the whole text on random text. Windows now start at lines that start with a letter and read sentences before
    their own."""
    monkeypatch.setenv(MAX_MENTIONS_ENV, "100000")
    monkeypatch.setenv(MAX_SENTENCE_CHARS_ENV, "250")  # windows of 700 characters
    rng = random.Random(7)
    compared = 0
    for _ in range(20):
        report = "".join(" ".join(rng.choice(ENGLISH_PIECES) for _ in range(rng.randint(1, 12)))
                         + rng.choice([". ", ".\n", "?\n", ".\n\n", "; ", "! "]) for _ in range(rng.randint(10, 40)))
        monkeypatch.setattr(findings, "MIN_WINDOW_CHARS", 10**9)
        try:
            whole = read_mentions(report)
        except ReportError:
            continue
        monkeypatch.setattr(findings, "MIN_WINDOW_CHARS", 0)
        assert read_mentions(report) == whole
        compared += len(report) > 1400  # read in three windows or more
    assert compared >= 6
