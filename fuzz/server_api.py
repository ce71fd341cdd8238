"""A long schemathesis campaign against a live ``registry_server`` on loopback.

The server runs as ``python -m registry_server`` in a fresh temp folder, with its own data dir,
HOME, TMPDIR and working directory, seeded with a published concept, a private one and a Hub
repo. Schemathesis then runs every check (``--checks all``) for ``--minutes``, split evenly
between three callers: anonymous, a read token and a push token (both of namespace ``acme``).

Printed at the end: the operations tested, the requests the server answered (its access log),
schemathesis failures by check, the 5xx answers, the server's peak RSS, and every file the
server wrote outside its data dir and its temp dir (files that appeared in its HOME, its working
directory or this repository, and files it held open for writing elsewhere). The exit status is
0 only when all of those are clean.

Run from the repository root (CI runs the short form, tests/security/test_server_fuzz.py):

    python fuzz/server_api.py --minutes 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from conesreg.artifact import build_manifest
from conesreg.artifact._mask import save_mask
from registry_server import Settings, create_namespace, create_token

REPO = Path(__file__).resolve().parents[1]
#: The campaign's schemathesis settings (the few rejections no schema can express).
CONFIG = Path(__file__).resolve().with_name("schemathesis.toml")

#: The callers schemathesis runs as, in turn: (label, token key in `Seeded.tokens` or None).
CALLERS = (("anonymous", None), ("read", "read"), ("push", "push"))
#: The status of one line of the server's access log (JSON lines, see registry_server.web.ops).
_ACCESS_RE = re.compile(r'^\{"time":.*"status":(\d{3}),')
_TARGETS = [
    {"name": "down.attn2.to_k.weight", "shape": [32, 16]},
    {"name": "down.attn2.to_v.weight", "shape": [32, 16]},
]


@dataclass
class Layout:
    """The folders of one campaign, all under ``root``."""

    root: Path
    data: Path
    home: Path
    tmp: Path
    cwd: Path
    reports: Path

    @classmethod
    def make(cls, root: Path) -> Layout:
        paths = {k: root / k for k in ("data", "home", "tmp", "cwd", "reports")}
        for p in paths.values():
            p.mkdir(parents=True)
        return cls(root=root, **paths)


@dataclass
class Seeded:
    url: str
    tokens: dict[str, str]


@dataclass
class Watch:
    """What a sampler thread sees of the server process while schemathesis runs."""

    pid: int
    allowed: tuple[Path, ...]
    peak_rss_kib: int = 0
    written_elsewhere: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{self.pid}/status").read_text()
            for line in status.splitlines():
                if line.startswith(("VmHWM:", "VmRSS:")):
                    self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
        fd_dir = Path(f"/proc/{self.pid}/fd")
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd_dir / fd)
                    if not target.startswith("/") or target.startswith(("/dev/", "/proc/")):
                        continue
                    flags = int(
                        Path(f"/proc/{self.pid}/fdinfo/{fd}")
                        .read_text()
                        .split("flags:")[1]
                        .split()[0],
                        8,
                    )
                    if flags & (os.O_WRONLY | os.O_RDWR) and not _inside(
                        Path(target), self.allowed
                    ):
                        self.written_elsewhere.add(target)


def _inside(path: Path, folders: tuple[Path, ...]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Folders of the repository that tools (pytest, ruff, hypothesis, git) write to on their own.
_TOOL_DIRS = {".git", ".hypothesis", ".pytest_cache", ".ruff_cache", "__pycache__", "fuzz-out"}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (tool caches left out) with its size and mtime."""
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in _TOOL_DIRS]
        for name in filenames:
            p = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.lstat(p)
                found[p] = (st.st_size, st.st_mtime_ns)
    return found


def _changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(p for p, v in after.items() if before.get(p) != v)


