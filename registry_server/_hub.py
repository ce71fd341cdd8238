"""Hugging Face Hub-compatible read endpoints, so that ``huggingface_hub`` can download concepts.

A concept ``ns/name`` is a model repo; a revision is ``v{version}`` (or the bare version, or
``main`` for the latest non-yanked version, or the 40-hex commit id this server derives from the
manifest digest); its files are ``manifest.json`` (the canonical manifest) and every blob under
its manifest path. Each file is presented as an LFS file whose sha256 is its digest, so the
ETag the Hub client keys its cache on is the content hash. Served:

- ``GET /api/models/{ns}/{name}[/revision/{rev}]``: model info with ``sha`` and ``siblings``;
- ``GET /api/models/{ns}/{name}/tree/{rev}[/{path}]``: the file tree (``recursive`` honoured);
- ``GET|HEAD /{ns}/{name}/resolve/{rev}/{path}``: file bytes with ``X-Repo-Commit``, ``ETag``,
  ``Content-Length`` and Range support; no redirects (the bytes are served here).

Errors carry the ``X-Error-Code`` header the Hub client maps to its exceptions
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from conesreg._manifest import Manifest

from . import _registry as r
from ._auth import Caller
from ._db import Namespace, Version
from ._deps import Ctx, CtxDep, NameP, NamespaceP
from ._errors import ApiError, responses
from ._http import ranged_response

router = APIRouter()

MANIFEST_FILE = "manifest.json"
RevisionP = Annotated[
    str, Path(description="v<version>, <version>, main or a commit id", examples=["v1.0.0"])
]
FileP = Annotated[str, Path(description="a file of the repo", examples=["manifest.json"])]
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_HUB_CODES = {
    "concept_not_found": "RepoNotFound",
    "invalid_name": "RepoNotFound",
    "version_not_found": "RevisionNotFound",
    "invalid_version": "RevisionNotFound",
    "entry_not_found": "EntryNotFound",
}


def commit_id(digest: str) -> str:
    """The 40-hex commit id of a version: the first 40 hex digits of its manifest digest."""
    return digest.removeprefix("sha256:")[:40]


@dataclass(frozen=True)
class RepoFile:
    path: str
    digest: str
    size: int
    media_type: str

    @property
    def sha256(self) -> str:
        return self.digest.removeprefix("sha256:")

    def lfs_pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {self.size}\n"
        ).encode()

    def blob_id(self) -> str:
        """What git would call the file: the sha1 of its LFS pointer as a git blob."""
        pointer = self.lfs_pointer()
        return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()

    def lfs(self) -> dict[str, Any]:
        return {"size": self.size, "pointerSize": len(self.lfs_pointer())}


def repo_files(row: Version, manifest: Manifest) -> list[RepoFile]:
    """``manifest.json`` first, then the blobs by path (a blob named manifest.json is hidden)."""
    size = len(manifest.canonical_json())
    files = [RepoFile(MANIFEST_FILE, row.digest, size, "application/json")]
    files += [
        RepoFile(b.path, b.digest, b.size, b.media_type)
        for b in manifest.blobs
        if b.path != MANIFEST_FILE
    ]
    return files


@contextmanager
def _hub_errors() -> Iterator[None]:
    # The Hub client reads X-Error-Code to raise RepositoryNotFoundError and friends.
    try:
        yield
    except ApiError as e:
        if e.code in _HUB_CODES:
            # Header values must be Latin-1 without line breaks: escape what the user typed.
            text = " ".join(e.message.split()).encode("ascii", "backslashreplace").decode()
            e.headers = {**e.headers, "X-Error-Code": _HUB_CODES[e.code], "X-Error-Message": text}
        raise


def resolve_revision(
    session: Session, caller: Caller, namespace: str, name: str, revision: str
) -> Version:
    """The version a Hub revision names (see the module docstring); 404 if none."""
    concept = r.find_concept(session, caller, namespace, name)
    where = [Version.concept_id == concept.id]
    if revision == "main":
        where.append(Version.is_latest.is_(True))
    elif _COMMIT_RE.match(revision):
        where.append(Version.digest.startswith(f"sha256:{revision}"))
    else:
        where.append(Version.version == r.canonical_version(revision))
    row = session.scalar(select(Version).where(*where).limit(1))
    if row is None:
        raise ApiError(
            404,
            "version_not_found",
            f"no revision {revision} of {namespace}/{name}: use main, v<version> or a commit id",
        )
    return row


def _model_info(
    row: Version, manifest: Manifest, private: bool, files: list[RepoFile]
) -> dict[str, Any]:
    when = row.created_at.isoformat().replace("+00:00", "Z")
    return {
        "_id": commit_id(row.digest),
        "id": f"{row.namespace}/{row.name}",
        "modelId": f"{row.namespace}/{row.name}",
        "author": row.namespace,
        "sha": commit_id(row.digest),
        "lastModified": when,
        "createdAt": when,
        "private": private,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "library_name": "conesreg",
        "tags": ["conesreg", *manifest.metadata.tags],
        "siblings": [
            {
                "rfilename": f.path,
                "size": f.size,
                "blobId": f.blob_id(),
                "lfs": {"sha256": f.sha256, **f.lfs()},
            }
            for f in files
        ],
    }


def _model_info_response(ctx: Ctx, namespace: str, name: str, revision: str) -> JSONResponse:
    with _hub_errors():
        row = resolve_revision(ctx.session, ctx.caller, namespace, name, revision)
    private = ctx.session.scalar(select(Namespace.private).where(Namespace.name == row.namespace))
    manifest = r.manifest_of(ctx.session, row)
    files = repo_files(row, manifest)
    return JSONResponse(_model_info(row, manifest, bool(private), files))


_INFO: dict[int | str, dict[str, Any]] = {
    200: {"description": "Hub model info"},
    **responses(400, 401, 404, 422),
}


@router.get("/api/models/{namespace}/{name}", responses=_INFO, summary="Hub: model info (main)")
def model_info(namespace: NamespaceP, name: NameP, ctx: CtxDep) -> JSONResponse:
    return _model_info_response(ctx, namespace, name, "main")


@router.get(
    "/api/models/{namespace}/{name}/revision/{revision}",
    responses=_INFO,
    summary="Hub: model info at a revision",
)
def model_info_at(
    namespace: NamespaceP, name: NameP, revision: RevisionP, ctx: CtxDep
) -> JSONResponse:
    return _model_info_response(ctx, namespace, name, revision)


def _tree(
    files: list[RepoFile], folder: str, *, recursive: bool
) -> tuple[list[dict[str, Any]], bool]:
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    found = not prefix
    for f in files:
        if not f.path.startswith(prefix):
            continue
        found = True
        rest = f.path[len(prefix) :].split("/")
        # Every folder on the way down is listed when recursive, the first one only otherwise.
        for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
            path = prefix + "/".join(rest[:depth])
            oid = hashlib.sha1(path.encode()).hexdigest()
            entries.setdefault(path, {"type": "directory", "path": path, "oid": oid, "size": 0})
        if recursive or len(rest) == 1:
            entries[f.path] = {
                "type": "file",
                "path": f.path,
                "size": f.size,
                "oid": f.blob_id(),
                "lfs": {"oid": f.sha256, **f.lfs()},
            }
    return sorted(entries.values(), key=lambda e: e["path"]), found


def _tree_response(
    ctx: Ctx, namespace: str, name: str, revision: str, folder: str, recursive: bool
) -> JSONResponse:
    with _hub_errors():
        row = resolve_revision(ctx.session, ctx.caller, namespace, name, revision)
        entries, found = _tree(
            repo_files(row, r.manifest_of(ctx.session, row)), folder, recursive=recursive
        )
        if not found:
            raise ApiError(404, "entry_not_found", f"no folder {folder} in {namespace}/{name}")
    return JSONResponse(entries, headers={"X-Repo-Commit": commit_id(row.digest)})


_TREE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Hub tree entries"},
    **responses(400, 401, 404, 422),
}
_Recursive = Annotated[bool, Query()]


@router.get(
    "/api/models/{namespace}/{name}/tree/{revision}", responses=_TREE, summary="Hub: file tree"
)
def tree(
    namespace: NamespaceP,
    name: NameP,
    revision: RevisionP,
    ctx: CtxDep,
    recursive: _Recursive = False,
    expand: _Recursive = False,
) -> JSONResponse:
    return _tree_response(ctx, namespace, name, revision, "", recursive)


@router.get(
    "/api/models/{namespace}/{name}/tree/{revision}/{path:path}",
    responses=_TREE,
    summary="Hub: file tree of a folder",
)
def tree_folder(
    namespace: NamespaceP,
    name: NameP,
    revision: RevisionP,
    path: FileP,
    ctx: CtxDep,
    recursive: _Recursive = False,
    expand: _Recursive = False,
) -> JSONResponse:
    return _tree_response(ctx, namespace, name, revision, path, recursive)


# manifest.json is JSON; every other file has its blob's own media type.
_FILE = {
    "application/json": {"schema": {"$ref": "#/components/schemas/Manifest"}},
    "*/*": {"schema": {"type": "string", "format": "binary"}},
}


_RESOLVE: dict[int | str, dict[str, Any]] = {
    200: {"description": "The file", "content": _FILE},
    206: {"description": "The requested byte range", "content": _FILE},
    304: {"description": "Not modified (If-None-Match)"},
    **responses(400, 401, 404, 416, 422),
}


@router.head(
    "/{namespace}/{name}/resolve/{revision}/{path:path}",
    response_class=Response,
    responses=_RESOLVE,
    operation_id="hub_head_file",
    summary="Hub: a file's metadata (X-Repo-Commit, ETag, Content-Length)",
)
@router.get(
    "/{namespace}/{name}/resolve/{revision}/{path:path}",
    response_class=Response,
    responses=_RESOLVE,
    operation_id="hub_get_file",
    summary="Hub: download a file",
)
def resolve(
    namespace: NamespaceP,
    name: NameP,
    revision: RevisionP,
    path: FileP,
    request: Request,
    ctx: CtxDep,
) -> Response:
    with _hub_errors():
        row = resolve_revision(ctx.session, ctx.caller, namespace, name, revision)
        files = {f.path: f for f in repo_files(row, r.manifest_of(ctx.session, row))}
        if path not in files:
            raise ApiError(
                404,
                "entry_not_found",
                f"no file {path} in {namespace}/{name} at {revision}: files are "
                f"{', '.join(sorted(files))}",
            )
    f = files[path]
    data = r.manifest_bytes(ctx.session, row.digest) if path == MANIFEST_FILE else b""
    ctx.session.close()
    storage = ctx.reg.storage

    def open_file() -> Any:
        return io.BytesIO(data) if f.path == MANIFEST_FILE else storage.open_read(f.digest)

    return ranged_response(
        request,
        size=f.size,
        etag=f'"{f.sha256}"',
        open_file=open_file,
        media_type=f.media_type,
        headers={"X-Repo-Commit": commit_id(row.digest)},
    )
