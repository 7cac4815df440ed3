"""MkDocs hook: the command-line reference (docs/reference/cli.md) rendered from medground's own argparse parser.

The page's source holds only an introduction and the marker ``<!-- cli-reference -->``; at build time the marker is
replaced by ``medground --help`` and every subcommand's ``--help``, walked from ``medground.cli.build_parser()``
(nested ones such as ``toy eval`` included). A subcommand added to the parser appears on the next build, and one that
is renamed or removed breaks the links to its heading, which ``mkdocs build --strict`` reports.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"
WIDTH = "100"
"""Columns argparse wraps the help text to (it reads ``COLUMNS``), so the page does not depend on the terminal."""


def subcommands(parser: argparse.ArgumentParser, prefix: str) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(full command, one-line summary, parser) for every subcommand below ``parser``, depth first, in the order
    ``--help`` lists them."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:  # an alias of a subcommand already listed
                continue
            seen.add(id(sub))
            command = f"{prefix} {name}"
            yield command, summaries.get(name, ""), sub
            yield from subcommands(sub, command)


def help_text(parser: argparse.ArgumentParser) -> str:
    """``parser``'s ``--help`` at a fixed width and without colour."""
    saved = {key: os.environ.get(key) for key in ("COLUMNS", "NO_COLOR")}
    os.environ["COLUMNS"], os.environ["NO_COLOR"] = WIDTH, "1"
    try:
        return parser.format_help().rstrip()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def fence(text: str) -> str:
    """``text`` as a plain-text code block."""
    return f"```text\n{text}\n```"


def render() -> str:
    """The reference: a table of the subcommands, then ``medground --help`` and one section per subcommand."""
    from medground.cli import build_parser

    parser = build_parser()
    commands = list(subcommands(parser, parser.prog))
    lines = ["| command | what it does |", "|---|---|"]
    for command, summary, _ in commands:
        lines.append(f"| [`{command}`](#{anchor(command)}) | {summary.replace('|', '&#124;')} |")
    parts = ["\n".join(lines), f"## {parser.prog}\n\n{fence(help_text(parser))}"]
    for command, _, sub in commands:
        parts.append(f"## {command}\n\n{fence(help_text(sub))}")
    return "\n\n".join(parts)


def anchor(command: str) -> str:
    """The heading id MkDocs' toc gives ``## {command}``: lower case, words joined by hyphens."""
    return "-".join(command.lower().split())


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the marker on the CLI reference page; other pages pass unchanged."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} lost its marker {MARKER}: the CLI reference has nowhere to go")
    return markdown.replace(MARKER, render())
