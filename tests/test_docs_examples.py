"""The documentation's examples run: every fenced python / bash / sh / console block of README.md and docs/**/*.md.

A block is either run here or marked, on the line just before its fence, as one that cannot run here:

    <!-- example: parse-only (the reason, e.g. needs the paper's weights) -->

Marked blocks are only parsed (python: ``compile``; shell: ``bash -n``); the reason is required. Every other block
runs (``<!-- example: runs ... -->`` may say what it needs, as a note), page by page, in a fresh temporary folder that
holds ``cxr.png`` (the phantom ``docs/pictures.py`` draws the site's pictures from), ``report.txt`` (a report of that
phantom, ``pictures.REPORT``) and ``nih-mini`` (a copy of tests/data/nih-mini):

- python blocks of one page run in order in one namespace, like a notebook, in this process;
- shell blocks run with ``bash`` (``set -euo pipefail``), the virtualenv's bin first on PATH; in console blocks
  the lines after a ``$ `` prompt are the commands and the rest is output.

An unmarked shell block that would change this machine or never end (pip, make, apt-get, ray start, medground
serve, ...) fails without running: mark it. ``mkdocs build --strict`` is not run here: ``make docs`` runs it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LANGUAGES = {"python": "python", "py": "python", "python3": "python", "bash": "shell", "sh": "shell",
             "shell": "shell", "console": "console"}
"""Fence info strings the collector takes, and how each is run; other fences (text, json, yaml) are left alone."""
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`{]*)")
MARK = re.compile(r"^\s*<!--\s*example:\s*(?P<body>.*?)\s*-->\s*$")
PARSE_ONLY = re.compile(r"parse-only\s*\((?P<reason>.*)\)$")
MARK_START = re.compile(r"^\s*<!--\s*example:")
RUNS = re.compile(r"runs?\b")
"""``<!-- example: runs ... -->`` may say what a block needs to run (free text); the block runs as unmarked ones do."""
UNSAFE = re.compile(r"(^|[\s;&|(`$])(pip3?|make|apt-get|apt|sudo|curl|wget|git|docker|ray\s+start|ray\s+stop"
                    r"|medground\s+serve|python3?\s+-m\s+pip)(?=\s|$)", re.MULTILINE)
"""Shell commands that change this machine (installing, building environments, starting clusters), need the
network, or never end (a server): an unmarked block with one fails without running."""
BLOCK_SECONDS = 300
VENV_BIN = REPO / ".venv" / "bin"


@dataclass(frozen=True)
class Block:
    """One fenced example: where it is, its kind (python, shell, console), its code and its marker."""

    page: Path
    line: int
    """1-based line of the opening fence."""
    kind: str
    code: str
    mark: str | None
    """The marker's kind (``parse-only``), or None when the block runs."""
    reason: str

    @property
    def where(self) -> str:
        return f"{shown(self.page)}:{self.line}"

    def shell(self) -> str:
        """The shell commands of a shell or console block."""
        return console_commands(self.code) if self.kind == "console" else self.code


def shown(page: Path) -> str:
    """A page's path from the repository's root (as given when it lies elsewhere)."""
    return str(page.relative_to(REPO)) if page.is_relative_to(REPO) else str(page)


