"""The Hugging Face Hub as a source, end to end and offline: the real huggingface_hub client
against registry_server's Hub-compatible endpoints on loopback, driven through the CLI.

huggingface_hub reads its cache folder, token and offline switch when called, so the tests point
them at temporary places with monkeypatch; the endpoint comes from a registry alias of kind hub
that overrides the built-in ``hf``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conesreg.cli import main
from conesreg.testing import make_draft
from registry_server import Settings, create_namespace, create_token
from registry_server.testing import Process, start_process, stop_process


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A server with namespaces acme and zoo; yields (url, acme push token, scratch folder)."""
    tmp = tmp_path_factory.mktemp("hub-source")
    settings = Settings(data=tmp / "server")
    create_namespace(settings, "acme")
    create_namespace(settings, "zoo")
    _, token = create_token(settings, namespace="acme", scope="push")
    proc: Process = start_process(settings.data)
    try:
        yield proc.url, token, tmp
    finally:
        stop_process(proc)


@pytest.fixture
def hf(
    hub: tuple[str, str, Path], isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str]]:
    """The CLI's ``hf`` alias pointed at the server; huggingface_hub's cache and token in tmp."""
    import huggingface_hub.constants as hf_constants

    url, token, _ = hub
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(isolated / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", token)
    assert main(["config", "registry", "add", "hf", url, "--kind", "hub"]) == 0
    yield url, token


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _api(url: str, token: str):  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    return HfApi(endpoint=url, token=token)


def _push(draft: Path, ref: str, version: str, capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run(["push", str(draft), "--version", version, "--name", ref], capsys)
    assert code == 0, err
    return out


def _lock(project: Path) -> dict[str, dict]:
    import tomllib

    data = tomllib.loads((project / "conesreg.lock").read_text())
    return {f"{c['namespace']}/{c['name']}": c for c in data["concepts"]}


def test_push_versions_install_by_range_search_and_yank(
    hf: tuple[str, str], isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, token = hf
    first = make_draft(isolated / "v1", name="dog", previews=2)
    second = make_draft(isolated / "v2", name="dog", seed=1, previews=1)
    assert "published" in _push(first, "hf://acme/dog", "1.0.0", capsys)
    assert "already published" in _push(first, "hf://acme/dog", "1.0.0", capsys)  # a no-op
    code, _, err = run(
        ["push", str(second), "--version", "1.0.0", "--name", "hf://acme/dog"], capsys
    )
    assert code == 1 and "already published (tag v1.0.0) with other content" in err
    _push(second, "hf://acme/dog", "1.1.0", capsys)

    api = _api(url, token)
    refs = api.list_repo_refs("acme/dog")
    tags = {t.name: t.target_commit for t in refs.tags}
    assert set(tags) == {"v1.0.0", "v1.1.0"}
    # One commit per version, holding exactly that version's files (stale previews deleted).
    files = set(api.list_repo_files("acme/dog", revision="v1.0.0")) - {".gitattributes"}
    assert sorted(files) == [
        "README.md", "manifest.json", "mask.safetensors", "previews/sample-0.png",
        "previews/sample-1.png",
    ]  # fmt: skip
    assert "previews/sample-1.png" not in api.list_repo_files("acme/dog", revision="v1.1.0")
    card = api.model_info("acme/dog").card_data
    assert "conesreg" in card.tags and card.base_model == "tiny/test"

    code, out, _ = run(["versions", "hf://acme/dog", "--json"], capsys)
    listed = json.loads(out)
    assert [(e["version"], e["revision"]) for e in listed] == [
        ("1.0.0", tags["v1.0.0"]),
        ("1.1.0", tags["v1.1.0"]),
    ]

    code, _, err = run(["install", "hf://acme/dog@~1.0"], capsys)
    assert code == 0, err
    locked = _lock(isolated / "project")["acme/dog"]
    assert (locked["version"], locked["revision"]) == ("1.0.0", tags["v1.0.0"])  # the SHA
    assert locked["source"] == url
    code, _, err = run(["install", "hf://acme/dog@^1", "--upgrade"], capsys)
    assert code == 0, err
    assert _lock(isolated / "project")["acme/dog"]["revision"] == tags["v1.1.0"]
    assert run(["verify"], capsys)[0] == 0

    code, out, _ = run(["search", "dog", "--source", "hf", "--json"], capsys)
    assert code == 0
    [hit] = json.loads(out)
    assert (hit["namespace"], hit["name"], hit["version"]) == ("acme", "dog", "1.1.0")
    assert hit["digest"] == listed[1]["digest"]
    code, out, _ = run(["search", "cat", "--source", "hf", "--json"], capsys)
    assert json.loads(out) == []
    # A word of the description alone (the Hub's own search matches repo ids only).
    code, out, _ = run(["search", "good", "--source", "hf", "--json"], capsys)
    assert code == 0 and [h["name"] for h in json.loads(out)] == ["dog"]

    assert run(["yank", "hf://acme/dog@1.1.0", "--reason", "wrong ears"], capsys)[0] == 0
    code, out, _ = run(["versions", "hf://acme/dog", "--json"], capsys)
    assert [(e["version"], e["yanked"], e["yank_reason"]) for e in json.loads(out)] == [
        ("1.0.0", False, None),
        ("1.1.0", True, "wrong ears"),
    ]
    code, _, err = run(["install", "hf://acme/dog@^1", "--upgrade"], capsys)
    assert code == 0, err
    assert _lock(isolated / "project")["acme/dog"]["version"] == "1.0.0"  # yanked: skipped
    assert run(["unyank", "hf://acme/dog@1.1.0"], capsys)[0] == 0


def test_a_concept_published_natively_is_found_and_installed_through_the_hub_api(
    hf: tuple[str, str],
    isolated: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    url, token = hf
    assert run(["config", "registry", "add", "team", url], capsys)[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    assert run(["login", "team", "--token-stdin"], capsys)[0] == 0
    draft = make_draft(
        isolated / "newt",
        name="newt",
        class_word="newt",
        tags=("amphibian",),
        description="a checkered purple newt",
    )
    _push(draft, "team/acme/newt", "1.0.0", capsys)  # through /v1, not as a Hub repo

    # The same server as a Hub: its listing carries the concept, so search matches what the
    # local search matches (a word of the description, a tag) ...
    for args in (["checkered"], ["newt", "--tag", "amphibian"], ["", "--tag", "amphibian"]):
        code, out, err = run(["search", *args, "--source", "hf", "--json"], capsys)
        assert code == 0, err
        hits = [(h["namespace"], h["name"], h["version"]) for h in json.loads(out)]
        assert hits == [("acme", "newt", "1.0.0")], args
    code, out, _ = run(["search", "newt", "--tag", "food", "--source", "hf", "--json"], capsys)
    assert code == 0 and json.loads(out) == []
    # ... and the hit installs through the Hub client, verified like any other.
    code, _, err = run(["install", "hf://acme/newt@^1"], capsys)
    assert code == 0, err
    assert _lock(isolated / "project")["acme/newt"]["version"] == "1.0.0"


def test_a_moved_tag_is_reported_and_frozen_keeps_the_pinned_commit(
    hf: tuple[str, str], isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import CommitOperationAdd

    url, token = hf
    _push(
        make_draft(isolated / "d", name="cat", class_word="cat"), "hf://acme/cat", "1.0.0", capsys
    )
    assert run(["install", "hf://acme/cat@1"], capsys)[0] == 0
    pinned = _lock(isolated / "project")["acme/cat"]["revision"]

    # Someone moves the tag to a new commit (same files, one more): the Hub allows it.
    api = _api(url, token)
    head = next(b.target_commit for b in api.list_repo_refs("acme/cat").branches)
    commit = api.create_commit(
        "acme/cat",
        operations=[CommitOperationAdd("notes.txt", b"moved")],
        commit_message="move",
        parent_commit=head,
    )
    api.delete_tag("acme/cat", tag="v1.0.0")
    api.create_tag("acme/cat", tag="v1.0.0", revision=commit.oid)

    code, _, err = run(["install"], capsys)
    assert code == 1 and "the tag was moved after locking" in err and pinned in err
    assert "Traceback" not in err
    assert _lock(isolated / "project")["acme/cat"]["revision"] == pinned  # not followed
    shutil.rmtree(isolated / "cache")  # --frozen fetches the pinned commit, not the tag
    code, _, err = run(["install", "--frozen"], capsys)
    assert code == 0, err


def test_a_tag_moved_onto_another_version_is_reported_not_downgraded(
    hf: tuple[str, str], isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, token = hf
    _push(
        make_draft(isolated / "d1", name="elk", class_word="elk"), "hf://acme/elk", "1.0.0", capsys
    )
    _push(
        make_draft(isolated / "d2", name="elk", class_word="elk"), "hf://acme/elk", "1.1.0", capsys
    )
    assert run(["install", "hf://acme/elk@^1"], capsys)[0] == 0
    locked = _lock(isolated / "project")["acme/elk"]
    assert locked["version"] == "1.1.0"

    # Someone moves v1.1.0 onto 1.0.0's commit: the listing now skips the tag (its manifest says
    # 1.0.0), and re-resolving ^1 would quietly lock 1.0.0.
    api = _api(url, token)
    old = next(t.target_commit for t in api.list_repo_refs("acme/elk").tags if t.name == "v1.0.0")
    api.delete_tag("acme/elk", tag="v1.1.0")
    api.create_tag("acme/elk", tag="v1.1.0", revision=old)

    code, _, err = run(["install"], capsys)
    assert code == 1, err
    assert "acme/elk@1.1.0 is locked at revision" in err and "no longer lists" in err
    assert f"tag v1.1.0 now points to {old}" in err and "acme/elk@1.0.0" in err
    assert "Traceback" not in err
    assert _lock(isolated / "project")["acme/elk"] == locked  # not downgraded
    code, _, err = run(["install", "--frozen"], capsys)  # the pinned commit still installs
    assert code == 0, err


def test_corrupted_file_is_refused(
    hf: tuple[str, str], isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import CommitOperationAdd

    url, token = hf
    draft = make_draft(isolated / "d", name="owl", class_word="owl")
    _push(draft, "hf://acme/owl", "1.0.0", capsys)
    api = _api(url, token)
    # A second version whose mask bytes do not match its manifest (a tampered upload).
    head = next(b.target_commit for b in api.list_repo_refs("acme/owl").branches)
    manifest = json.loads(
        Path(api.hf_hub_download("acme/owl", "manifest.json", revision="v1.0.0")).read_text()
    )
    manifest["version"] = "1.0.1"
    from conesreg.artifact._manifest import canonical_json

    mask = (draft / "mask.safetensors").read_bytes()
    commit = api.create_commit(
        "acme/owl",
        operations=[
            CommitOperationAdd("manifest.json", canonical_json(manifest)),
            CommitOperationAdd("mask.safetensors", mask[:-1] + bytes([mask[-1] ^ 1])),
        ],
        commit_message="tampered",
        parent_commit=head,
    )
    api.create_tag("acme/owl", tag="v1.0.1", revision=commit.oid)

    code, _, err = run(["install", "hf://acme/owl@1.0.1"], capsys)
    assert code == 1 and "sha256" in err.lower() and "Traceback" not in err
    assert not (isolated / "project" / "conesreg.lock").exists()


def test_offline_installs_from_the_cache_and_fails_clearly_without_it(
    hf: tuple[str, str], isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub.constants as hf_constants

    _push(
        make_draft(isolated / "d", name="fox", class_word="fox"), "hf://acme/fox", "1.0.0", capsys
    )
    assert run(["install", "hf://acme/fox@1"], capsys)[0] == 0
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    (isolated / "project" / "conesreg.lock").unlink()
    code, _, err = run(["install", "hf://acme/fox@1"], capsys)
    assert code == 0, err  # from the conesreg cache, without the network
    code, _, err = run(["install", "hf://acme/wolf@1"], capsys)
    assert code == 1 and "acme/wolf is not in the cache and offline mode is on" in err
    code, out, err = run(["search", "fox", "--source", "hf", "--json"], capsys)
    assert code == 0, err  # what the cache knows
    assert [(e["name"], e["version"]) for e in json.loads(out)] == [("fox", "1.0.0")]


def test_repos_that_are_not_concepts_and_tags_that_are_not_versions(
    hf: tuple[str, str], isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import CommitOperationAdd

    url, token = hf
    api = _api(url, token)
    api.create_repo("acme/plain", exist_ok=True)
    commit = api.create_commit(
        "acme/plain",
        operations=[CommitOperationAdd("README.md", b"# just a model\n")],
        commit_message="init",
    )
    api.create_tag("acme/plain", tag="v1.0.0", revision=commit.oid)
    code, _, err = run(["install", "hf://acme/plain@1"], capsys)
    assert code == 1 and "hf://acme/plain has no conesreg version" in err
    assert "no manifest.json" in err

    _push(
        make_draft(isolated / "d", name="bee", class_word="bee"), "hf://acme/bee", "1.0.0", capsys
    )
    head = next(b.target_commit for b in api.list_repo_refs("acme/bee").branches)
    api.create_tag("acme/bee", tag="latest", revision=head)
    code, out, _ = run(["versions", "hf://acme/bee", "--json"], capsys)
    assert [e["version"] for e in json.loads(out)] == ["1.0.0"]  # "latest" ignored
    code, out, _ = run(["versions", "hf://acme/bee", "--all", "--json"], capsys)
    extra = [e for e in json.loads(out) if "tag" in e]
    assert extra == [{"tag": "latest", "revision": head, "ignored": "not a v<semver> tag"}]

    # A tag whose manifest.json is not a manifest is skipped, with the reason.
    commit = api.create_commit(
        "acme/bee",
        operations=[CommitOperationAdd("manifest.json", b'{"not": "a manifest"}')],
        commit_message="broken",
        parent_commit=head,
    )
    api.create_tag("acme/bee", tag="v2.0.0", revision=commit.oid)
    code, out, _ = run(["versions", "hf://acme/bee", "--all", "--json"], capsys)
    listed = json.loads(out)
    assert [e["version"] for e in listed if "version" in e] == ["1.0.0"]
    [broken] = [e for e in listed if e.get("tag") == "v2.0.0"]
    assert broken["revision"] == commit.oid and "manifest.json is invalid" in broken["ignored"]
    code, _, err = run(["install", "hf://acme/bee@2"], capsys)
    assert code == 1 and "1.0.0" in err and "Traceback" not in err

    code, _, err = run(["install", "hf://acme/nothing@1"], capsys)
    assert code == 1 and "no repo hf://acme/nothing" in err


def test_private_repo_needs_a_token(
    hf: tuple[str, str], isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    url, token = hf
    _api(url, token).create_repo("acme/secret", private=True, exist_ok=True)
    _push(make_draft(isolated / "d", name="secret"), "hf://acme/secret", "1.0.0", capsys)
    monkeypatch.delenv("HF_TOKEN")
    code, _, err = run(["install", "hf://acme/secret@1"], capsys)
    assert code == 1 and "no repo hf://acme/secret" in err and "hf auth login" in err
    # Hub tokens are huggingface_hub's business, not conesreg's config file.
    code, _, err = run(["login", "hf", "--token-stdin"], capsys)
    assert code == 1 and "huggingface_hub's own login" in err and "hf auth login" in err


def test_a_push_without_a_token_names_the_registry_in_one_line(
    hf: tuple[str, str], isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    url, _ = hf
    assert run(["config", "registry", "add", "teamhub", url, "--kind", "hub"], capsys)[0] == 0
    _push(make_draft(isolated / "dog", name="dog", seed=41), "teamhub/acme/dog", "9.0.0", capsys)
    monkeypatch.delenv("HF_TOKEN")
    draft = make_draft(isolated / "d", name="newcomer")  # a repo no test made
    args = ["push", str(draft), "--version", "1.0.0", "--name", "teamhub/acme/newcomer"]
    code, _, err = run(args, capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert "registry 'teamhub'" in err and "teamhub/acme/newcomer" in err
    assert "hf auth login" in err
    assert "hf://" not in err and "{" not in err  # not the Hub alias, no raw error object
    # A repo that exists: huggingface_hub cannot parse the URL it builds for this endpoint when
    # create_repo finds it; that is no crash, the push goes on (to the tag it finds taken).
    args = ["push", str(draft), "--version", "9.0.0", "--name", "teamhub/acme/dog"]
    code, _, err = run(args, capsys)
    assert code == 1 and "already published" in err and "internal error" not in err, err
