"""``medground ground`` (phrases in one image) and ``medground report`` (every finding a report asserts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medground.cli.common import Parents, command, config_of, model_of


def add(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """Register ``ground`` and ``report`` on ``commands``, with the shared flags of ``parents``."""
    ground = command(commands, "ground", run_ground, parents=(parents["model"],))
    ground.add_argument("image", type=Path, help="PNG, JPEG, TIFF or DICOM radiograph")
    ground.add_argument("phrases", nargs="+", metavar="PHRASE", help="one or more report phrases")
    ground.add_argument("--out", type=Path, required=True, help="output folder")

    report = command(commands, "report", run_report, parents=(parents["model"],))
    report.add_argument("image", type=Path, help="PNG, JPEG, TIFF or DICOM radiograph")
    report.add_argument("--report", required=True, metavar="FILE|-", help="the report as UTF-8 text; - reads stdin")
    report.add_argument("--out", type=Path, required=True, help="output folder")


def run_ground(args: argparse.Namespace) -> int:
    """Ground phrases in one image and write heatmaps, overlays, JSON.

    Ground each PHRASE in IMAGE. Per phrase writes to --out, under a name unique to (image, phrase, model,
    settings): the original-size heatmap (.npy, NaN outside the model's centre crop), an overlay (.png) and a
    JSON with boxes, scores, timings and the effective config.
    """
    from medground.geometry import prepare_pixels
    from medground.grounder import Grounder
    from medground.images import read_image
    from medground.outputs import GroundingFiles, check_writable_folder, grounding_settings
    from medground.text import unique_phrases

    phrases = unique_phrases(args.phrases)
    if len(phrases) < len(args.phrases):
        print(f"note: {len(args.phrases) - len(phrases)} repeated phrase(s) grounded once", file=sys.stderr)
    pixels = read_image(args.image)
    check_writable_folder(args.out)
    model = model_of(args)
    grounder = Grounder(model, config_of(args, model), progress=True, precision=args.precision)
    files = GroundingFiles(args.out, args.image, grounding_settings(args.model, grounder.config))
    record = {"image": str(args.image), "model": str(args.model), "preset": args.preset}
    for result in grounder.ground(prepare_pixels(pixels, model.image_size), phrases):
        base = files.phrase(pixels, result, record)
        print(f"{result.phrase!r}: {result.where()} -> {base}.{{npy,png,json}}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Ground every positive finding of a radiology report in one image.

    Read the report's sentences and finding mentions (medspaCy: sentence splitter, sections, ConText negation
    and uncertainty), keep the positive and uncertain findings (uncertain ones flagged), drop negated,
    hypothetical and historical ones and those of the indication/history/comparison sections, and ground every
    kept finding with one shared inversion of IMAGE. Writes to --out: one heatmap per finding (.npy), an overlay
    of all findings with a legend (.png) and a JSON of everything, including what was not grounded and why,
    under names unique to (image, report, model, settings). English reports only. Needs medground[reports].
    """
    from medground.geometry import prepare_pixels
    from medground.grounder import Grounder
    from medground.images import read_image
    from medground.outputs import GroundingFiles, check_writable_folder, grounding_settings
    from medground.reports import ground_report
    from medground.reports.findings import read_mentions, read_report

    report = read_report(args.report)
    pixels = read_image(args.image)
    read_mentions(report)  # a missing medspaCy or an unreadable report fails here, before the model loads
    check_writable_folder(args.out)
    model = model_of(args)
    grounder = Grounder(model, config_of(args, model), progress=True, precision=args.precision)
    grounding = ground_report(grounder, prepare_pixels(pixels, model.image_size), report)
    files = GroundingFiles(args.out, args.image, grounding_settings(args.model, grounder.config))
    written = files.report(pixels, grounding, {"image": str(args.image), "model": str(args.model),
                                               "preset": args.preset})
    for finding in grounding.findings:
        print(f"{finding.number}. [{finding.status}] {finding.text!r}: {finding.result.where()}")
    for mention in grounding.dropped:
        print(f"-  [{mention.reason}] {mention.text!r}: not grounded")
    print(grounding.message)
    print(f"wrote {', '.join(str(path) for path in written[:2])}" + (f" and {len(written) - 2} heatmap(s) (.npy)"
                                                                   if len(written) > 2 else ""))
    return 0
