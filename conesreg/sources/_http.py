"""A self-hosted registry (``registry_server``) over HTTP: the same Source as the embedded one.

Everything received is verified by the caller (manifests against their digests, blobs by the
cache while they stream in). This module moves bytes: it retries what is safe to retry, resumes
an interrupted blob download where it stopped (HTTP Range), and maps HTTP errors to conesreg's.

It trusts nothing a server says about sizes or time: every body is read raw (never decompressed:
bytes are hashed as sent) up to a cap that depends on what it is (a manifest, a listing, an error
message), redirects are followed for reads only and a few times, search pages are capped, each
read has a timeout and the whole exchange with one registry has a deadline
(``constants.HTTP_DEADLINE``). A server that breaks any of these ends the command with one line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from .. import constants
from ..artifact import constants as artifact_constants
from ..artifact._json import load_json
from ..artifact._manifest import IndexEntry, Manifest
from ..errors import (
    AuthenticationError,
    ConceptNotFoundError,
    ImmutableVersionError,
    ManifestError,
    SourceError,
    VersionNotFoundError,
)
from . import _retry
from ._base import BlobOrigin

_CHUNK = 1 << 20
#: Redirects are followed for reads only: a streamed upload cannot be sent twice.
_READ_METHODS = frozenset({"GET", "HEAD"})
_BROKEN = "the registry is broken or hostile: tell its operator; nothing it sent was kept"


@dataclass(frozen=True)
class _Reply:
    """A whole (capped) answer: the status, the headers and the raw body."""

    status_code: int
    headers: Any
    body: bytes


class HttpSource:
    """A ``registry_server`` at ``url``; ``token`` authorizes pushes and private reads.

    The deadline (``constants.HTTP_DEADLINE``) counts from the source's first request, so a
    source is meant to serve one command (as :class:`conesreg._session.Session` opens them).
    """

    remote = True
    offline = False

    def __init__(self, url: str, *, name: str, token: str | None = None) -> None:
        import httpx

        self.name = name
        self.url = url.rstrip("/")
        headers = {
            "User-Agent": f"conesreg/{constants.package_version()}",
            # Bytes are hashed and sizes checked as they arrive: nothing is ever decompressed.
            "Accept-Encoding": "identity",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=self.url,
            headers=headers,
            # A stalled server fails the command; it never hangs it.
            timeout=httpx.Timeout(
                constants.HTTP_READ_TIMEOUT, connect=constants.HTTP_CONNECT_TIMEOUT
            ),
            # Followed by hand (see _open): httpx reads a redirect's whole body, uncapped.
            follow_redirects=False,
        )
        self._started: float | None = None

    def location(self) -> str:
        return self.url

    def whoami(self) -> dict[str, Any] | None:
        """The namespace and scope of this source's token (``anonymous`` true without one), or
        None from a server too old to say.

        Raises:
            AuthenticationError: the server does not know the token (unknown, expired, revoked).
            SourceError: the server cannot be reached or answers nonsense.
        """
        what = "who the token belongs to"
        r = self._request("GET", "/v1/whoami", limit=64 * 1024, what=what)
        if r.status_code == 404:
            return None
        self._check(r)
        body = self._json(r, what=what)
        if not isinstance(body.get("anonymous"), bool):
            raise SourceError(
                f"registry {self.name!r} sent {what} without 'anonymous'", hint=_BROKEN
            )
        return body

    # -- reading ---------------------------------------------------------------------------------
    def versions(self, namespace: str, name: str) -> list[IndexEntry]:
        what = f"the version listing of {namespace}/{name}"
        r = self._request(
            "GET",
            f"/v1/concepts/{_q(namespace)}/{_q(name)}/versions",
            limit=constants.HTTP_MAX_JSON_BYTES,
            what=what,
        )
        if r.status_code == 404:
            raise ConceptNotFoundError(f"{namespace}/{name} is not in registry {self.name!r}")
        self._check(r)
        body = self._json(r, what=what)
        entries = [self._entry(v, what=what) for v in self._items(body, "versions", what=what)]
        for e in entries:
            if (e.namespace, e.name) != (namespace, name):
                raise SourceError(
                    f"registry {self.name!r} listed {e.id}@{e.version} among the versions of "
                    f"{namespace}/{name}",
                    hint=_BROKEN,
                )
        return entries

    def manifest(
        self, namespace: str, name: str, version: str, *, revision: str | None = None
    ) -> bytes:
        path = f"/v1/concepts/{_q(namespace)}/{_q(name)}/versions/{_q(version)}/manifest"
        r = self._request(
            "GET",
            path,
            limit=artifact_constants.MAX_MANIFEST_BYTES,
            what=f"the manifest of {namespace}/{name}@{version}",
        )
        if r.status_code == 404:
            raise VersionNotFoundError(
                f"{namespace}/{name}@{version} is not in registry {self.name!r}"
            )
        self._check(r)
        return r.body

    def fetch_blob(self, digest: str, out: BinaryIO, *, origin: BlobOrigin | None = None) -> None:
        """Stream the blob into ``out``; a dropped connection resumes with a Range request
        from the bytes already written instead of starting over. ``out`` decides when enough
        is enough (the cache stops at the size the manifest lists)."""
        import httpx

        written, attempt = 0, 0
        path = f"/v1/blobs/{_q(digest)}"
        while True:
            headers = {"Range": f"bytes={written}-"} if written else {}
            try:
                with self._open("GET", path, headers=headers) as r:
                    if r.status_code == 404:
                        raise SourceError(
                            f"registry {self.name!r} lists {digest} but does not serve it",
                            hint="the registry is damaged; tell its operator",
                        )
                    if written and r.status_code != 206:
                        raise SourceError(
                            f"registry {self.name!r} cannot resume a download (HTTP "
                            f"{r.status_code} to a Range request)",
                            hint="retry the command",
                        )
                    if r.status_code != (206 if written else 200):
                        self._check(self._error_reply(r))
                        raise SourceError(
                            f"registry {self.name!r} answered HTTP {r.status_code} to a "
                            f"download of {digest}",
                            hint=_BROKEN,
                        )
                    self._refuse_encoded(r, what=f"blob {digest}")
                    # Pieces as they arrive (not fixed-size chunks): after a cut, what was
                    # received is written and counted, so the resume loses nothing.
                    for chunk in r.iter_raw():
                        out.write(chunk)
                        written += len(chunk)
                        self._left()
                return
            except httpx.TransportError as e:
                self._left()
                attempt += 1
                if _retry.is_last(attempt):
                    raise SourceError(
                        f"download of {digest} from {self.url} failed: {_why(e)}",
                        hint="check the connection and retry; the partial file was discarded",
                    ) from None
                self._pause(attempt)
            except httpx.HTTPError as e:
                raise self._unfollowable(e) from None

    def search(
        self,
        query: str = "",
        *,
        tags: Sequence[str] = (),
        base_model_hash: str | None = None,
        class_word: str | None = None,
        limit: int = 50,
    ) -> list[IndexEntry]:
        """Pages of results until ``limit`` or the last page; a server that never says "last"
        is stopped at ``constants.HTTP_MAX_PAGES`` pages, or at once if it repeats a cursor."""
        params: list[tuple[str, str | int]] = [("q", query), ("limit", min(limit, 100))]
        params += [("tag", t) for t in tags]
        if base_model_hash:
            params.append(("base_model", base_model_hash))
        if class_word:
            params.append(("class_word", class_word))
        what = "a page of search results"
        results: list[IndexEntry] = []
        cursor: str | None = None
        seen: set[str] = set()
        pages = 0
        while len(results) < limit:
            if pages == constants.HTTP_MAX_PAGES:
                raise SourceError(
                    f"registry {self.name!r} sent more than {pages} pages of search results",
                    hint="narrow the search (a query, --tag) or ask for fewer results",
                )
            pages += 1
            page = params + ([("cursor", cursor)] if cursor else [])
            r = self._request(
                "GET", "/v1/search", params=page, limit=constants.HTTP_MAX_JSON_BYTES, what=what
            )
            self._check(r)
            body = self._json(r, what=what)
            results += [self._entry(v, what=what) for v in self._items(body, "results", what=what)]
            cursor = body.get("next_cursor")
            if not cursor:
                break
            if not isinstance(cursor, str) or cursor in seen:
                raise SourceError(
                    f"registry {self.name!r} sent a search cursor it had sent before (a paging "
                    "loop)",
                    hint=_BROKEN,
                )
            seen.add(cursor)
        return results[:limit]

    def _entry(self, data: Any, *, what: str) -> IndexEntry:
        from pydantic import ValidationError

        if not isinstance(data, dict):
            raise SourceError(
                f"registry {self.name!r} sent {what} with an entry that is not an object",
                hint=_BROKEN,
            )
        try:
            # The server does not know the alias this client calls it by; entries carry it.
            return IndexEntry.model_validate({**data, "registry": self.name})
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "entry"
            raise SourceError(
                f"registry {self.name!r} sent {what} with an invalid entry ({field}: "
                f"{_printable(first['msg'])})",
                hint=_BROKEN,
            ) from None

    # -- writing ---------------------------------------------------------------------------------
    def push(self, manifest: Manifest, files: Mapping[str, Path]) -> bool:
        for digest, path in files.items():
            head = self._request("HEAD", f"/v1/blobs/{_q(digest)}", limit=0, what="a blob check")
            if head.status_code == 200:
                continue  # content-addressed: already there is as good as uploaded
            r = self._request(
                "PUT",
                f"/v1/blobs/{_q(digest)}",
                params={"namespace": manifest.namespace},
                content=_file_chunks(path),
                headers={"Content-Type": "application/octet-stream"},
                rewind=lambda p=path: _file_chunks(p),
                limit=constants.HTTP_MAX_JSON_BYTES,
                what="the answer to an upload",
            )
            self._check(r)
        path = (
            f"/v1/concepts/{_q(manifest.namespace)}/{_q(manifest.name)}"
            f"/versions/{_q(manifest.version)}"
        )
        r = self._request(
            "PUT",
            path,
            content=manifest.canonical_json(),
            headers={"Content-Type": artifact_constants.MEDIA_TYPE_MANIFEST},
            limit=constants.HTTP_MAX_JSON_BYTES,
            what="the answer to a publication",
        )
        if r.status_code == 409:
            raise ImmutableVersionError(
                f"{manifest.id} is already published in {self.name!r} with other content",
                hint="versions are immutable: push a new version",
            )
        self._check(r)
        return r.status_code == 201

    def set_yanked(
        self, namespace: str, name: str, version: str, *, yanked: bool, reason: str | None = None
    ) -> None:
        path = f"/v1/concepts/{_q(namespace)}/{_q(name)}/versions/{_q(version)}/yank"
        what = "the answer to a yank"
        limit = constants.HTTP_MAX_JSON_BYTES
        if yanked:
            r = self._request("POST", path, json={"reason": reason}, limit=limit, what=what)
        else:
            r = self._request("DELETE", path, limit=limit, what=what)
        if r.status_code == 404:
            raise VersionNotFoundError(
                f"{namespace}/{name}@{version} is not in registry {self.name!r}"
            )
        self._check(r)

    # -- plumbing --------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, *, limit: int, what: str, rewind: Any = None, **kwargs: Any
    ) -> _Reply:
        """Send and read the answer whole (at most ``limit`` bytes of a success, what it is
        named by ``what``), retried on connection errors and transient statuses as
        :mod:`._retry` says (every request here is idempotent: reads, and writes of
        content-addressed or immutable data)."""
        import httpx

        for attempt in _retry.attempts():
            reply: _Reply | None = None  # a failed connection leaves none (and no Retry-After)
            try:
                with self._open(method, path, **kwargs) as r:
                    if method == "HEAD":
                        reply = _Reply(r.status_code, r.headers, b"")
                    elif 200 <= r.status_code < 300:
                        reply = _Reply(r.status_code, r.headers, self._read(r, limit, what))
                    else:
                        reply = self._error_reply(r)
            except httpx.TransportError as e:
                self._left()  # past the deadline: say that, not "cannot reach"
                if _retry.is_last(attempt):
                    raise SourceError(
                        f"cannot reach registry {self.name!r} at {self.url}: {_why(e)}",
                        hint="check the URL with `conesreg config list`, or work --offline",
                    ) from None
            except httpx.HTTPError as e:
                raise self._unfollowable(e) from None
            else:
                if not _retry.is_transient(reply.status_code) or _retry.is_last(attempt):
                    return reply
            if rewind is not None:
                kwargs["content"] = rewind()  # a generator body is spent after one try
            self._pause(attempt, reply)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def _open(self, method: str, path: str, **kwargs: Any) -> Iterator[Any]:
        """One exchange, its body not yet read. Redirects of reads are followed (their bodies
        never read) at most ``constants.HTTP_MAX_REDIRECTS`` times; httpx drops the token when
        one leads to another host."""
        request = self._client.build_request(method, path, timeout=self._timeout(), **kwargs)
        target = ""
        for _ in range(constants.HTTP_MAX_REDIRECTS + 1):
            r = self._client.send(request, stream=True)
            if r.next_request is None:
                break
            r.close()
            target = _printable(r.headers.get("location", ""))
            if method not in _READ_METHODS:
                raise SourceError(
                    f"registry {self.name!r} redirected a {method} of {path} to {target}",
                    hint="add the registry under the URL it redirects to (`conesreg config "
                    "registry add`)",
                )
            request = r.next_request
            request.extensions["timeout"] = self._timeout().as_dict()
        else:
            raise SourceError(
                f"registry {self.name!r} redirected {path} more than "
                f"{constants.HTTP_MAX_REDIRECTS} times (last to {target}): a redirect loop",
                hint=_BROKEN,
            )
        try:
            yield r
        finally:
            r.close()

    def _read(self, r: Any, limit: int, what: str) -> bytes:
        """The raw body of ``r``: more than ``limit`` bytes is refused as soon as it is seen
        (the declared length, or the bytes received), so memory stays within the cap."""
        self._refuse_encoded(r, what=what)
        declared = r.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_big(what, limit)
        body = bytearray()
        for chunk in r.iter_raw():
            body += chunk
            if len(body) > limit:
                raise self._too_big(what, limit)
            self._left()
        return bytes(body)

    def _error_reply(self, r: Any) -> _Reply:
        """An error answer with the first ``HTTP_MAX_ERROR_BYTES`` of its body (for the
        message); an encoded or longer body is cut, not refused: the status says enough."""
        body = bytearray()
        if r.headers.get("content-encoding", "identity").strip().lower() in ("", "identity"):
            for chunk in r.iter_raw():
                body += chunk
                if len(body) >= constants.HTTP_MAX_ERROR_BYTES:
                    break
                self._left()
        return _Reply(r.status_code, r.headers, bytes(body[: constants.HTTP_MAX_ERROR_BYTES]))

    def _refuse_encoded(self, r: Any, *, what: str) -> None:
        encoding = r.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise SourceError(
                f"registry {self.name!r} sent {what} compressed ({_printable(encoding)}) "
                "although conesreg asks for uncompressed bytes",
                hint=_BROKEN,
            )

    def _too_big(self, what: str, limit: int) -> SourceError:
        return SourceError(
            f"registry {self.name!r} sent more than {limit:,} bytes for {what}; it was refused "
            "there",
            hint=_BROKEN,
        )

    def _unfollowable(self, e: Exception) -> SourceError:
        # Not a transport failure: a Location that is no URL, an unknown scheme, and the like.
        return SourceError(
            f"registry {self.name!r} sent an answer conesreg cannot follow: {_why(e)}",
            hint=_BROKEN,
        )

    def _json(self, r: _Reply, *, what: str) -> dict[str, Any]:
        try:
            body = load_json(r.body, what=what)
        except ManifestError as e:
            raise SourceError(
                f"registry {self.name!r} sent a malformed answer: {e.message}", hint=_BROKEN
            ) from None
        if not isinstance(body, dict):
            raise SourceError(
                f"registry {self.name!r} sent {what} that is not a JSON object", hint=_BROKEN
            )
        return body

    def _items(self, body: dict[str, Any], key: str, *, what: str) -> list[Any]:
        items = body.get(key)
        if not isinstance(items, list):
            raise SourceError(
                f"registry {self.name!r} sent {what} without a list of {key!r}", hint=_BROKEN
            )
        return items

    def _left(self) -> float:
        """Seconds left before the deadline (the clock starts at the first request).

        Raises:
            SourceError: the deadline has passed.
        """
        now = time.monotonic()
        if self._started is None:
            self._started = now
        left = constants.HTTP_DEADLINE - (now - self._started)
        if left <= 0:
            raise SourceError(
                f"registry {self.name!r} at {self.url} did not finish within "
                f"{constants.HTTP_DEADLINE:g} s (the deadline of one command)",
                hint="retry; on a slow link raise CONESREG_HTTP_DEADLINE; if it persists, tell "
                "the registry's operator",
            )
        return left

    def _timeout(self) -> Any:
        """Per-request timeouts, never longer than what is left of the deadline."""
        import httpx

        left = self._left()
        read = min(constants.HTTP_READ_TIMEOUT, left)
        return httpx.Timeout(read, connect=min(constants.HTTP_CONNECT_TIMEOUT, left))

    def _pause(self, attempt: int, reply: _Reply | None = None) -> None:
        """Wait before the next try (honouring the failed ``reply``'s ``Retry-After``), never
        past the deadline."""
        retry_after = reply.headers.get("retry-after") if reply is not None else None
        _retry.pause(attempt, retry_after=retry_after, left=self._left())

    def _check(self, r: _Reply) -> None:
        if 200 <= r.status_code < 300:
            return
        message = _server_message(r)
        if r.status_code in (401, 403):
            raise AuthenticationError(
                f"registry {self.name!r} refused: {message}",
                hint=f"log in with a token that may do this: `conesreg login {self.name}`",
            )
        if r.status_code == 507:
            raise SourceError(
                f"registry {self.name!r} is out of storage (HTTP 507): {message}",
                hint="nothing was stored; tell the registry's operator to free space, then retry",
            )
        if r.status_code >= 500 or r.status_code == 429:
            raise SourceError(
                f"registry {self.name!r} failed (HTTP {r.status_code}): {message}",
                hint="retry later; if it persists, tell the registry's operator",
            )
        if r.status_code < 400:
            raise SourceError(
                f"registry {self.name!r} answered HTTP {r.status_code}, which conesreg does "
                "not expect here",
                hint=_BROKEN,
            )
        raise SourceError(f"registry {self.name!r} rejected the request: {message}")

    def close(self) -> None:
        self._client.close()


def _q(part: str) -> str:
    return quote(part, safe="")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _why(e: BaseException) -> str:
    return _printable(str(e) or type(e).__name__)


def _printable(text: str, *, limit: int = 300) -> str:
    """Server-supplied text made safe for one terminal line: control characters (escape
    sequences, newlines) become spaces, and it is cut at ``limit`` characters."""
    clean = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _server_message(r: _Reply) -> str:
    try:
        return _printable(str(load_json(r.body, what="an error")["error"]["message"]))
    except Exception:
        return f"HTTP {r.status_code}"
