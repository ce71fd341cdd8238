"""Tests of the base-model hash (conesreg._base_hash) and the tiny pipeline it is tested on.

The session-wide ``tiny_pipeline`` is never modified here: tests that change weights, dtype or
device work on a deepcopy of its UNet.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from ldm_convert import to_ldm
from safetensors import safe_open
from safetensors.torch import save_file

from conesreg import _base_hash
from conesreg._base_hash import base_model_hash, clear_cache, default_targets, target_shapes
from conesreg.errors import BaseModelMismatchError, StorageError
from conesreg.testing import make_tiny_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The hash of the two small tensors in test_hash_follows_the_documented_byte_layout.
PINNED_LAYOUT_HASH = "sha256:b4559eabeea848375d6ea327d6001e973df72350015b28c976b52bd6af1a411a"
HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TO_Q = "mid_block.attentions.0.transformer_blocks.0.attn2.to_q.weight"


@pytest.fixture
def unet(tiny_pipeline: StableDiffusionPipeline) -> UNet2DConditionModel:
    """A private, modifiable copy of the tiny UNet."""
    return copy.deepcopy(tiny_pipeline.unet)


@pytest.fixture(scope="module")
def reference_hash(tiny_pipeline: StableDiffusionPipeline) -> str:
    return base_model_hash(tiny_pipeline)


@pytest.fixture
def count_digests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts how often the hash is actually computed (rather than served from the cache)."""
    calls = [0]
    original = _base_hash._digest

    def counting(*args: Any, **kwargs: Any) -> str:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(_base_hash, "_digest", counting)
    return calls


def _target(unet: torch.nn.Module, suffix: str = "attn2.to_k.weight") -> torch.nn.Parameter:
    name = next(n for n in default_targets(dict(unet.named_parameters())) if n.endswith(suffix))
    return dict(unet.named_parameters())[name]


def _nudge(param: torch.Tensor, index: int) -> None:
    """Changes one element in place by an amount that float16 rounding keeps."""
    with torch.no_grad():
        old = param.view(-1)[index].item()
        new = old + abs(old) * 0.01 + 1e-3
        assert torch.tensor(old).half() != torch.tensor(new).half()
        param.view(-1)[index] = new


# --- default targets -------------------------------------------------------------------------


def test_default_targets_picks_cross_attention_key_and_value_sorted() -> None:
    names = [
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight",  # self-attention
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.bias",
        "down_blocks.0.attentions.0.transformer_blocks.0.xattn2.to_k.weight",  # other component
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",  # duplicate
    ]
    assert default_targets(iter(names)) == [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight",
    ]
    assert default_targets([]) == []


def test_tiny_unet_has_targets_in_down_mid_and_up_blocks(
    tiny_pipeline: StableDiffusionPipeline,
) -> None:
    targets = default_targets(dict(tiny_pipeline.unet.named_parameters()))
    assert len(targets) == 8
    assert {t.split(".")[0] for t in targets} == {"down_blocks", "mid_block", "up_blocks"}


# --- the definition ------------------------------------------------------------------------------


def _spec_hash(tensors: dict[str, torch.Tensor]) -> str:
    """The hash as the module docstring defines it, written independently of the module."""
    h = hashlib.sha256(b"conesreg-base-model-hash/1\n")
    for name in sorted(tensors):
        raw = name.encode()
        shape = tuple(tensors[name].shape)
        h.update(struct.pack("<Q", len(raw)) + raw)
        h.update(struct.pack("<Q", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape))
        h.update(tensors[name].to(torch.float16).numpy().astype("<f2").tobytes())
    return "sha256:" + h.hexdigest()


def test_hash_follows_the_documented_byte_layout() -> None:
    tensors = {
        "b.attn2.to_v.weight": torch.linspace(-1, 1, 12).reshape(3, 4),
        "a.attn2.to_k.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7,
    }
    digest = base_model_hash(tensors)
    assert HASH_RE.match(digest)
    assert digest == _spec_hash(tensors)
    # Pinned, so that a change of the layout (which would orphan every published concept) is
    # never accidental: a new layout needs a new tag in _HASH_TAG.
    assert digest == PINNED_LAYOUT_HASH


