"""The CPU thread count of generating and finding: one rule, overridable, restored after."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conesreg import constants
from conesreg._threads import cpu_threads, cpu_threads_for


class _Big(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # On the meta device: counted, never allocated.
        self.w = torch.nn.Parameter(torch.empty(constants.SMALL_UNET_PARAMS, device="meta"))


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "THREADS", None)
    monkeypatch.setattr(constants, "OMP_THREADS_SET", False)


def test_small_models_on_small_batches_get_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    small = torch.nn.Linear(4, 4)
    assert cpu_threads_for(small, batch=1) == 1
    assert cpu_threads_for(small, batch=constants.SMALL_BATCH) == 1
    assert cpu_threads_for(small, batch=constants.SMALL_BATCH + 1) is None
    assert cpu_threads_for(_Big(), batch=1) is None  # a large UNet keeps torch's count
    gpu = SimpleNamespace(device=torch.device("cuda"), parameters=lambda: iter(()))
    assert cpu_threads_for(gpu, batch=1) is None  # not CPU work
    monkeypatch.setattr(constants, "OMP_THREADS_SET", True)
    assert cpu_threads_for(small, batch=1) is None  # OMP_NUM_THREADS chose: torch read it
    monkeypatch.setattr(constants, "THREADS", 3)
    assert cpu_threads_for(_Big(), batch=64) == 3  # CONESREG_THREADS wins over everything


def test_the_count_is_restored_after_the_block() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with cpu_threads(torch.nn.Linear(4, 4), batch=1) as n:
            assert n == torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), cpu_threads(torch.nn.Linear(4, 4), batch=1):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_generate_runs_the_tiny_pipeline_on_one_thread() -> None:
    from conesreg import generate
    from conesreg.testing import make_tiny_pipeline

    pipe = make_tiny_pipeline()
    seen: list[int] = []
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        generate(
            pipe,
            "a photo of a dog",
            steps=2,
            on_step=lambda *_: seen.append(torch.get_num_threads()),
        )
        assert seen == [1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_thread_settings_are_read_from_the_environment() -> None:
    """Read once, at import, as every setting (a new process sees the variables)."""
    import os
    import subprocess
    import sys

    code = "from conesreg import constants as c; print(c.THREADS, c.OMP_THREADS_SET)"
    for env, expected in (
        ({"CONESREG_THREADS": "3"}, "3 False"),
        ({"CONESREG_THREADS": "", "OMP_NUM_THREADS": "2"}, "None True"),
        ({}, "None False"),
    ):
        clean = {
            k: v for k, v in os.environ.items() if k not in ("CONESREG_THREADS", "OMP_NUM_THREADS")
        }
        out = subprocess.run(
            [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
        )
        assert out.stdout.strip() == expected, (env, out.stderr)
