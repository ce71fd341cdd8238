"""NDJSON lines whose long strings are streamed out instead of held, and base64 decoded as it
arrives: what lets a Hub commit carry a file of any size in bounded memory.

:class:`LineSplitter` cuts a byte stream into lines. Inside each line it follows JSON strings
(quotes and backslash escapes, nothing more); a string longer than ``spill_at`` bytes is not
kept: its raw characters go to a :class:`Sink` opened for it, and the line's text keeps a
placeholder string in its place. The rest of the line (``max_kept`` bytes at most) is parsed as
usual once the line ends; the caller then finds the placeholder where it expects a long value
and finishes (or aborts) that sink. Only one string per line may spill.

:class:`Base64Sink` is the sink for file contents: it undoes JSON escapes, checks the base64
alphabet and padding (as ``base64.b64decode(validate=True)`` does) and writes the decoded bytes
on, a few kilobytes at a time.
"""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..core.errors import Invalid, TooLarge

_OUTSIDE = re.compile(rb'["\n]')
_INSIDE = re.compile(rb'["\\\n]')


class Sink(Protocol):
    """Where the raw characters of one long JSON string go (escapes not undone)."""

    def write(self, raw: bytes) -> None: ...

    def abort(self) -> None: ...


@dataclass
class Line:
    """One line: its text with at most one long string replaced by ``placeholder``."""

    text: bytes
    #: The string a long value was replaced by (after JSON parsing), or None if none was.
    placeholder: str | None = None
    sink: Sink | None = None


@dataclass
class LineSplitter:
    """Cut a byte stream into NDJSON lines, streaming any string over ``spill_at`` bytes to a
    sink from ``open_sink`` (see the module docstring).

    Example:
        >>> chunks = []
        >>> class Keep:
        ...     def write(self, raw): chunks.append(raw)
        ...     def abort(self): pass
        >>> split = LineSplitter(open_sink=Keep, spill_at=4, max_kept=100)
        >>> [line.text for line in split.feed(b'{"a": "xy"}\\n{"b": "longer"}')]
        [b'{"a": "xy"}']
        >>> line = next(split.close())
        >>> b"".join(chunks), line.placeholder in line.text.decode("unicode_escape")
        (b'longer', True)
    """

    open_sink: Callable[[], Sink]
    spill_at: int
    max_kept: int
    #: Unguessable, so that no string a client sends can pose as a spilled one.
    _nonce: str = field(default_factory=lambda: secrets.token_hex(16))
    _kept: bytearray = field(default_factory=bytearray)
    _string: bytearray | None = None  # the current string's raw characters, while short
    _in_string: bool = False
    _escape: bool = False
    _sink: Sink | None = None
    _placeholder: str | None = None
    _spills: int = 0

    def feed(self, chunk: bytes) -> Iterator[Line]:
        """The lines ``chunk`` completes (a line can span any number of chunks).

        Raises:
            TooLarge: a line keeps more than ``max_kept`` bytes.
            Invalid: a second string of one line is too long to keep.
        """
        pos, end = 0, len(chunk)
        while pos < end:
            if self._escape:  # the byte after a backslash that ended the previous chunk
                self._escape = False
                if chunk[pos : pos + 1] != b"\n":
                    self._add_to_string(chunk[pos : pos + 1])
                    pos += 1
                    continue
            if not self._in_string:
                m = _OUTSIDE.search(chunk, pos)
                stop = m.start() if m else end
                self._keep(chunk[pos:stop])
                if m is None:
                    break
                pos = m.end()
                if m.group() == b"\n":
                    if (line := self._end_line()) is not None:
                        yield line
                else:
                    self._in_string, self._string = True, bytearray()
                continue
            m = _INSIDE.search(chunk, pos)
            if m is None:
                self._add_to_string(chunk[pos:])
                break
            found = m.group()
            if found == b"\\":
                self._add_to_string(chunk[pos : m.end()])
                pos = m.end()
                self._escape = True
            elif found == b'"':
                self._add_to_string(chunk[pos : m.start()])
                self._end_string()
                pos = m.end()
            else:  # a line break inside a string: the line ends, unterminated (invalid JSON)
                self._add_to_string(chunk[pos : m.start()])
                pos = m.end()
                if (line := self._end_line()) is not None:
                    yield line

    def close(self) -> Iterator[Line]:
        """The last line, if the stream did not end with a line break."""
        if (line := self._end_line()) is not None:
            yield line

    def abort(self) -> None:
        """Drop a sink still open (a request that failed mid-line)."""
        if self._sink is not None:
            self._sink.abort()
            self._sink = None

    # -- internals --------------------------------------------------------------------------------
    def _keep(self, data: bytes) -> None:
        self._kept += data
        if len(self._kept) > self.max_kept:
            raise TooLarge(
                "too_large",
                f"a line of the body holds more than {self.max_kept} bytes besides one file's "
                "content: send one file per line",
            )

    def _add_to_string(self, data: bytes) -> None:
        if self._sink is not None and self._string is None:
            self._sink.write(data)
            return
        assert self._string is not None
        self._string += data
        if len(self._string) > self.spill_at:
            if self._spills:
                raise Invalid(
                    "invalid_commit",
                    f"a line holds a second string longer than {self.spill_at} bytes: only a "
                    "file's content may be that long",
                )
            self._spills += 1
            self._sink = self.open_sink()
            self._sink.write(bytes(self._string))
            self._string = None

    def _end_string(self) -> None:
        self._in_string = False
        if self._string is None:  # it spilled: keep a placeholder (JSON-escaped NUL first)
            self._placeholder = f"\x00spill-{self._nonce}"
            self._keep(b'"\\u0000spill-' + self._nonce.encode() + b'"')
        else:
            self._keep(b'"' + bytes(self._string) + b'"')
        self._string = None

    def _end_line(self) -> Line | None:
        """The line now complete (None for a blank line, which NDJSON readers skip)."""
        if self._in_string:  # unterminated: keep what there is, the JSON parser says so
            if self._string is not None:
                self._keep(b'"' + bytes(self._string))
            self._in_string, self._string, self._escape = False, None, False
        line = Line(bytes(self._kept), self._placeholder, self._sink)
        self._kept = bytearray()
        self._placeholder, self._sink, self._spills = None, None, 0
        return line if line.text.strip() else None