@contextlib.contextmanager
def serve(layout: Layout) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = _free_port()
    log = layout.root / "server.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONESREG_", "XDG_")) and k not in ("HOME", "TMPDIR")
    }
    env.update(
        HOME=str(layout.home),
        TMPDIR=str(layout.tmp),
        PYTHONPATH=str(REPO),
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
    )
    cmd = [sys.executable, "-m", "registry_server", "--data", str(layout.data), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=layout.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v1/index", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text()}")
            time.sleep(0.2)
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _draft(folder: Path, *, namespace: str, name: str, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    numels = {t["name"]: int(np.prod(t["shape"])) for t in _TARGETS}
    indices = {n: np.sort(rng.choice(k, 20, replace=False)) for n, k in numels.items()}
    save_mask(folder / "mask.safetensors", indices, numels=numels)
    draft = {
        "namespace": namespace,
        "name": name,
        "base_model": {"id": "tiny/test", "hash": "sha256:" + "ab" * 32, "targets": _TARGETS},
        "metadata": {
            "class_word": name,
            "description": f"a {name}",
            "tags": ["animal"],
            "method": {"name": "cones", "hyperparameters": {"seed": seed}},
        },
    }
    (folder / "concept.json").write_text(json.dumps(draft))
    return folder


def _push(client: httpx.Client, draft: Path, *, version: str, token: str) -> None:
    manifest, files = build_manifest(draft, version=version)
    headers = {"Authorization": f"Bearer {token}"}
    for digest, path in files.items():
        r = client.put(
            f"/v1/blobs/{digest}",
            params={"namespace": manifest.namespace},
            content=path.read_bytes(),
            headers=headers,
        )
        r.raise_for_status()
    url = f"/v1/concepts/{manifest.namespace}/{manifest.name}/versions/{manifest.version}"
    client.put(url, content=manifest.canonical_json(), headers=headers).raise_for_status()


def seed(layout: Layout, url: str, tokens: dict[str, str]) -> None:
    """``acme/dog`` 1.0.0 and 1.1.0 (the schema's examples), private ``hidden/cat`` and the Hub
    repo ``acme/cat`` with a card."""
    import base64

    with httpx.Client(base_url=url, timeout=30) as client:
        dog = _draft(layout.root / "seed" / "dog", namespace="acme", name="dog", seed=0)
        for version in ("1.0.0", "1.1.0"):
            _push(client, dog, version=version, token=tokens["push"])
        cat = _draft(layout.root / "seed" / "cat", namespace="hidden", name="cat", seed=1)
        _push(client, cat, version="1.0.0", token=tokens["hidden"])
        headers = {"Authorization": f"Bearer {tokens['push']}"}
        client.post(
            "/api/repos/create", json={"name": "cat", "organization": "acme"}, headers=headers
        ).raise_for_status()
        readme = b"---\ntags: [animal]\n---\n# cat\n"
        lines = [
            {"key": "header", "value": {"summary": "add files"}},
            {
                "key": "file",
                "value": {"path": "README.md", "content": base64.b64encode(readme).decode()},
            },
            {
                "key": "file",
                "value": {"path": "weights/w.bin", "content": base64.b64encode(b"w" * 99).decode()},
            },
        ]
        body = "\n".join(json.dumps(line) for line in lines).encode()
        client.post(
            "/api/models/acme/cat/commit/main",
            content=body,
            headers={**headers, "Content-Type": "application/x-ndjson"},
        ).raise_for_status()


def run_schemathesis(
    url: str,
    *,
    token: str | None,
    seconds: int,
    report: Path,
    seed_value: int,
    workers: int,
    cwd: Path,
) -> dict[str, object]:
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-time",
        str(max(seconds, 1)),
        "--seed",
        str(seed_value),
        "--workers",
        str(workers),
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    # Its own cache (.schemathesis/) goes to cwd: the campaign's temp folder, not the repo.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 600, cwd=cwd)
    (report.parent / (report.stem + ".out")).write_text(out.stdout + out.stderr)
    if not report.exists():
        raise RuntimeError(f"schemathesis wrote no report:\n{out.stdout}\n{out.stderr}")
    return json.loads(report.read_text())  # type: ignore[no-any-return]


@dataclass
class Result:
    operations: int = 0
    generated: int = 0
    requests: int = 0
    status_5xx: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    peak_rss_mib: float = 0.0
    written_elsewhere: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.failures or self.errors or self.status_5xx or self.written_elsewhere)


