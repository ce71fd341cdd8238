"""The command line: exit codes, one-line errors, JSON output, and light imports."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conesreg.cli import main
from conesreg.testing import make_draft


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(hint: " in lines[0], err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def pushed(isolated: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    for i, v in enumerate(["1.0.0", "1.1.0"]):
        code, _, err = run(
            capsys, "push", str(make_draft(isolated / f"d{i}", seed=i)), "--version", v
        )
        assert code == 0, err
    return isolated


def test_full_flow(pushed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "search", "dog", "--json")
    assert code == 0 and [h["version"] for h in json.loads(out)] == ["1.1.0"]
    code, out, _ = run(capsys, "info", "acme/dog@1.0", "--json")
    info = json.loads(out)
    assert info["manifest"]["version"] == "1.0.0" and info["entry"]["yanked"] is False
    code, out, _ = run(capsys, "info", "acme/dog")
    assert code == 0 and "acme/dog@1.1.0" in out and "base model" in out
    assert "binding      global" in out
    code, out, _ = run(capsys, "versions", "acme/dog", "--json")
    assert [v["version"] for v in json.loads(out)] == ["1.0.0", "1.1.0"]
    code, out, _ = run(capsys, "install", "acme/dog@^1", "--json")
    assert code == 0 and json.loads(out)[0]["version"] == "1.1.0"
    code, out, _ = run(capsys, "list", "--json")
    assert [(c["name"], c["cached"]) for c in json.loads(out)] == [("dog", True)]
    assert run(capsys, "install", "--locked")[0] == 0
    assert run(capsys, "install", "--frozen")[0] == 0
    code, out, _ = run(capsys, "cache", "ls", "--json")
    assert [e["version"] for e in json.loads(out)] == ["1.1.0"]
    code, out, _ = run(capsys, "verify", "--json")
    assert code == 0 and json.loads(out)["corrupted"] == []
    assert run(capsys, "yank", "acme/dog@1.1.0", "--reason", "oops")[0] == 0
    code, out, _ = run(capsys, "info", "acme/dog@1.1.0")
    assert "YANKED" in out and "oops" in out
    assert run(capsys, "unyank", "acme/dog@1.1.0")[0] == 0
    assert run(capsys, "uninstall", "acme/dog")[0] == 0
    code, out, _ = run(capsys, "list", "--json")
    assert json.loads(out) == []
    code, out, _ = run(capsys, "cache", "prune")
    assert code == 0 and "removed" in out


def test_config(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "config", "set", "default_namespace", "acme")[0] == 0
    _, out, _ = run(capsys, "config", "get", "default_namespace")
    assert out.strip() == '"acme"'
    assert oct((isolated / "config.toml").stat().st_mode & 0o777) == "0o600"
    _, out, _ = run(capsys, "config", "list", "--json")
    assert json.loads(out)["default_namespace"] == "acme"
    assert_user_error(*run(capsys, "config", "set", "colour", "blue")[::2], "unknown config key")
    assert_user_error(*run(capsys, "config", "set", "offline", "maybe")[::2], "true or false")
    assert_user_error(*run(capsys, "config", "set", "default_registry", "nope")[::2], "unknown")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["install", "Acme/Dog"], "invalid namespace"),
        (["install", "acme/dog@^^1"], "invalid version spec"),
        (["install", "acme/cat"], "no concept acme/cat"),
        (["install", "acme/dog@^7"], "nearest: 1.0.0, 1.1.0"),
        (["info", "acme/dog@3"], "nearest"),
        (["install", "--frozen"], "nothing to install"),
        (["install", "--locked", "--frozen", "acme/dog"], "cannot be combined"),
        (["push", "nowhere", "--version", "1.0.0"], "not a directory"),
        (["yank", "acme/dog"], "names no version"),
        (["yank", "acme/dog@1.0"], "invalid version"),
        (["install", "elsewhere/acme/dog"], "unknown registry"),
        (["frobnicate"], "No such command"),
        (["push"], "Missing argument"),
    ],
)
def test_user_errors_are_one_line(
    pushed: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert_user_error(*run(capsys, *args)[::2], needle)


def test_duplicate_push_with_other_content(
    pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_draft(pushed / "other", seed=42)
    assert_user_error(
        *run(capsys, "push", str(other), "--version", "1.0.0")[::2], "already published"
    )


def test_yanked_only_and_stale_lock(pushed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "yank", "acme/dog@1.1.0")
    assert_user_error(*run(capsys, "install", "acme/dog@1.1")[::2], "only yanked")
    assert run(capsys, "install", "acme/dog@1.0")[0] == 0
    assert_user_error(*run(capsys, "install", "acme/dog@1.1.0", "--locked")[::2], "stale")


def test_yanked_pins_warn_and_frozen_refuses_what_the_lock_lacks(
    pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "yank", "acme/dog@1.1.0", "--reason", "bleeds into cats")[0] == 0
    code, out, err = run(capsys, "install", "acme/dog@1.1.0")
    assert code == 0 and "installed local/acme/dog@1.1.0" in out
    assert err.strip() == "warning: acme/dog@1.1.0 is yanked: bleeds into cats"
    code, _, err = run(capsys, "install", "--locked")  # the lock kept on a yanked version
    assert code == 0 and "is yanked: bleeds into cats" in err
    lock = (pushed / "project" / "conesreg.lock").read_bytes()
    assert_user_error(
        *run(capsys, "install", "--frozen", "acme/dog@^2")[::2], "acme/dog@^2", "--frozen"
    )
    assert (pushed / "project" / "conesreg.lock").read_bytes() == lock


def test_push_sets_description_tags_license_and_class_word(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draft = make_draft(isolated / "d")
    before = (draft / "concept.json").read_bytes()
    args = ["push", str(draft), "--version", "1.0.0", "--description", "a corgi, mostly"]
    args += ["--tag", "pet", "--tag", "Short Legs", "--license", "CC-BY-4.0"]
    code, out, err = run(capsys, *args, "--class-word", "corgi")
    assert code == 0, err
    assert out.startswith("acme/dog@1.0.0 published in registry 'local' (")  # where it went
    code, out, _ = run(capsys, "info", "acme/dog", "--json")
    meta = json.loads(out)["manifest"]["metadata"]
    assert (meta["description"], meta["tags"], meta["license"], meta["class_word"]) == (
        "a corgi, mostly",
        ["pet", "Short Legs"],
        "CC-BY-4.0",
        "corgi",
    )
    assert (draft / "concept.json").read_bytes() == before  # the draft is left as it was
    code, out, _ = run(capsys, "search", "--tag", "short legs", "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["dog"]
    # Bad values are refused in one line, before anything is published.
    assert_user_error(
        *run(capsys, "push", str(draft), "--version", "1.0.1", "--tag", "a\nb")[::2], "tags"
    )
    assert run(capsys, "versions", "acme/dog", "--json")[1].count('"1.0.1"') == 0


def test_a_mistyped_name_gets_the_closest_names(
    pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_user_error(*run(capsys, "info", "acme/dgo")[::2], "did you mean acme/dog?")
    assert_user_error(*run(capsys, "install", "acme/dogs@^1")[::2], "did you mean acme/dog?")
    assert_user_error(*run(capsys, "versions", "zoo/dog")[::2], "did you mean acme/dog?")
    code, err = run(capsys, "info", "acme/zebra")[::2]
    assert_user_error(code, err, "no concept acme/zebra")
    assert "did you mean" not in err  # nothing close: no guess


def test_an_empty_search_says_which_filter_emptied_it(
    pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def said(*args: str) -> str:
        code, out, _ = run(capsys, "search", *args)
        assert code == 0
        return out.strip()

    assert said("--tag", "shape") == "1 concept is in this registry, none with tag 'shape'"
    assert said("good", "--tag", "shape") == "1 concept matches 'good', none with tag 'shape'"
    assert said("dog", "--tag", "animal", "--class-word", "cat") == (
        "1 concept matches 'dog', none with class word 'cat'"
    )
    assert said("zebra", "--tag", "animal") == "no concepts match 'zebra'"


def test_verify_reports_corruption(pushed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "install", "acme/dog")
    from conesreg._cache import Cache

    blob = next(Cache.open().blobs.digests())
    Cache.open().blobs.path(blob).write_bytes(b"x")
    assert_user_error(*run(capsys, "verify")[::2], "corrupted")


def test_registry_commands_do_not_import_torch(pushed: Path) -> None:
    code = (
        "import sys; from conesreg.cli import main; rc = main(['info', 'acme/dog', '--json']);"
        "heavy = [m for m in ('torch', 'diffusers', 'numpy', 'transformers') if m in sys.modules];"
        "print(rc, heavy, file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    )
    assert proc.stderr.strip() == "0 []"


def test_console_script_exit_codes(pushed: Path) -> None:
    ok = subprocess.run(["conesreg", "info", "acme/dog"], capture_output=True, text=True)
    assert ok.returncode == 0 and "acme/dog@1.1.0" in ok.stdout
    bad = subprocess.run(["conesreg", "install", "acme/nope"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1


def test_progress_in_a_pipe_is_a_plain_line_when_it_moves(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from conesreg import constants
    from conesreg.cli._output import progress_bar

    monkeypatch.setattr(constants, "PROGRESS_SECONDS", 0.01)
    with progress_bar() as progress:  # standard error is captured: not a terminal
        task = progress.add_task("fetching mask", total=2048)
        progress.update(task, completed=1024)
        time.sleep(0.2)
        progress.update(task, completed=2048)  # finished: no more lines
        time.sleep(0.05)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("fetching mask: 1.0 KiB/2.0 KiB, ")
    assert len(lines) == 1  # unchanged state is not printed again


def test_preview_writes_readable_files_and_draws_inline_where_it_can(
    isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    draft = make_draft(isolated / "d", previews=2)
    shots = sorted((draft / "previews").iterdir())  # named as `conesreg find` names them
    shots = [
        p.rename(p.with_name(n))
        for p, n in zip(shots, ["with-mask-0.png", "without-mask-0.png"], strict=True)
    ]
    concept = json.loads((draft / "concept.json").read_text())
    concept["preview_files"] = [f"previews/{p.name}" for p in shots]
    (draft / "concept.json").write_text(json.dumps(concept))
    assert run(capsys, "push", str(draft), "--version", "1.0.0")[0] == 0
    out = isolated / "shown"
    code, printed, err = run(capsys, "preview", "acme/dog", "-o", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["with-concept-0.png", "without-concept-0.png"]
    assert (out / "with-concept-0.png").read_bytes() == shots[0].read_bytes()
    assert printed.split() == [str(out / "with-concept-0.png"), str(out / "without-concept-0.png")]
    # No previews: one line.
    bare = make_draft(isolated / "e", name="cat", previews=0)
    assert run(capsys, "push", str(bare), "--version", "1.0.0")[0] == 0
    assert_user_error(*run(capsys, "preview", "acme/cat", "-o", str(out))[::2], "no previews")

    from conesreg.cli import _images
    from conesreg.cli._images import show_inline

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for env, start in (
        ({"TERM_PROGRAM": "iTerm.app"}, "\033]1337;File=inline=1;"),
        ({"TERM_PROGRAM": "", "TERM": "xterm-kitty"}, "\033_Ga=T,f=100,"),
    ):
        tty = Tty()
        monkeypatch.setattr("sys.stdout", tty)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert show_inline(out / "with-concept-0.png")
        assert tty.getvalue().startswith(start)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("KITTY_WINDOW_ID", raising=False)
    monkeypatch.setattr(_images, "_terminal_draws_sixel", lambda: True)  # it answered DA1 with 4
    tty = Tty()
    monkeypatch.setattr("sys.stdout", tty)
    assert not show_inline(out / "with-concept-0.png")  # these test previews are no real PNGs
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(isolated / "red.png")
    assert show_inline(isolated / "red.png")
    assert tty.getvalue().startswith("\033Pq") and tty.getvalue().endswith("\033\\\n")
    monkeypatch.setattr(_images, "_terminal_draws_sixel", lambda: False)
    assert not show_inline(out / "with-concept-0.png")  # a plain terminal: the path only


def _decode_sixel(text: str) -> tuple[list[list[tuple[int, int, int] | None]], int, int]:
    """A minimal sixel decoder (raster attributes, RGB registers, repeats, $ and -)."""
    import re

    body = text.removeprefix("\033Pq").removesuffix("\033\\")
    head = re.match(r'"1;1;(\d+);(\d+)', body)
    assert head, body[:40]
    width, height = int(head.group(1)), int(head.group(2))
    grid: list[list[tuple[int, int, int] | None]] = [[None] * width for _ in range(height)]
    registers: dict[int, tuple[int, int, int]] = {}
    color, x, top = 0, 0, 0
    tokens = re.findall(
        r"#(\d+)(?:;2;(\d+);(\d+);(\d+))?|!(\d+)(.)|([?-~])|(\$)|(-)", body[head.end() :]
    )
    for reg, r, g, b, count, repeated, char, cr, nl in tokens:
        if reg:
            if r:
                registers[int(reg)] = (int(r), int(g), int(b))
            else:
                color = int(reg)
        elif cr:
            x = 0
        elif nl:
            x, top = 0, top + 6
        else:
            n, c = (int(count), repeated) if count else (1, char)
            bits = ord(c) - 63
            for dy in range(6):
                if bits >> dy & 1:
                    grid[top + dy][x : x + n] = [registers[color]] * n
            x += n
    return grid, width, height


def test_sixel_draws_every_pixel_in_its_palette_color() -> None:
    import numpy as np
    from PIL import Image

    from conesreg.cli._images import sixel

    rng = np.random.default_rng(0)
    # 13 rows: the last band is partial; flat runs exercise the repeat code.
    rgb = rng.integers(0, 256, (13, 21, 3), dtype=np.uint8)
    rgb[:, 5:15] = (255, 0, 0)
    image = Image.fromarray(rgb)
    grid, width, height = _decode_sixel(sixel(image, colors=16))
    assert (width, height) == (21, 13)
    quantized = image.quantize(colors=16)
    palette = quantized.getpalette() or []
    pixels = np.asarray(quantized)
    for y in range(height):
        for x in range(width):
            r, g, b = palette[3 * pixels[y, x] : 3 * pixels[y, x] + 3]
            assert grid[y][x] == tuple(round(v * 100 / 255) for v in (r, g, b)), (x, y)
    assert grid[0][10] == (100, 0, 0)


def test_a_sixel_terminal_is_found_by_asking_it() -> None:
    import os
    import threading

    from conesreg.cli._images import device_attributes

    def terminal(master: int, reply: bytes | None) -> None:
        asked = b""
        while not asked.endswith(b"\033[c"):
            asked += os.read(master, 64)
        if reply is not None:
            os.write(master, reply)

    for reply, expected in (
        (b"\033[?63;1;2;4;6;9;15;22c", {63, 1, 2, 4, 6, 9, 15, 22}),  # xterm -ti vt340
        (b"\033[?62;22c", {62, 22}),  # no sixel
        (None, set()),  # no answer: given up after the timeout
    ):
        master, slave = os.openpty()
        thread = threading.Thread(target=terminal, args=(master, reply), daemon=True)
        thread.start()
        try:
            assert device_attributes(slave, timeout=0.5) == expected
        finally:
            thread.join(timeout=2)
            os.close(master)
            os.close(slave)
    master, slave = os.pipe()
    assert device_attributes(slave) == set()  # not a terminal
    os.close(master)
    os.close(slave)


def test_small_outputs_say_what_they_are(
    pushed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """cache dir is the folder config list shows; tables in a pipe do not wrap; files follow
    the umask (the config file, which may hold tokens, excepted)."""
    from conesreg import constants

    code, out, _ = run(capsys, "cache", "dir")
    assert code == 0 and out.strip() == str(constants.CACHE_DIR)
    code, out, _ = run(capsys, "config", "list", "--json")
    assert json.loads(out)["cache_dir"] == str(constants.CACHE_DIR)
    # A long description in a table, in a pipe: one line per row, not folded at 80 columns.
    long_draft = make_draft(pushed / "long", name="cat", description="word " * 40)
    assert run(capsys, "push", str(long_draft), "--version", "1.0.0")[0] == 0
    code, out, _ = run(capsys, "search", "word")
    rows = [line for line in out.splitlines() if "acme/cat" in line]
    assert code == 0 and len(rows) == 1 and rows[0].rstrip().endswith("word")
    lock = pushed / "project" / "conesreg.lock"
    assert run(capsys, "install", "acme/dog")[0] == 0
    assert stat.S_IMODE(lock.stat().st_mode) == 0o666 & ~_umask()
    assert run(capsys, "config", "set", "default_namespace", "acme")[0] == 0
    assert stat.S_IMODE(constants.CONFIG_FILE.stat().st_mode) == 0o600


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