def test_names_and_shapes_are_framed() -> None:
    data = torch.arange(24, dtype=torch.float32)
    as_4x6 = base_model_hash({"x.attn2.to_k.weight": data.reshape(4, 6)})
    assert as_4x6 != base_model_hash({"x.attn2.to_k.weight": data.reshape(6, 4)})
    assert as_4x6 != base_model_hash({"x.attn2.to_k.weight": data})
    assert as_4x6 != base_model_hash({"y.attn2.to_k.weight": data.reshape(4, 6)})
    # Moving data from one tensor to the next keeps the concatenated bytes but not the hash.
    split_a = {"a.attn2.to_k.weight": data[:10], "b.attn2.to_k.weight": data[10:]}
    split_b = {"a.attn2.to_k.weight": data[:11], "b.attn2.to_k.weight": data[11:]}
    assert base_model_hash(split_a) != base_model_hash(split_b)


def test_chunked_hashing_gives_the_same_hash(
    unet: UNet2DConditionModel, reference_hash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_base_hash, "_CHUNK_ELEMENTS", 7)
    assert base_model_hash(unet.state_dict()) == reference_hash


def test_hash_format(reference_hash: str) -> None:
    assert HASH_RE.match(reference_hash)


# --- the same weights in every form --------------------------------------------------------------


def test_every_form_of_the_same_weights_hashes_the_same(
    tiny_pipeline: StableDiffusionPipeline,
    tiny_pipeline_dir: Path,
    reference_hash: str,
    tmp_path: Path,
) -> None:
    state = tiny_pipeline.unet.state_dict()
    plain = tmp_path / "unet.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, plain)
    # A whole-pipeline file in diffusers naming: the other components' keys are ignored.
    prefixed = tmp_path / "pipeline.safetensors"
    whole = {f"unet.{k}": v.contiguous() for k, v in state.items()}
    whole["text_encoder.text_model.final_layer_norm.weight"] = torch.ones(32)
    save_file(whole, prefixed)

    forms: dict[str, object] = {
        "pipeline": tiny_pipeline,
        "unet": tiny_pipeline.unet,
        "state dict": state,
        "prefixed state dict": whole,
        "pipeline folder (str)": str(tiny_pipeline_dir),
        "pipeline folder (Path)": tiny_pipeline_dir,
        "unet folder": tiny_pipeline_dir / "unet",
        "single file": plain,
        "single file with unet. prefix": prefixed,
        "reloaded pipeline": StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir),
    }
    assert {name: base_model_hash(m) for name, m in forms.items()} == dict.fromkeys(
        forms, reference_hash
    )
    shapes = {n: tuple(p.shape) for n, p in tiny_pipeline.unet.named_parameters()}
    expected = {n: shapes[n] for n in default_targets(shapes)}
    for name, m in forms.items():
        assert target_shapes(m) == expected, name


def test_float16_module_hashes_like_float32(
    unet: UNet2DConditionModel, reference_hash: str
) -> None:
    assert base_model_hash(unet.half()) == reference_hash


# diffusers 0.42 renamed torch_dtype to dtype; only the old name works in every supported version.
@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")
def test_float16_folders_hash_like_float32(
    tiny_pipeline_dir: Path, reference_hash: str, tmp_path: Path
) -> None:
    loaded = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.float16)
    assert loaded.unet.dtype == torch.float16
    assert base_model_hash(loaded) == reference_hash

    # A folder with only the fp16 variant (diffusion_pytorch_model.fp16.safetensors).
    loaded.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16/unet/diffusion_pytorch_model.fp16.safetensors").is_file()
    assert base_model_hash(tmp_path / "fp16") == reference_hash

    # A sharded fp16 UNet folder (diffusion_pytorch_model.safetensors.index.fp16.json).
    loaded.unet.save_pretrained(tmp_path / "sharded", variant="fp16", max_shard_size="200KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert list((tmp_path / "sharded").glob("*.index.fp16.json"))
    assert base_model_hash(tmp_path / "sharded") == reference_hash


def test_sharded_float32_folder(
    tiny_pipeline: StableDiffusionPipeline, reference_hash: str, tmp_path: Path
) -> None:
    tiny_pipeline.unet.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert base_model_hash(tmp_path) == reference_hash
    assert target_shapes(tmp_path) == target_shapes(tiny_pipeline)


def test_folder_hashing_imports_neither_diffusers_nor_the_model(tiny_pipeline_dir: Path) -> None:
    code = (
        "import sys; from conesreg._base_hash import base_model_hash; "
        f"print(base_model_hash({str(tiny_pipeline_dir)!r})); "
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules"
    )
    out = _run_python(code)
    assert HASH_RE.match(out.strip())


# --- original (LDM) single-file checkpoints ----------------------------------------------------

#: The layout-defining entries of the SD 1.5 and SDXL base UNet configs (other entries keep
#: diffusers' defaults, which change no weight's name): for checking the LDM key mapping on
#: full-size layouts (layers_per_block=2, several levels, up to 10 transformer blocks) without
#: materialising their weights.
SD15_UNET_CONFIG: dict[str, Any] = {
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
    "sample_size": 64,
}
SDXL_UNET_CONFIG: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
}