def console_commands(text: str) -> str:
    """The commands of a console transcript: lines after a ``$ `` prompt, with their ``\\`` continuations."""
    commands, continued = [], False
    for line in text.splitlines():
        if continued or line.startswith("$ "):
            command = line if continued else line[2:]
            commands.append(command)
            continued = command.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def blocks_of(page: Path) -> list[Block]:
    """Every collected block of a Markdown page, in order; a marker with an unknown kind, no reason, or no block of
    a collected kind after it is an error."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, number = [], 0
    while number < len(lines):
        match = FENCE.match(lines[number])
        if match is None:
            if MARK_START.match(lines[number]):
                after = lines[number + 1] if number + 1 < len(lines) else ""
                fence = FENCE.match(after)
                if fence is None or fence["info"].lower() not in LANGUAGES:
                    raise ValueError(f"{shown(page)}:{number + 1}: an example marker must stand on the "
                                     "line just before a python, bash, sh or console fence")
            number += 1
            continue
        indent, fence, info = len(match["indent"]), match["fence"], match["info"].lower()
        end = number + 1
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = "\n".join(line[indent:] if line.startswith(" " * indent) else line.lstrip()
                         for line in lines[number + 1:end])
        if info in LANGUAGES:
            mark, reason = marker(page, lines[number - 1] if number else "", number)
            found.append(Block(page, number + 1, LANGUAGES[info], textwrap.dedent(body) + "\n", mark, reason))
        number = end + 1
    return found


def marker(page: Path, line: str, number: int) -> tuple[str | None, str]:
    """The marker on the line before a fence: (kind, reason), or (None, "") when there is none."""
    if not MARK_START.match(line):
        return None, ""
    match = MARK.match(line)
    where = f"{shown(page)}:{number}"
    body = match["body"] if match else ""
    if RUNS.match(body):
        return None, ""
    parse_only = PARSE_ONLY.match(body)
    if parse_only is None:
        raise ValueError(f"{where}: an example marker reads <!-- example: parse-only (reason) --> (or <!-- example: "
                         f"runs ... --> for a block that runs), got {line.strip()}")
    if not parse_only["reason"].strip():
        raise ValueError(f"{where}: a parse-only example needs its reason: <!-- example: parse-only (why) -->")
    return "parse-only", parse_only["reason"].strip()


def collect() -> tuple[dict[Path, list[Block]], list[str]]:
    """Every page's blocks, and the marker errors (reported by a test rather than breaking collection)."""
    pages, errors = {}, []
    for page in PAGES:
        try:
            pages[page] = blocks_of(page)
        except ValueError as exc:
            errors.append(str(exc))
    return pages, errors


BLOCKS_BY_PAGE, MARKER_ERRORS = collect()
ALL_BLOCKS = [block for blocks in BLOCKS_BY_PAGE.values() for block in blocks]
RUN_PAGES = [page for page, blocks in BLOCKS_BY_PAGE.items() if any(b.mark is None for b in blocks)]


def parse(block: Block) -> None:
    """Python compiles, shell passes ``bash -n``; a failure names the block."""
    if block.kind == "python":
        compile(block.code, block.where, "exec")
        return
    checked = subprocess.run(["bash", "-n"], input=block.shell(), capture_output=True, text=True)
    assert checked.returncode == 0, f"{block.where}: bash -n: {checked.stderr.strip()}"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.where for b in ALL_BLOCKS])
def test_every_example_parses(block):
    parse(block)


def test_markers_are_well_formed():
    assert MARKER_ERRORS == []


def test_the_readme_is_collected():
    readme = [b for b in ALL_BLOCKS if b.page.name == "README.md" and b.page.parent == REPO]
    assert readme, "README.md has no python or shell examples, or the collector misses them"


def test_parse_only_examples_say_why():
    marked = [b for b in ALL_BLOCKS if b.mark is not None]
    assert marked and all(len(b.reason.split()) >= 2 for b in marked), \
        [b.where for b in marked if len(b.reason.split()) < 2]


