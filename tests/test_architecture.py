"""The layers docs/design.md describes are the ones the import contracts in pyproject enforce.

``lint-imports`` (run by ``.ci/run``) checks the code against the contracts; this checks that the
contracts cover every module, that the design page's layer table is exactly the layers contract,
and the one rule import-linter cannot express: no module imports the package facade.
"""

from __future__ import annotations

import pkgutil
import re
import tomllib
from pathlib import Path

import grimp
import pytest

import conesreg

ROOT = Path(__file__).resolve().parents[1]
#: Packages whose ``__init__`` only re-exports lazily (or is empty): not a layer of their own.
FACADES = {"conesreg", "conesreg.mini"}


def _contract(name: str) -> dict:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = pyproject["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"] == name)


def _layers() -> list[set[str]]:
    """The client's layers, top first, each a set of modules."""
    return [
        {m.strip() for m in re.split(r"[|:]", layer.strip("() "))}
        for layer in _contract("client layers")["layers"]
    ]


def _design_table() -> list[set[str]]:
    """The module column of docs/design.md's layer table, row by row."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [set(re.findall(r"`(conesreg[\w.]*)`", row.split("|")[2])) for row in rows]


def _client_modules() -> list[str]:
    found = ["conesreg"]
    for info in pkgutil.walk_packages(conesreg.__path__, prefix="conesreg."):
        found.append(info.name)
    return found


def test_design_table_is_the_layers_contract() -> None:
    assert _design_table() == _layers()


def test_every_module_has_a_layer() -> None:
    entries = set().union(*_layers())
    orphans = [
        m
        for m in _client_modules()
        if m not in FACADES and not any(m == e or m.startswith(e + ".") for e in entries)
    ]
    assert orphans == [], "add these modules to a layer in pyproject (and docs/design.md)"


def test_the_server_may_import_the_artifact_package_alone() -> None:
    contract = _contract("registry_server imports only conesreg.artifact")
    entries = set().union(*_layers())
    # Every layer but the artifact (the mini model's modules as their package): a module missing
    # here would be importable by the server without the contract noticing.
    expected = {e for e in entries if not e.startswith("conesreg.mini.")} | {"conesreg.mini"}
    assert set(contract["forbidden_modules"]) == expected - {"conesreg.artifact"}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("conesreg", "registry_server", exclude_type_checking_imports=True)


def test_no_module_imports_the_package_facade(graph: grimp.ImportGraph) -> None:
    # The facade's lazy table imports everything: importing it from inside is a cycle waiting to
    # happen and hides the real dependency.
    importers = sorted(
        m for m in graph.modules if "conesreg" in graph.find_modules_directly_imported_by(m)
    )
    assert importers == []
