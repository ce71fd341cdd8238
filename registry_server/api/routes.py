"""The routes of the REST API, ``/v1``: what conesreg clients use. docs/server.md is its contract.

Domain errors raised while answering become ``/v1`` errors in one place, :mod:`.errors`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from conesreg.artifact import IndexEntry, Manifest, constants

from ..core import metrics, publishing, queries
from ..core.auth import Caller, authenticate, require_push
from ..core.blobstore import DigestMismatchError
from ..core.checks import check_digest, check_names
from ..core.errors import Invalid, RegistryError
from ..core.registry import Registry
from ..core.search import search as search_registry
from ..core.uploads import commit_upload
from ..web.deps import (
    BearerDep,
    CallerDep,
    Ctx,
    CtxDep,
    DigestP,
    NameP,
    NamespaceP,
    NamespaceQ,
    VersionP,
    registry_of,
)
from ..web.errors import responses
from ..web.transfer import body_chunks, etag_matches, ranged_response, read_body
from .errors import V1Route

router = APIRouter(prefix="/v1", route_class=V1Route)


# -- response and request models (for validation and the OpenAPI document) -----------------------
class VersionsResponse(BaseModel):
    versions: list[IndexEntry]


class SearchResponse(BaseModel):
    results: list[IndexEntry]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: done")


class IndexVersion(BaseModel):
    version: str
    digest: str
    yanked: bool


class IndexConcept(BaseModel):
    namespace: str
    name: str
    versions: list[IndexVersion]


class IndexResponse(BaseModel):
    concepts: list[IndexConcept]


class BlobUploaded(BaseModel):
    digest: str
    size: int
    created: bool


class WhoAmI(BaseModel):
    """Whom the request's token belongs to."""

    anonymous: bool = Field(description="true without a conesreg token")
    namespace: str | None = Field(description="the namespace the token acts on")
    scope: str | None = Field(description="read, push or admin")


class YankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)


def _entries(ctx: Ctx, rows: list[Any]) -> list[dict[str, Any]]:
    return queries.entries_json(ctx.session, rows, ctx.reg.settings.registry_name)


def _entry(reg: Registry, row: Any) -> dict[str, Any]:
    with reg.sessions() as session:
        return queries.entries_json(session, [row], reg.settings.registry_name)[0]


_MANIFEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Manifest"}}},
}
_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_BLOB_BODY = {"required": True, "content": _BINARY}
_MANIFEST_CONTENT = {
    constants.MEDIA_TYPE_MANIFEST: {"schema": {"$ref": "#/components/schemas/Manifest"}}
}


# -- reading --------------------------------------------------------------------------------------
@router.get(
    "/concepts/{namespace}/{name}/versions",
    response_model=VersionsResponse,
    responses=responses(400, 401, 404, 422),
    summary="Every version of a concept, yanked ones included, in semver order",
)
def list_versions(namespace: NamespaceP, name: NameP, ctx: CtxDep) -> JSONResponse:
    concept = queries.find_concept(ctx.session, ctx.caller, namespace, name)
    rows = queries.concept_versions(ctx.session, concept)
    return JSONResponse({"versions": _entries(ctx, rows)})


@router.get(
    "/concepts/{namespace}/{name}/versions/{version}/manifest",
    response_class=Response,
    responses={
        200: {"description": "The canonical manifest", "content": _MANIFEST_CONTENT},
        304: {"description": "Not modified (If-None-Match)"},
        **responses(400, 401, 404, 422),
    },
    summary="A version's canonical manifest bytes",
)
async def get_manifest(
    namespace: NamespaceP, name: NameP, version: VersionP, request: Request, _: BearerDep
) -> Response:
    # Public versions asked for without a token are answered before routing, by
    # registry_server.api.fast_path; what arrives here needs the database's full answer (a
    # token, a private namespace, an error to explain).
    reg = registry_of(request)
    authorization = request.headers.get("authorization")
    hit = await run_in_threadpool(_load_manifest, reg, authorization, namespace, name, version)
    return _manifest_bytes_response(request, *hit)


def _load_manifest(
    reg: Registry, authorization: str | None, namespace: str, name: str, version: str
) -> tuple[str, bytes]:
    with reg.sessions() as session:
        caller = authenticate(session, authorization)
        ref = queries.find_version_ref(reg, session, caller, namespace, name, version)
        return ref.digest, queries.manifest_bytes(session, ref.digest)


