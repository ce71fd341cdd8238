"""Publishing to the embedded registry: immutability, yanking, search, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conesreg import push
from conesreg._session import Session
from conesreg.artifact._manifest import parse_manifest
from conesreg.errors import (
    ConceptNotFoundError,
    ImmutableVersionError,
    ManifestError,
    MaskError,
    VersionNotFoundError,
)
from conesreg.sources import LocalSource
from conesreg.testing import make_draft


def test_push_then_read_back(isolated: Path) -> None:
    draft = make_draft(isolated / "d", previews=2)
    manifest, created = push(draft, version="1.0.0")
    assert created
    src = LocalSource()
    [entry] = src.versions("acme", "dog")
    assert (entry.version, entry.digest, entry.yanked) == ("1.0.0", manifest.digest, False)
    again = parse_manifest(src.manifest("acme", "dog", "1.0.0"), expected_digest=manifest.digest)
    assert again == manifest
    assert manifest.mask.selected == 40 and manifest.mask.total == 1024
    assert len(manifest.metadata.previews) == 2 and len(manifest.blobs) == 3
    assert manifest.metadata.created is not None


def test_identical_repush_is_noop_and_different_content_refused(isolated: Path) -> None:
    draft = make_draft(isolated / "d")
    first, _ = push(draft, version="1.0.0")
    time.sleep(1.1)  # a later push must not differ just by its timestamp
    second, created = push(draft, version="1.0.0")
    assert not created and second.digest == first.digest
    other = make_draft(isolated / "d2", seed=5)
    with pytest.raises(ImmutableVersionError, match="already published"):
        push(other, version="1.0.0")
    assert LocalSource().versions("acme", "dog")[0].digest == first.digest


def test_push_validates_before_writing(isolated: Path) -> None:
    draft = make_draft(isolated / "d")
    concept = json.loads((draft / "concept.json").read_text())
    concept["base_model"]["targets"][0]["shape"] = [8, 8]  # mask has 512 scalars for it
    (draft / "concept.json").write_text(json.dumps(concept))
    with pytest.raises(MaskError, match="512 scalars"):
        push(draft, version="1.0.0")
    (draft / "concept.json").write_text('{"name": "dog", "metadata": {}}')
    with pytest.raises(ManifestError, match="fails the schema"):
        push(draft, version="1.0.0")
    (draft / "concept.json").unlink()
    with pytest.raises(ManifestError, match="has no concept.json"):
        push(draft, version="1.0.0")
    assert not (isolated / "registry" / "v1" / "concepts").exists()


def test_corrupted_mask_refused(isolated: Path) -> None:
    draft = make_draft(isolated / "d")
    data = bytearray((draft / "mask.safetensors").read_bytes())
    (draft / "mask.safetensors").write_bytes(bytes(data[: len(data) - 7]))
    with pytest.raises(MaskError):
        push(draft, version="1.0.0")


def test_yank_and_unyank(isolated: Path) -> None:
    push(make_draft(isolated / "d"), version="1.0.0")
    src = LocalSource()
    src.set_yanked("acme", "dog", "1.0.0", yanked=True, reason="broken")
    [e] = src.versions("acme", "dog")
    assert e.yanked and e.yank_reason == "broken"
    assert src.search("dog") == []  # search lists only live versions
    src.set_yanked("acme", "dog", "1.0.0", yanked=False)
    assert not src.versions("acme", "dog")[0].yanked
    with pytest.raises(VersionNotFoundError):
        src.set_yanked("acme", "dog", "9.9.9", yanked=True)
    with pytest.raises(ConceptNotFoundError):
        src.set_yanked("acme", "cat", "1.0.0", yanked=True)


def test_search_text_and_filters(isolated: Path) -> None:
    push(make_draft(isolated / "a", name="dog", tags=("animal", "pet")), version="1.0.0")
    push(make_draft(isolated / "b", name="dog", tags=("animal", "pet")), version="1.1.0")
    push(
        make_draft(
            isolated / "c",
            name="cat",
            class_word="cat",
            description="a grumpy cat",
            tags=("animal",),
            base_hash="sha256:" + "cd" * 32,
        ),
        version="0.1.0",
    )
    push(
        make_draft(
            isolated / "e",
            namespace="other",
            name="teapot",
            class_word="teapot",
            description="a shiny teapot",
            tags=("object",),
        ),
        version="2.0.0",
    )
    src = LocalSource()
    assert [h.id for h in src.search("dog")] == ["acme/dog"]
    assert src.search("dog")[0].version == "1.1.0"
    assert {h.id for h in src.search("")} == {"acme/dog", "acme/cat", "other/teapot"}
    assert [h.id for h in src.search("grumpy")] == ["acme/cat"]
    assert {h.id for h in src.search(tags=["animal"])} == {"acme/dog", "acme/cat"}
    assert [h.id for h in src.search(tags=["animal", "pet"])] == ["acme/dog"]
    assert [h.id for h in src.search(base_model_hash="sha256:" + "cd" * 32)] == ["acme/cat"]
    assert [h.id for h in src.search(class_word="teapot")] == ["other/teapot"]
    assert src.search("dog", class_word="cat") == []
    assert src.search("nothing-like-this") == []


_KILLED_PUSH = textwrap.dedent(
    """
    import os, sys, time
    from conesreg import _storage
    real = _storage.BlobStore.fetch
    def slow(self, digest, write, size=None):
        path = real(self, digest, write, size=size)
        print("blob", flush=True)
        time.sleep(30)  # the parent kills us here, after the first blob
        return path
    _storage.BlobStore.fetch = slow
    from conesreg import push
    push(sys.argv[1], version="1.0.0")
    """
)


def test_kill_during_push_leaves_nothing_visible_and_next_push_recovers(isolated: Path) -> None:
    draft = make_draft(isolated / "d", previews=2)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_PUSH, str(draft)],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "blob"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(ConceptNotFoundError):
        LocalSource().versions("acme", "dog")
    manifest, created = push(draft, version="1.0.0")
    assert created
    assert Session().manifest("local", "acme", "dog", "1.0.0", manifest.digest) == manifest
