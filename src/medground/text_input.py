"""Text that users hand to medground (reports, manifests, dataset and settings files): decoded strictly, bounded.

Everything goes through ``open_text`` (a file, streamed) or ``read_text`` (a file or standard input, whole), so a
byte-order mark is accepted everywhere, anything that is not UTF-8 is one error naming the source and the byte offset
of the first bad byte, and a size limit is named when it is hit. A pipe named as a file (a FIFO, ``<(command)``)
is read once something writes to it, and refused after ``PIPE_WAIT_SECONDS`` of silence rather than waited on.
``loads_json`` refuses nesting deeper than a named limit before the parser could exhaust the stack, and
``clean_text`` makes invisible characters visible to no one: control and zero-width characters go, non-breaking
spaces become spaces.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import selectors
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medground.errors import MedgroundError

MAX_JSON_DEPTH = 64
"""Nesting a settings file, manifest line or ``model.json`` may use; medground's own files need at most 5."""
STDIN = "-"

_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u00ad\u200b-\u200d\u2060\ufeff]")
"""Control characters (but tab, line feed, carriage return) and zero-width ones: they split words a reader then
cannot match ("pneumo\u200bthorax"), and no report means them."""
_WIDE_SPACES = re.compile("[\u00a0\u2007\u202f\u2000-\u200a\u3000]")
"""Non-breaking and other fixed-width spaces, written by word processors before colons and between numbers."""


def source_name(source: str | Path) -> str:
    """How messages name a text source: ``standard input`` for ``-``, else the path."""
    return "standard input" if str(source) == STDIN else str(source)


def decode_error(name: str, data: bytes, error: type[MedgroundError], offset: int = 0) -> MedgroundError:
    """The error for ``data`` (a part of ``name`` starting at byte ``offset``) that is not UTF-8.

    Args:
        name: the source, for the message.
        data: the bytes that failed to decode.
        error: the MedgroundError subclass to return; the caller raises it.
        offset: where ``data`` starts in the source, so the message gives the bad byte's offset in the source.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        return error(f"{name} is not UTF-8 text: byte 0x{bad} at offset {offset + exc.start} ({exc.reason}); "
                     "save it as UTF-8")
    return error(f"{name} is not UTF-8 text; save it as UTF-8")


def decode(data: bytes, name: str, error: type[MedgroundError]) -> str:
    """UTF-8 with an optional byte-order mark.

    Args:
        data: the whole text's bytes.
        name: the source, for messages.
        error: the MedgroundError subclass raised when ``data`` is not UTF-8 (``decode_error``).
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise decode_error(name, data, error) from None


def read_text(source: str | Path, what: str, error: type[MedgroundError], max_bytes: int,
              limit_hint: str = "") -> str:
    """The whole text of a file, or of standard input for ``-``, at most ``max_bytes`` bytes.

    Args:
        source: a path, or ``-`` for standard input.
        what: what the text is, for messages ("report", "manifest").
        error: the MedgroundError subclass to raise.
        max_bytes: larger input is refused with this limit named.
        limit_hint: how to raise the limit, appended to that message.
    """
    name = source_name(source)
    if str(source) == STDIN:
        if sys.stdin is None or sys.stdin.closed:
            raise error(f"cannot read the {what} from standard input: it is closed")
        stream = getattr(sys.stdin, "buffer", None)  # a text stream without one (embedding, tests) is read as text
        try:
            data = stream.read(max_bytes + 1) if stream is not None else \
                sys.stdin.read(max_bytes + 1).encode("utf-8", errors="surrogatepass")
        except (OSError, ValueError, UnicodeError) as exc:
            raise error(f"cannot read the {what} from standard input: {exc}") from None
    else:
        data = _read_file(Path(source), what, error, max_bytes)
    if len(data) > max_bytes:
        raise error(f"the {what} ({name}) is over the limit of {max_bytes:,} bytes{limit_hint}")
    return decode(data, name, error)


PIPE_WAIT_SECONDS = 10.0
"""How long a pipe named as a file may stay silent before it is refused: one that nothing writes to would otherwise
be waited on forever."""


def file_mode(path: Path, what: str, error: type[MedgroundError]) -> int:
    """``path``'s ``st_mode`` (links followed); a missing or unreachable file is ``error``, said as it is.

    Args:
        path: the file a user named.
        what: what it should hold, for the message ("report", "image").
        error: the MedgroundError class to raise.
    """
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except OSError as exc:  # a name too long, a loop of links, no permission on a parent folder
        raise error(f"cannot open {what} {str(path)[:200]}: {exc.strerror or exc}") from None


