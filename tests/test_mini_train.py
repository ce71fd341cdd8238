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
