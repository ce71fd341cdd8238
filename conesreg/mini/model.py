"""The bundled mini model: a tiny Stable Diffusion in the exact diffusers format.

Components (configs below): ``AutoencoderKL`` (64x64 RGB <-> 8x8x4 latents), a
``UNet2DConditionModel`` with cross-attention, a ``CLIPTextModel`` and a ``CLIPTokenizer`` over the
mini world's words, and a DDIM scheduler. ``conesreg.mini.train`` trains them from scratch; the
fp16 weights ship inside the package and load with the ordinary
``StableDiffusionPipeline.from_pretrained(mini_model_path())``, offline.

Example:
    >>> pipe = load_mini_pipeline()  # doctest: +SKIP
    >>> image = pipe("a photo of a striped red star on a gray background").images[0]
    ... # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .world import WORDS

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

IMAGE_SIZE = 64
LATENT_SIZE = 8
LATENT_CHANNELS = 4
TEXT_WIDTH = 64
MAX_TOKENS = 64
#: The shipped pipeline folder (``model_index.json`` and one folder per component).
WEIGHTS_DIR = Path(__file__).parent / "weights" / "pipeline"
#: What concepts record as ``base_model.id`` for the mini model.
MODEL_ID = "conesreg/mini"


def mini_model_path() -> Path:
    """The folder of the bundled mini pipeline.

    Raises:
        FileNotFoundError: the package was built without the weights.
    """
    if not (WEIGHTS_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the bundled mini model is missing from {WEIGHTS_DIR}; "
            "train it with `python -m conesreg.mini.train`"
        )
    return WEIGHTS_DIR


def vae_config() -> dict[str, Any]:
    """64x64 RGB -> 8x8x4: three downsamplings, narrow at full resolution (CPU budget)."""
    return {
        "sample_size": IMAGE_SIZE,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": LATENT_CHANNELS,
        "block_out_channels": (16, 32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "norm_num_groups": 16,
    }


def unet_config(*, text_width: int = TEXT_WIDTH) -> dict[str, Any]:
    """Cross-attention at 8x8 and 4x4 and in the middle: the concept neurons' candidates.

    ``text_width`` is the text encoder's (a wider one tests how much the 64-wide encoder limits
    concepts; docs/design.md)."""
    return {
        "sample_size": LATENT_SIZE,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "block_out_channels": (64, 96, 128),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": text_width,
        # Read by diffusers as the number of heads for SD 1.x-style configs.
        "attention_head_dim": 4,
        "norm_num_groups": 16,
    }


def text_encoder_config(tokenizer: Any, *, text_width: int = TEXT_WIDTH) -> dict[str, Any]:
    return {
        "hidden_size": text_width,
        "intermediate_size": 2 * text_width,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_TOKENS,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
    }


def scheduler_config() -> dict[str, Any]:
    """SD's noise schedule rescaled to zero terminal SNR, with v-prediction and trailing steps.

    With SD's own schedule the noisiest training step keeps 7% of the image; on 8x8 latents the
    denoiser learns to read the layout from that remnant (and ignores "at the top left"), then
    at sampling time reads a layout into pure noise. At zero terminal SNR the first step has
    only the caption to go on (Lin et al. 2023, "Common diffusion noise schedules and sample
    steps are flawed"); epsilon is undefined there, hence v. ``clip_sample=False``: latents are
    not in [-1, 1], and clipping them ruins every sample.
    """
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "v_prediction",
    }


def make_tokenizer() -> Any:
    """The mini world's tokenizer: each world word is one token."""
    from .._tokenizer import make_word_tokenizer

    return make_word_tokenizer(WORDS, max_length=MAX_TOKENS)


def build_components(*, seed: int = 0, text_width: int = TEXT_WIDTH) -> dict[str, Any]:
    """Freshly initialised components (seeded), as training starts from them."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = make_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_config())
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(**unet_config(text_width=text_width))
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(**text_encoder_config(tokenizer, text_width=text_width))
        )
    return {
        "vae": vae,
        "unet": unet,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": DDIMScheduler(**scheduler_config()),
    }


def assemble(components: dict[str, Any]) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` from components (no safety checker: synthetic shapes)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_mini_pipeline(
    *, device: str = "cpu", dtype: Any = None, path: Path | None = None
) -> StableDiffusionPipeline:
    """The bundled mini pipeline, ready to generate (float32 on CPU by default).

    Args:
        path: another export of ``conesreg.mini.train`` to load instead (a candidate model).

    Example:
        >>> pipe = load_mini_pipeline()  # doctest: +SKIP
    """
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        path or mini_model_path(), torch_dtype=dtype or torch.float32, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
