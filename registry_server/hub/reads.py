"""Hugging Face Hub-compatible read endpoints, so that ``huggingface_hub`` can download concepts
and Hub repos.

Two kinds of model repo are served under the same routes:

- a native concept ``ns/name`` (published through /v1): a revision is ``v{version}`` (or the bare
  version, or ``main`` for the latest non-yanked version, or the 40-hex commit id this server
  derives from the manifest digest); its files are ``manifest.json`` (the canonical manifest)
  and every blob under its manifest path;
- a Hub repo (written with ``huggingface_hub``, see :mod:`.repos`): a revision
  is the branch ``main``, a tag, or a commit oid (or a unique prefix of 7+ hex digits); its files
  are that commit's tree; model info carries the ``tags`` and ``cardData`` of its README.md's
  YAML front matter. A Hub repo the caller may not read is answered as a name never used.

Each file is presented as an LFS file whose sha256 is its digest, so the ETag the Hub client keys
its cache on is the content hash. Served:

- ``GET /api/models``: Hub repos (head of ``main``) and concepts (latest version, with the card a
  push to a Hub would write), filtered by card tags, search and author;
- ``GET /api/models/{ns}/{name}[/revision/{rev}]``: model info with ``sha`` and ``siblings``;
- ``GET /api/models/{ns}/{name}/refs``: branches and tags with their commits;
- ``GET /api/models/{ns}/{name}/commits/{rev}``: a revision's commits, newest first;
- ``GET /api/models/{ns}/{name}/tree/{rev}[/{path}]``: the file tree (``recursive`` honoured);
- ``GET|HEAD /{ns}/{name}/resolve/{rev}/{path}``: file bytes with ``X-Repo-Commit``, ``ETag``,
  ``Content-Length`` and Range support; no redirects (the bytes are served here).

Errors carry the ``X-Error-Code`` header the Hub client maps to its exceptions
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``): see :mod:`.errors`.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from conesreg.artifact import CARD_TAGS, Manifest, hub_card_data

from ..core import queries
from ..core.auth import Caller
from ..core.checks import canonical_version, is_revision
from ..core.db import HubCommit, Namespace, Version
from ..core.errors import Invalid, NotFound
from ..web.deps import Ctx, CtxDep, NameP, NamespaceP, RevisionP
from ..web.errors import ApiError, responses
from ..web.transfer import ranged_response
from . import repos as hr
from .errors import HubReadRoute

router = APIRouter(route_class=HubReadRoute)

MANIFEST_FILE = "manifest.json"
#: The most concepts one ``list_models`` answer lists (each is a parsed manifest in memory; the
#: Hub pages its listing, this server does not).
LISTING_MAX = 10_000
FileP = Annotated[str, Path(description="a file of the repo", examples=["manifest.json"])]
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def commit_id(digest: str) -> str:
    """The 40-hex commit id of a version: the first 40 hex digits of its manifest digest."""
    return digest.removeprefix("sha256:")[:40]


@dataclass(frozen=True)
class RepoFile:
    path: str
    digest: str
    size: int
    media_type: str
    #: The bytes are a manifest in the database (a concept's manifest.json), not a stored blob.
    in_db: bool = False

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
    files = [RepoFile(MANIFEST_FILE, row.digest, size, "application/json", in_db=True)]
    files += [
        RepoFile(b.path, b.digest, b.size, b.media_type)
        for b in manifest.blobs
        if b.path != MANIFEST_FILE
    ]
    return files


def resolve_revision(
    session: Session, caller: Caller, namespace: str, name: str, revision: str
) -> Version:
    """The version a Hub revision names (see the module docstring); 404 if none."""
    concept = queries.find_concept(session, caller, namespace, name)
    where = [Version.concept_id == concept.id]
    if revision == "main":
        where.append(Version.is_latest.is_(True))
    elif _COMMIT_RE.fullmatch(revision):
        where.append(Version.digest.startswith(f"sha256:{revision}"))
    else:
        # Text that is no version is a revision name that names nothing: 404, as on the Hub.
        where.append(Version.version == _version_or_none(revision))
    row = session.scalar(select(Version).where(*where).limit(1))
    if row is None:
        raise NotFound(
            "version_not_found",
            f"no revision {revision} of {namespace}/{name}: use main, v<version> or a commit id",
        )
    return row


def _version_or_none(revision: str) -> str | None:
    if not is_revision(revision):
        return None
    try:
        return canonical_version(revision)
    except Invalid:
        return None


@dataclass(frozen=True)
class Snapshot:
    """One revision of a repo of either kind: what the read routes answer from."""

    repo_id: str
    sha: str
    private: bool
    created_at: datetime
    last_modified: datetime
    files: list[RepoFile]
    tags: list[str]
    library_name: str | None
    #: The README's front matter (Hub repos only; None: none).
    card: dict[str, Any] | None = None


def native_snapshot(
    session: Session, caller: Caller, namespace: str, name: str, revision: str
) -> Snapshot:
    """A concept's version as a repo revision (404/400 as :func:`resolve_revision`)."""
    row = resolve_revision(session, caller, namespace, name, revision)
    private = session.scalar(select(Namespace.private).where(Namespace.name == row.namespace))
    return _version_snapshot(row, queries.manifest_of(session, row), private=bool(private))