def campaign(*, minutes: float, seed_value: int, workers: int, keep: bool) -> Result:
    root = Path(tempfile.mkdtemp(prefix="conesreg-fuzz-"))
    layout = Layout.make(root)
    result = Result()
    try:
        settings = Settings(data=layout.data)
        create_namespace(settings, "acme")
        create_namespace(settings, "hidden", private=True)
        tokens = {
            "push": create_token(settings, namespace="acme", scope="push")[1],
            "read": create_token(settings, namespace="acme", scope="read")[1],
            "hidden": create_token(settings, namespace="hidden", scope="push")[1],
        }
        watched = (layout.home, layout.cwd, REPO)
        before = {str(w): _snapshot(w) for w in watched}
        with serve(layout) as (proc, url, log):
            seed(layout, url, tokens)
            # The log is the server's stdout, which this script opened for it.
            watch = Watch(pid=proc.pid, allowed=(layout.data, layout.tmp, log))
            sampler = threading.Thread(target=watch.run, daemon=True)
            sampler.start()
            per_caller = int(minutes * 60 / len(CALLERS))
            for label, key in CALLERS:
                report = run_schemathesis(
                    url,
                    token=tokens[key] if key else None,
                    seconds=per_caller,
                    report=layout.reports / f"{label}.json",
                    seed_value=seed_value,
                    workers=workers,
                    cwd=layout.root,
                )
                print(f"  {label}: {_one_line(report)}", flush=True)
                ops = report.get("operations") or {}
                result.operations = max(result.operations, int(ops.get("tested", 0)))  # type: ignore[union-attr]
                result.generated += int(report["test_cases"]["generated"])  # type: ignore[index]
                for f in report["failures"]:  # type: ignore[union-attr]
                    result.failures[f"{f['code']} {f['title']} ({label})"] += int(f["count"])
                for e in report["errors"]:  # type: ignore[union-attr]
                    result.errors[f"{e['title']} ({label})"] += int(e["count"])
            watch.sample()
            watch.stop.set()
            result.peak_rss_mib = watch.peak_rss_kib / 1024
            result.written_elsewhere += sorted(watch.written_elsewhere)
        for line in log.read_text(errors="replace").splitlines():
            m = _ACCESS_RE.search(line)
            if m:
                result.requests += 1
                result.status_5xx += m.group(1).startswith("5")
        for w in watched:
            result.written_elsewhere += _changed(before[str(w)], _snapshot(w))
        if keep:
            print(f"  kept {root}")
        return result
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _one_line(report: dict[str, object]) -> str:
    cases = report["test_cases"]
    failures = sum(int(f["count"]) for f in report["failures"])  # type: ignore[union-attr]
    return (
        f"{cases['generated']} cases, {failures} failures, "  # type: ignore[index]
        f"{len(report['errors'])} error kinds, stop: {report['stop_reason']}"  # type: ignore[arg-type]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total schemathesis time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="schemathesis workers")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args(argv)
    print(
        f"schemathesis --checks all for {args.minutes:g} min against registry_server, "
        f"{args.workers} worker(s), server on its own process"
    )
    wall, cpu = time.perf_counter(), _cpu_seconds()
    res = campaign(minutes=args.minutes, seed_value=args.seed, workers=args.workers, keep=args.keep)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    print(f"operations tested:   {res.operations}")
    print(f"test cases:          {res.generated}")
    print(f"requests answered:   {res.requests}")
    print(f"5xx answers:         {res.status_5xx}")
    print(f"peak server RSS:     {res.peak_rss_mib:.0f} MiB")
    print(f"failures by check:   {sum(res.failures.values())}")
    for name, n in sorted(res.failures.items()):
        print(f"  {n:6d}  {name}")
    if res.errors:
        print(f"errors:              {sum(res.errors.values())}")
        for name, n in sorted(res.errors.items()):
            print(f"  {n:6d}  {name}")
    print(f"written outside data and temp dirs: {len(res.written_elsewhere)}")
    for p in res.written_elsewhere:
        print(f"  {p}")
    print(f"wall {wall:.0f} s, CPU {cpu:.0f} s (this process and the server, which has exited)")
    print("clean" if res.clean else "NOT CLEAN")
    return 0 if res.clean else 1


def _cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the server, once stopped)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())
