"""HTTP mechanics shared by the API and the Hub routes: ETags, byte ranges, request bodies."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import BinaryIO

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from .errors import ApiError

_CHUNK = 1 << 20
# At most 19 digits: larger numbers are no valid offset, and int() of a huge string is slow.
_RANGE_RE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")


def etag_matches(header: str | None, etag: str) -> bool:
    """True if an ``If-None-Match`` value names ``etag`` (weak comparison, ``*`` included)."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range ``header`` asks for, as inclusive (start, end), or None for all.

    Only single ranges are served; several ranges or an unparsable header mean "the whole
    blob" (RFC 9110 allows ignoring Range).

    Raises:
        ApiError: 416 when the range starts past the end.

    Example:
        >>> parse_range("bytes=10-", 100)
        (10, 99)
    """
    m = _RANGE_RE.match(header.strip()) if header else None
    if m is None or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    if not first:  # a suffix: the last N bytes
        start, end = max(size - int(last), 0), size - 1
        if int(last) == 0:
            start = size
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None  # invalid: ignored
    if start >= size:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"the range {header} is outside the {size} bytes of this blob",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


def ranged_response(
    request: Request,
    *,
    size: int,
    etag: str,
    open_file: Callable[[], BinaryIO],
    media_type: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """Serve immutable content with ETag/304, HEAD, and single-range 206/416 support.

    Args:
        request: the request (method, If-None-Match, Range, If-Range are read).
        size: the content's size in bytes.
        etag: the quoted entity tag.
        open_file: opens the content (called only when a body is sent).
        media_type: the Content-Type.
        headers: more headers for every response.

    Returns:
        A 200, 206, 304 or HEAD response; the body streams in 1 MiB chunks.

    Raises:
        ApiError: 416 for a range past the end.
    """
    out = {"ETag": etag, "Accept-Ranges": "bytes", **(headers or {})}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=out)
    if_range = request.headers.get("if-range")
    wanted = None if if_range and if_range.strip() != etag else request.headers.get("range")
    span = parse_range(wanted, size)
    status, start, length = 200, 0, size
    if span is not None:
        start, end = span
        status, length = 206, end - start + 1
        out["Content-Range"] = f"bytes {start}-{end}/{size}"
    out["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=out, media_type=media_type)
    return StreamingResponse(
        _read_span(open_file(), start, length),
        status_code=status,
        headers=out,
        media_type=media_type,
    )


def _read_span(f: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    # A plain generator: Starlette runs each next() in a worker thread, so slow disks or slow
    # readers never block the event loop, and a thread is held only while reading a chunk.
    try:
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        f.close()


async def body_chunks(request: Request, *, limit: int, timeout: float) -> AsyncIterator[bytes]:
    """The request body as it arrives, never more than ``limit`` bytes in all.

    Raises:
        ApiError: 413 as soon as the body (or its Content-Length) passes ``limit``; 408 when the
            client sends nothing for ``timeout`` seconds.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    received = 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(
                408, "upload_timeout", f"no data for {timeout:g} s: the upload was dropped"
            ) from None
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        if chunk:
            yield chunk


async def read_body(request: Request, *, limit: int, timeout: float) -> bytes:
    """The whole (small) body, with the limits of :func:`body_chunks`."""
    parts = [c async for c in body_chunks(request, limit=limit, timeout=timeout)]
    return b"".join(parts)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "too_large", f"the body is larger than this server accepts ({limit} bytes at most)"
    )
