"""The client against a hostile registry (issue 16, finding 3, and the client side of 507).

A small HTTP server in the test process serves one published concept honestly, except for the
one answer each test replaces with an attack: a 1 GiB manifest, a gzip bomb, a blob far larger
than its manifest lists, a search that never ends, a byte every few tenths of a second, a
redirect loop, a malformed listing, a full disk. Every attack must end in one line and exit 1,
with no lockfile, no temp file and nothing unverified left behind.
"""

from __future__ import annotations

import functools
import json
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from conesreg import constants
from conesreg.artifact import build_manifest
from conesreg.artifact import constants as artifact_constants
from conesreg.artifact._manifest import IndexEntry
from conesreg.cli import main
from conesreg.testing import make_draft

GIB = 1 << 30
#: What a client may have received beyond a cap: loopback socket buffers hold a few MiB that
#: the server counts as sent. Old clients read the whole GiB.
SLACK = 32 << 20
Attack = Callable[["Handler"], None]


@dataclass(frozen=True)
class Concept:
    """One published version: its index entry (JSON), manifest bytes and blobs by digest."""

    entry: dict[str, Any]
    manifest: bytes
    blobs: dict[str, bytes]
    preview: str  # the digest of the preview blob


@pytest.fixture(scope="module")
def concept(tmp_path_factory: pytest.TempPathFactory) -> Concept:
    draft = make_draft(tmp_path_factory.mktemp("draft") / "dog", name="dog", namespace="acme")
    manifest, files = build_manifest(draft, version="1.0.0")
    entry = IndexEntry.of(manifest, registry="x").model_dump(mode="json", exclude={"registry"})
    preview = next(b.digest for b in manifest.blobs if b.path.startswith("previews/"))
    blobs = {d: p.read_bytes() for d, p in files.items()}
    return Concept(entry, manifest.canonical_json(), blobs, preview)


@dataclass
class Registry:
    """The server: ``attacks[route]`` replaces the honest answer of that route."""

    concept: Concept
    attacks: dict[str, Attack] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    encodings: set[str] = field(default_factory=set)  # the Accept-Encoding of every request
    sent: int = 0  # body bytes the server managed to write, over all requests
    url: str = ""

    def count(self, route: str) -> int:
        return sum(1 for r in self.log if r == route)