def _ldm_checkpoint(unet: UNet2DConditionModel, dtype: torch.dtype = torch.float32) -> dict:
    """The UNet as a whole-model LDM checkpoint, with stand-ins for the other components."""
    state = {k: v.to(dtype).contiguous() for k, v in unet.state_dict().items()}
    checkpoint = to_ldm(state, unet.config)
    checkpoint["first_stage_model.decoder.conv_in.weight"] = torch.ones(4, 4, dtype=dtype)
    checkpoint["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(8)
    # EMA copies are stored under flattened names; diffusers (and conesreg) ignore them.
    checkpoint["model_ema.diffusion_modelmiddle_block1transformer_blocks0attn2to_kweight"] = (
        torch.zeros(2, 2)
    )
    return checkpoint


def test_ldm_test_checkpoint_loads_in_diffusers_as_the_original(
    tiny_pipeline: StableDiffusionPipeline, tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    # The oracle for the tests below: diffusers' own loader must read the LDM file written by
    # tests/ldm_convert.py back into exactly the original weights.
    original = tiny_pipeline.unet.state_dict()
    checkpoint = _ldm_checkpoint(tiny_pipeline.unet)
    converted = convert_ldm_unet_checkpoint(checkpoint, tiny_pipeline.unet.config)
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)

    save_file(checkpoint, tmp_path / "model.safetensors")
    loaded = UNet2DConditionModel.from_single_file(
        tmp_path / "model.safetensors",
        config=str(tiny_pipeline_dir / "unet"),
        local_files_only=True,
    ).state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_ldm_single_file_hashes_like_the_diffusers_forms(
    tiny_pipeline: StableDiffusionPipeline,
    tiny_pipeline_dir: Path,
    reference_hash: str,
    tmp_path: Path,
    dtype: torch.dtype,
) -> None:
    file = tmp_path / "model.safetensors"
    save_file(_ldm_checkpoint(tiny_pipeline.unet, dtype), file)
    assert base_model_hash(file) == base_model_hash(tiny_pipeline_dir) == reference_hash
    # The same diffusers names and shapes, so masks made on either form fit the other.
    assert target_shapes(file) == target_shapes(tiny_pipeline)
    # Explicit targets in diffusers naming work too, within the attention blocks.
    assert base_model_hash(file, targets=[TO_Q]) == base_model_hash(tiny_pipeline, targets=[TO_Q])
    with pytest.raises(BaseModelMismatchError, match="conv_in"):
        base_model_hash(file, targets=["conv_in.weight"])


def test_changed_target_in_an_ldm_file_changes_the_hash(
    tiny_pipeline: StableDiffusionPipeline, reference_hash: str, tmp_path: Path
) -> None:
    config = tiny_pipeline.unet.config
    state = {k: v.clone() for k, v in tiny_pipeline.unet.state_dict().items()}
    for name in (TO_Q, "conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"):
        _nudge(state[name], 0)  # not targets: no change
    save_file(to_ldm(state, config), tmp_path / "others.safetensors")
    assert base_model_hash(tmp_path / "others.safetensors") == reference_hash

    for target in default_targets(state):
        changed = {k: v.clone() for k, v in state.items()}
        _nudge(changed[target], 3)
        file = tmp_path / "changed.safetensors"
        save_file(to_ldm(changed, config), file)
        # Changed, and the same as the diffusers form: the changed tensor has the right name.
        assert base_model_hash(file) != reference_hash, target
        assert base_model_hash(file) == base_model_hash(changed), target


@pytest.mark.parametrize(
    ("config", "n_targets"), [(SD15_UNET_CONFIG, 32), (SDXL_UNET_CONFIG, 140)], ids=["sd15", "sdxl"]
)
def test_ldm_names_of_full_size_unets(
    config: dict[str, Any], n_targets: int, tmp_path: Path
) -> None:
    with torch.device("meta"):  # names and structure only; no weights are allocated
        unet = UNet2DConditionModel(**config)
    names = list(unet.state_dict())
    # The oracle first: diffusers maps the LDM names back to the diffusers ones (the converter
    # passes values through, so each value can simply be the expected name).
    checkpoint = to_ldm({name: name for name in names}, unet.config)
    assert convert_ldm_unet_checkpoint(checkpoint, unet.config) == {n: n for n in names}

    # A file of one distinct scalar per LDM key: the hash sees the right value under each name.
    values = {name: torch.tensor([float(i)]) for i, name in enumerate(names)}
    file = tmp_path / "model.safetensors"
    save_file(to_ldm(values, unet.config), file)
    assert list(target_shapes(file)) == default_targets(names)
    assert len(default_targets(names)) == n_targets
    # Exactly the attention blocks' weights are read, under real names (an upsampler in slot 1
    # of an output block is not taken for an attention).
    with _base_hash._open_path(file) as (available, _tensor, _shape):
        assert sorted(available) == sorted(n for n in names if ".attentions." in n)
    assert base_model_hash(file) == base_model_hash(values)


def test_unmappable_ldm_files_raise(tmp_path: Path) -> None:
    attention = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    file = tmp_path / "model.safetensors"
    save_file({attention: torch.zeros(2, 2)}, file)
    with pytest.raises(StorageError, match="layers per block"):
        base_model_hash(file)
    # With L inferred as 1 (downsampler in input block 2), input block 2 can hold no attention.
    downsampler = "model.diffusion_model.input_blocks.2.0.op.weight"
    save_file(
        {attention.replace(".1.1.", ".2.1."): torch.zeros(2), downsampler: torch.zeros(2)}, file
    )
    with pytest.raises(StorageError, match="downsampler's slot"):
        target_shapes(file)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_checkpoints_are_refused_unread(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "unpickled"
    file = tmp_path / f"model{suffix}"
    file.write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(marker)))
    with pytest.raises(StorageError, match=r"pickle checkpoint.*convert it to \.safetensors"):
        base_model_hash(file)
    with pytest.raises(StorageError, match="pickle checkpoint"):
        target_shapes(file)
    assert not marker.exists()