@router.get(
    "/manifests/{digest}",
    response_class=Response,
    responses={
        200: {"description": "The canonical manifest", "content": _MANIFEST_CONTENT},
        304: {"description": "Not modified (If-None-Match)"},
        **responses(400, 401, 404, 422),
    },
    summary="A manifest by its digest",
)
def get_manifest_by_digest(digest: DigestP, request: Request, ctx: CtxDep) -> Response:
    return _manifest_response(request, ctx, queries.find_manifest(ctx.session, ctx.caller, digest))


def _manifest_response(request: Request, ctx: Ctx, row: Any) -> Response:
    return _manifest_bytes_response(
        request, row.digest, queries.manifest_bytes(ctx.session, row.digest)
    )


def _manifest_bytes_response(request: Request, digest: str, data: bytes) -> Response:
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=constants.MEDIA_TYPE_MANIFEST, headers=headers)


_BLOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The blob's bytes", "content": _BINARY},
    206: {"description": "The requested byte range", "content": _BINARY},
    304: {"description": "Not modified (If-None-Match)"},
    307: {"description": "The blob's presigned URL in the object store (--blob-redirect)"},
    **responses(400, 401, 404, 416, 422, 503),
}


@router.head(
    "/blobs/{digest}",
    response_class=Response,
    responses=_BLOB_RESPONSES,
    operation_id="head_blob",
    summary="Whether a blob is here, and its size (push tokens also see unpublished uploads)",
)
@router.get(
    "/blobs/{digest}",
    response_class=Response,
    responses=_BLOB_RESPONSES,
    operation_id="get_blob",
    summary="A blob by digest (Range and If-None-Match supported)",
)
def get_blob(digest: DigestP, request: Request, ctx: CtxDep) -> Response:
    head = request.method == "HEAD"
    size = queries.blob_readable(ctx.session, ctx.caller, digest, head=head)
    ctx.session.close()  # streaming can take long: give the connection back now
    settings, etag = ctx.reg.settings, f'"{digest}"'
    presign = getattr(ctx.reg.storage, "presigned_url", None)
    if settings.blob_redirect and presign and not head:
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers={"ETag": etag})
        # The bytes come from the object store; the URL itself is a short-lived credential
        # for this one blob, so it is not cached beyond its life. httpx, requests and
        # conesreg's client drop the Authorization header on a redirect to another host.
        url = presign(digest, seconds=settings.blob_redirect_seconds)
        return Response(
            status_code=307,
            headers={"Location": url, "ETag": etag, "Cache-Control": "private, no-store"},
        )
    return ranged_response(
        request,
        size=size,
        etag=etag,
        open_file=lambda: ctx.reg.storage.open_read(digest),
        media_type="application/octet-stream",
        headers={"Cache-Control": "max-age=31536000, immutable"},
    )


@router.get(
    "/search",
    response_model=SearchResponse,
    responses=responses(400, 401, 422),
    summary="The latest non-yanked version of each matching concept, best match first",
)
def search(
    ctx: CtxDep,
    q: Annotated[str, Query(max_length=1000, description="words; each must match")] = "",
    tag: Annotated[list[str] | None, Query(description="repeatable; all must be present")] = None,
    base_model: Annotated[str | None, Query(description="a base-model hash")] = None,
    class_word: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None,
        Query(
            min_length=1, max_length=2000, pattern=r"^[A-Za-z0-9_-]+$", description="next_cursor"
        ),
    ] = None,
) -> JSONResponse:
    rows, next_cursor = search_registry(
        ctx.session,
        ctx.caller,
        query=q,
        tags=tag or (),
        base_model_hash=base_model,
        class_word=class_word,
        limit=limit,
        cursor=cursor,
    )
    return JSONResponse({"results": _entries(ctx, rows), "next_cursor": next_cursor})


@router.get(
    "/index",
    response_model=IndexResponse,
    responses={304: {"description": "Not modified (If-None-Match)"}, **responses(401)},
    summary="Every visible concept and version, compactly (with an ETag)",
)
def index(request: Request, ctx: CtxDep) -> Response:
    etag = queries.index_etag(ctx.session, ctx.caller)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(queries.index_listing(ctx.session, ctx.caller), headers=headers)


