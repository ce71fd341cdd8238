"""The client's own disk (issue 16, finding 7): a full disk is one line naming it and the path,
exit 1, nothing partial; ``cache prune`` removes a killed download's temp file at once and
keeps one whose writer is still at work, however old."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import conesreg
from conesreg import constants
from conesreg._cache import Cache
from conesreg.cli import main
from conesreg.errors import SourceError, StorageError
from conesreg.testing import make_draft


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*") if p.is_file()]


def _full_disk_under(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every temp file conesreg creates under ``folder`` writes to /dev/full: each write that
    reaches the disk fails with ENOSPC, as on a full file system."""
    real = tempfile.mkstemp

    def mkstemp(*args: object, dir: str | os.PathLike[str] | None = None, **kw: object):
        fd, name = real(*args, dir=dir, **kw)  # type: ignore[call-overload]
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name

    monkeypatch.setattr("conesreg._storage.tempfile.mkstemp", mkstemp)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="simulates a full disk with /dev/full")
@pytest.mark.parametrize("full", ["cache", "project"])
def test_a_full_disk_is_one_line_naming_it_and_the_path(
    isolated: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    full: str,
) -> None:
    draft = make_draft(isolated / "draft", name="dog", namespace="acme")
    assert main(["push", str(draft), "--version", "1.0.0"]) == 0
    _full_disk_under(isolated / full, monkeypatch)
    capsys.readouterr()

    code = main(["install", "acme/dog"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error: the disk is full") and err.strip().count("\n") == 0, err
    assert f"to write {isolated / full}" in err and "no space left on the file system at" in err
    assert "internal error" not in err
    assert not (isolated / "project" / constants.LOCKFILE_NAME).exists()
    assert _temps(isolated) == []
    if full == "cache":
        assert list(Cache.open().blobs.digests()) == []


def test_a_full_disk_anywhere_else_is_one_line_too(
    isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(isolated / "out.png"))

    monkeypatch.setattr(Cache, "prune", full)
    code = main(["cache", "prune"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: the disk is full"), err
    assert str(isolated / "out.png") in err


def test_the_hub_cache_disk_full_or_a_short_download_is_one_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conesreg.sources._hub import HubSource

    src = HubSource(endpoint="http://hub.test")

    def full(**kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/hf-cache/blobs/x.incomplete")

    with pytest.raises(StorageError, match="the disk is full") as e:
        src._call("downloading mask.safetensors", full)
    assert "/hf-cache/blobs/x.incomplete" in e.value.message and "HF_HUB_CACHE" in e.value.hint

    def short(**kwargs: object) -> None:
        # huggingface_hub's own size check: errno unset
        raise OSError("Consistency check failed: file should be of size 160 but has size 9")

    with pytest.raises(SourceError, match="Consistency check failed"):
        src._call("downloading mask.safetensors", short)


# -- cache prune -----------------------------------------------------------------------------------
_WRITER = """
import sys, time
from conesreg._cache import Cache

def write(out):
    out.write(b"half a download")
    print("writing", flush=True)
    time.sleep(60)  # killed here

Cache.open().ensure(sys.argv[1], write)
"""


def test_prune_removes_a_killed_downloads_temp_at_once(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = "sha256:" + "ab" * 32
    env = {**os.environ, "PYTHONPATH": str(Path(conesreg.__file__).parents[1])}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, digest], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(30)
    cache = Cache.open()
    assert len(_temps(cache.root)) == 1  # a fresh leftover: younger than any age limit

    capsys.readouterr()
    assert main(["cache", "prune"]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out
    assert _temps(cache.root) == []


def test_prune_keeps_the_temp_of_a_download_still_running_however_old(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = b"a blob still on its way"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cache = Cache.open()
    started, go_on = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write(out: object) -> None:
        started.set()
        assert go_on.wait(30)
        out.write(data)  # type: ignore[attr-defined]

    def download() -> None:
        try:
            cache.ensure(digest, write, size=len(data))
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    thread = threading.Thread(target=download)
    thread.start()
    try:
        assert started.wait(30)
        (tmp,) = _temps(cache.root)
        past = time.time() - 10 * constants.STALE_TMP_SECONDS
        os.utime(tmp, (past, past))  # a download slower than any age limit

        assert main(["cache", "prune"]) == 0
        assert tmp.exists()
    finally:
        go_on.set()
        thread.join(30)
    assert errors == [] and cache.blobs.is_intact(digest)
    assert _temps(cache.root) == []