# --- what changes the hash ---------------------------------------------------------------------


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_any_changed_target_element_changes_the_hash(
    unet: UNet2DConditionModel, reference_hash: str, position: str
) -> None:
    params = dict(unet.named_parameters())
    seen = {reference_hash}
    for name in default_targets(params):
        param = params[name]
        index = {"first": 0, "middle": param.numel() // 2, "last": param.numel() - 1}[position]
        original = param.view(-1)[index].item()
        _nudge(param, index)
        changed = base_model_hash(unet)
        assert changed not in seen, name
        seen.add(changed)
        with torch.no_grad():
            param.view(-1)[index] = original
        assert base_model_hash(unet) == reference_hash


def test_changed_target_in_a_state_dict_or_file_changes_the_hash(
    tiny_pipeline: StableDiffusionPipeline, reference_hash: str, tmp_path: Path
) -> None:
    state = {k: v.clone() for k, v in tiny_pipeline.unet.state_dict().items()}
    target = default_targets(state)[-1]
    _nudge(state[target], 5)
    assert base_model_hash(state) != reference_hash
    save_file(state, tmp_path / "unet.safetensors")
    assert base_model_hash(tmp_path / "unet.safetensors") == base_model_hash(state)


def test_changes_outside_the_targets_do_not_change_the_hash(
    unet: UNet2DConditionModel, reference_hash: str
) -> None:
    params = dict(unet.named_parameters())
    with torch.no_grad():
        params[TO_Q].mul_(2)
        params["conv_in.weight"].zero_()
        params[TO_Q.replace("attn2.to_q.weight", "attn1.to_k.weight")].add_(1)
    assert base_model_hash(unet) == reference_hash


def test_zeroing_neurons_changes_the_hash(unet: UNet2DConditionModel, reference_hash: str) -> None:
    # How concepts are applied: zero a few scalars in place.
    with torch.no_grad():
        _target(unet, "attn2.to_v.weight").view(-1)[[1, 2, 3]] = 0
    assert base_model_hash(unet) != reference_hash


# --- explicit targets ----------------------------------------------------------------------------


def test_explicit_targets_are_sorted_and_deduplicated(
    tiny_pipeline: StableDiffusionPipeline,
) -> None:
    a, b = default_targets(dict(tiny_pipeline.unet.named_parameters()))[:2]
    one = base_model_hash(tiny_pipeline, targets=[b, a, b])
    assert one == base_model_hash(tiny_pipeline, targets=(a, b))
    assert one != base_model_hash(tiny_pipeline)
    assert base_model_hash(tiny_pipeline, targets=[TO_Q]) != one
    assert list(target_shapes(tiny_pipeline, targets=[b, a])) == [a, b]


def test_missing_target_raises_naming_it(
    tiny_pipeline: StableDiffusionPipeline, tiny_pipeline_dir: Path
) -> None:
    for model in (tiny_pipeline, tiny_pipeline.unet.state_dict(), tiny_pipeline_dir):
        with pytest.raises(BaseModelMismatchError, match=r"no weight 'nope\.weight'"):
            base_model_hash(model, targets=[TO_Q, "nope.weight"])
        with pytest.raises(BaseModelMismatchError, match="and 1 more"):
            target_shapes(model, targets=["nope.weight", "zzz.weight"])


def test_model_without_default_targets_raises() -> None:
    with pytest.raises(BaseModelMismatchError, match=r"attn2\.to_k\.weight"):
        base_model_hash(torch.nn.Linear(2, 2))
    with pytest.raises(BaseModelMismatchError):
        base_model_hash({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)})


