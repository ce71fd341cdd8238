"""The HTTP client under faults: a download cut mid-body resumes with a Range request, a server
killed with SIGKILL mid-download is waited for and resumed from, and an install against a dead
server fails in one line, writes nothing, and works once the server is back."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from conesreg import constants
from conesreg.cli import main
from conesreg.sources._http import HttpSource
from conesreg.testing import make_draft, push_draft
from registry_server import Settings, create_namespace, create_token
from registry_server.testing import Process, start_process, stop_process

BIG = 4 << 20  # the preview blob: big enough to be cut in the middle


class CuttingProxy:
    """A loopback TCP proxy to ``port`` that drops the first connection whose responses pass
    ``cut_after`` bytes, mid-stream, as a flaky network would. ``sent`` is every byte clients
    sent (plain HTTP), to check what they asked for."""

    def __init__(self, port: int, *, cut_after: int) -> None:
        self.port, self.cut_after = port, cut_after
        self.cuts = 0
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.port))

        def requests() -> None:
            while data := _recv(client):
                with self._lock:
                    self.sent += data
                upstream.sendall(data)
            upstream.close()

        threading.Thread(target=requests, daemon=True).start()
        passed = 0
        while data := _recv(upstream):
            with self._lock:
                cut = self.cuts == 0 and passed + len(data) > self.cut_after
                self.cuts += cut
            if cut:
                client.sendall(data[: self.cut_after - passed])
                break
            client.sendall(data)
            passed += len(data)
        # shutdown, not just close: the other thread's recv keeps the socket open otherwise,
        # and the client would wait for its read timeout instead of seeing the cut.
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except OSError:
        return b""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Process, Settings, str]]:
    """A server process holding ``acme/big@1.0.0``, whose preview blob is ``BIG`` bytes."""
    settings = Settings(data=tmp_path / "server")
    create_namespace(settings, "acme")
    _, token = create_token(settings, namespace="acme", scope="push")
    proc = start_process(settings.data)
    try:
        draft = make_draft(tmp_path / "draft", name="big")
        (draft / "previews" / "sample-0.png").write_bytes(
            hashlib.sha256(b"seed").digest() * (BIG // 32)
        )
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            _, r = push_draft(c, draft, version="1.0.0", token=token)
            assert r.status_code == 201, r.text
        yield proc, settings, token
    finally:
        stop_process(proc)


def _big_digest(url: str) -> str:
    manifest = httpx.get(f"{url}/v1/concepts/acme/big/versions/1.0.0/manifest").json()
    return next(b["digest"] for b in manifest["blobs"] if b["size"] == BIG)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_cut_download_resumes_with_a_range_request(
    server: tuple[Process, Settings, str],
    isolated: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proc, _, _ = server
    port = int(proc.url.rsplit(":", 1)[1])
    digest = _big_digest(proc.url)

    # The source: one cut in the middle of the body, then the rest from where it stopped.
    proxy = CuttingProxy(port, cut_after=1 << 20)
    try:
        out = io.BytesIO()
        with closing(HttpSource(proxy.url, name="team")) as source:
            source.fetch_blob(digest, out)
        assert proxy.cuts == 1
        assert _sha(out.getvalue()) == digest
        starts = [int(x) for x in re.findall(rb"range: bytes=(\d+)-", bytes(proxy.sent).lower())]
        assert len(starts) == 1 and 0 < starts[0] < BIG  # resumed, not started over
    finally:
        proxy.close()

    # The whole install through a cutting network: verified, cached, locked.
    proxy = CuttingProxy(port, cut_after=2 << 20)
    try:
        assert main(["config", "registry", "add", "team", proxy.url]) == 0
        assert main(["install", "team/acme/big@^1"]) == 0
        assert proxy.cuts == 1
        assert main(["verify"]) == 0
        assert 'name = "big"' in (isolated / "project" / "conesreg.lock").read_text()
    finally:
        proxy.close()
    capsys.readouterr()


def test_server_killed_mid_download_client_waits_and_resumes(
    server: tuple[Process, Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, settings, _ = server
    port = int(proc.url.rsplit(":", 1)[1])
    digest = _big_digest(proc.url)
    # Enough attempts (with backoff capped at 8 s) to span a restart on a busy machine.
    monkeypatch.setattr(constants, "HTTP_ATTEMPTS", 40)
    reached, killed = threading.Event(), threading.Event()

    class SlowSink(io.BytesIO):
        """Holds the download after the first MiB until the server has been killed."""

        def write(self, data: bytes) -> int:  # type: ignore[override]
            n = super().write(data)
            if self.tell() > (1 << 20) and not killed.is_set():
                reached.set()
                killed.wait(30)
            return n

    out, errors = SlowSink(), []

    def download() -> None:
        try:
            with closing(HttpSource(proc.url, name="team")) as source:
                source.fetch_blob(digest, out)
        except Exception as e:  # reported by the assertion below
            errors.append(e)

    thread = threading.Thread(target=download)
    thread.start()
    assert reached.wait(30)
    proc.proc.kill()
    proc.proc.wait(10)
    killed.set()  # the client now finds the server gone and retries while it restarts
    restarted = start_process(settings.data, port=port)
    try:
        thread.join(120)
        assert not thread.is_alive() and errors == []
        assert _sha(out.getvalue()) == digest
        # The server's state is whole after the kill: the version and its blob are served.
        r = httpx.get(f"{restarted.url}/v1/concepts/acme/big/versions")
        assert [v["version"] for v in r.json()["versions"]] == ["1.0.0"]
        assert _sha(httpx.get(f"{restarted.url}/v1/blobs/{digest}").content) == digest
    finally:
        stop_process(restarted)


def test_install_against_a_dead_server_writes_nothing_then_recovers(
    server: tuple[Process, Settings, str],
    isolated: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proc, settings, _ = server
    port = int(proc.url.rsplit(":", 1)[1])
    assert main(["config", "registry", "add", "team", proc.url]) == 0
    proc.proc.kill()
    proc.proc.wait(10)
    capsys.readouterr()

    assert main(["install", "team/acme/big@^1"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach registry 'team'" in err and "Traceback" not in err
    assert not (isolated / "project" / "conesreg.lock").exists()
    assert not [p for p in (isolated / "cache").rglob("*") if p.is_file()]

    restarted = start_process(settings.data, port=port)
    try:
        assert main(["install", "team/acme/big@^1"]) == 0
        assert main(["verify"]) == 0
        assert 'name = "big"' in (isolated / "project" / "conesreg.lock").read_text()
    finally:
        stop_process(restarted)
