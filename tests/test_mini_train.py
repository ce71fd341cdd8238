"""The mini model's training script runs end to end, resumes, and exports a loadable pipeline."""

from __future__ import annotations

import json
from pathlib import Path

from conesreg.mini.train import main


def test_train_resume_and_export(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "pipe"
    common = [
        "--workdir",
        str(work),
        "--images",
        "64",
        "--vae-batch",
        "4",
        "--unet-batch",
        "4",
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    main([*common, "--stage", "data"])
    main([*common, "--stage", "vae", "--vae-steps", "2"])
    main([*common, "--stage", "vae", "--vae-steps", "3"])  # resumes at step 2
    main([*common, "--stage", "encode"])
    main([*common, "--stage", "unet", "--unet-steps", "2"])
    main([*common, "--stage", "export", "--vae-steps", "3", "--unet-steps", "2"])
    steps = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if s["stage"] == "vae"] == [2, 3]
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the encoded latents
    card = (out / "README.md").read_text()
    assert "python -m conesreg.mini.train --workdir" in card and "--stage" not in card


def test_wider_text_encoder_reusing_a_vae(tmp_path: Path) -> None:
    """A second model (``--text-width``) can keep the shipped autoencoder (``--vae-from``), so
    the two differ in their text encoder only; a second run resumes instead of failing."""
    import torch

    from conesreg.mini.model import WEIGHTS_DIR

    work, out = tmp_path / "work", tmp_path / "pipe"
    args = [
        *("--workdir", str(work), "--images", "16", "--unet-batch", "2", "--unet-steps", "1"),
        *("--out", str(out), "--threads", "1", "--text-width", "96"),
        *("--vae-from", str(WEIGHTS_DIR)),
    ]
    main(args)
    main(args)  # everything done: every stage returns at once
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [e.get("reused") for e in log if e["stage"] == "vae"] == [str(WEIGHTS_DIR / "vae")]
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    assert pipe.text_encoder.config.hidden_size == 96
    assert pipe.unet.config.cross_attention_dim == 96
    shipped = AutoencoderKL.from_pretrained(WEIGHTS_DIR / "vae")
    for name, p in shipped.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[name].float(), p.float()), name
