"""Shared pytest fixtures.

The tiny pipeline is built in code (:mod:`conesreg.testing`), so no test needs a download.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from registry_server.testing import S3, Postgres


@pytest.fixture
def pipe() -> StableDiffusionPipeline:
    """A fresh tiny pipeline (seed 0) of the test's own, free to change."""
    from conesreg.testing import make_tiny_pipeline

    return make_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_pipeline() -> StableDiffusionPipeline:
    """A tiny random Stable Diffusion pipeline (float32, CPU), built once per test session.

    It is shared by every test, so it must never be modified: a test that changes weights,
    dtype or device works on ``copy.deepcopy(tiny_pipeline.unet)`` (or of the whole pipeline) or
    builds its own with :func:`conesreg.testing.make_tiny_pipeline`, which gives the same
    weights for the same seed.
    """
    # Imported here: diffusers takes seconds to import, which tests without a model should not pay.
    from conesreg.testing import make_tiny_pipeline

    return make_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(
    tiny_pipeline: StableDiffusionPipeline, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``tiny_pipeline`` saved with ``save_pretrained`` (safetensors, float32) to a folder.

    Shared by every test: treat it as read-only, and copy it (``shutil.copytree``) to change it.
    """
    folder = tmp_path_factory.mktemp("tiny-pipeline")
    tiny_pipeline.save_pretrained(folder)
    return folder


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache, the embedded registry and the config file into ``tmp_path`` (for this
    process and for CLI subprocesses) and run the test inside ``tmp_path/project``."""
    from conesreg import constants

    paths = {
        "CACHE_DIR": ("CONESREG_CACHE_DIR", tmp_path / "cache"),
        "REGISTRY_DIR": ("CONESREG_REGISTRY_DIR", tmp_path / "registry"),
        "CONFIG_FILE": ("CONESREG_CONFIG", tmp_path / "config.toml"),
    }
    for attr, (env, value) in paths.items():
        monkeypatch.setattr(constants, attr, value)
        monkeypatch.setenv(env, str(value))
    monkeypatch.setattr(constants, "OFFLINE", False)
    monkeypatch.delenv("CONESREG_OFFLINE", raising=False)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return tmp_path


# -- the server's databases ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for the session (Debian's postgresql package; .ci/run installs it).

    Skipped where it is not installed, unless CONESREG_REQUIRE_POSTGRES=1 (CI), where that is a
    failure.
    """
    from registry_server.testing import postgres_bin, running_postgres

    if postgres_bin() is None:
        if os.environ.get("CONESREG_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with running_postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """An S3 protocol server on loopback for the session (moto's server mode)."""
    from registry_server.testing import running_s3

    with running_s3() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str | None:
    """The server's database URL, for tests that must hold on both: None (SQLite in the data
    folder, the default) or a new, empty PostgreSQL database."""
    if request.param == "sqlite":
        return None
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.create_database()


@pytest.fixture(params=["sqlite+files", "postgresql+s3"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings of the server's two deployments, for tests that must hold on both: the default
    (SQLite and a blob folder in the data folder, so no setting) and the scaled-out one (a new
    PostgreSQL database and a new S3 bucket; boto3's AWS variables set for this process)."""
    if request.param == "sqlite+files":
        return {}
    pg: Postgres = request.getfixturevalue("postgres")
    store: S3 = request.getfixturevalue("s3")
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    return {"database_url": pg.create_database(), "blobs": store.create_bucket()}
