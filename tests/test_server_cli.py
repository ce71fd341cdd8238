"""``conesreg serve``: run the server, manage namespaces and tokens, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from conesreg.cli import main
from registry_server import Settings, create_app
from registry_server.testing import free_port

#: The checkout: scripts run from here import this code.
REPO = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "(hint: " in lines[0] and "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_namespaces_and_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "server")
    code, out, _ = run(capsys, "serve", "--data", data, "namespace", "create", "acme")
    assert code == 0 and "created namespace acme" in out
    # The data folder may also follow the subcommand.
    code, out, err = run(
        capsys, "serve", "token", "create", "--namespace", "acme", "--scope", "push", "--data", data
    )
    assert code == 0, err
    token = out.strip()
    assert token.startswith("crs_") and "not shown again" in err and "token 1" in err

    settings = Settings(data=Path(data))
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/v1/concepts/acme/dog/versions/1.0.0/yank",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 404  # authenticated: the version simply does not exist

        code, out, _ = run(capsys, "serve", "--data", data, "token", "list", "--json")
        [listed] = json.loads(out)
        assert (listed["id"], listed["namespace"], listed["scope"], listed["state"]) == (
            1,
            "acme",
            "push",
            "active",
        )
        assert token not in out
        code, out, _ = run(capsys, "serve", "--data", data, "token", "revoke", "1")
        assert code == 0 and "revoked token 1" in out
        r = client.get("/v1/index", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401

    code, out, _ = run(capsys, "serve", "--data", data, "namespace", "create", "vault", "--private")
    assert code == 0 and "private namespace vault" in out
    code, out, _ = run(
        capsys,
        "serve",
        "--data",
        data,
        "token",
        "create",
        "--namespace",
        "vault",
        "--scope",
        "read",
        "--expires-days",
        "7",
        "--json",
    )
    assert code == 0 and json.loads(out)["scope"] == "read"
    code, out, _ = run(capsys, "serve", "--data", data, "token", "list")
    assert "vault" in out and "read" in out
    code, out, _ = run(capsys, "serve", "--data", data, "gc", "--older-than", "0")
    assert code == 0 and "removed 0 orphan blob(s)" in out


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "server")
    code, _, err = run(capsys, "serve", "--data", data, "token", "create", "--namespace", "nope")
    assert_user_error(code, err, "no namespace nope", "serve namespace create nope")
    code, _, err = run(capsys, "serve", "--data", data, "namespace", "create", "Bad/Name")
    assert_user_error(code, err, "invalid namespace")
    run(capsys, "serve", "--data", data, "namespace", "create", "acme")
    code, _, err = run(capsys, "serve", "--data", data, "namespace", "create", "acme")
    assert_user_error(code, err, "exists")
    code, _, err = run(capsys, "serve", "--data", data, "token", "revoke", "42")
    assert_user_error(code, err, "no token 42")
    code, _, err = run(capsys, "serve", "--data", data, "token", "create", "--scope", "root")
    assert_user_error(code, err)


def test_missing_server_extra_says_how_to_install(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['fastapi'] = None\n"  # as if FastAPI were not installed
        "from conesreg.cli import main\n"
        f"sys.exit(main(['serve', '--data', {str(tmp_path)!r}, 'token', 'list']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert_user_error(
        done.returncode, done.stderr, "not installed", "pip install 'conesreg[server]'"
    )


def test_cli_does_not_import_the_server_stack() -> None:
    script = (
        "import sys, conesreg.cli\n"
        "heavy = {'fastapi', 'uvicorn', 'sqlalchemy', 'registry_server'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=60)


def test_conesreg_serve_runs_the_server(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = ["serve", "--port", str(port), "--data", str(tmp_path)]
    code = f"from conesreg.cli import main; main({argv!r})"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/index", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert r.json() == {"concepts": []}
        assert (tmp_path / "registry.db").is_file()
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_help_lists_serve_without_importing_the_server() -> None:
    # `conesreg --help` gives serve's help line without the server stack, which may be missing.
    script = (
        "import sys, conesreg.cli as c\n"
        "c.main(['--help'])\n"
        "heavy = {'fastapi', 'uvicorn', 'sqlalchemy', 'registry_server'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "from registry_server.cli import serve\n"
        "assert serve.help.splitlines()[0] == c._SERVE_HELP\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if x.split()[:1] == ["serve"]]
    assert "Run the registry server" in line


def test_serve_on_a_busy_port_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = str(busy.getsockname()[1])
    try:
        code = main(["serve", "--data", str(tmp_path / "d"), "--port", port])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1, err
        assert f"port {port} on 127.0.0.1 is in use" in err and "--port" in err
        assert "serving" not in err  # nothing claimed before the failure
        # The server module's own entry point says the same, with exit status 1.
        argv = [sys.executable, "-m", "registry_server", "--data", str(tmp_path / "d")]
        out = subprocess.run(
            [*argv, "--port", port],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 1 and "is in use" in out.stderr and "Traceback" not in out.stderr
    finally:
        busy.close()