def _read_file(path: Path, what: str, error: type[MedgroundError], max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes of a file, a device or a pipe (``/dev/stdin``, ``<(command)``, a FIFO)."""
    mode = file_mode(path, what, error)
    if stat.S_ISDIR(mode):
        raise error(f"{path} is a folder, not a {what} file")
    try:
        if stat.S_ISFIFO(mode):
            return _read_pipe(path, what, error, max_bytes)
        with path.open("rb") as handle:  # also character devices: not only regular files
            return handle.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _read_pipe(path: Path, what: str, error: type[MedgroundError], max_bytes: int) -> bytes:
    """A pipe's bytes once something writes to it; opened without blocking (a plain open waits for a writer)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as handle, selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        if not selector.select(PIPE_WAIT_SECONDS):
            raise error(f"{path} is a pipe (FIFO) and nothing was written to it within {PIPE_WAIT_SECONDS:g} s; "
                        f"save the {what} to a file, or pass - to read standard input")
        os.set_blocking(descriptor, True)
        return handle.read(max_bytes + 1)


@contextlib.contextmanager
def open_text(path: Path, what: str, error: type[MedgroundError]) -> Iterator[IO[str]]:
    """A UTF-8 text stream of ``path`` (byte-order mark skipped, newlines as written, for ``csv``); a decoding
    failure while it is read is ``error`` naming the file and the byte offset.

    Args:
        path: the file.
        what: what the file is, for messages ("dataset", "manifest").
        error: the MedgroundError subclass to raise, also when the file is missing or cannot be opened.
    """
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        with handle:
            yield handle
    except UnicodeDecodeError:
        raise _first_bad_byte(path, error) from None


def _first_bad_byte(path: Path, error: type[MedgroundError]) -> MedgroundError:
    """Scan ``path`` again in binary to name the offset of its first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            pending = decoder.getstate()[0]  # the start of a character cut by the previous block
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                data = pending + block
                return error(f"{path} is not UTF-8 text: byte 0x{data[exc.start : exc.start + 1].hex()} at offset "
                             f"{offset - len(pending) + exc.start} ({exc.reason}); save it as UTF-8")
            offset += len(block)
    return error(f"{path} is not UTF-8 text; save it as UTF-8")


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    inside = escaped = False
    for char in text:
        if inside:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                inside = False
        elif char == '"':
            inside = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads_json(text: str, where: str, error: type[MedgroundError], max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with the nesting limit checked first, every failure ``error`` naming ``where``.

    Args:
        text: the JSON text.
        where: names the source in messages ("WHERE is not readable JSON: ...").
        error: the MedgroundError subclass to raise.
        max_depth: the deepest nesting of arrays and objects accepted.
    """
    if ("[" in text or "{" in text) and json_depth(text) > max_depth:
        raise error(f"{where} is not readable JSON: nested deeper than the limit of {max_depth} levels")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise error(f"{where} is not readable JSON: {exc}") from None


def read_json_object(path: Path, what: str, error: type[MedgroundError], max_bytes: int = 16_000_000) -> dict:
    """A JSON object from a file (``model.json``, ``run.json``, a component's ``config.json``), every failure
    ``error`` naming the file.

    Args:
        path: the file.
        what: what the file is, for messages.
        error: the MedgroundError subclass to raise.
        max_bytes: larger files are refused (the default is far above any description or settings file).
    """
    data = loads_json(read_text(path, what, error, max_bytes), str(path), error)
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object ({what}), found {type(data).__name__}")
    return data


def clean_text(text: str) -> str:
    """Control and zero-width characters removed, non-breaking spaces made plain spaces (see above)."""
    return _INVISIBLE.sub("", _WIDE_SPACES.sub(" ", text))


def env_limit(name: str, default: int, error: type[MedgroundError]) -> int:
    """A size limit that the environment variable ``name`` may raise (a positive integer).

    Args:
        name: the environment variable.
        default: the limit when the variable is unset or empty.
        error: the MedgroundError subclass raised when its value is not a positive integer.
    """
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise error(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise error(f"{name}={raw!r} must be a positive integer")
    return value