# -- base64 ---------------------------------------------------------------------------------------
_B64_ALPHABET = re.compile(rb"[^A-Za-z0-9+/=]")
_ESCAPE = re.compile(rb'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])')
_SIMPLE_ESCAPES = {b'"': b'"', b"\\": b"\\", b"/": b"/"}


class NotBase64Error(ValueError):
    """The string is not (canonically padded, strict-alphabet) base64, or not valid JSON."""


class Base64Sink:
    """Undo JSON escapes, check and decode base64, and pass the bytes on to ``out`` (which
    enforces the limit and is aborted with this sink).

    Example:
        >>> out = []
        >>> sink = Base64Sink(PlainSink(out.append, limit=100))
        >>> sink.write(b"aGVsbG8s"); sink.write(b"IHdvcmxkIQ=="); sink.finish()
        >>> b"".join(out)
        b'hello, world!'
    """

    def __init__(self, out: PlainSink) -> None:
        # The decoded bytes go on through ``out``: one place counts them against the limit.
        self._out = out
        self._pending = bytearray()  # base64 characters not decoded yet (under 4, and padding)
        self._raw_tail = b""  # an escape cut by a chunk boundary
        self._pads = 0
        self.error: str | None = None

    @property
    def decoded(self) -> int:
        """Bytes decoded so far."""
        return self._out.decoded

    def write(self, raw: bytes) -> None:
        """Take the next raw characters of the JSON string.

        Raises:
            TooLarge: once the decoded content passes ``limit``.
        """
        if self.error is not None:
            return
        data = self._raw_tail + raw if self._raw_tail else raw
        self._raw_tail = b""
        cut = data.rfind(b"\\", -6)
        if cut >= 0 and not _ESCAPE.match(data, cut):
            data, self._raw_tail = data[:cut], data[cut:]  # complete in the next chunk, maybe
        try:
            data = _unescape(data) if b"\\" in data else data
        except NotBase64Error as e:
            self.error = str(e)
            return
        if _B64_ALPHABET.search(data):
            self.error = "it holds a character that is not base64"
            return
        first_pad = data.find(b"=") if not self._pads else 0
        if first_pad >= 0:
            if data[first_pad:].strip(b"="):
                self.error = "it has characters after its padding"
                return
            self._pads += len(data) - first_pad
            if self._pads > 2:
                self.error = "it has more than two padding characters"
                return
        # Decode every whole quad before the padding now; keep the rest (under 4 characters,
        # and the padding) for the next call. No copy of the chunk is made on the way.
        buf = bytes(self._pending) + data if self._pending else data
        usable = (len(buf) - self._pads) // 4 * 4
        if usable:
            self._emit(memoryview(buf)[:usable])
        self._pending = bytearray(buf[usable:])

    def finish(self) -> None:
        """Decode the rest.

        Raises:
            NotBase64Error: the content is not base64 (or its JSON escapes are broken).
        """
        if self._raw_tail and self.error is None:
            self.error = "it ends in a broken escape"
        if self.error is None and len(self._pending) % 4:
            self.error = "its length is not a multiple of 4 (incorrect padding)"
        if self.error is None and self._pending:
            self._emit(bytes(self._pending))
            self._pending.clear()
        if self.error is not None:
            raise NotBase64Error(self.error)

    def abort(self) -> None:
        self.error = self.error or "aborted"
        self._out.abort()

    def _emit(self, quads: bytes | memoryview) -> None:
        try:
            out = binascii.a2b_base64(quads)
        except binascii.Error:
            self.error = "its padding is wrong"
            return
        self._out.write(out)


class PlainSink:
    """The same interface for content that is the text itself (``"encoding": "utf-8"``, short
    enough to have been kept in its line): the bytes go on as they are, ``limit`` at most."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        limit: int,
        on_abort: Callable[[], None] | None = None,
    ) -> None:
        self._write = write
        self._limit = limit
        self._on_abort = on_abort
        self.decoded = 0

    def write(self, data: bytes) -> None:
        self.decoded += len(data)
        if self.decoded > self._limit:
            raise _file_too_large(self._limit)
        self._write(data)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        if self._on_abort is not None:
            self._on_abort()


def _file_too_large(limit: int) -> TooLarge:
    return TooLarge(
        "too_large",
        f"a file of the commit is larger than {limit} bytes, the most this server takes",
    )


def _unescape(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while (i := data.find(b"\\", pos)) >= 0:
        out += data[pos:i]
        m = _ESCAPE.match(data, i)
        if m is None:
            raise NotBase64Error("it holds a broken JSON escape")
        esc = m.group(1)
        if esc[:1] == b"u":
            code = int(esc[1:], 16)
            if code > 0x7F:
                raise NotBase64Error("it holds a character that is not base64")
            out.append(code)
        elif esc in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[esc]
        else:  # \b \f \n \r \t: control characters, never base64
            raise NotBase64Error("it holds a character that is not base64")
        pos = m.end()
    out += data[pos:]
    return bytes(out)
