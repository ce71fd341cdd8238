"""The client against a live registry_server on loopback: the CLI works on it as on the embedded
registry (config registry add, login, push, install, search, info, yank)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from conesreg.cli import main
from conesreg.testing import make_draft
from registry_server import Settings, create_namespace, create_token
from registry_server.testing import free_port, serving_in_thread


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:

    settings = Settings(data=tmp_path / "server")
    create_namespace(settings, "acme")
    _, token = create_token(settings, namespace="acme", scope="push")
    with serving_in_thread(settings) as url:
        yield url, token


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_round_trip_through_the_server(
    isolated: Path,
    server: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from conesreg import constants

    url, token = server
    assert run(["config", "registry", "add", "team", url], capsys)[0] == 0
    draft = make_draft(isolated / "draft", name="dog", namespace="acme")
    # Anonymous pushes are refused with a hint to log in.
    code, _, err = run(
        ["push", str(draft), "--version", "1.0.0", "--name", "team/acme/dog"], capsys
    )
    assert code == 1 and "conesreg login team" in err and token not in err
    # Tokens the server does not know are refused, and nothing is saved.
    for bad, said in (("crs_bogus", "does not know this token"), ("bogus", "not a conesreg token")):
        monkeypatch.setattr("sys.stdin", io.StringIO(bad + "\n"))
        code, _, err = run(["login", "team", "--token-stdin"], capsys)
        assert code == 1 and said in err and err.count("\n") == 1, err
        assert bad not in constants.CONFIG_FILE.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    code, out, _ = run(["login", "team", "--token-stdin"], capsys)
    assert code == 0 and "logged in to team as namespace acme (push)" in out
    assert stat.S_IMODE(os.stat(constants.CONFIG_FILE).st_mode) == 0o600
    code, out, _ = run(["config", "list"], capsys)
    assert code == 0 and token not in out and "***" in out

    args = ["push", str(draft), "--version", "1.0.0", "--name", "team/acme/dog"]
    code, out, _ = run(args, capsys)
    assert code == 0 and f"acme/dog@1.0.0 published in registry 'team' ({url})" in out
    assert run(args, capsys)[0] == 0  # identical content: a no-op
    other = make_draft(isolated / "other", name="dog", namespace="acme", seed=5)
    code, _, err = run(
        ["push", str(other), "--version", "1.0.0", "--name", "team/acme/dog"], capsys
    )
    assert code == 1 and "immutable" in err

    code, _, err = run(["install", "team/acme/dog@^1"], capsys)
    assert code == 0, err
    lock = (isolated / "project" / "conesreg.lock").read_text()
    assert url in lock
    code, out, _ = run(["search", "dog", "--registry", "team", "--json"], capsys)
    assert code == 0 and [e["name"] for e in json.loads(out)] == ["dog"]
    code, out, _ = run(["info", "team/acme/dog", "--json"], capsys)
    assert code == 0 and json.loads(out)["entry"]["version"] == "1.0.0"
    code, _, err = run(["info", "team/acme/dgo"], capsys)  # a typo: the server's names suggest
    assert code == 1 and "did you mean acme/dog?" in err
    assert run(["yank", "team/acme/dog@1.0.0", "--reason", "bad"], capsys)[0] == 0
    code, out, _ = run(["versions", "team/acme/dog", "--json"], capsys)
    assert json.loads(out)[0]["yanked"] is True
    # The cache verified what it received: a reinstall from the lockfile is offline-clean.
    assert run(["verify"], capsys)[0] == 0


def test_unreachable_and_bad_urls(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["config", "registry", "add", "team", "ftp://x"], capsys)
    assert code == 1 and "not an http(s) URL" in err
    code, _, err = run(["config", "registry", "add", "local", "http://x"], capsys)
    assert code == 1 and "embedded registry" in err
    code, _, err = run(["login", "nowhere", "--token-stdin"], capsys)
    assert code == 1 and "no http registry named 'nowhere'" in err
    port = free_port()  # nothing listens there
    assert run(["config", "registry", "add", "gone", f"http://127.0.0.1:{port}"], capsys)[0] == 0
    code, _, err = run(["search", "dog", "--registry", "gone"], capsys)
    assert code == 1 and "cannot reach registry 'gone'" in err and "Traceback" not in err
