"""The screenshots in docs/server.md: the browse page's index and a concept page.

Run: ``python docs/make_screenshots.py`` (needs the server extra, playwright and Debian's
chromium, as the browser test does). It starts a registry server on a temporary folder,
publishes four concepts whose previews are renders of the bundled mini world's subjects, and
writes ``docs/img/browse-index.png`` and ``docs/img/browse-concept.png``.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import httpx
from PIL import Image

from conesreg.mini.subjects import subject_images
from conesreg.testing import publish_table
from registry_server import Settings, create_namespace, create_token
from registry_server.testing import Server, start_process, stop_process

OUT = Path(__file__).resolve().parent / "img"
ROWS = [
    ("purple-checker-star", "acme", "star", ("shape",), "a purple checkered star", None),
    ("orange-striped-heart", "acme", "heart", ("shape",), "an orange striped heart", None),
    ("green-dotted-square", "acme", "square", ("shape", "toy"), "a green dotted square", None),
    ("blue-ringed-circle", "zoo", "circle", ("shape",), "a blue ringed circle", None),
]


def _preview(i: int) -> bytes:
    image = Image.fromarray(subject_images(ROWS[i][0], n=1, seed=3)[0])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CONESREG_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        settings = Settings(data=tmp / "server")
        tokens = {}
        for ns in ("acme", "zoo"):
            create_namespace(settings, ns)
            tokens[ns] = create_token(settings, namespace=ns, scope="push")[1]
        proc = start_process(settings.data)
        try:
            with httpx.Client(base_url=proc.url, timeout=30) as client:
                server = Server(client=client, settings=settings, token=tokens["acme"])  # type: ignore[arg-type]
                publish_table(server.client, tmp, ROWS, tokens=tokens, preview=_preview)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1100, "height": 760})
                page.goto(proc.url + "/")
                page.screenshot(path=str(OUT / "browse-index.png"))
                page.goto(proc.url + "/concepts/acme/purple-checker-star")
                page.screenshot(path=str(OUT / "browse-concept.png"))
                browser.close()
        finally:
            stop_process(proc)
    print(f"wrote {OUT / 'browse-index.png'} and {OUT / 'browse-concept.png'}")


if __name__ == "__main__":
    main()
