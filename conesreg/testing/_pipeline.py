"""A tiny, randomly initialised Stable Diffusion pipeline, built entirely in code.

This is for tests and benchmarks only: the weights are random (seeded, so deterministic) and the
images it makes have no meaning. What it does have is the real structure of a Stable Diffusion
1.x pipeline -- a ``UNet2DConditionModel`` with cross-attention (``attn2.to_k`` / ``attn2.to_v``)
layers, an ``AutoencoderKL``, a CLIP text encoder and tokenizer, and a DDIM scheduler -- so that
code which finds, hashes, saves, loads and applies concept neurons can run against it on a CPU in
well under a second, with no download (the tokenizer's vocabulary is generated here too).

Example:
    >>> import torch
    >>> from conesreg.testing import make_tiny_pipeline
    >>> pipe = make_tiny_pipeline(seed=0)
    >>> out = pipe("a photo of a dog", num_inference_steps=2, height=32, width=32,
    ...            output_type="np", generator=torch.Generator().manual_seed(0))
    >>> out.images.shape
    (1, 32, 32, 3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

__all__ = [
    "SD15_UNET_CONFIG",
    "TINY_WORDS",
    "make_sd15_shaped_pipeline",
    "make_tiny_pipeline",
    "make_tiny_tokenizer",
    "tiny_text_encoder_config",
    "tiny_unet_config",
    "tiny_vae_config",
]

#: Words that the tiny tokenizer knows as whole tokens. Any other text still tokenizes (every
#: byte is in the vocabulary), just into smaller pieces.
TINY_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "by", "photo", "picture",
    "painting", "portrait", "drawing", "style", "dog", "cat", "man", "woman", "person", "car",
    "house", "tree", "flower", "mountain", "beach", "city", "red", "blue", "green", "yellow",
    "black", "white", "small", "big", "cute", "sks", "high", "quality", "detailed",
)  # fmt: skip

#: CLIP pads/truncates prompts to 77 tokens; the text encoder needs as many positions.
_MAX_LENGTH = 77
_LATENT_CHANNELS = 4
#: Both the UNet and the VAE have two resolution levels; the VAE therefore downsamples by 2,
#: which is what makes ``sample_size=16`` latents correspond to 32x32 images.
_BLOCK_OUT_CHANNELS = (32, 64)


def tiny_unet_config(*, cross_attention_dim: int = 32, sample_size: int = 16) -> dict[str, Any]:
    """The config of the tiny ``UNet2DConditionModel``.

    Cross-attention sits at the high-resolution level and in the middle block, as in SD 1.x, so
    the UNet has ``attn2.to_k.weight`` / ``attn2.to_v.weight`` parameters in its down, mid and up
    blocks (the default targets of the base-model hash).

    Args:
        cross_attention_dim (`int`, *optional*, defaults to 32):
            Width of the text embeddings the UNet attends to (the text encoder's hidden size).
        sample_size (`int`, *optional*, defaults to 16):
            Default latent height and width.

    Returns:
        `dict[str, Any]`: keyword arguments for ``diffusers.UNet2DConditionModel``.

    Example:
        >>> from diffusers import UNet2DConditionModel
        >>> unet = UNet2DConditionModel(**tiny_unet_config())
    """
    return {
        "sample_size": sample_size,
        "in_channels": _LATENT_CHANNELS,
        "out_channels": _LATENT_CHANNELS,
        "block_out_channels": _BLOCK_OUT_CHANNELS,
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": cross_attention_dim,
        # Diffusers reads this as the number of heads for SD 1.x-style configs: 4 heads of 8
        # (32 channels) and of 16 (64 channels).
        "attention_head_dim": 4,
        # GroupNorm needs the channel counts to be multiples of the group count.
        "norm_num_groups": 32,
    }


def tiny_vae_config(*, sample_size: int = 32) -> dict[str, Any]:
    """The config of the tiny ``AutoencoderKL`` (downsamples images by 2).

    Args:
        sample_size (`int`, *optional*, defaults to 32):
            Default image height and width.

    Returns:
        `dict[str, Any]`: keyword arguments for ``diffusers.AutoencoderKL``.
    """
    return {
        "sample_size": sample_size,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": _LATENT_CHANNELS,
        "block_out_channels": _BLOCK_OUT_CHANNELS,
        "layers_per_block": 1,
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "norm_num_groups": 32,
    }


def tiny_text_encoder_config(
    *, hidden_size: int = 32, vocab_size: int, bos_token_id: int, eos_token_id: int
) -> dict[str, Any]:
    """The config of the tiny ``CLIPTextModel``.

    Args:
        hidden_size (`int`, *optional*, defaults to 32):
            Width of the text embeddings; must equal the UNet's ``cross_attention_dim``.
        vocab_size (`int`):
            Size of the tokenizer's vocabulary (``len(tokenizer)``).
        bos_token_id (`int`):
            Id of ``<|startoftext|>``.
        eos_token_id (`int`):
            Id of ``<|endoftext|>`` (also the padding id).

    Returns:
        `dict[str, Any]`: keyword arguments for ``transformers.CLIPTextConfig``.
    """
    # The largest small head count that divides the width, so any width works.
    heads = next(h for h in (4, 2, 1) if hidden_size % h == 0)
    return {
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "max_position_embeddings": _MAX_LENGTH,
        "vocab_size": vocab_size,
        "bos_token_id": bos_token_id,
        # The real id (not the legacy 2) makes CLIP pool at the first <|endoftext|>, like CLIP.
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
    }


def make_tiny_tokenizer(*, words: tuple[str, ...] = TINY_WORDS) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` over a small byte-level BPE vocabulary generated in code.

    Args:
        words (`tuple[str, ...]`, *optional*, defaults to `TINY_WORDS`):
            Lowercase words that tokenize as a single token each.

    Returns:
        `CLIPTokenizer`: pads and truncates to 77 tokens, like CLIP.

    Example:
        >>> tok = make_tiny_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("a photo of a dog").input_ids)
        ['<|startoftext|>', 'a</w>', 'photo</w>', 'of</w>', 'a</w>', 'dog</w>', '<|endoftext|>']
    """
    from .._tokenizer import make_word_tokenizer

    return make_word_tokenizer(words, max_length=_MAX_LENGTH)


def make_tiny_pipeline(
    *, seed: int = 0, cross_attention_dim: int = 32, sample_size: int = 16
) -> StableDiffusionPipeline:
    """A real ``StableDiffusionPipeline`` with tiny, randomly initialised components.

    The same arguments always give the same weights, and the caller's global torch RNG state is
    left untouched. Runs end to end on a CPU in a fraction of a second, and round-trips through
    ``save_pretrained`` / ``from_pretrained`` without a network.

    Args:
        seed (`int`, *optional*, defaults to 0):
            Seeds the random weights of every component.
        cross_attention_dim (`int`, *optional*, defaults to 32):
            Width of the text embeddings, shared by the text encoder and the UNet's cross-attention.
        sample_size (`int`, *optional*, defaults to 16):
            Latent size; the default image size is twice this (the VAE downsamples by 2).

    Returns:
        `StableDiffusionPipeline`: in float32 on the CPU, with no safety checker and the progress
        bar turned off.

    Example:
        >>> import torch
        >>> pipe = make_tiny_pipeline()
        >>> image = pipe("a photo of a dog", num_inference_steps=2, output_type="np",
        ...              generator=torch.Generator().manual_seed(0)).images[0]
        >>> image.shape
        (32, 32, 3)
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = make_tiny_tokenizer()
    text_config = CLIPTextConfig(
        **tiny_text_encoder_config(
            hidden_size=cross_attention_dim,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )

    # fork_rng: seeding must not change the random stream of the test or benchmark calling us.
    # Each component gets its own seed so that its weights do not depend on the others' sizes.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            **tiny_unet_config(cross_attention_dim=cross_attention_dim, sample_size=sample_size)
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**tiny_vae_config(sample_size=2 * sample_size))
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(text_config)

    # The usual SD 1.x noise schedule; steps_offset=1 avoids diffusers' deprecation warning.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: The UNet of Stable Diffusion 1.x (860M parameters, 768-wide cross-attention), as diffusers
#: configures it: what the benchmarks measure "at SD scale" with random weights.
SD15_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)


def make_sd15_shaped_pipeline(*, seed: int = 0) -> StableDiffusionPipeline:
    """A pipeline whose UNet has Stable Diffusion 1.5's shape, with random weights.

    The UNet is SD 1.5's (:data:`SD15_UNET_CONFIG`); the text encoder is 768 wide as SD's, but
    only 2 layers deep, and the VAE is the tiny one (it downsamples by 2: 128x128 pixels are
    SD's 64x64 latents of a 512x512 image). For measuring what scales with the UNet (finder
    steps, composing, hashing) where no weights can be downloaded.

    Args:
        seed (`int`, *optional*, defaults to 0): seeds every component's weights.

    Returns:
        `StableDiffusionPipeline`: float32 on the CPU (3.4 GB), progress bar off.

    Example:
        >>> pipe = make_sd15_shaped_pipeline()  # doctest: +SKIP
        >>> sum(p.numel() for p in pipe.unet.parameters()) // 10**6  # doctest: +SKIP
        859
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = make_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**tiny_vae_config())
        torch.manual_seed(seed + 2)
        text = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=1024,
                num_hidden_layers=2,
                num_attention_heads=12,
                max_position_embeddings=_MAX_LENGTH,
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
