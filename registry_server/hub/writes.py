"""Hugging Face Hub-compatible write endpoints: what ``huggingface_hub`` sends for
``create_repo``, ``create_commit`` (``upload_file``, ``upload_folder``), ``create_tag`` and
``delete_tag``. The logic is in :mod:`.repos`; reads are in :mod:`.reads`.

- ``POST /api/repos/create``: JSON ``name``, ``organization``, ``type``, ``private`` or
  ``visibility``; 200 ``{"url", "name", "id"}``, 409 if it exists (``exist_ok`` swallows it).
- ``POST /api/models/{ns}/{name}/preupload/{rev}``: every file ``uploadMode: "regular"`` (its
  content then comes inline in the commit), with the ``oid`` of the file at the branch's head so
  that the client skips unchanged files.
- ``POST /api/models/{ns}/{name}/commit/{rev}``: NDJSON, a header line (summary, description,
  parentCommit) and file, deletedFile, deletedFolder lines; 200 ``{"commitOid", "commitUrl",
  ...}``, 412 if parentCommit is not the head. Not in the OpenAPI document: schemathesis cannot
  generate NDJSON bodies.
- ``POST /api/models/{ns}/{name}/tag/{rev}`` (JSON ``tag``, ``message``) and
  ``DELETE /api/models/{ns}/{name}/tag/{tag}``.
- ``POST /api/validate-yaml``: the README check the client makes before committing README.md.

Writes need a push token of the namespace (401 without a token, 403 for another namespace or a
read token). Errors carry X-Error-Message, and X-Error-Code where the client maps it
(:mod:`.errors`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..core.auth import Caller, require_push
from ..core.checks import NAME_MAX_LENGTH, NAME_PATTERN, TAG_PATTERN
from ..core.errors import Conflict, Invalid, TooLarge
from ..core.registry import Registry
from ..web.deps import CallerDep, CtxDep, NameP, NamespaceP, RevisionP, registry_of
from ..web.errors import error_response, responses
from ..web.transfer import body_chunks
from . import repos as hr
from .errors import HubWriteRoute, hub_error

router = APIRouter(route_class=HubWriteRoute)

#: Body bytes gathered before they are parsed in a worker thread.
_FEED_BYTES = 1 << 20
_NO_PR = ("", "0", "false", "False")
_CreatePr = Annotated[
    str | None,
    Query(
        description="pull requests are not supported: absent or false",
        json_schema_extra={"enum": [*_NO_PR, None]},
    ),
]
#: A name in a JSON body: the rule is published, and checked by check_names (400 naming it).
_NAME_FIELD: dict[str, Any] = {
    "pattern": NAME_PATTERN,
    "maxLength": NAME_MAX_LENGTH,
    "minLength": 1,
}
_WRITE_ERRORS = responses(400, 401, 403, 404, 409, 422)


class CreateRepoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=200, examples=["cat"], json_schema_extra=_NAME_FIELD)
    organization: str | None = Field(
        default=None,
        max_length=200,
        description="the namespace (default: the token's)",
        json_schema_extra=_NAME_FIELD,
    )
    # Checked by the route (400 naming what is served), published as enums.
    type: str | None = Field(
        default=None,
        description="model (the only kind here)",
        json_schema_extra={"enum": ["model", None]},
    )
    private: bool | None = None
    visibility: str | None = Field(
        default=None,
        description="public or private",
        json_schema_extra={"enum": ["public", "private", None]},
    )


class PreuploadFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    path: str = Field(max_length=2000)
    size: int = Field(ge=0)
    sample: str = Field(default="", max_length=4096)


class PreuploadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    files: list[PreuploadFile] = Field(max_length=1000)
    git_ignore: str | None = Field(default=None, alias="gitIgnore", max_length=100_000)


class TagRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # The rule is published, and checked by check_tag_name (400 naming it).
    tag: str = Field(examples=["v1.0.0"], json_schema_extra={"pattern": TAG_PATTERN})
    message: str | None = Field(default=None, max_length=10_000)


class ValidateYamlRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str = Field(max_length=10_000_000)
    repo_type: str | None = Field(default=None, alias="repoType")


def _no_pull_requests(create_pr: str | None) -> None:
    if create_pr is not None and create_pr not in _NO_PR:
        raise Invalid("not_supported", "pull requests are not supported here: commit to main")


def _writable(reg: Registry, caller: Caller, namespace: str, name: str) -> hr.Repo:
    with reg.sessions() as session:
        return hr.writable_repo(session, caller, namespace, name)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.post(
    "/api/repos/create",
    responses={200: {"description": "Created: its URL"}, **_WRITE_ERRORS},
    summary="Hub: create a model repo (409 if it exists)",
)
def create_repo(body: CreateRepoRequest, request: Request, caller: CallerDep) -> JSONResponse:
    namespace = body.organization if body.organization is not None else caller.namespace
    url = f"{_base_url(request)}/{namespace}/{body.name}"
    try:
        if body.type not in (None, "model"):
            raise Invalid("not_supported", f"only model repos are served, not {body.type}")
        if body.visibility not in (None, "public", "private"):
            raise Invalid("invalid_request", "visibility must be public or private")
        if namespace is None:
            require_push(caller, "a namespace")  # anonymous: 401
        assert namespace is not None
        private = body.private if body.private is not None else body.visibility == "private"
        repo = hr.create_repo(registry_of(request), caller, namespace, body.name, private=private)
    except Conflict as e:
        # create_repo(exist_ok=True) reads the repo's url from the 409 too, as the Hub sends it.
        error = hub_error(e, every_message=True)
        assert error is not None
        return error_response(
            error.status, error.code, error.message, error.headers, extra={"url": url}
        )
    return JSONResponse({"url": url, "name": repo.repo_id, "id": repo.repo_id})


@router.post(
    "/api/models/{namespace}/{name}/preupload/{revision}",
    responses={
        200: {"description": "How to upload each file: inline ('regular')"},
        **responses(400, 401, 403, 404, 409, 413, 422),
    },
    summary="Hub: upload modes before a commit (always regular: contents come inline)",
)
def preupload(
    namespace: NamespaceP,
    name: NameP,
    revision: RevisionP,
    body: PreuploadRequest,
    ctx: CtxDep,
    create_pr: _CreatePr = None,
) -> JSONResponse:
    limit = ctx.reg.settings.max_blob_bytes
    _no_pull_requests(create_pr)
    repo = hr.writable_repo(ctx.session, ctx.caller, namespace, name)
    head = hr.branch_head(ctx.session, repo, revision)
    tree = hr.tree_of(head)
    files: list[dict[str, Any]] = []
    for f in body.files:
        path = hr.check_path(f.path)
        if f.size > limit:
            raise TooLarge(
                "too_large",
                f"{path} has {f.size} bytes: this server takes {limit} at most",
            )
        entry: dict[str, Any] = {"path": path, "uploadMode": "regular", "shouldIgnore": False}
        if path in tree:
            entry["oid"] = tree[path].sha1
        files.append(entry)
    return JSONResponse({"files": files, "commitOid": head.oid})


# Not in the OpenAPI document: its body is NDJSON, which schemathesis cannot generate.
@router.post("/api/models/{namespace}/{name}/commit/{revision}", include_in_schema=False)
async def commit(
    namespace: NamespaceP,
    name: NameP,
    revision: RevisionP,
    request: Request,
    caller: CallerDep,
    create_pr: _CreatePr = None,
) -> JSONResponse:
    reg = registry_of(request)
    settings = reg.settings
    _no_pull_requests(create_pr)
    repo = await run_in_threadpool(_writable, reg, caller, namespace, name)

    def check_parent(parent: str | None) -> None:  # a stale parent: refused before any file
        hr.check_head(reg, repo, revision, parent)

    payload = hr.CommitPayload(reg, repo.namespace, on_header=check_parent)
    try:
        batch: list[bytes] = []
        held = 0
        async for chunk in body_chunks(
            request, limit=settings.max_hub_commit_bytes, timeout=settings.chunk_timeout_seconds
        ):
            batch.append(chunk)
            held += len(chunk)
            if held >= _FEED_BYTES:  # one worker-thread hop per ~1 MiB
                await run_in_threadpool(_feed, payload, batch)
                batch, held = [], 0
        await run_in_threadpool(_feed, payload, batch)
        await run_in_threadpool(payload.finish)
        row = await run_in_threadpool(hr.commit, reg, repo, revision, payload)
    finally:
        await run_in_threadpool(payload.close)
    return JSONResponse(
        {
            "success": True,
            "commitOid": row.oid,
            "commitUrl": f"{_base_url(request)}/{repo.repo_id}/commit/{row.oid}",
            "hookOutput": "",
            "pullRequestUrl": None,
        }
    )


def _feed(payload: hr.CommitPayload, chunks: list[bytes]) -> None:
    # In pieces of at most _FEED_BYTES, however the transport cut the body.
    for chunk in chunks:
        for start in range(0, len(chunk), _FEED_BYTES):
            payload.feed(chunk[start : start + _FEED_BYTES])


@router.post(
    "/api/models/{namespace}/{name}/tag/{revision}",
    responses={200: {"description": "The tag"}, **_WRITE_ERRORS},
    summary="Hub: tag a commit (409 if the tag exists)",
)
def create_tag(
    namespace: NamespaceP, name: NameP, revision: RevisionP, body: TagRequest, ctx: CtxDep
) -> JSONResponse:
    repo = hr.writable_repo(ctx.session, ctx.caller, namespace, name)
    ctx.session.close()  # the tag is written in a session of its own
    ref = hr.create_tag(ctx.reg, repo, body.tag, revision, body.message)
    return JSONResponse(
        {"name": ref.name, "ref": f"refs/tags/{ref.name}", "targetCommit": ref.target_oid}
    )


@router.delete(
    "/api/models/{namespace}/{name}/tag/{revision}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Deleted"}, **_WRITE_ERRORS},
    summary="Hub: delete a tag",
)
def delete_tag(
    namespace: NamespaceP,
    name: NameP,
    tag: Annotated[
        str,
        Path(
            alias="revision",
            description="the tag",
            examples=["v1.0.0"],
            json_schema_extra={"pattern": TAG_PATTERN},
        ),
    ],
    ctx: CtxDep,
) -> Response:
    repo = hr.writable_repo(ctx.session, ctx.caller, namespace, name)
    ctx.session.close()
    hr.delete_tag(ctx.reg, repo, tag)
    return Response(status_code=204)


@router.post(
    "/api/validate-yaml",
    responses={200: {"description": "Valid"}, **responses(400, 422)},
    summary="Hub: check a README's YAML front matter (the client asks before committing it)",
)
def validate_yaml(body: ValidateYamlRequest) -> JSONResponse:
    try:
        hr.parse_card(body.content)
    except hr.CardError as e:
        message = f"invalid metadata in README.md: {e}"
        # ErrorBody, plus the Hub's "errors" list, whose messages the client shows.
        return error_response(
            400,
            "invalid_metadata",
            message,
            {"X-Error-Message": " ".join(message.split())},
            extra={"errors": [{"message": message}]},
        )
    return JSONResponse({"errors": [], "warnings": []})