def _version_snapshot(row: Version, manifest: Manifest, *, private: bool) -> Snapshot:
    # The card a push to a Hub would write, so a Hub-kind source lists, searches and reads a
    # concept published here natively exactly as one pushed to a Hub.
    card = hub_card_data(manifest)
    return Snapshot(
        repo_id=f"{row.namespace}/{row.name}",
        sha=commit_id(row.digest),
        private=private,
        created_at=row.created_at,
        last_modified=row.created_at,
        files=repo_files(row, manifest),
        tags=list(card["tags"]),
        library_name="conesreg",
        card=card,
    )


def _media_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def hub_snapshot(session: Session, repo: hr.Repo, revision: str) -> Snapshot:
    """A Hub repo's commit that ``revision`` names (404 if none)."""
    return commit_snapshot(repo, hr.resolve(session, repo, revision))


def commit_snapshot(repo: hr.Repo, commit: HubCommit) -> Snapshot:
    """A Hub repo's commit as a revision."""
    card = hr.card_of(commit)
    library = (card or {}).get("library_name")
    files = [
        RepoFile(path, e.digest, e.size, _media_type(path))
        for path, e in sorted(hr.tree_of(commit).items())
    ]
    return Snapshot(
        repo_id=repo.repo_id,
        sha=commit.oid,
        private=repo.private,
        created_at=repo.created_at,
        last_modified=commit.created_at,
        files=files,
        tags=hr.card_tags(card),
        library_name=library if isinstance(library, str) else None,
        card=card,
    )


def snapshot(
    session: Session, caller: Caller, namespace: str, name: str, revision: str
) -> Snapshot:
    """The Hub repo's revision if ``caller`` sees a Hub repo of that name, else the concept's
    (whose 404 is then also the answer for a private Hub repo: nothing leaks)."""
    repo = hr.find_repo(session, caller, namespace, name)
    if repo is not None:
        return hub_snapshot(session, repo, revision)
    return native_snapshot(session, caller, namespace, name, revision)


