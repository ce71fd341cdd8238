"""What importing conesreg costs: the facade loads nothing, the artifact layer stands alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import conesreg
import conesreg.artifact

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "torch", "diffusers", "transformers")


def loaded_after(code: str) -> list[str]:
    """The modules (conesreg's and the heavy ones) a fresh interpreter holds after ``code``."""
    probe = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        f"if m.split('.')[0] in ('conesreg', *{HEAVY!r}))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def test_import_conesreg_loads_no_submodule() -> None:
    assert loaded_after("import conesreg") == ["conesreg"]


def test_import_artifact_loads_nothing_else_of_the_client() -> None:
    assert loaded_after("import conesreg.artifact") == ["conesreg", "conesreg.artifact"]
    # Every module of the artifact layer, used: still nothing of the client outside it (the
    # server imports this layer alone), and numpy only for the mask codec.
    loaded = loaded_after(
        "import pkgutil, importlib, conesreg.artifact as a\n"
        "for m in pkgutil.iter_modules(a.__path__):\n"
        "    importlib.import_module('conesreg.artifact.' + m.name)\n"
        "[getattr(a, n) for n in a.__all__]"
    )
    outside = [
        m for m in loaded if m.startswith("conesreg") and not m.startswith("conesreg.artifact")
    ]
    assert outside == ["conesreg"]
    assert not {"torch", "diffusers", "transformers"} & set(loaded)
    without_codec = loaded_after(
        "from conesreg.artifact import parse_manifest, parse_ref, parse_spec, match_score, errors"
    )
    assert not set(HEAVY) & set(without_codec)


def test_public_names_resolve() -> None:
    from conesreg import errors

    # One lazy table per package, and __all__ lists exactly its names.
    assert set(conesreg.__all__) == {*conesreg._LAZY, "__version__"}
    assert set(conesreg.artifact.__all__) == set(conesreg.artifact._LAZY)
    for module in (conesreg, conesreg.artifact):
        assert set(module.__all__) <= set(dir(module))
        for name in module.__all__:
            assert getattr(module, name) is not None, name
    assert conesreg.__version__ and conesreg.__version__[0].isdigit()
    assert conesreg.validate_mask is conesreg.artifact.validate_mask
    assert errors.MaskError is conesreg.artifact.errors.MaskError
    assert errors.__all__ == conesreg.artifact.errors.__all__


def test_import_registry_server_loads_only_the_artifact_package() -> None:
    # The contract in pyproject says so statically; this says so at run time too.
    loaded = loaded_after("import registry_server, registry_server.app")
    outside = [
        m for m in loaded if m.startswith("conesreg") and not m.startswith("conesreg.artifact")
    ]
    assert outside == ["conesreg"]
    assert not {"torch", "diffusers", "transformers"} & set(loaded)


def test_help_loads_no_heavy_module() -> None:
    # Listing the commands loads each command module for its help line: none may pull in the
    # compose layer (numpy) or the server stack at import.
    loaded = loaded_after(
        "import contextlib, io\nfrom conesreg.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])"
    )
    assert not set(HEAVY) & set(loaded)
    assert "conesreg._compose" not in loaded
