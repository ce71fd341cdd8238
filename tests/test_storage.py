"""The content-addressed store under the cache and the registry."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conesreg._storage import BlobStore, atomic_write, remove_stale_temps
from conesreg.artifact._digests import sha256_bytes
from conesreg.errors import IntegrityError, StorageError


def test_put_read_and_verify(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"hello")
    assert digest == sha256_bytes(b"hello")
    assert store.read(digest) == b"hello" and store.is_intact(digest)
    assert list(store.digests()) == [digest]
    store.path(digest).write_bytes(b"hellO")
    assert not store.is_intact(digest)
    with pytest.raises(IntegrityError, match="corrupted"):
        store.read(digest)
    with pytest.raises(IntegrityError, match="missing"):
        store.read(sha256_bytes(b"other"))


def test_fetch_refuses_wrong_content_and_keeps_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    want = sha256_bytes(b"right")
    with pytest.raises(IntegrityError, match="nothing was stored"):
        store.fetch(want, lambda f: f.write(b"wrong"))
    with pytest.raises(IntegrityError):
        store.fetch(want, lambda f: f.write(b"right"), size=99)  # truncated/oversized
    assert not store.has(want)
    assert [
        p for p in (tmp_path / "blobs").rglob("*") if p.is_file() and ".lock" not in p.name
    ] == []
    calls = []
    store.fetch(want, lambda f: calls.append(f.write(b"right")))
    store.fetch(want, lambda f: calls.append(f.write(b"right")))
    assert len(calls) == 1  # present and intact: not fetched again


def test_put_with_mismatching_digest(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError):
        BlobStore(tmp_path).put(b"a", digest=sha256_bytes(b"b"))


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_unwritable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="cannot create directory"):
        BlobStore(tmp_path / "file" / "blobs").put(b"x")
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(StorageError):
            atomic_write(ro / "x", b"x")


def test_stale_temps_removed(tmp_path: Path) -> None:
    old = tmp_path / ".tmp-old"
    old.write_text("")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (tmp_path / ".tmp-fresh").write_text("")
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == [".tmp-fresh"]
