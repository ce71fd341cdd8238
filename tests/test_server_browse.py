"""The browse pages: the index (search, tag and base-model filters, pages) and a concept's page,
read over HTTP and in a real headless Chromium."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conesreg.testing import auth, make_draft, publish_table, push_draft
from registry_server.testing import Server, running_server, start_process, stop_process

OTHER_BASE = "sha256:" + "cd" * 32
CONCEPTS = [
    # name, namespace, class word, tags, description, base hash
    ("purple-star", "acme", "star", ("shape", "purple"), "a purple checkered star", None),
    ("orange-heart", "acme", "heart", ("shape",), "an orange striped heart", None),
    ("corgi", "acme", "dog", ("animal",), "short legs <b>and</b> a big heart", OTHER_BASE),
    ("tabby", "zoo", "cat", ("animal", "pet"), "a striped cat", None),
]


def _png(color: tuple[int, int, int]) -> bytes:
    image = np.zeros((64, 64, 3), np.uint8)
    image[:] = 40
    image[16:48, 16:48] = color
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def _publish(server: Server, tmp: Path, zoo_token: str) -> None:
    """Every concept at 1.0.0 and 1.1.0 with a real PNG preview; corgi 1.1.0 is yanked."""
    tokens = {"acme": server.token, "zoo": zoo_token}
    publish_table(
        server.client,
        tmp,
        CONCEPTS,
        tokens=tokens,
        preview=lambda i: _png((200, 60 * i, 255 - 60 * i)),
    )
    r = server.client.post(
        "/v1/concepts/acme/corgi/versions/1.1.0/yank",
        json={"reason": "wrong legs"},
        headers=server.headers,
    )
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from registry_server import create_namespace, create_token

    tmp = tmp_path_factory.mktemp("browse")
    with running_server(tmp) as s:
        create_namespace(s.settings, "zoo")
        create_namespace(s.settings, "secret", private=True)
        _, zoo = create_token(s.settings, namespace="zoo", scope="push")
        _, secret = create_token(s.settings, namespace="secret", scope="push")
        _publish(s, tmp, zoo)
        draft = make_draft(tmp / "hidden", name="hidden", namespace="secret", class_word="star")
        _, r = push_draft(s.client, draft, version="1.0.0", token=secret)
        assert r.status_code == 201, r.text
        yield s


def _shown(html: str) -> list[str]:
    return sorted(part.split('"', 1)[0] for part in html.split('data-concept="')[1:])


def test_index_lists_latest_versions_with_previews(server: Server) -> None:
    r = server.client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert _shown(r.text) == ["acme/corgi", "acme/orange-heart", "acme/purple-star", "zoo/tabby"]
    assert "secret/hidden" not in r.text  # private namespaces never show without a token
    assert "1.1.0 · a star" in r.text
    assert "1.0.0 · a dog" in r.text  # corgi's 1.1.0 is yanked: its latest is 1.0.0
    src = "/acme/purple-star/resolve/v1.1.0/previews/sample-0.png"
    assert f'src="{src}"' in r.text
    preview = server.client.get(src)
    assert preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).size == (64, 64)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"q": "star"}, ["acme/purple-star"]),
        ({"q": "striped"}, ["acme/orange-heart", "zoo/tabby"]),
        ({"tag": "animal"}, ["acme/corgi", "zoo/tabby"]),
        ({"tag": "ANIMAL", "q": "cat"}, ["zoo/tabby"]),
        ({"base": OTHER_BASE}, ["acme/corgi"]),
        ({"q": "no-such-thing"}, []),
    ],
)
def test_search_and_filters(server: Server, params: dict[str, str], expected: list[str]) -> None:
    r = server.client.get("/", params=params)
    assert r.status_code == 200
    assert _shown(r.text) == expected
    if not expected:
        assert "No concepts match this search" in r.text


def test_filter_choices_list_tags_and_base_models(server: Server) -> None:
    html = server.client.get("/").text
    assert '<option value="animal">animal (2)</option>' in html
    assert '<option value="shape">shape (2)</option>' in html
    assert f'<option value="{OTHER_BASE}">tiny/test' in html
    assert "(3)</option>" in html  # three concepts on the default base hash
    assert '<option value="animal" selected>' in server.client.get("/?tag=animal").text


def test_pages_follow_the_cursor(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from registry_server.browse import pages as _browse

    monkeypatch.setattr(_browse, "PAGE_SIZE", 3)
    seen: list[str] = []
    url: str | None = "/?tag=shape&q=a"
    pages = 0
    while url:
        html = server.client.get(url).text
        seen += _shown(html)
        pages += 1
        url = (
            html.split('id="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
            if 'id="next"' in html
            else None
        )
    assert sorted(seen) == ["acme/orange-heart", "acme/purple-star"]
    monkeypatch.setattr(_browse, "PAGE_SIZE", 1)
    first = server.client.get("/").text
    assert len(_shown(first)) == 1 and 'id="next"' in first
    # A stale or hand-edited cursor starts over instead of failing.
    assert _shown(server.client.get("/?cursor=not-a-cursor").text) == _shown(first)
    # ...keeping its filters.
    stale = server.client.get("/", params={"tag": "animal", "cursor": "not-a-cursor"}).text
    assert _shown(stale) == ["acme/corgi"]


def test_concept_page(server: Server) -> None:
    r = server.client.get("/concepts/acme/corgi")
    assert r.status_code == 200
    html = r.text
    assert "acme/corgi <span" in html and "1.0.0" in html  # the latest non-yanked version
    # The range a user would type, under the alias the page's own config command adds.
    assert "conesreg install server/acme/corgi@^1.0" in html
    assert "conesreg config registry add server http://testserver" in html
    assert 'data-version="1.1.0"' in html and 'title="wrong legs">yanked' in html
    assert "short legs &lt;b&gt;and&lt;/b&gt; a big heart" in html  # escaped, never markup
    assert "40 of 1,024 (3.91%)" in html  # the mask: selected of total
    manifest = server.client.get("/v1/concepts/acme/corgi/versions/1.0.0/manifest").json()
    for blob in manifest["blobs"]:  # every file with its size
        assert f"<code>{blob['path']}</code>" in html
        assert f"<td>{blob['size']} Bytes</td>" in html
    assert OTHER_BASE in html
    assert "seed = 2" in html  # the method's hyperparameters


def test_concept_page_of_a_yanked_version(server: Server) -> None:
    html = server.client.get("/concepts/acme/corgi", params={"version": "1.1.0"}).text
    assert 'id="yanked"' in html and "This version is yanked: wrong legs" in html
    assert "conesreg install server/acme/corgi@1.1.0" in html  # a range would skip it


def test_previews_pair_without_and_with_the_concept() -> None:
    from registry_server.browse.pages import _preview_pairs

    files = [
        ("u1", "previews/with-mask-1.png"),
        ("u2", "previews/without-mask-0.png"),
        ("u3", "previews/with-mask-0.png"),
        ("u4", "previews/sample.png"),
        ("u5", "previews/without-mask-1.png"),
    ]
    assert _preview_pairs(files) == [
        [("u2", "without the concept (seed 0)"), ("u3", "with the concept (seed 0)")],
        [("u5", "without the concept (seed 1)"), ("u1", "with the concept (seed 1)")],
        [("u4", "sample.png")],
    ]


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/concepts/acme/nope", {}, 404, "no concept acme/nope"),
        ("/concepts/secret/hidden", {}, 404, "no concept secret/hidden"),
        ("/concepts/acme/corgi", {"version": "9.9.9"}, 404, "no version 9.9.9"),
        ("/concepts/acme/corgi", {"version": "one"}, 400, "one"),
        ("/concepts/ACME/dog", {}, 400, "acme"),
    ],
)
def test_concept_page_errors(
    server: Server, path: str, params: dict[str, str], status: int, message: str
) -> None:
    r = server.client.get(path, params=params)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")
    assert message in r.text.lower() or message in r.text


def test_private_concepts_show_with_their_token(server: Server) -> None:
    from registry_server import create_token

    _, token = create_token(server.settings, namespace="secret", scope="read")
    html = server.client.get("/", params={"q": "star"}, headers=auth(token)).text
    assert _shown(html) == ["acme/purple-star", "secret/hidden"]


def test_pages_stay_out_of_the_api_schema(server: Server) -> None:
    paths = server.client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/concepts/") for p in paths)


# -- a real browser ----------------------------------------------------------------------------
def _chromium() -> str:
    """Debian's chromium (installed by .ci/run); where CI requires it, missing it is a failure."""
    path = os.environ.get("CONESREG_CHROMIUM") or shutil.which("chromium")
    required = os.environ.get("CONESREG_REQUIRE_BROWSER") == "1"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if required:
            raise
        pytest.skip("playwright is not installed (pip install playwright)")
    if not path:
        if required:
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from registry_server import Settings, create_namespace, create_token

    tmp = tmp_path_factory.mktemp("browse-live")
    settings = Settings(data=tmp / "server")
    create_namespace(settings, "acme")
    create_namespace(settings, "zoo")
    _, acme = create_token(settings, namespace="acme", scope="push")
    _, zoo = create_token(settings, namespace="zoo", scope="push")
    proc = start_process(settings.data)
    try:
        with httpx.Client(base_url=proc.url, timeout=30) as client:
            _publish(Server(client=client, settings=settings, token=acme), tmp, zoo)  # type: ignore[arg-type]
        yield proc.url
    finally:
        stop_process(proc)


