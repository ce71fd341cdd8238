"""Writes a diffusers UNet's weights under the original LDM (CompVis) key names.

This is the test oracle for conesreg's reading of single-file checkpoints: it goes the other way
(diffusers -> LDM), walking the UNet's block structure, and the tests check its output against
diffusers' own single-file loader before trusting it. Only ``UNet2DConditionModel`` layouts of
SD 1.x / 2.x / XL are covered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: The key prefix of the UNet in an LDM single-file checkpoint.
LDM_UNET_PREFIX = "model.diffusion_model."

#: Diffusers -> LDM names of a ResnetBlock2D's layers.
_RESNET_LAYERS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
#: Layers outside the down/mid/up blocks.
_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_BLOCK_RE = re.compile(
    r"(?P<kind>down_blocks|up_blocks)\.(?P<i>\d+)\.(?P<part>resnets|attentions|downsamplers|upsamplers)"
    r"\.(?P<j>\d+)\.(?P<rest>.+)"
)
_MID_RE = re.compile(r"mid_block\.(?P<part>resnets|attentions)\.(?P<j>\d+)\.(?P<rest>.+)")


def _resnet(rest: str) -> str:
    layer, _, param = rest.rpartition(".")
    return f"{_RESNET_LAYERS[layer]}.{param}"


def ldm_name(name: str, config: Mapping[str, Any]) -> str:
    """The LDM name (without ``model.diffusion_model.``) of a diffusers UNet weight name."""
    per_level = config["layers_per_block"] + 1  # resnets (+ attentions) and a down/upsampler
    for prefix, new in _TOP_LEVEL.items():
        if name.startswith(prefix + "."):
            return new + name[len(prefix) :]
    if m := _MID_RE.fullmatch(name):
        j, rest = int(m["j"]), m["rest"]
        if m["part"] == "attentions":
            return f"middle_block.{2 * j + 1}.{rest}"
        return f"middle_block.{2 * j}.{_resnet(rest)}"
    m = _BLOCK_RE.fullmatch(name)
    if m is None:
        raise ValueError(f"no LDM name for {name!r}")
    i, j, part, rest = int(m["i"]), int(m["j"]), m["part"], m["rest"]
    if m["kind"] == "down_blocks":
        # input_blocks.0 is conv_in; each level then has its resnet(+attention) slots and
        # (except the last) one slot for the downsampler.
        if part == "downsamplers":
            return f"input_blocks.{1 + i * per_level + per_level - 1}.0.op.{rest.split('.')[-1]}"
        n = 1 + i * per_level + j
        return (
            f"input_blocks.{n}.0.{_resnet(rest)}"
            if part == "resnets"
            else f"input_blocks.{n}.1.{rest}"
        )
    # Up levels have one more resnet than down levels, and the upsampler shares the last slot,
    # after the attention if the level has one.
    if part == "upsamplers":
        has_attention = "CrossAttn" in config["up_block_types"][i]
        return f"output_blocks.{i * per_level + per_level - 1}.{2 if has_attention else 1}.{rest}"
    n = i * per_level + j
    return (
        f"output_blocks.{n}.0.{_resnet(rest)}"
        if part == "resnets"
        else f"output_blocks.{n}.1.{rest}"
    )


def to_ldm(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (a diffusers UNet state dict) under ``model.diffusion_model.*`` LDM names."""
    return {LDM_UNET_PREFIX + ldm_name(name, config): value for name, value in state.items()}