def _when(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def model_info_json(snap: Snapshot) -> dict[str, Any]:
    """The Hub's model info of a revision (what ``ModelInfo`` reads)."""
    info: dict[str, Any] = {
        "_id": snap.sha,
        "id": snap.repo_id,
        "modelId": snap.repo_id,
        "author": snap.repo_id.split("/")[0],
        "sha": snap.sha,
        "lastModified": _when(snap.last_modified),
        "createdAt": _when(snap.created_at),
        "private": snap.private,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "tags": snap.tags,
        "siblings": [
            {
                "rfilename": f.path,
                "size": f.size,
                "blobId": f.blob_id(),
                "lfs": {"sha256": f.sha256, **f.lfs()},
            }
            for f in snap.files
        ],
    }
    if snap.library_name is not None:
        info["library_name"] = snap.library_name
    if snap.card is not None:
        info["cardData"] = snap.card
    return info


def _expanded(info: dict[str, Any], expand: list[str] | None) -> dict[str, Any]:
    # As on the Hub: with expand, only the properties asked for (and the ids) are returned.
    if not expand:
        return info
    keep = {"_id", "id", *expand}
    return {k: v for k, v in info.items() if k in keep}


def _model_info_response(
    ctx: Ctx, namespace: str, name: str, revision: str, expand: list[str] | None
) -> JSONResponse:
    snap = snapshot(ctx.session, ctx.caller, namespace, name, revision)
    return JSONResponse(_expanded(model_info_json(snap), expand))


_INFO: dict[int | str, dict[str, Any]] = {
    200: {"description": "Hub model info"},
    **responses(400, 401, 404, 422),
}


#: What ``expand`` may name: the Hub's model properties (as huggingface_hub lists them); those
#: this server does not have are simply absent from the answer.
ExpandProperty = Literal[
    "author", "baseModels", "cardData", "childrenModelCount", "config", "createdAt", "disabled",
    "downloads", "downloadsAllTime", "evalResults", "gated", "gguf", "inference",
    "inferenceProviderMapping", "lastModified", "library_name", "likes", "mask_token",
    "model-index", "pipeline_tag", "private", "resourceGroup", "safetensors", "sha", "siblings",
    "spaces", "tags", "transformersInfo", "trendingScore", "usedStorage", "widgetData",
]  # fmt: skip
_Expand = Annotated[
    list[ExpandProperty] | None,
    Query(
        description="return only these properties (and the ids)",
        max_length=len(get_args(ExpandProperty)),
    ),
]


@router.get("/api/models/{namespace}/{name}", responses=_INFO, summary="Hub: model info (main)")
def model_info(
    namespace: NamespaceP, name: NameP, ctx: CtxDep, expand: _Expand = None
) -> JSONResponse:
    return _model_info_response(ctx, namespace, name, "main", expand)


@router.get(
    "/api/models/{namespace}/{name}/revision/{revision}",
    responses=_INFO,
    summary="Hub: model info at a revision",
)
def model_info_at(
    namespace: NamespaceP, name: NameP, revision: RevisionP, ctx: CtxDep, expand: _Expand = None
) -> JSONResponse:
    return _model_info_response(ctx, namespace, name, revision, expand)


@router.get(
    "/api/models",
    responses={200: {"description": "Hub model infos"}, **responses(401, 422)},
    summary="Hub: list Hub repos and concepts by card tags, search and author",
)
def list_models(
    ctx: CtxDep,
    tags: Annotated[
        list[str] | None,
        Query(alias="filter", description="repeatable; every one must be a tag of the card"),
    ] = None,
    search: Annotated[str | None, Query(max_length=1000, description="part of the id")] = None,
    author: Annotated[str | None, Query(description="the namespace")] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    card_data: Annotated[bool, Query(alias="cardData")] = False,
    full: Annotated[bool, Query(description="include the files (siblings)")] = False,
    expand: _Expand = None,
) -> JSONResponse:
    found = hr.list_repos(
        ctx.session, ctx.caller, tags=tags or [], search=search, author=author, limit=limit
    )
    snaps = {repo.repo_id: commit_snapshot(repo, head) for repo, head in found}
    snaps.update(
        (snap.repo_id, snap)
        for snap in _native_listing(ctx, tags=tags or [], search=search, author=author, limit=limit)
        if snap.repo_id not in snaps  # a Hub repo of the same name is what its routes answer
    )
    infos = []
    for repo_id in sorted(snaps)[:limit]:
        info = model_info_json(snaps[repo_id])
        # As on the Hub, a listing carries the card and the files only when asked.
        if not (card_data or full):
            info.pop("cardData", None)
        if not full:
            info.pop("siblings")
        infos.append(_expanded(info, expand) if expand else info)
    return JSONResponse(infos)


def _native_listing(
    ctx: Ctx, *, tags: list[str], search: str | None, author: str | None, limit: int | None
) -> list[Snapshot]:
    """The concepts published through /v1 as listed repos: each at its latest version."""
    own = [t for t in tags if t not in CARD_TAGS]  # every concept's card carries CARD_TAGS
    cap = min(limit or LISTING_MAX, LISTING_MAX)
    rows = queries.latest_versions(
        ctx.session, ctx.caller, tags=own, id_contains=search, namespace=author, limit=cap
    )
    manifests = queries.manifests_of(ctx.session, rows)
    private = set(
        ctx.session.scalars(select(Namespace.name).where(Namespace.private.is_(True))).all()
    )
    return [_version_snapshot(r, manifests[r.digest], private=r.namespace in private) for r in rows]


def _ref(kind: str, name: str, oid: str) -> dict[str, str]:
    return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}


