"""The bundled mini model: shipped in the SD format, loads offline, follows its prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conesreg.mini.model import MODEL_ID, load_mini_pipeline, mini_model_path


def test_shipped_as_fp16_safetensors_within_budget() -> None:
    root = mini_model_path()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 1024 * 1024
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".ckpt", ".pth"}]
    from safetensors import safe_open

    for p in weights:
        with safe_open(p, framework="pt") as f:
            assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys())  # noqa: SIM118
    sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert sched["clip_sample"] is False
    card = (root / "README.md").read_text()
    assert "python -m conesreg.mini.train" in card and "<!-- figures -->" in card


def test_loads_with_plain_diffusers_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_pretrained(str(mini_model_path()), local_files_only=True)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    # The card's call, run: every part in one dtype (the text encoder's config says float32;
    # the files stay float16).
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a star", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    torch.set_flush_denormal(True)
    return load_mini_pipeline()


def test_follows_prompts(pipe) -> None:  # type: ignore[no-untyped-def]
    from conesreg.mini.classifier import load_classifier, predict

    prompts = {
        "a photo of a large plain red square in the center on a gray background": (
            "square",
            "red",
            "plain",
            "gray",
        ),
        "a photo of a large striped blue circle in the center on a black background": (
            "circle",
            "blue",
            "stripes",
            "black",
        ),
    }
    clf = load_classifier()
    for prompt, (shape, color, pattern, bg) in prompts.items():
        out = pipe(
            [prompt] * 4,
            num_inference_steps=20,
            guidance_scale=5.0,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        )
        preds = predict(clf, (out.images * 255).round().astype(np.uint8))
        right = [
            p["background"] == bg
            and any(
                (o["shape"], o["color"], o["pattern"]) == (shape, color, pattern)
                for o in p["objects"]
            )
            for p in preds
        ]
        assert sum(right) >= 3, (prompt, preds)


def test_default_base_of_generate(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conesreg._generate import read_png_metadata
    from conesreg.cli import main

    out = isolated / "img.png"
    code = main(
        ["generate", "a photo of a red star", "--steps", "5", "-o", str(out), "--device", "cpu"]
    )
    assert code == 0, capsys.readouterr().err
    meta = read_png_metadata(out)
    assert meta["base_model"].endswith("pipeline") and meta["size"] == "64x64"
    assert MODEL_ID == "conesreg/mini"