@router.get(
    "/whoami",
    response_model=WhoAmI,
    responses=responses(401),
    summary="The namespace and scope of the request's token (what `conesreg login` checks)",
)
def whoami(caller: CallerDep) -> JSONResponse:
    anonymous = caller.token_id is None
    return JSONResponse(
        {"anonymous": anonymous, "namespace": caller.namespace, "scope": caller.scope}
    )


# -- writing --------------------------------------------------------------------------------------
@router.put(
    "/blobs/{digest}",
    response_model=BlobUploaded,
    status_code=201,
    responses={
        200: {"model": BlobUploaded, "description": "The blob was already here"},
        **responses(400, 401, 403, 408, 413, 422),
    },
    openapi_extra={"requestBody": _BLOB_BODY},
    summary="Upload a blob (hashed while received; the digest must match)",
)
async def put_blob(
    digest: DigestP,
    request: Request,
    caller: CallerDep,
    namespace: NamespaceQ,
) -> JSONResponse:
    require_push(caller, namespace)
    check_digest(digest)
    reg = registry_of(request)
    settings = reg.settings
    upload = await run_in_threadpool(reg.storage.open_upload, digest)
    with upload:
        async for chunk in body_chunks(
            request, limit=settings.max_blob_bytes, timeout=settings.chunk_timeout_seconds
        ):
            upload.write(chunk)
        try:
            created = await run_in_threadpool(commit_upload, reg, upload, namespace=namespace)
        except DigestMismatchError as e:
            raise Invalid(
                "digest_mismatch", f"{e}: upload the exact bytes the digest names"
            ) from None
    body = BlobUploaded(digest=digest, size=upload.received, created=created)
    return JSONResponse(body.model_dump(), status_code=201 if created else 200)


@router.put(
    "/concepts/{namespace}/{name}/versions/{version}",
    response_model=IndexEntry,
    status_code=201,
    responses={
        200: {"model": IndexEntry, "description": "Identical content was already published"},
        **responses(400, 401, 403, 404, 408, 409, 413, 422),
    },
    openapi_extra={"requestBody": _MANIFEST_BODY},
    summary="Publish a version: the manifest, after its blobs",
)
async def push_version(
    namespace: NamespaceP, name: NameP, version: VersionP, request: Request, caller: CallerDep
) -> JSONResponse:
    require_push(caller, namespace)
    check_names(namespace, name)
    reg = registry_of(request)
    settings = reg.settings
    body = await read_body(
        request, limit=settings.max_manifest_bytes, timeout=settings.chunk_timeout_seconds
    )
    try:
        manifest = publishing.validate_manifest(
            body, namespace=namespace, name=name, version=version
        )
        row, created = await run_in_threadpool(publishing.publish, reg, caller, manifest)
    except RegistryError:
        metrics.PUBLISHES.labels("refused").inc()
        raise
    metrics.PUBLISHES.labels("created" if created else "unchanged").inc()
    entry = await run_in_threadpool(_entry, reg, row)
    return JSONResponse(entry, status_code=201 if created else 200)


@router.post(
    "/concepts/{namespace}/{name}/versions/{version}/yank",
    response_model=IndexEntry,
    responses=responses(400, 401, 403, 404, 422),
    summary="Yank a version: ranges skip it, exact pins still resolve",
)
def yank(
    namespace: NamespaceP,
    name: NameP,
    version: VersionP,
    caller: CallerDep,
    request: Request,
    body: YankRequest | None = None,
) -> JSONResponse:
    return _set_yanked(
        request, caller, namespace, name, version, True, body.reason if body else None
    )


@router.delete(
    "/concepts/{namespace}/{name}/versions/{version}/yank",
    response_model=IndexEntry,
    responses=responses(400, 401, 403, 404, 422),
    summary="Undo a yank",
)
def unyank(
    namespace: NamespaceP, name: NameP, version: VersionP, caller: CallerDep, request: Request
) -> JSONResponse:
    return _set_yanked(request, caller, namespace, name, version, False, None)


def _set_yanked(
    request: Request,
    caller: Caller,
    namespace: str,
    name: str,
    version: str,
    yanked: bool,
    reason: str | None,
) -> JSONResponse:
    require_push(caller, namespace)
    check_names(namespace, name)
    reg = registry_of(request)
    row = publishing.set_yanked(reg, caller, namespace, name, version, yanked=yanked, reason=reason)
    return JSONResponse(_entry(reg, row))


#: Models the OpenAPI document must define although no route returns them as a model.
EXTRA_SCHEMAS: tuple[type[BaseModel], ...] = (Manifest,)
