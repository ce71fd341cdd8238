"""A client-side push to a ``registry_server`` (blobs, then the manifest) as conesreg clients do
it, over a live server's ``httpx.Client`` or an in-process ``TestClient``
(:func:`registry_server.testing.running_server`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ._drafts import make_draft

if TYPE_CHECKING:
    import httpx
    from fastapi.testclient import TestClient

    from ..artifact._manifest import Manifest


def auth(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header of a bearer ``token`` (none for ``None``).

    Example:
        >>> auth("secret")
        {'Authorization': 'Bearer secret'}
    """
    return {"Authorization": f"Bearer {token}"} if token else {}


def upload_blobs(
    client: httpx.Client | TestClient, files: dict[str, Path], *, namespace: str, token: str | None
) -> list[httpx.Response]:
    """``PUT /v1/blobs/{digest}`` for every file, into ``namespace``.

    Args:
        client: sends the requests.
        files: the files by their digests (as :func:`conesreg._push.build_manifest` lists them).
        namespace: the namespace the blobs are uploaded for.
        token: a push token of ``namespace``, or ``None`` for an anonymous upload.

    Returns:
        `list[httpx.Response]`: one answer per file, in order (not checked).
    """
    return [
        client.put(
            f"/v1/blobs/{digest}",
            params={"namespace": namespace},
            content=path.read_bytes(),
            headers=auth(token),
        )
        for digest, path in files.items()
    ]


def push_draft(
    client: httpx.Client | TestClient,
    draft: Path,
    *,
    version: str,
    token: str | None,
    namespace: str | None = None,
    name: str | None = None,
) -> tuple[Manifest, httpx.Response]:
    """Push a draft: its blobs, then its manifest.

    Args:
        client: sends the requests.
        draft: a draft folder (e.g. :func:`make_draft`'s).
        version: the version to publish.
        token: a push token, or ``None``.
        namespace, name: override the draft's.

    Returns:
        `tuple[Manifest, httpx.Response]`: the manifest and the answer to its ``PUT``.

    Raises:
        AssertionError: a blob upload was refused.
    """
    from ..artifact import build_manifest

    manifest, files = build_manifest(draft, version=version, namespace=namespace, name=name)
    for response in upload_blobs(client, files, namespace=manifest.namespace, token=token):
        assert response.status_code in (200, 201), response.text
    return manifest, put_manifest(client, manifest.canonical_json(), manifest, token=token)


def put_manifest(
    client: httpx.Client | TestClient, body: bytes, manifest: Manifest, *, token: str | None
) -> httpx.Response:
    """``PUT`` ``body`` as the manifest of ``manifest``'s version (its id and version name the
    URL; ``body`` may differ from its canonical JSON, to test what the server refuses).

    Returns:
        `httpx.Response`: the answer (not checked).
    """
    url = f"/v1/concepts/{manifest.namespace}/{manifest.name}/versions/{manifest.version}"
    return client.put(url, content=body, headers=auth(token))


#: A concept for :func:`publish_table`: name, namespace, class word, tags, description, base hash
#: (None: the default test hash).
ConceptRow = tuple[str, str, str, tuple[str, ...], str, str | None]


def publish_table(
    client: httpx.Client | TestClient,
    tmp: Path,
    rows: list[ConceptRow],
    *,
    tokens: dict[str, str],
    versions: tuple[str, ...] = ("1.0.0", "1.1.0"),
    preview: Callable[[int], bytes] | None = None,
) -> None:
    """Push every row at every version.

    Args:
        client: sends the requests.
        tmp: a folder for the drafts.
        rows: the concepts; row ``i`` is drafted with seed ``i``.
        tokens: a push token per namespace of the rows.
        versions: the versions each row is published at.
        preview: ``preview(i)`` gives the bytes of row ``i``'s preview (default: random).

    Raises:
        AssertionError: a push was refused.
    """
    for i, (name, ns, cw, tags, desc, base) in enumerate(rows):
        draft = make_draft(
            tmp / name,
            name=name,
            namespace=ns,
            class_word=cw,
            tags=tags,
            description=desc,
            seed=i,
            **({"base_hash": base} if base else {}),
        )
        if preview is not None:
            (draft / "previews" / "sample-0.png").write_bytes(preview(i))
        for v in versions:
            _, r = push_draft(client, draft, version=v, token=tokens[ns])
            assert r.status_code == 201, r.text