@router.get(
    "/api/models/{namespace}/{name}/refs",
    responses={200: {"description": "Hub refs"}, **responses(400, 401, 404, 422)},
    summary="Hub: branches and tags (a concept: main and v<version> for every version)",
)
def list_refs(namespace: NamespaceP, name: NameP, ctx: CtxDep) -> JSONResponse:
    repo = hr.find_repo(ctx.session, ctx.caller, namespace, name)
    if repo is not None:
        rows = hr.refs(ctx.session, repo)
        branches = [_ref("heads", x.name, x.target_oid) for x in rows if x.kind == "branch"]
        tags = [_ref("tags", x.name, x.target_oid) for x in rows if x.kind == "tag"]
    else:
        concept = queries.find_concept(ctx.session, ctx.caller, namespace, name)
        versions = queries.concept_versions(ctx.session, concept)
        branches = [_ref("heads", "main", commit_id(v.digest)) for v in versions if v.is_latest]
        tags = [_ref("tags", f"v{v.version}", commit_id(v.digest)) for v in versions]
    return JSONResponse({"branches": branches, "converts": [], "tags": tags, "pullRequests": []})


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


@router.get(
    "/api/models/{namespace}/{name}/commits/{revision}",
    responses={200: {"description": "Hub commits, newest first"}, **responses(400, 401, 404, 422)},
    summary="Hub: the commits of a revision (a concept: its versions up to that one)",
)
def list_commits(
    namespace: NamespaceP, name: NameP, revision: RevisionP, ctx: CtxDep
) -> JSONResponse:
    repo = hr.find_repo(ctx.session, ctx.caller, namespace, name)
    if repo is not None:
        commits = hr.history(ctx.session, repo, hr.resolve(ctx.session, repo, revision))
        items = [_commit(c.oid, c.title, c.message, c.created_at) for c in commits]
    else:
        row = resolve_revision(ctx.session, ctx.caller, namespace, name, revision)
        concept = queries.find_concept(ctx.session, ctx.caller, namespace, name)
        versions = queries.concept_versions(ctx.session, concept)
        upto = versions[: [v.id for v in versions].index(row.id) + 1]
        items = [
            _commit(commit_id(v.digest), f"v{v.version}", "", v.created_at) for v in reversed(upto)
        ]
    return JSONResponse(items)


def _commit(oid: str, title: str, message: str, when: datetime) -> dict[str, Any]:
    return {"id": oid, "title": title, "message": message, "date": _when(when), "authors": []}


def _tree_response(
    ctx: Ctx, namespace: str, name: str, revision: str, folder: str, recursive: bool
) -> JSONResponse:
    snap = snapshot(ctx.session, ctx.caller, namespace, name, revision)
    entries, found = _tree(snap.files, folder, recursive=recursive)
    if not found:
        raise NotFound("entry_not_found", f"no folder {folder} in {namespace}/{name}")
    return JSONResponse(entries, headers={"X-Repo-Commit": snap.sha})


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
    snap = snapshot(ctx.session, ctx.caller, namespace, name, revision)
    files = {f.path: f for f in snap.files}
    if path not in files:
        # With the commit, as the Hub does: the client then remembers the file is absent.
        raise ApiError(
            404,
            "entry_not_found",
            f"no file {path} in {namespace}/{name} at {revision}: files are "
            f"{', '.join(sorted(files)[:50])}",
            headers={"X-Repo-Commit": snap.sha},
        )
    f = files[path]
    data = queries.manifest_bytes(ctx.session, f.digest) if f.in_db else b""
    ctx.session.close()
    storage = ctx.reg.storage

    def open_file() -> Any:
        return io.BytesIO(data) if f.in_db else storage.open_read(f.digest)

    return ranged_response(
        request,
        size=f.size,
        etag=f'"{f.sha256}"',
        open_file=open_file,
        media_type=f.media_type,
        headers={"X-Repo-Commit": snap.sha},
    )
