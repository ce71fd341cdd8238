"""What a diffusers UNet is trained to predict, read from its scheduler's config."""

from __future__ import annotations

from typing import Any


def denoising_target(scheduler: Any, sample: Any, noise: Any, timesteps: Any) -> Any:
    """The UNet's regression target for ``scheduler.add_noise(sample, noise, timesteps)``: the
    noise for epsilon-prediction models, the velocity for v-prediction ones (SD 2.x 768, the
    mini model), as diffusers' training scripts compute it.

    Example:
        >>> target = denoising_target(sched, z0, noise, t)  # doctest: +SKIP
    """
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(sample, noise, timesteps)
    return noise