def test_the_collector(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent("""\
        Text.

        <!-- example: parse-only (needs a GPU) -->
        ```python
        x = 1
        ```

        - a list item:

          ```bash
          echo "indented"
          ```

        ````text
        ```python
        not collected: inside a text fence
        ```
        ````

        ```console
        $ echo one \\
            two
        one two
        $ true
        ```

        <!-- example: runs in a folder holding cxr.png -->
        ```sh
        ls cxr.png
        ```
        """))
    blocks = blocks_of(page)
    assert [(b.kind, b.mark, b.line) for b in blocks] == [("python", "parse-only", 4), ("shell", None, 10),
                                                          ("console", None, 20), ("shell", None, 28)]
    assert blocks[0].reason == "needs a GPU"
    assert blocks[1].code == 'echo "indented"\n'
    assert blocks[2].shell() == "echo one \\\n    two\ntrue\n"
    for bad in ("<!-- example: parse-only -->\n```python\nx\n```\n", "<!-- example: skip (why) -->\n```bash\nx\n```\n",
                "<!-- example: parse-only () -->\n```bash\nx\n```\n",
                "<!-- example: parse-only (why) -->\n\n```python\nx\n```\n"):
        page.write_text(bad)
        with pytest.raises(ValueError, match="example"):
            blocks_of(page)
    assert UNSAFE.search("pip install x") and UNSAFE.search("make demo") and UNSAFE.search("x && medground serve")
    assert not UNSAFE.search("medground ground cxr.png 'make a box' --out out/")


@pytest.mark.parametrize(("module", "page"), [("medground.app.limits", "app.md"),
                                              ("medground.reports.findings", "reports.md")])
def test_limits_are_documented(module, page):
    """Every limit constant of the web app and of report reading (and its environment variable) is on its page."""
    values = vars(importlib.import_module(module))
    names = [name for name, value in values.items() if name.isupper() and not name.startswith("_")
             and not name.endswith("_ENV") and (module.endswith("limits") or name.startswith("MAX_"))]
    names += [value for name, value in values.items() if name.startswith("MAX_") and name.endswith("_ENV")]
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    assert names and [name for name in names if name not in text] == []


def load_pictures():
    spec = importlib.util.spec_from_file_location("docs_pictures", REPO / "docs" / "pictures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """What the examples find in their folder: cxr.png (the phantom of the site's pictures), report.txt, nih-mini."""
    folder = tmp_path_factory.mktemp("docs-fixtures")
    pictures = load_pictures()
    pictures.write_phantom_png(folder / "cxr.png")
    (folder / "report.txt").write_text(pictures.REPORT + "\n", encoding="utf-8")
    shutil.copytree(REPO / "tests" / "data" / "nih-mini", folder / "nih-mini")
    return folder


def shell_env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = VENV_BIN if VENV_BIN.is_dir() else Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")  # the toy models are tiny: one thread is fastest on a shared machine
    env.update(HF_HUB_OFFLINE="1", MPLBACKEND="Agg", NO_COLOR="1", TQDM_DISABLE="1")
    return env


@pytest.fixture
def one_thread():
    """torch on one thread while a page's python runs: the toy models are tiny, and the machine is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_page(page: Path, fixtures: Path, folder: Path, monkeypatch) -> None:
    shutil.copytree(fixtures, folder, dirs_exist_ok=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__main__"}
    hint = "if it cannot run here, mark it on the line before its fence: <!-- example: parse-only (why) -->"
    for block in blocks_of(page):
        if block.mark is not None:
            parse(block)
            continue
        if block.kind == "python":
            try:
                exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102
            except Exception as exc:
                raise AssertionError(f"{block.where}: the example raised {type(exc).__name__}: {exc}\n{hint}") from exc
            continue
        unsafe = UNSAFE.search(block.shell())
        assert unsafe is None, f"{block.where}: runs {unsafe.group(2)!r}, which is not run here\n{hint}"
        try:
            done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block.shell()], cwd=folder,
                                  env=shell_env(), capture_output=True, text=True, timeout=BLOCK_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block.where}: still running after {BLOCK_SECONDS} s\n{hint}")
        assert done.returncode == 0, (f"{block.where}: exit status {done.returncode}\n--- stdout\n"
                                      f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}\n{hint}")


@pytest.mark.parametrize("page", RUN_PAGES, ids=[shown(p) for p in RUN_PAGES])
def test_examples_run(page, fixtures, tmp_path, monkeypatch, one_thread):
    run_page(page, fixtures, tmp_path / "work", monkeypatch)
