"""`conesreg demo` on the bundled mini model: the whole loop, then a rerun that changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conesreg import _demo
from conesreg.cli import main

#: The loop, not the figures: the demo's own options for few steps and images keep this test
#: to seconds on a loaded machine (the full demo is the README's main job).
QUICK = ["--steps", "10", "--images", "8", "--device", "cpu"]


def test_demo_publishes_installs_and_reports(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from conesreg._session import Session

    out = isolated / "demo"
    assert main(["demo", "-o", str(out), *QUICK]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "demo/purple-checker-star@1.0.0" in printed and "subject drawn" in printed
    assert len(list((out / "subject").glob("*.png"))) == 6
    # The renders' captions, as `conesreg find` reads them from the folder.
    rows = [json.loads(x) for x in (out / "subject" / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"{i}.png" for i in range(6)]
    assert all("star" in r["text"] for r in rows)
    with Image.open(out / "demo.png") as grid:
        assert grid.width > 8 * 64 and grid.height > 5 * 64
    report = (out / "report.md").read_text()
    assert "conesreg demo: a checkered purple star" in report and "8 images per row" in report
    figures = json.loads((out / "figures.json").read_text())
    assert {"plain/with", "plain/without", "context/with", "sparsity"} <= set(figures)
    lock = (out / "conesreg.lock").read_text()
    assert 'name = "purple-checker-star"' in lock and 'namespace = "demo"' in lock
    from conesreg import parse_ref

    s, ref = Session(), parse_ref("demo/purple-checker-star")
    assert [e.version for e in s.releases(ref)] == ["1.0.0"]
    # Deterministic on CPU: a rerun finds the same neurons, and the push is a no-op.
    assert main(["demo", "-o", str(out), *QUICK]) == 0
    assert [e.version for e in s.releases(ref)] == ["1.0.0"]


def test_demo_unknown_subject(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--subject", "pink-elephant", "-o", str(isolated / "d")]) == 1
    err = capsys.readouterr().err
    assert "no bundled subject 'pink-elephant'" in err and "purple-checker-star" in err
    assert not (isolated / "d").exists()


@pytest.mark.slow
def test_full_demo_draws_the_subject(isolated: Path) -> None:
    result = _demo.run_demo(isolated / "demo", device="cpu")
    f = result.figures
    # The effect measured on the mini model is modest (see docs/design.md): at least 4x as
    # often, and 5 more images in 32, as without the concept.
    assert f["plain/with"] >= max(4 * f["plain/without"], f["plain/without"] + 5 / 32)
    assert f["total seconds"] > 0
