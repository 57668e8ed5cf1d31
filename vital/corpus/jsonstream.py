"""Stream the records of a JSON file without loading it whole: a list, or an object of lists.

LLaVA-Med publishes its instruction sets as one JSON list (``llava_med_instruct_60k.json``) and its
figure-caption records as an object keyed by domain (``llava_med_instruct_fig_captions.json``:
``{"chest_xray": [...], ...}``). :func:`iter_json_records` yields ``(line, key, record)`` one record at a
time, ``line`` being where the record starts and ``key`` the enclosing object's key (None for a list).
Memory stays bounded by the largest record. A file that is not valid JSON raises
:class:`~vital.io.RecordError` naming the file and line: past a syntax error the records cannot be
told apart, so unlike a JSONL line it cannot be skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vital.io import RecordError

_WS = " \t\r\n"


class _Buffer:
    def __init__(self, f, path: Path, chunk: int):
        self.f, self.path, self.chunk = f, path, chunk
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False

    def fill(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(self.chunk)
        if not data:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + data
        self.pos = 0
        return True

    def advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file), not consumed."""
        while True:
            n = len(self.buf)
            i = self.pos
            while i < n and self.buf[i] in _WS:
                i += 1
            self.advance(i)
            if i < n:
                return self.buf[i]
            if not self.fill():
                return ""

    def expect(self, chars: str) -> str:
        ch = self.peek()
        if ch == "" or ch not in chars:
            found = "the end of the file" if ch == "" else repr(ch)
            raise self.error(f"expected one of {' '.join(repr(c) for c in chars)}, found {found}")
        self.advance(self.pos + 1)
        return ch

    def value(self, decoder: json.JSONDecoder) -> Any:
        self.peek()
        while True:
            try:
                obj, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self.fill():
                    continue
                raise self.error(e.msg) from None
            if end == len(self.buf) and not self.eof and self.fill():
                continue  # a number or literal may go on in the next chunk
            self.advance(end)
            return obj

    def error(self, msg: str) -> RecordError:
        return RecordError(f"{self.path}:{self.line}: not valid JSON ({msg})")


def iter_json_records(path: str | os.PathLike, chunk: int = 1 << 20) -> Iterator[tuple[int, str | None, Any]]:
    """(line, key, record) for each element of a top-level list, or of each list in a top-level object."""
    path = Path(path)
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8-sig") as f:  # a leading byte order mark is stripped (vital.io.BOM)
        b = _Buffer(f, path, chunk)
        top = b.expect("[{")
        if top == "[":
            yield from _array(b, decoder, None)
        else:
            if b.peek() == "}":
                b.advance(b.pos + 1)
            else:
                while True:
                    key = b.value(decoder)
                    if not isinstance(key, str):
                        raise b.error("expected an object key")
                    b.expect(":")
                    b.expect("[")
                    yield from _array(b, decoder, key)
                    if b.expect(",}") == "}":
                        break
        if b.peek() != "":
            raise b.error("extra data after the top-level value")


def _array(b: _Buffer, decoder: json.JSONDecoder, key: str | None) -> Iterator[tuple[int, str | None, Any]]:
    if b.peek() == "]":
        b.advance(b.pos + 1)
        return
    while True:
        b.peek()
        line = b.line
        yield line, key, b.value(decoder)
        if b.expect(",]") == "]":
            return