def test_browser_searches_opens_a_concept_and_takes_a_screenshot(live: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    executable = _chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            context = browser.new_context(
                viewport={"width": 1200, "height": 900},
                permissions=["clipboard-read", "clipboard-write"],
            )
            page = context.new_page()
            page.goto(live + "/")
            expect(page.locator(".concept")).to_have_count(4)

            page.fill("#q", "striped")
            page.press("#q", "Enter")
            page.wait_for_url("**/?q=striped*")
            cards = page.locator(".concept")
            expect(cards).to_have_count(2)
            assert sorted(cards.evaluate_all("els => els.map(e => e.dataset.concept)")) == [
                "acme/orange-heart",
                "zoo/tabby",
            ]

            page.select_option("#tag", "pet")
            page.click("#go")
            expect(cards).to_have_count(1)
            expect(cards.first).to_have_attribute("data-concept", "zoo/tabby")

            page.goto(live + "/?q=heart")
            page.click("text=acme/orange-heart")
            page.wait_for_url("**/concepts/acme/orange-heart")
            expect(page.locator("#title")).to_contain_text("acme/orange-heart")
            expect(page.locator("#install")).to_contain_text(
                "conesreg install server/acme/orange-heart@^1.1"
            )
            expect(page.locator("#versions tr.version")).to_have_count(2)
            page.click("#copy")
            expect(page.locator("#copy")).to_have_text("Copied")
            copied = page.evaluate("navigator.clipboard.readText()")
            assert copied.splitlines()[-1] == "conesreg install server/acme/orange-heart@^1.1"
            preview = page.locator(".previews img").first
            expect(preview).to_be_visible()
            assert preview.evaluate("img => img.complete && img.naturalWidth") == 64

            shot = tmp_path / "concept.png"
            page.screenshot(path=str(shot), full_page=True)
            if out := os.environ.get("CONESREG_SCREENSHOT_DIR"):
                shutil.copy(shot, Path(out) / "browse-concept.png")
            with Image.open(shot) as image:
                assert image.width == 1200 and image.height >= 900
                assert len(image.getcolors(1 << 20) or []) > 10  # a rendered page, not blank
        finally:
            browser.close()


def test_filters_follow_publishing_and_yanking(tmp_path: Path) -> None:
    with running_server(tmp_path) as s:
        assert "No concepts are published here yet" in s.client.get("/").text
        draft = make_draft(tmp_path / "d", name="owl", class_word="owl", tags=("bird",))
        _, r = push_draft(s.client, draft, version="1.0.0", token=s.token)
        assert r.status_code == 201
        assert '<option value="bird">bird (1)</option>' in s.client.get("/").text
        r = s.client.post("/v1/concepts/acme/owl/versions/1.0.0/yank", json={}, headers=s.headers)
        assert r.status_code == 200
        html = s.client.get("/").text
        assert _shown(html) == [] and '"bird"' not in html  # no latest version left to show


def test_api_docs_load_without_a_cdn(server: Server) -> None:
    """/docs works offline and behind a firewall: Swagger UI comes from the package."""
    for page in ("/docs", "/redoc"):
        html = server.client.get(page).text
        assert "cdn.jsdelivr.net" not in html and "/_static/docs/" in html, page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        r = server.client.get(f"/_static/docs/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000, asset
