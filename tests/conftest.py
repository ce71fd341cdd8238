"""Shared pytest fixtures.

The tiny pipeline is built in code (:mod:`conesreg.testing`), so no test needs a download.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


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
