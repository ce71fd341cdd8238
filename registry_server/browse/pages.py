"""The browse pages: server-rendered HTML (Jinja2) over the same registry functions as the API.

``/`` is the index (a search box, filters by tag and base model, cursor pages) and
``/concepts/{namespace}/{name}`` a concept's page (versions, manifest details, previews, sizes,
yank state, the install command). Pages read as an anonymous caller unless the request carries a
token, exactly as the API does, so private namespaces never show in a browser.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import semantic_version
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ..core import queries, search
from ..core.errors import RegistryError
from ..web.deps import CtxDep, NameP, NamespaceP
from ..web.errors import http_error

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

#: Concepts per index page.
PAGE_SIZE = 24


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context, status_code=status)


def _error_page(request: Request, exc: RegistryError) -> HTMLResponse:
    # The page's status is the API's, the message the neutral one (no hint of /v1 requests).
    status = http_error(exc).status
    title = "Not found" if status == 404 else "Bad request"
    return _page(request, "error.html", status, title=title, message=exc.message)


@router.get("/", response_class=HTMLResponse)
def index(
    request: Request,
    ctx: CtxDep,
    q: Annotated[str, Query(max_length=200)] = "",
    tag: Annotated[str, Query(max_length=256)] = "",
    base: Annotated[str, Query(max_length=71)] = "",
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> HTMLResponse:
    """The index: latest versions matching the search, best match first."""
    criteria = {"query": q, "tags": [tag] if tag else (), "base_model_hash": base or None}
    try:
        rows, next_cursor = search.search(
            ctx.session, ctx.caller, **criteria, limit=PAGE_SIZE, cursor=cursor
        )
    except RegistryError as exc:  # a cursor from an old link: start over (same filters), not fail
        if exc.code != "invalid_cursor":
            raise
        rows, next_cursor = search.search(ctx.session, ctx.caller, **criteria, limit=PAGE_SIZE)
    manifests = queries.manifests_of(ctx.session, rows)
    cards = []
    for row in rows:
        m = manifests[row.digest]
        preview = next((b for b in m.blobs if b.digest in m.metadata.previews), None)
        cards.append(
            {
                "namespace": row.namespace,
                "name": row.name,
                "version": row.version,
                "class_word": m.metadata.class_word,
                "description": m.metadata.description,
                "tags": m.metadata.tags,
                "base_model": m.base_model.id,
                "preview": _file_url(row.namespace, row.name, row.version, preview.path)
                if preview
                else None,
            }
        )
    filters = {"q": q, "tag": tag, "base": base}
    next_url = browse_query(**filters, cursor=next_cursor) if next_cursor else None
    return _page(
        request,
        "index.html",
        title="conesreg registry",
        cards=cards,
        filters=filters,
        facets=queries.facets(ctx.reg, ctx.session, ctx.caller),
        next_url=next_url,
        first_page=cursor is None,
    )


@router.get("/concepts/{namespace}/{name}", response_class=HTMLResponse)
def concept(
    request: Request,
    namespace: NamespaceP,
    name: NameP,
    ctx: CtxDep,
    version: Annotated[str | None, Query(max_length=128)] = None,
) -> HTMLResponse:
    """A concept: the chosen version (default: the latest non-yanked) and every other."""
    try:
        found = queries.find_concept(ctx.session, ctx.caller, namespace, name)
        rows = queries.concept_versions(ctx.session, found)
        if version is not None:
            row = queries.find_version(ctx.session, ctx.caller, namespace, name, version)
        else:
            row = next((v for v in rows if v.is_latest), rows[-1])
    except RegistryError as exc:
        return _error_page(request, exc)
    m = queries.manifest_of(ctx.session, row)
    previews = _preview_pairs(
        [
            (_file_url(namespace, name, row.version, b.path), b.path)
            for b in m.blobs
            if b.digest in m.metadata.previews
        ]
    )
    alias = ctx.reg.settings.registry_name
    base_url = str(request.base_url).rstrip("/")
    return _page(
        request,
        "concept.html",
        title=f"{namespace}/{name}@{row.version}",
        row=row,
        versions=list(reversed(rows)),
        manifest=m,
        previews=previews,
        total_size=sum(b.size for b in m.blobs),
        sparsity=m.mask.selected / m.mask.total if m.mask.total else 0.0,
        install=[
            f"conesreg config registry add {alias} {base_url}",
            f"conesreg install {alias}/{namespace}/{name}@{_spec_to_type(row)}",
        ],
    )


def _spec_to_type(row: Any) -> str:
    """The spec a user would write for this version: compatible updates of it (``^1.2``),
    or the exact version where a range would not select it (yanked, a pre-release)."""
    v = semantic_version.Version(row.version)
    if row.yanked or v.prerelease:
        return row.version
    return f"^{v.major}.{v.minor}"


#: A preview's file name as ``conesreg find`` writes it: with or without the concept, and the
#: sampling seed.
_PREVIEW_NAME = re.compile(r"(with|without)-mask-(\d+)\.\w+")


def _preview_pairs(files: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Previews as rows of ``(url, caption)``: each seed's image without the concept beside
    the one with it (the point of a concept); other files one to a row, named by file."""
    pairs: dict[int, dict[str, str]] = {}
    others: list[list[tuple[str, str]]] = []
    for url, path in files:
        file_name = path.rsplit("/", 1)[-1]
        m = _PREVIEW_NAME.fullmatch(file_name)
        if m is None:
            others.append([(url, file_name)])
        else:
            pairs.setdefault(int(m.group(2)), {})[m.group(1)] = url
    rows = [
        [
            (pair[kind], f"{kind} the concept (seed {seed})")
            for kind in ("without", "with")
            if kind in pair
        ]
        for seed, pair in sorted(pairs.items())
    ]
    return rows + others


def _file_url(namespace: str, name: str, version: str, path: str) -> str:
    # The Hub-compatible file route serves each file with its manifest media type.
    return f"/{namespace}/{name}/resolve/v{version}/{path}"


def browse_query(**params: str | None) -> str:
    """The index URL with the non-empty ``params`` (links that keep the other filters)."""
    kept = {k: v for k, v in params.items() if v}
    return "/?" + urlencode(kept) if kept else "/"


templates.env.globals["browse_query"] = browse_query
