"""The real ``huggingface_hub`` client downloads concepts from a live server on loopback.

The client runs in a subprocess with a clean environment (its settings, such as HF_HUB_OFFLINE,
are read when it is imported, and other tests may have imported it already), against the server
running as ``python -m registry_server``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conesreg.artifact._manifest import Manifest
from conesreg.testing import auth, make_draft, push_draft
from registry_server import Settings, create_namespace, create_token
from registry_server.testing import Process, start_process, stop_process

CLIENT = textwrap.dedent(
    """
    import json, sys
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    endpoint, token = sys.argv[1], sys.argv[2] or None
    out = {}
    out["manifest_path"] = hf_hub_download(
        repo_id="acme/dog", filename="manifest.json", revision="v1.1.0", endpoint=endpoint
    )
    out["bare_version"] = hf_hub_download(
        repo_id="acme/dog", filename="manifest.json", revision="1.0.0", endpoint=endpoint
    )
    out["main"] = hf_hub_download(repo_id="acme/dog", filename="manifest.json", endpoint=endpoint)
    out["snapshot"] = snapshot_download(repo_id="acme/dog", revision="v1.1.0", endpoint=endpoint)
    api = HfApi(endpoint=endpoint)
    info = api.model_info("acme/dog", revision="v1.1.0")
    out["sha"] = info.sha
    out["siblings"] = sorted(s.rfilename for s in info.siblings)
    out["files"] = sorted(api.list_repo_files("acme/dog", revision="v1.1.0"))
    errors = {}
    for key, call in {
        "repo": lambda: hf_hub_download("acme/nope", "manifest.json", endpoint=endpoint),
        "revision": lambda: hf_hub_download(
            "acme/dog", "manifest.json", revision="v9.9.9", endpoint=endpoint
        ),
        "entry": lambda: hf_hub_download("acme/dog", "nope.bin", endpoint=endpoint),
        "private": lambda: hf_hub_download("secret/plan", "manifest.json", endpoint=endpoint),
    }.items():
        try:
            call()
            errors[key] = "no error"
        except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError) as e:
            errors[key] = type(e).__name__
    out["errors"] = errors
    # Concepts are listed as repos at their latest version, with the card a Hub push writes.
    def listed(**kw):
        return [
            [m.id, m.sha, m.card_data["conesreg"]["version"], m.card_data["tags"]]
            for m in HfApi(endpoint=endpoint, **kw).list_models(filter="conesreg", cardData=True)
        ]
    out["listed"] = listed()
    out["listed_owner"] = [m[0] for m in listed(token=token)]
    out["listed_tag"] = [m.id for m in api.list_models(filter=["conesreg", "nope"])]
    # After the anonymous attempt: the client falls back to its cache when the server says 404.
    out["private"] = snapshot_download(repo_id="secret/plan", endpoint=endpoint, token=token)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, dict, dict]]:
    tmp = tmp_path_factory.mktemp("hub")
    settings = Settings(data=tmp / "server")
    create_namespace(settings, "acme")
    create_namespace(settings, "secret", private=True)
    _, token = create_token(settings, namespace="acme", scope="push")
    _, secret = create_token(settings, namespace="secret", scope="push")
    proc = start_process(settings.data)
    try:
        manifests: dict[str, Manifest] = {}
        with httpx.Client(base_url=proc.url, timeout=30) as client:
            for i, v in enumerate(["1.0.0", "1.1.0"]):
                draft = make_draft(tmp / f"d{i}", seed=i, previews=2)
                manifests[v], r = push_draft(client, draft, version=v, token=token)
                assert r.status_code == 201, r.text
            draft = make_draft(tmp / "p", namespace="secret", name="plan")
            manifests["secret"], r = push_draft(client, draft, version="1.0.0", token=secret)
            assert r.status_code == 201, r.text
        yield proc, manifests, {"acme": token, "secret": secret}
    finally:
        stop_process(proc)