class Handler(BaseHTTPRequestHandler):
    registry: Registry

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    # -- answers an attack builds from --------------------------------------------------------
    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.write(body)

    def send_json(self, status: int, value: Any) -> None:
        self.send(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def write(self, data: bytes) -> bool:
        """Write ``data``; False once the client has gone."""
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            return False
        self.registry.sent += len(data)
        return True

    def flood(
        self,
        total: int,
        *,
        declare: bool = True,
        headers: dict[str, str] | None = None,
        status: int = 200,
    ) -> None:
        """``total`` bytes of junk, stopping when the client hangs up."""
        self.send_response(status)
        if declare:
            self.send_header("Content-Length", str(total))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        chunk = b"x" * (1 << 16)
        for _ in range(total // len(chunk)):
            if not self.write(chunk):
                return

    def drip(self, data: bytes, *, every: float) -> None:
        """``data`` one byte at a time, ``every`` seconds apart (bounded: it ends)."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for i in range(len(data)):
            if not self.write(data[i : i + 1]):
                return
            time.sleep(every)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return body
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # -- routing ------------------------------------------------------------------------------
    def route(self) -> tuple[str, str]:
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        if parts[:2] == ["v1", "blobs"]:
            return {"GET": "blob", "HEAD": "head_blob", "PUT": "put_blob"}[self.command], parts[2]
        if parts[:2] == ["v1", "search"]:
            return "search", ""
        if parts[-1] == "versions":
            return "versions", ""
        if parts[-1] == "manifest":
            return "manifest", parts[-2]
        return ("put_manifest" if self.command == "PUT" else "other"), ""

    def answer(self) -> None:
        route, _ = self.route()
        self.registry.log.append(route)
        self.registry.encodings.add(self.headers.get("Accept-Encoding", ""))
        attack = self.registry.attacks.get(route)
        if attack is not None:
            attack(self)
        else:
            self.honest()

    def honest(self) -> None:
        route, arg = self.route()
        c = self.registry.concept
        if route == "versions":
            self.send_json(200, {"versions": [c.entry]})
        elif route == "manifest" and arg == c.entry["version"]:
            self.send(200, c.manifest, {"Content-Type": artifact_constants.MEDIA_TYPE_MANIFEST})
        elif route == "blob" and arg in c.blobs:
            self.send(200, c.blobs[arg])
        elif route == "search":
            self.send_json(200, {"results": [c.entry], "next_cursor": None})
        elif route == "put_blob":
            self.read_body()
            self.send_json(201, {"digest": arg})
        else:
            self.send_json(404, {"error": {"code": "not_found", "message": "no such thing"}})

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = answer


@pytest.fixture
def registry(concept: Concept, isolated: Path) -> Iterator[Registry]:
    """The hostile registry, configured in the isolated client as ``team``."""
    reg = Registry(concept)
    handler = type("BoundHandler", (Handler,), {"registry": reg})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    reg.url = f"http://127.0.0.1:{server.server_address[1]}"
    assert main(["config", "registry", "add", "team", reg.url]) == 0
    try:
        yield reg
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, isolated: Path, *, says: str) -> None:
    """One line naming the problem, exit 1, and nothing partial anywhere."""
    assert code == 1, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert says in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert not (isolated / "project" / constants.LOCKFILE_NAME).exists()
    files = [p for p in isolated.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".tmp-")]
    assert not (isolated / "cache" / constants.CACHE_FORMAT / "refs").exists()


def cached_blobs(isolated: Path) -> set[str]:
    root = isolated / "cache" / constants.CACHE_FORMAT / "blobs" / "sha256"
    return {"sha256:" + p.name for p in root.glob("??/*")} if root.is_dir() else set()


@functools.cache
def gzip_bomb(decoded: int = GIB) -> bytes:
    """A valid gzip stream of ``decoded`` zero bytes, about a thousandth of that on the wire
    (one deflate block of 1 MiB of zeros, repeated: a full flush resets the compressor)."""
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    n = decoded >> 20
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + block * n + c.flush() + struct.pack("<II", crc, decoded & 0xFFFFFFFF)


# -- sizes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "until-close"])
def test_a_1_gib_manifest_is_refused_at_the_cap(
    registry: Registry, isolated: Path, capsys: pytest.CaptureFixture[str], declare: bool
) -> None:
    registry.attacks["manifest"] = lambda h: h.flood(GIB, declare=declare)
    code, err = run(["install", "team/acme/dog"], capsys)
    assert_refused(
        code, err, isolated, says=f"more than {artifact_constants.MAX_MANIFEST_BYTES:,} bytes"
    )
    assert registry.sent < artifact_constants.MAX_MANIFEST_BYTES + SLACK
    assert cached_blobs(isolated) == set()


def test_a_blob_is_cut_at_the_size_its_manifest_lists(
    registry: Registry, concept: Concept, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.attacks["blob"] = lambda h: (
        h.flood(GIB) if h.route()[1] == concept.preview else h.honest()
    )
    code, err = run(["install", "team/acme/dog"], capsys)
    size = len(concept.blobs[concept.preview])
    assert_refused(code, err, isolated, says=f"more than the {size} bytes its manifest lists")
    assert registry.sent < SLACK
    # Only what was verified is kept: the manifest, the mask, and not the preview.
    assert concept.preview not in cached_blobs(isolated)


@pytest.mark.parametrize("route", ["versions", "manifest", "blob"])
def test_a_gzip_bomb_is_never_decompressed(
    registry: Registry,
    isolated: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    route: str,
) -> None:
    bomb = gzip_bomb()  # 1 MiB on the wire, 1 GiB decoded
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    registry.attacks[route] = lambda h: h.send(200, bomb, headers)
    monkeypatch.setattr(constants, "HTTP_MAX_JSON_BYTES", 1 << 20)
    assert run(["versions", "team/acme/dog"], capsys)[0] == (1 if route == "versions" else 0)
    tracemalloc.start()
    try:
        code, err = run(["install", "team/acme/dog"], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_refused(code, err, isolated, says="compressed (gzip)")
    assert peak < 16 << 20  # the bomb alone would take 1 GiB
    assert registry.encodings == {"identity"}  # it was never asked for


# -- time -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ["versions", "manifest", "blob"])
def test_a_drip_feed_ends_at_the_deadline(
    registry: Registry,
    isolated: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    route: str,
) -> None:
    # A byte every 0.1 s never trips a read timeout; 30 bytes bound the attack for old clients.
    registry.attacks[route] = lambda h: h.drip(b"x" * 30, every=0.1)
    monkeypatch.setattr(constants, "HTTP_DEADLINE", 1.0)
    code, err = run(["install", "team/acme/dog"], capsys)
    assert_refused(code, err, isolated, says="did not finish within 1 s")
    assert "CONESREG_HTTP_DEADLINE" in err


@pytest.mark.parametrize(
    ("value", "expected"), [("2.5", "2.5"), ("soon", "900.0"), ("-1", "900.0")]
)
def test_the_deadline_is_read_from_the_environment(value: str, expected: str) -> None:
    import os
    import subprocess
    import sys

    code = "from conesreg import constants; print(constants.HTTP_DEADLINE)"
    env = {**os.environ, "CONESREG_HTTP_DEADLINE": value}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == expected
    assert ("not a positive number" in out.stderr) == (expected == "900.0")


# -- loops ----------------------------------------------------------------------------------------
def _endless_pages(*, fresh: bool) -> Attack:
    def attack(h: Handler) -> None:
        n = h.registry.count("search")
        # Bounded for old clients: after 300 pages it lets go.
        cursor = None if n > 300 else (f"c{n}" if fresh else "again")
        h.send_json(200, {"results": [], "next_cursor": cursor})

    return attack


@pytest.mark.parametrize("fresh", [False, True], ids=["same-cursor", "new-cursor"])
def test_a_search_that_never_ends_is_stopped(
    registry: Registry,
    isolated: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fresh: bool,
) -> None:
    monkeypatch.setattr(constants, "HTTP_MAX_PAGES", 5)
    registry.attacks["search"] = _endless_pages(fresh=fresh)
    code, err = run(["search", "dog", "--registry", "team"], capsys)
    says = "more than 5 pages" if fresh else "a paging loop"
    assert_refused(code, err, isolated, says=says)
    assert registry.count("search") == (5 if fresh else 2)


def test_a_redirect_loop_ends_in_one_line_without_reading_bodies(
    registry: Registry, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def loop(h: Handler) -> None:
        # Each redirect carries 256 MiB that a client following it must not read.
        h.flood(256 << 20, status=302, headers={"Location": h.path})

    registry.attacks["versions"] = loop
    code, err = run(["install", "team/acme/dog"], capsys)
    assert_refused(code, err, isolated, says="a redirect loop")
    assert registry.count("versions") == constants.HTTP_MAX_REDIRECTS + 1
    assert registry.sent < 256 << 20  # not even one redirect's body (socket buffers aside)


# -- what the server says --------------------------------------------------------------------------
def _listing(concept: Concept, **change: Any) -> dict[str, Any]:
    return {"versions": [{**concept.entry, **change}]}


MALFORMED: dict[str, Callable[[Concept], Any]] = {
    "version-../../x": lambda c: _listing(c, version="../../x"),
    "version-not-semver": lambda c: _listing(c, version="latest"),
    "digest": lambda c: _listing(c, digest="sha256:../../etc"),
    "namespace": lambda c: _listing(c, namespace="../acme"),
    "size-not-a-number": lambda c: _listing(c, size="huge"),
    "entry-not-an-object": lambda c: {"versions": ["1.0.0"]},
    "no-versions-key": lambda c: {"releases": []},
    "versions-not-a-list": lambda c: {"versions": {"1.0.0": c.entry}},
    "not-an-object": lambda c: [c.entry],
    # Deeper than Python's recursion limit: json.loads itself fails on it.
    "deeply-nested": lambda c: (
        b'{"versions": ['
        + json.dumps(c.entry).encode()
        + b'], "x": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}"
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_listing_is_refused_in_one_line(
    registry: Registry,
    concept: Concept,
    isolated: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    body = MALFORMED[case](concept)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    registry.attacks["versions"] = lambda h: h.send(200, raw, {"Content-Type": "application/json"})
    code, err = run(["install", "team/acme/dog"], capsys)
    assert_refused(code, err, isolated, says="registry 'team' ")
    assert cached_blobs(isolated) == set()


def test_a_server_message_cannot_write_to_the_terminal(
    registry: Registry, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "bad\x1b[2J\x1b]0;pwned\x07 request\nerror: forged second line"
    registry.attacks["versions"] = lambda h: h.send_json(
        400, {"error": {"code": "bad_request", "message": message}}
    )
    code, err = run(["install", "team/acme/dog"], capsys)
    assert_refused(code, err, isolated, says="bad [2J ]0;pwned request error: forged second line")
    assert "\x1b" not in err and "\x07" not in err


def test_a_full_server_disk_is_one_line_and_not_retried(
    registry: Registry, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(h: Handler) -> None:
        h.read_body()
        h.send_json(507, {"error": {"code": "insufficient_storage", "message": "disk full"}})

    registry.attacks["head_blob"] = lambda h: h.send(404)
    registry.attacks["put_blob"] = full
    draft = make_draft(isolated / "draft", name="dog", namespace="acme", seed=3)
    code, err = run(["push", str(draft), "--version", "2.0.0", "--name", "team/acme/dog"], capsys)
    assert code == 1 and err.strip().count("\n") == 0, err
    assert "out of storage (HTTP 507): disk full" in err and "free space" in err
    assert registry.count("put_blob") == 1
    assert registry.count("put_manifest") == 0


# -- the Hub source: the same caps where the bytes pass through conesreg ---------------------------
def _sparse(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)  # no disk used: a hole reads as zeros
    return str(path)


def test_hub_manifest_and_blob_caps(
    concept: Concept,
    isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """huggingface_hub downloads into its own cache; what conesreg then reads is capped: a
    manifest over the cap is refused unread, and a blob is cut at its listed size."""
    import huggingface_hub

    from conesreg._session import Session
    from conesreg.artifact._manifest import BlobRef
    from conesreg.errors import IntegrityError, SourceError
    from conesreg.sources import BlobOrigin
    from conesreg.sources._hub import HubSource

    huge = _sparse(isolated / "huge", GIB)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: huge)
    src = HubSource(endpoint="http://hub.test")
    with pytest.raises(SourceError, match=r"more than 1,048,576 bytes"):
        src.manifest("acme", "dog", "1.0.0", revision="a" * 40)

    session = Session()
    session._sources["hf"] = src
    size = len(concept.blobs[concept.preview])
    blob = BlobRef(digest=concept.preview, size=size, media_type="image/png", path="p.png")
    origin = BlobOrigin("acme", "dog", "1.0.0", "p.png", "a" * 40)
    with pytest.raises(IntegrityError, match=f"more than the {size} bytes"):
        session.blob("hf", blob, origin=origin)
    left = [p for p in (isolated / "cache").rglob("*") if p.is_file() and "locks" not in p.parts]
    assert left == []


def test_honest_registry_still_installs(
    registry: Registry, concept: Concept, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fixture is a working registry: without an attack, everything installs and verifies."""
    code, err = run(["install", "team/acme/dog"], capsys)
    assert code == 0, err
    assert cached_blobs(isolated) == {concept.entry["digest"], *concept.blobs}
    assert run(["verify"], capsys)[0] == 0
    assert 'name = "dog"' in (isolated / "project" / constants.LOCKFILE_NAME).read_text()
    code, _ = run(["search", "dog", "--registry", "team"], capsys)
    assert code == 0