def test_bad_targets_and_models_raise(tiny_pipeline: StableDiffusionPipeline) -> None:
    with pytest.raises(TypeError, match="single string"):
        base_model_hash(tiny_pipeline, targets=TO_Q)
    with pytest.raises(ValueError, match="at least one"):
        base_model_hash(tiny_pipeline, targets=[])
    with pytest.raises(TypeError, match="got int"):
        base_model_hash(42)


# --- paths that are not UNet weights -------------------------------------------------------------


def test_unreadable_paths_raise_storage_error(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no such file"):
        base_model_hash(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(StorageError, match=r"not a \.safetensors file"):
        base_model_hash(tmp_path / "weights.bin")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(StorageError, match="cannot read"):
        base_model_hash(tmp_path / "broken.safetensors")

    # A pickle-only UNet folder names what it found.
    bin_only = tmp_path / "bin-only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text("{}")
    (bin_only / "diffusion_pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(StorageError, match=r"found diffusion_pytorch_model\.bin"):
        base_model_hash(bin_only)

    # A pipeline without a UNet (e.g. a transformer-based one).
    no_unet = tmp_path / "no-unet"
    no_unet.mkdir()
    (no_unet / "model_index.json").write_text(json.dumps({"_class_name": "X"}))
    with pytest.raises(StorageError, match="no unet/ folder"):
        base_model_hash(no_unet)

    # A shard index that names a missing shard.
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_pipeline_dir / "unet", sharded)
    weights = sharded / "diffusion_pytorch_model.safetensors"
    with safe_open(weights, framework="pt") as f:
        keys = list(f.keys())
    weights.unlink()
    index = {"weight_map": dict.fromkeys(keys, "gone.safetensors")}
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(StorageError, match=r"gone\.safetensors"):
        base_model_hash(sharded)


def test_quantized_weights_raise() -> None:
    with pytest.raises(BaseModelMismatchError, match=r"torch\.int8"):
        base_model_hash({"x.attn2.to_k.weight": torch.zeros(4, dtype=torch.int8)})


def test_tied_weights_are_found_under_every_name() -> None:
    model = torch.nn.ModuleDict({"attn2": torch.nn.ModuleDict({"to_k": torch.nn.Linear(2, 2)})})
    model["attn2"]["to_v"] = model["attn2"]["to_k"]  # one Linear under two names
    assert list(target_shapes(model)) == ["attn2.to_k.weight", "attn2.to_v.weight"]
    assert HASH_RE.match(base_model_hash(model))


def test_meta_tensors_raise_storage_error() -> None:
    with torch.device("meta"):
        layer = torch.nn.Linear(4, 4)
    with pytest.raises(StorageError, match="meta device"):
        base_model_hash({"x.attn2.to_k.weight": layer.weight})


# --- caching -------------------------------------------------------------------------------------


def test_cache_serves_repeated_calls_without_rehashing(
    unet: UNet2DConditionModel, reference_hash: str, count_digests: list[int]
) -> None:
    assert base_model_hash(unet) == reference_hash
    assert base_model_hash(unet) == reference_hash
    assert count_digests[0] == 1
    # Other targets are cached separately.
    base_model_hash(unet, targets=[TO_Q])
    base_model_hash(unet, targets=[TO_Q])
    assert count_digests[0] == 2
    assert base_model_hash(unet) == reference_hash
    assert count_digests[0] == 2


def test_pipeline_and_its_unet_share_the_cache(count_digests: list[int]) -> None:
    pipe = make_tiny_pipeline(seed=3)
    assert base_model_hash(pipe) == base_model_hash(pipe.unet)
    assert count_digests[0] == 1


def test_in_place_edit_invalidates_the_cache(
    unet: UNet2DConditionModel, reference_hash: str, count_digests: list[int]
) -> None:
    assert base_model_hash(unet) == reference_hash
    param = _target(unet)
    original = param.view(-1)[3].item()
    assert original != 0
    with torch.no_grad():
        param.view(-1)[3] = 0
    edited = base_model_hash(unet)
    assert edited != reference_hash
    assert count_digests[0] == 2
    with torch.no_grad():
        param.detach()[0, 3] = original  # through a detached alias: same version counter
    assert base_model_hash(unet) == reference_hash
    assert count_digests[0] == 3


def test_dtype_change_and_replaced_parameters_invalidate_the_cache(
    unet: UNet2DConditionModel, reference_hash: str, count_digests: list[int]
) -> None:
    assert base_model_hash(unet) == reference_hash
    unet.half()
    assert base_model_hash(unet) == reference_hash
    assert count_digests[0] == 2
    attn = unet.mid_block.attentions[0].transformer_blocks[0].attn2
    attn.to_k.weight = torch.nn.Parameter(torch.zeros_like(attn.to_k.weight))
    assert base_model_hash(unet) != reference_hash
    assert count_digests[0] == 3


def test_clear_cache_after_data_edits(
    unet: UNet2DConditionModel, reference_hash: str, count_digests: list[int]
) -> None:
    assert base_model_hash(unet) == reference_hash
    # .data has its own version counter, so this edit is invisible to the cache...
    _target(unet).data.view(-1)[0] = 0
    assert base_model_hash(unet) == reference_hash
    # ...until the cache is cleared.
    clear_cache(unet)
    assert base_model_hash(unet) != reference_hash
    clear_cache()
    assert count_digests[0] == 2


def test_inference_tensors_are_hashed_without_caching(
    tiny_pipeline_dir: Path, reference_hash: str, count_digests: list[int]
) -> None:
    # Loaded under inference_mode, the weights have no version counter to key a cache on.
    with torch.inference_mode():
        unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet")
    assert _target(unet).is_inference()
    assert base_model_hash(unet) == reference_hash
    assert base_model_hash(unet) == reference_hash
    assert count_digests[0] == 2
    with torch.inference_mode():
        _target(unet).view(-1)[0] = 0
    assert base_model_hash(unet) != reference_hash


def test_cache_does_not_keep_models_alive(tiny_pipeline: StableDiffusionPipeline) -> None:
    model = copy.deepcopy(tiny_pipeline.unet)
    base_model_hash(model)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


# --- import cost ---------------------------------------------------------------------------------


def _run_python(code: str) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_module_does_not_import_torch() -> None:
    _run_python(
        "import sys, conesreg._base_hash; "
        "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )


# --- the tiny pipeline ---------------------------------------------------------------------------


def test_tiny_pipeline_is_deterministic_and_leaves_the_global_rng_alone(
    reference_hash: str,
) -> None:
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    again = make_tiny_pipeline(seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    assert base_model_hash(again) == reference_hash
    assert base_model_hash(make_tiny_pipeline(seed=1)) != reference_hash


def test_tiny_pipeline_generates_and_round_trips(
    tiny_pipeline: StableDiffusionPipeline, tiny_pipeline_dir: Path
) -> None:
    def generate(pipe: StableDiffusionPipeline) -> np.ndarray:
        return pipe(
            "a photo of a dog",
            num_inference_steps=2,
            height=32,
            width=32,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images

    image = generate(tiny_pipeline)
    assert image.shape == (1, 32, 32, 3)
    assert np.isfinite(image).all()
    reloaded = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    assert np.array_equal(generate(reloaded), image)
    tokens = tiny_pipeline.tokenizer("a photo of a dog").input_ids
    assert tiny_pipeline.tokenizer.convert_ids_to_tokens(tokens) == [
        "<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "dog</w>", "<|endoftext|>",
    ]  # fmt: skip
