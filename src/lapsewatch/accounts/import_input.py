"""The input of an import: its kind, its lines read, framed and numbered, then validated.

JSON Lines or CSV (by name, else sniffed). Either way the lines come out as
``_Parsed``: a physical line number and its ``_LineIn``, or the reason it is
rejected. A regular file may be read and validated by a second process (by
default when it is big and there is a second core), so that one core parses
while the other writes; anything else is read here.
"""

from __future__ import annotations

import csv
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from enum import StrEnum
from itertools import chain
from pathlib import PurePath
from queue import Empty
from typing import Any

from lapsewatch import domains
from lapsewatch.accounts.import_validate import (
    _CSV_REQUIRED,
    CSV_COLUMNS,
    _LineIn,
    _Reject,
    _Validator,
)


class InputKind(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


class ImportInputError(ValueError):
    """The input as a whole is unusable (e.g. a CSV header with an unknown column)."""


class _Reader:
    """Numbered byte lines of the input, with the bytes read so far (for progress)."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = iter(stream)
        self._head: list[bytes] = []
        self.bytes_read = 0

    def first_line(self) -> bytes | None:
        """The first non-blank line, without consuming anything."""
        for raw in self._stream:
            if not self._head:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM is not data
            self._head.append(raw)
            if raw.strip():
                return raw
        return None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for number, raw in enumerate(chain(self._head, self._stream), 1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            self.bytes_read += len(raw)
            yield number, raw


def detect_kind(name: str | None, first_line: bytes | None) -> InputKind:
    """``.csv`` → CSV, ``.jsonl``/``.ndjson``/``.json`` → JSON Lines, else sniff.

    Sniffing picks CSV only for a header naming ``username`` and ``address``:
    anything else is read as JSON Lines, whose errors are reported line by line.
    """
    suffix = PurePath(name).suffix.lower() if name else ""
    if suffix == ".csv":
        return InputKind.csv
    if suffix in (".jsonl", ".ndjson", ".json"):
        return InputKind.jsonl
    if first_line is not None and not first_line.lstrip().startswith(b"{"):
        header = {part.strip().strip(b'"').lower() for part in first_line.split(b",")}
        if {b"username", b"address"} <= header:
            return InputKind.csv
    return InputKind.jsonl


_Parsed = tuple[int, _LineIn | str]
"""A line number and its account, or the reason it was rejected."""
_Frame = tuple[int, bytes | list[str] | str]
"""A line number and its raw JSON line, its CSV row, or an error found while framing."""


def _jsonl_frames(reader: _Reader) -> Iterator[_Frame]:
    for number, raw in reader:
        if raw.strip():
            yield number, raw


class _CsvFrames:
    """CSV rows with the physical line each starts on; the header sets ``columns``."""

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader
        self.columns: dict[str, int] = {}

    def __iter__(self) -> Iterator[_Frame]:
        position = 0

        def text() -> Iterator[str]:
            nonlocal position
            for number, raw in self._reader:
                position = number
                # Undecodable bytes survive as lone surrogates: that row alone is rejected.
                yield raw.decode("utf-8", "surrogateescape")

        rows = csv.reader(text(), strict=True)
        while True:
            start = position + 1
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                if not self.columns:
                    raise ImportInputError(f"line {start}: unreadable CSV header: {exc}") from None
                yield start, f"not valid CSV: {exc}"
                continue
            if not any(cell.strip() for cell in row):
                continue
            if not self.columns:
                self.columns = _csv_header(row, start)
                continue
            yield start, row


def _csv_header(row: list[str], line: int) -> dict[str, int]:
    columns: dict[str, int] = {}
    for index, cell in enumerate(row):
        name = cell.strip().lower()
        if name not in CSV_COLUMNS:
            raise ImportInputError(
                f"line {line}: unknown CSV column {cell.strip()!r} "
                f"(expected a header with {', '.join(CSV_COLUMNS)})"
            )
        if name in columns:
            raise ImportInputError(f"line {line}: CSV column {name!r} appears twice")
        columns[name] = index
    missing = [name for name in _CSV_REQUIRED if name not in columns]
    if missing:
        raise ImportInputError(f"line {line}: CSV header lacks the column(s) {', '.join(missing)}")
    return columns


def _validate(validator: _Validator, frame: _Frame, columns: dict[str, int]) -> _Parsed:
    number, payload = frame
    if isinstance(payload, str):
        return number, payload
    try:
        if isinstance(payload, bytes):
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, f"not valid UTF-8 (byte {exc.start + 1})"
            return number, validator.from_json(text, number)
        return number, validator.from_csv(payload, columns, number)
    except _Reject as exc:
        return number, str(exc)


# Reading and validating in a second process: the second core parses while the
# first writes. It reads the file itself and hands over validated lines through
# a bounded queue, so this process never runs a helper thread: a thread here
# would fight the writer for the GIL every time SQLite releases it.

_BLOCK = 1000
"""Lines per message: enough to amortise pickling."""
_AHEAD = 8
"""Messages the parser may run ahead: a few chunks, bounded memory."""


def _frames(
    reader: _Reader, kind: InputKind
) -> tuple[Iterable[_Frame], Callable[[], dict[str, int]]]:
    """The input's frames and (for CSV, once the header is read) its columns."""
    if kind is InputKind.jsonl:
        return _jsonl_frames(reader), dict
    frames = _CsvFrames(reader)
    return frames, lambda: frames.columns


def _parse_file(
    queue: Any,
    path: str,
    kind: InputKind,
    free_providers: domains.FreeProviders,
    now: datetime,
) -> None:
    """The parsing process: send ("lines", [parsed…], bytes read) … ("end", None, n)."""
    try:
        with open(path, "rb") as handle:
            reader = _Reader(handle)
            validator = _Validator(free_providers, now)
            frames, columns = _frames(reader, kind)
            block: list[_Parsed] = []
            for frame in frames:
                block.append(_validate(validator, frame, columns()))
                if len(block) >= _BLOCK:
                    queue.put(("lines", block, reader.bytes_read))
                    block = []
            queue.put(("lines", block, reader.bytes_read))
            queue.put(("end", None, reader.bytes_read))
    except ImportInputError as exc:
        queue.put(("input-error", str(exc), 0))
    except Exception as exc:  # reported by the importing process
        queue.put(("error", f"{type(exc).__name__}: {exc}", 0))


class _Position:
    """Bytes of the input read so far, whichever process reads it."""

    bytes_read = 0


def _parsed_elsewhere(
    path: str, kind: InputKind, validator: _Validator, position: _Position
) -> Iterator[_Parsed]:
    context = multiprocessing.get_context("spawn")  # no fork: the caller may hold connections
    queue = context.Queue(_AHEAD)
    process = context.Process(
        target=_parse_file,
        args=(queue, path, kind, validator.free_providers, validator.now),
        name="lapsewatch-import-parser",
        daemon=True,
    )
    process.start()
    try:
        while True:
            try:
                tag, payload, position.bytes_read = queue.get(timeout=1.0)
            except Empty:
                if not process.is_alive():
                    raise RuntimeError(
                        f"the parsing process stopped (exit code {process.exitcode})"
                    ) from None
                continue
            if tag == "lines":
                yield from payload
            elif tag == "end":
                return
            elif tag == "input-error":
                raise ImportInputError(payload)
            else:
                raise RuntimeError(f"the parsing process failed: {payload}")
    finally:
        if process.is_alive():
            process.terminate()
        process.join()
        queue.close()