def test_huggingface_hub_client_downloads_concepts(
    live: tuple[Process, dict, dict], tmp_path: Path
) -> None:
    proc, manifests, tokens = live
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "*"}
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, proc.url, tokens["secret"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])

    m110, m100 = manifests["1.1.0"], manifests["1.0.0"]
    assert Path(out["manifest_path"]).read_bytes() == m110.canonical_json()
    assert Path(out["bare_version"]).read_bytes() == m100.canonical_json()
    assert Path(out["main"]).read_bytes() == m110.canonical_json()  # latest non-yanked
    assert out["sha"] == m110.digest.removeprefix("sha256:")[:40]
    names = sorted(["manifest.json", *(b.path for b in m110.blobs)])
    assert out["siblings"] == out["files"] == names
    snapshot = Path(out["snapshot"])
    assert snapshot.name == out["sha"]
    for blob in m110.blobs:
        data = (snapshot / blob.path).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest
    assert (snapshot / "manifest.json").read_bytes() == m110.canonical_json()
    private = Path(out["private"])
    assert (private / "manifest.json").read_bytes() == manifests["secret"].canonical_json()
    assert out["errors"] == {
        "repo": "RepositoryNotFoundError",
        "revision": "RevisionNotFoundError",
        "entry": "RemoteEntryNotFoundError",
        "private": "RepositoryNotFoundError",
    }
    tags = ["conesreg", "concept-neurons", "animal"]
    assert out["listed"] == [["acme/dog", out["sha"], "1.1.0", tags]]  # not the private one
    assert out["listed_owner"] == ["acme/dog", "secret/plan"]
    assert out["listed_tag"] == []


def test_resolve_headers(live: tuple[Process, dict, dict]) -> None:
    proc, manifests, tokens = live
    m = manifests["1.1.0"]
    mask = m.blob(m.mask.blob)
    with httpx.Client(base_url=proc.url) as client:
        r = client.head(f"/acme/dog/resolve/v1.1.0/{mask.path}")
        assert r.status_code == 200
        assert r.headers["x-repo-commit"] == m.digest.removeprefix("sha256:")[:40]
        assert r.headers["etag"] == f'"{mask.digest.removeprefix("sha256:")}"'
        assert r.headers["content-length"] == str(mask.size)
        r = client.get(f"/acme/dog/resolve/v1.1.0/{mask.path}", headers={"Range": "bytes=4-"})
        assert r.status_code == 206 and len(r.content) == mask.size - 4
        commit = m.digest.removeprefix("sha256:")[:40]
        r = client.get(f"/acme/dog/resolve/{commit}/manifest.json")
        assert r.content == m.canonical_json()
        r = client.get("/api/models/acme/dog/tree/v1.1.0", params={"recursive": False})
        assert {(e["type"], e["path"]) for e in r.json()} == {
            ("file", "manifest.json"),
            ("file", "mask.safetensors"),
            ("directory", "previews"),
        }
        r = client.get("/api/models/acme/dog/tree/v1.1.0/previews")
        assert sorted(e["path"] for e in r.json()) == [
            "previews/sample-0.png",
            "previews/sample-1.png",
        ]
        r = client.get("/api/models/acme/dog/tree/v1.1.0/nope")
        assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
        # Yanked: main moves back to 1.0.0, the exact revision still resolves.
        yank = "/v1/concepts/acme/dog/versions/1.1.0/yank"
        assert client.post(yank, headers=auth(tokens["acme"])).status_code == 200
        try:
            r = client.get("/api/models/acme/dog")
            assert r.json()["sha"] == manifests["1.0.0"].digest.removeprefix("sha256:")[:40]
            assert client.get("/acme/dog/resolve/v1.1.0/manifest.json").status_code == 200
        finally:
            assert client.delete(yank, headers=auth(tokens["acme"])).status_code == 200


def test_listing_takes_any_limit(live: tuple[Process, dict, dict]) -> None:
    proc, _, _ = live
    # A limit beyond any database integer (found by the fuzz campaign) is no server error.
    huge = 10**40
    r = httpx.get(f"{proc.url}/api/models", params={"limit": huge, "filter": "conesreg"})
    assert r.status_code == 200 and [m["id"] for m in r.json()] == ["acme/dog"]
    r = httpx.get(f"{proc.url}/api/models", params={"limit": 1, "search": "nothing-named-so"})
    assert r.status_code == 200 and r.json() == []
