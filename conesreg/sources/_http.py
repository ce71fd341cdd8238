"""A self-hosted registry (``registry_server``) over HTTP: the same Source as the embedded one.

Everything received is verified by the caller (manifests against their digests, blobs by the
cache while they stream in). This module moves bytes: it retries what is safe to retry, resumes
an interrupted blob download where it stopped (HTTP Range), and maps HTTP errors to conesreg's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from .. import constants
from .._manifest import IndexEntry, Manifest
from ..errors import (
    AuthenticationError,
    ConceptNotFoundError,
    ImmutableVersionError,
    SourceError,
    VersionNotFoundError,
)
from ._base import BlobOrigin

_CHUNK = 1 << 20


class HttpSource:
    """A ``registry_server`` at ``url``; ``token`` authorizes pushes and private reads."""

    remote = True
    offline = False

    def __init__(self, url: str, *, name: str, token: str | None = None) -> None:
        import httpx

        self.name = name
        self.url = url.rstrip("/")
        headers = {"User-Agent": f"conesreg/{_version()}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=self.url,
            headers=headers,
            # A stalled server fails the command; it never hangs it.
            timeout=httpx.Timeout(
                constants.HTTP_READ_TIMEOUT, connect=constants.HTTP_CONNECT_TIMEOUT
            ),
            follow_redirects=True,
        )

    def location(self) -> str:
        return self.url

    # -- reading ---------------------------------------------------------------------------------
    def versions(self, namespace: str, name: str) -> list[IndexEntry]:
        r = self._request("GET", f"/v1/concepts/{_q(namespace)}/{_q(name)}/versions")
        if r.status_code == 404:
            raise ConceptNotFoundError(f"{namespace}/{name} is not in registry {self.name!r}")
        self._check(r)
        return [self._entry(v) for v in r.json()["versions"]]

    def manifest(
        self, namespace: str, name: str, version: str, *, revision: str | None = None
    ) -> bytes:
        path = f"/v1/concepts/{_q(namespace)}/{_q(name)}/versions/{_q(version)}/manifest"
        r = self._request("GET", path)
        if r.status_code == 404:
            raise VersionNotFoundError(
                f"{namespace}/{name}@{version} is not in registry {self.name!r}"
            )
        self._check(r)
        return r.content

    def fetch_blob(self, digest: str, out: BinaryIO, *, origin: BlobOrigin | None = None) -> None:
        """Stream the blob into ``out``; a dropped connection resumes with a Range request
        from the bytes already written instead of starting over."""
        import httpx

        written, attempt = 0, 0
        while True:
            headers = {"Range": f"bytes={written}-"} if written else {}
            try:
                with self._client.stream("GET", f"/v1/blobs/{_q(digest)}", headers=headers) as r:
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
                    self._check(r)
                    # Pieces as they arrive (not fixed-size chunks): after a cut, what was
                    # received is written and counted, so the resume loses nothing.
                    for chunk in r.iter_bytes():
                        out.write(chunk)
                        written += len(chunk)
                return
            except httpx.TransportError as e:
                attempt += 1
                if attempt >= constants.HTTP_ATTEMPTS:
                    raise SourceError(
                        f"download of {digest} from {self.url} failed: {_why(e)}",
                        hint="check the connection and retry; the partial file was discarded",
                    ) from None
                time.sleep(_backoff(attempt))

    def search(
        self,
        query: str = "",
        *,
        tags: Sequence[str] = (),
        base_model_hash: str | None = None,
        class_word: str | None = None,
        limit: int = 50,
    ) -> list[IndexEntry]:
        params: list[tuple[str, str | int]] = [("q", query), ("limit", min(limit, 100))]
        params += [("tag", t) for t in tags]
        if base_model_hash:
            params.append(("base_model", base_model_hash))
        if class_word:
            params.append(("class_word", class_word))
        results: list[IndexEntry] = []
        cursor: str | None = None
        while len(results) < limit:
            page = params + ([("cursor", cursor)] if cursor else [])
            r = self._request("GET", "/v1/search", params=page)
            self._check(r)
            body = r.json()
            results += [self._entry(v) for v in body["results"]]
            cursor = body.get("next_cursor")
            if not cursor:
                break
        return results[:limit]

    def _entry(self, data: dict[str, Any]) -> IndexEntry:
        # The server does not know the alias this client calls it by; entries carry the alias.
        return IndexEntry.model_validate({**data, "registry": self.name})

    # -- writing ---------------------------------------------------------------------------------
    def push(self, manifest: Manifest, files: Mapping[str, Path]) -> bool:
        for digest, path in files.items():
            head = self._request("HEAD", f"/v1/blobs/{_q(digest)}")
            if head.status_code == 200:
                continue  # content-addressed: already there is as good as uploaded
            r = self._request(
                "PUT",
                f"/v1/blobs/{_q(digest)}",
                params={"namespace": manifest.namespace},
                content=_file_chunks(path),
                headers={"Content-Type": "application/octet-stream"},
                rewind=lambda p=path: _file_chunks(p),
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
            headers={"Content-Type": constants.MEDIA_TYPE_MANIFEST},
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
        if yanked:
            r = self._request("POST", path, json={"reason": reason})
        else:
            r = self._request("DELETE", path)
        if r.status_code == 404:
            raise VersionNotFoundError(
                f"{namespace}/{name}@{version} is not in registry {self.name!r}"
            )
        self._check(r)

    # -- plumbing --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, rewind: Any = None, **kwargs: Any) -> Any:
        """Send with retries on connection errors and 5xx/429 (every request here is
        idempotent: reads, and writes of content-addressed or immutable data)."""
        import httpx

        for attempt in range(1, constants.HTTP_ATTEMPTS + 1):
            try:
                r = self._client.request(method, path, **kwargs)
            except httpx.TransportError as e:
                if attempt == constants.HTTP_ATTEMPTS:
                    raise SourceError(
                        f"cannot reach registry {self.name!r} at {self.url}: {_why(e)}",
                        hint="check the URL with `conesreg config list`, or work --offline",
                    ) from None
            else:
                if (
                    r.status_code < 500 and r.status_code != 429
                ) or attempt == constants.HTTP_ATTEMPTS:
                    return r
            if rewind is not None:
                kwargs["content"] = rewind()  # a generator body is spent after one try
            time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, r: Any) -> None:
        if r.status_code < 400:
            return
        message = _server_message(r)
        if r.status_code in (401, 403):
            raise AuthenticationError(
                f"registry {self.name!r} refused: {message}",
                hint=f"log in with a token that may do this: `conesreg login {self.name}`",
            )
        if r.status_code >= 500 or r.status_code == 429:
            raise SourceError(
                f"registry {self.name!r} failed (HTTP {r.status_code}): {message}",
                hint="retry later; if it persists, tell the registry's operator",
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


def _backoff(attempt: int) -> float:
    return min(0.25 * 2 ** (attempt - 1), 4.0)


def _why(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _server_message(r: Any) -> str:
    try:
        return str(r.json()["error"]["message"])
    except Exception:
        r.read()
        return f"HTTP {r.status_code}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("conesreg")
    except PackageNotFoundError:
        return "dev"
