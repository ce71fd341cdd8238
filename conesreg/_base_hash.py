"""The base-model hash: which UNet weights a concept belongs to.

A concept is a set of scalar indices into some of a UNet's weights, and zeroing them only means
something on the exact weights the concept was found on. Each concept therefore records the hash
of those *target* weights -- by default the cross-attention key and value projections
(``...attn2.to_k.weight`` / ``...attn2.to_v.weight``), where concept neurons live -- and
conesreg compares it with the hash of the model a concept is applied to.

The hash is ``"sha256:" + hexdigest`` of this byte stream, with every integer an unsigned 64-bit
little-endian number::

    b"conesreg-base-model-hash/1\\n"
    for each target, in sorted name order:
        len(name_utf8), name_utf8
        ndim, dim_0, ..., dim_{ndim-1}
        the tensor's elements in C order, as little-endian IEEE float16

Every variable-length field is length-prefixed and the data's length follows from the shape, so
two different inputs never produce the same stream. Weights are rounded to float16 before
hashing so that the float32 and float16 copies of a model (the two forms checkpoints come in)
hash the same; a bfloat16 copy generally does not, since it has lost mantissa bits float16 keeps.

Weight names are always diffusers names, whatever form the model comes in: a loaded pipeline,
UNet or state dict; a diffusers folder (pipeline or UNet, single or sharded, float32 or fp16
variant); a single ``.safetensors`` file in diffusers naming; or an original single-file
checkpoint in LDM naming (``model.diffusion_model.*`` keys, e.g. ``v1-5-pruned-emaonly`` or the
SDXL base file that ``from_single_file`` loads), whose attention-block keys are renamed to their
diffusers names. Pickle checkpoints (``.ckpt``, ``.bin``) are never read: unpickling can run code.

torch, diffusers and safetensors are imported inside the functions, so that importing this
module (and the CLI commands that only read manifests) stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conesreg.errors import BaseModelMismatchError, StorageError

if TYPE_CHECKING:
    import torch

__all__ = ["base_model_hash", "clear_cache", "default_targets", "target_shapes"]

#: Name suffixes of the default targets: cross-attention key and value projections. The same in
#: the diffusers naming of SD 1.x, SD 2.x and SDXL UNets.
DEFAULT_TARGET_SUFFIXES: tuple[str, ...] = ("attn2.to_k.weight", "attn2.to_v.weight")

#: Versions the byte layout; a different layout must use a different tag, never reuse this one.
_HASH_TAG = b"conesreg-base-model-hash/1\n"
#: Elements converted and hashed at a time: bounds the extra memory of the float16 copy (8 MiB)
#: and of moving a GPU tensor to the CPU, whatever the size of the weight.
_CHUNK_ELEMENTS = 1 << 22
#: Diffusers' weight file names (``_add_variant`` puts the variant before the last suffix).
_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
#: Key prefix of a UNet inside a whole-pipeline state dict or single file in diffusers naming.
_UNET_PREFIX = "unet."
#: Key prefix of the UNet in an original (LDM / CompVis) single-file checkpoint.
_LDM_PREFIX = "model.diffusion_model."
#: An LDM key inside an attention (SpatialTransformer) block: slot 1 of an input or output block,
#: or the middle block's slot 1 (resnet, attention, resnet). Within the block LDM and diffusers
#: names agree (``transformer_blocks.0.attn2.to_k.weight``), so only this prefix is renamed.
_LDM_ATTENTION_RE = re.compile(
    r"model\.diffusion_model\.(?:(input_blocks|output_blocks)\.(\d+)\.1|middle_block\.1)\.(.+)"
)
#: The LDM key of a down level's downsampler: the last slot of its input blocks.
_LDM_DOWNSAMPLER_RE = re.compile(r"model\.diffusion_model\.input_blocks\.(\d+)\.0\.op\.weight")
#: File suffixes of pickled checkpoints, which are never loaded.
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_LDM_HINT = (
    "load it with UNet2DConditionModel.from_single_file, save_pretrained() it to a folder and "
    "pass that folder"
)

_NO_TARGETS_HINT = (
    "pass a Stable Diffusion UNet (a pipeline, its .unet, its folder, its state dict in diffusers "
    "naming, or a single .safetensors checkpoint), or name the weights with targets=[...]"
)

_CacheEntry = tuple[tuple[weakref.ref, ...], tuple[tuple[Any, ...], ...], str]
# Per loaded UNet: {targets: (weakrefs to the target tensors, their fingerprints, hash)}.
# Weak keys, so that caching a hash never keeps a model alive.
_cache: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], _CacheEntry]] = (
    weakref.WeakKeyDictionary()
)
_cache_lock = threading.Lock()


def default_targets(names: Iterable[str]) -> list[str]:
    """The names of the weights the base-model hash covers by default.

    These are the cross-attention key and value projections (names ending in
    ``attn2.to_k.weight`` or ``attn2.to_v.weight``), which is the diffusers naming for SD 1.x,
    SD 2.x and SDXL UNets alike.

    Args:
        names (`Iterable[str]`):
            Parameter names of a UNet, e.g. the keys of its state dict.

    Returns:
        `list[str]`: the matching names, sorted and without duplicates; empty if none match.

    Example:
        >>> default_targets(["mid.attn2.to_v.weight", "mid.attn2.to_q.weight",
        ...                  "mid.attn1.to_k.weight", "down.attn2.to_k.weight"])
        ['down.attn2.to_k.weight', 'mid.attn2.to_v.weight']
    """
    # Match whole name components, so that e.g. "xattn2.to_k.weight" is not a target.
    return sorted(
        {
            name
            for name in names
            if any(name == s or name.endswith("." + s) for s in DEFAULT_TARGET_SUFFIXES)
        }
    )


def base_model_hash(model: Any, *, targets: Sequence[str] | None = None) -> str:
    """The hash that identifies a UNet's weights, as recorded in every concept's manifest.

    The same weights hash the same whether they are loaded in float32 or float16, from a folder,
    a single file or a state dict; changing any target weight changes the hash, changing any
    other weight does not. See the module docstring for the exact definition.

    For a loaded model (a pipeline or a ``torch.nn.Module``) the result is cached per model and
    recomputed as soon as a target tensor is modified in place (its version counter moves), is
    replaced, or changes dtype or device. Edits through ``param.data`` bypass the version
    counter, so call [`clear_cache`] after making them (or edit under ``torch.no_grad()`` on the
    parameter itself, or on ``param.detach()``).

    Args:
        model (`str`, `os.PathLike`, `DiffusionPipeline`, `torch.nn.Module` or `Mapping`):
            The model to hash. One of:

            - a diffusers pipeline: its ``.unet`` is hashed;
            - a ``torch.nn.Module``: the UNet itself;
            - a state dict (``Mapping[str, torch.Tensor]``) of the UNet; its keys may all
              carry a ``unet.`` prefix;
            - the path of a diffusers pipeline folder (with ``model_index.json`` and
              ``unet/``) or of a UNet folder, holding ``diffusion_pytorch_model.safetensors``,
              its ``fp16`` variant, or a sharded ``*.safetensors.index.json``;
            - the path of a single ``.safetensors`` file of the UNet's weights in diffusers
              naming (keys may all carry a ``unet.`` prefix);
            - the path of an original single-file checkpoint (``.safetensors``, LDM naming:
              ``model.diffusion_model.*`` keys), as ``from_single_file`` loads. Its attention
              blocks' weights, where the targets live, are read under their diffusers names;
              its other weights are not available as targets.

            Files are read lazily: only the target tensors are loaded, and no model is built.
        targets (`Sequence[str]`, *optional*):
            Names of the weights to hash. Defaults to [`default_targets`] of all the model's
            weight names.

    Returns:
        `str`: ``"sha256:"`` followed by 64 lowercase hex digits.

    Raises:
        [`~conesreg.errors.BaseModelMismatchError`]:
            If a target is not a weight of the model, or (with the default targets) the model has
            no cross-attention key/value weights at all.
        [`~conesreg.errors.StorageError`]:
            If the path does not exist, holds no safetensors UNet weights, or cannot be read, or
            if the weights are not materialised (on the ``meta`` device).
        `TypeError`:
            If `model` is none of the above.

    Example:
        >>> from conesreg.testing import make_tiny_pipeline
        >>> pipe = make_tiny_pipeline()
        >>> digest = base_model_hash(pipe)
        >>> digest == base_model_hash(pipe.unet.half()) == base_model_hash(pipe.unet.state_dict())
        True
        >>> digest.startswith("sha256:")
        True
        >>> base_model_hash("path/to/stable-diffusion-v1-5")  # doctest: +SKIP
        'sha256:...'
    """
    if isinstance(model, str | os.PathLike):
        with _open_path(Path(model)) as (names, get_tensor, _shape):
            chosen = _resolve_targets(names, targets, source=str(model))
            return _digest((name, get_tensor(name)) for name in chosen)

    if isinstance(model, Mapping):
        tensors = _as_tensors(_strip_unet_prefix(model))
        chosen = _resolve_targets(tensors, targets, source="the state dict")
        return _digest((name, tensors[name]) for name in chosen)

    module = _module_of(model)
    params = _named_parameters(module, only=targets)
    chosen = tuple(_resolve_targets(params, targets, source=type(module).__name__))
    tensors = [params[name] for name in chosen]
    fingerprints = _fingerprints(tensors)
    if fingerprints is not None:
        with _cache_lock:
            entry = _cache.get(module, {}).get(chosen)
        if entry is not None and _is_fresh(entry, tensors, fingerprints):
            return entry[2]
    digest = _digest(zip(chosen, tensors, strict=True))
    if fingerprints is not None:
        refs = tuple(weakref.ref(t) for t in tensors)
        with _cache_lock:
            _cache.setdefault(module, {})[chosen] = (refs, fingerprints, digest)
    return digest


def target_shapes(
    model: Any, *, targets: Sequence[str] | None = None
) -> dict[str, tuple[int, ...]]:
    """The shapes of the weights the base-model hash covers.

    Concept indices are flat indices into these weights, so this is what a mask is checked
    against. Reads no tensor data: for files only the safetensors headers are parsed.

    Args:
        model (`str`, `os.PathLike`, `DiffusionPipeline`, `torch.nn.Module` or `Mapping`):
            The model, in any form [`base_model_hash`] accepts.
        targets (`Sequence[str]`, *optional*):
            Names of the weights. Defaults to [`default_targets`] of all the model's weight names.

    Returns:
        `dict[str, tuple[int, ...]]`: each target's shape, in sorted name order.

    Raises:
        [`~conesreg.errors.BaseModelMismatchError`]:
            If a target is not a weight of the model, or there are no default targets.
        [`~conesreg.errors.StorageError`]:
            If a path cannot be read as UNet weights.
        `TypeError`:
            If `model` is of no supported type.

    Example:
        >>> name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        >>> target_shapes("path/to/stable-diffusion-v1-5")[name]  # doctest: +SKIP
        (1280, 768)
        >>> from conesreg.testing import make_tiny_pipeline
        >>> target_shapes(make_tiny_pipeline())[name]
        (64, 32)
    """
    if isinstance(model, str | os.PathLike):
        with _open_path(Path(model)) as (names, _tensor, get_shape):
            chosen = _resolve_targets(names, targets, source=str(model))
            return {name: get_shape(name) for name in chosen}

    if isinstance(model, Mapping):
        tensors = _as_tensors(_strip_unet_prefix(model))
    else:
        tensors = _named_parameters(_module_of(model))
    source = "the state dict" if isinstance(model, Mapping) else type(model).__name__
    chosen = _resolve_targets(tensors, targets, source=source)
    return {name: tuple(int(d) for d in tensors[name].shape) for name in chosen}


def clear_cache(model: Any = None) -> None:
    """Forget cached hashes of one loaded model, or of all of them.

    Only needed after editing weights in a way that torch does not count as an in-place change
    of the parameter, i.e. through ``param.data``.

    Args:
        model (`DiffusionPipeline` or `torch.nn.Module`, *optional*):
            The pipeline or UNet whose hashes to forget; all models' if omitted.

    Example:
        >>> from conesreg.testing import make_tiny_pipeline
        >>> unet = make_tiny_pipeline().unet
        >>> before = base_model_hash(unet)
        >>> unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight.data[0] = 0
        >>> base_model_hash(unet) == before  # the cache cannot see .data edits
        True
        >>> clear_cache(unet)
        >>> base_model_hash(unet) == before
        False
    """
    with _cache_lock:
        if model is None:
            _cache.clear()
        else:
            _cache.pop(_module_of(model), None)


def weights_stamp(path: str | os.PathLike[str]) -> list[tuple[str, int, int, int]]:
    """(path, size, mtime, inode) of every file holding the UNet weights at ``path``.

    Equal stamps mean files untouched since: a hash computed from them then still holds (the
    way build tools and git's index trust a file they saw before).

    Raises:
        StorageError: as :func:`base_model_hash` for a path.
    """
    out = []
    for file in sorted({str(p) for p in _unet_weight_files(Path(path)).values()}):
        st = os.stat(file)
        out.append((file, st.st_size, st.st_mtime_ns, st.st_ino))
    return out


def weights_targets(path: str | os.PathLike[str]) -> list[str]:
    """:func:`default_targets` of the UNet weights at ``path``, from the files' headers alone
    (no tensor is read; far cheaper than walking a loaded UNet's modules).

    Raises:
        StorageError: as :func:`base_model_hash` for a path.
    """
    with _open_path(Path(path)) as (names, _get, _shape):
        return default_targets(names)


def remember(model: Any, digest: str, *, targets: Sequence[str]) -> None:
    """Record ``digest`` as the hash of ``model``'s ``targets`` as they are now, as if
    :func:`base_model_hash` had just computed it (the same fingerprints keep it fresh).

    For a model just loaded from files whose hash is known (``load_pipeline`` keeps one per
    weight file stamp): the caller vouches that the weights are the files'.
    """
    module = _module_of(model)
    params = _named_parameters(module, only=targets)
    chosen = tuple(targets)
    if any(name not in params for name in chosen):
        return  # not this model's weights after all: the hash is computed when asked for
    tensors = [params[name] for name in chosen]
    fingerprints = _fingerprints(tensors)
    if fingerprints is None:
        return
    refs = tuple(weakref.ref(t) for t in tensors)
    with _cache_lock:
        _cache.setdefault(module, {})[chosen] = (refs, fingerprints, digest)


# --- resolving inputs ---------------------------------------------------------------------------


def _module_of(model: Any) -> torch.nn.Module:
    """The UNet module of a pipeline or module (unwrapping ``torch.compile``)."""
    import torch

    # Duck-typed, so that pipelines are recognised without importing diffusers.
    unet = getattr(model, "unet", None)
    if isinstance(unet, torch.nn.Module):
        model = unet
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            "expected a diffusers pipeline, a torch.nn.Module, a state dict or a path, "
            f"got {type(model).__name__}"
        )
    # A compiled module prefixes every name with "_orig_mod."; the weights are the original's.
    return getattr(model, "_orig_mod", model)


def _named_parameters(
    module: torch.nn.Module, *, only: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Every parameter by name (also the second name of a tied weight, which
    ``named_parameters()`` drops), or only those of ``only`` that exist: looked up one by one,
    as walking an SD UNet's ~700 parameters costs milliseconds on every apply."""
    if only is None or isinstance(only, str):
        return dict(module.named_parameters(remove_duplicate=False))
    found = {}
    for name in only:
        with suppress(AttributeError):
            found[name] = module.get_parameter(name)
    return found


def _strip_unet_prefix(names: Mapping[str, Any]) -> dict[str, Any]:
    """Maps UNet names to the values of ``names``, dropping a ``unet.`` prefix if there is one.

    A whole-pipeline state dict in diffusers naming prefixes each component's keys with its
    name; in that case only the UNet's keys are kept.
    """
    if any(key.startswith(_UNET_PREFIX) for key in names):
        return {
            key[len(_UNET_PREFIX) :]: value
            for key, value in names.items()
            if key.startswith(_UNET_PREFIX)
        }
    return dict(names)


def _as_tensors(values: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    import torch

    # Accept array-likes (e.g. numpy arrays from safetensors.numpy) as well as tensors.
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in values.items()}


def _resolve_targets(
    names: Iterable[str], targets: Sequence[str] | None, *, source: str
) -> list[str]:
    """The sorted, de-duplicated targets, checked to be among ``names``."""
    available = set(names)
    if targets is None:
        chosen = default_targets(available)
        if not chosen:
            raise BaseModelMismatchError(
                f"{source} has no cross-attention key/value weights (names ending in "
                f"{' or '.join(DEFAULT_TARGET_SUFFIXES)}); is it a Stable Diffusion UNet in "
                "diffusers naming?",
                hint=_NO_TARGETS_HINT,
            )
        return chosen
    # A bare string is a sequence of characters; hashing "a", "b", ... is never what was meant.
    if isinstance(targets, str):
        raise TypeError("targets must be a sequence of weight names, not a single string")
    chosen = sorted(set(targets))
    if not chosen:
        # A hash of nothing would match every model.
        raise ValueError("targets must name at least one weight")
    missing = [name for name in chosen if name not in available]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise BaseModelMismatchError(
            f"{source} has no weight {missing[0]!r}{more}",
            hint="the concept was made for a UNet with other layer names: use its base model",
        )
    return chosen


# --- reading safetensors files lazily -----------------------------------------------------------


def _add_variant(file_name: str, variant: str | None) -> str:
    """Diffusers' naming of weight variants: the variant goes before the last suffix."""
    if variant is None:
        return file_name
    stem, _, suffix = file_name.rpartition(".")
    return f"{stem}.{variant}.{suffix}"


def _unet_weight_files(path: Path) -> dict[str, Path]:
    """Maps each stored tensor name of the UNet weights at ``path`` to the file holding it."""
    if path.is_file():
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise StorageError(
                f"{path} is a pickle checkpoint, not a .safetensors file; conesreg never "
                "unpickles files (that can run arbitrary code): convert it to .safetensors",
                hint="if you trust its source, load it and save its state dict with "
                "safetensors.torch.save_file",
            )
        if path.suffix != ".safetensors":
            raise StorageError(
                f"{path} is not a .safetensors file",
                hint="pass a .safetensors file, or the diffusers folder of the model",
            )
        return dict.fromkeys(_safetensors_keys(path), path)
    if not path.is_dir():
        raise StorageError(
            f"no such file or directory: {path}",
            hint="download the model first (e.g. huggingface_hub.snapshot_download) and pass "
            "its local folder, or pass the loaded pipeline",
        )

    folder = path
    if (path / "model_index.json").is_file() or (path / "unet").is_dir():
        folder = path / "unet"
        if not folder.is_dir():
            raise StorageError(
                f"the pipeline at {path} has no unet/ folder",
                hint="conesreg works with UNet-based pipelines (Stable Diffusion 1.x, 2.x, XL)",
            )
    # Full precision first; fp16 hashes the same, so it is as good when it is all there is.
    for variant in (None, "fp16"):
        single = folder / _add_variant(_WEIGHTS_NAME, variant)
        if single.is_file():
            return dict.fromkeys(_safetensors_keys(single), single)
        index = folder / _add_variant(_INDEX_NAME, variant)
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise StorageError(
                    f"cannot read the shard index {index}: {e}",
                    hint="download the model again",
                ) from e
            return {name: folder / file_name for name, file_name in weight_map.items()}

    found = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
    raise StorageError(
        f"no {_WEIGHTS_NAME} (or fp16 variant or shard index) in {folder}"
        + (f"; found {', '.join(found)}" if found else ""),
        hint="save the model with save_pretrained(..., safe_serialization=True), or pass the "
        "path of the .safetensors file itself",
    )


def _ldm_attention_names(keys: Collection[str], path: Path) -> dict[str, str]:
    """Maps diffusers names to the keys of an LDM checkpoint's attention-block weights.

    An LDM UNet numbers its layers in slots: ``input_blocks.0`` is ``conv_in``, then each down
    level has L resnet(+attention) slots and, except the last, a downsampler slot; each up level
    has L + 1 slots (the upsampler shares the last one). L (``layers_per_block``) is not stored,
    but the first downsampler's slot is L + 1.
    """
    per_level = min(
        (int(m[1]) for key in keys if (m := _LDM_DOWNSAMPLER_RE.fullmatch(key))), default=None
    )
    if per_level is None:
        raise StorageError(
            f"cannot map the original (LDM) key names of {path} to diffusers names: it has no "
            "downsampler (model.diffusion_model.input_blocks.N.0.op.weight) to tell its "
            "layers per block from",
            hint=_LDM_HINT,
        )
    names = {}
    for key in keys:
        m = _LDM_ATTENTION_RE.fullmatch(key)
        # Slot 1 of an output block without attention holds its upsampler, not an attention.
        if m is None or m[3].startswith("conv."):
            continue
        kind, rest = m[1], m[3]
        if kind is None:
            block = "mid_block.attentions.0"
        elif kind == "input_blocks":
            level, j = divmod(int(m[2]) - 1, per_level)
            if j == per_level - 1:  # a downsampler's slot: the inferred L must be wrong
                raise StorageError(
                    f"{path} has an attention block in a downsampler's slot: {key}",
                    hint=_LDM_HINT,
                )
            block = f"down_blocks.{level}.attentions.{j}"
        else:
            level, j = divmod(int(m[2]), per_level)
            block = f"up_blocks.{level}.attentions.{j}"
        names[f"{block}.{rest}"] = key
    return names


def _safetensors_error() -> type[Exception]:
    from safetensors import SafetensorError

    return SafetensorError


def _safetensors_keys(file: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(file, framework="pt") as f:
            return list(f.keys())
    except (OSError, _safetensors_error()) as e:
        raise StorageError(f"cannot read {file}: {e}", hint="download the model again") from e


@contextmanager
def _open_path(
    path: Path,
) -> Iterator[tuple[list[str], Callable[[str], torch.Tensor], Callable[[str], tuple[int, ...]]]]:
    """Opens the UNet weights at ``path``.

    Yields the UNet's weight names and two functions reading a weight's tensor and shape. Each
    file is opened (memory-mapped) once and only the tensors asked for are read.
    """
    from safetensors import safe_open

    files = _unet_weight_files(path)
    # Maps each UNet name (diffusers naming) to its key in the files.
    if any(key.startswith(_LDM_PREFIX) for key in files):
        stored = _ldm_attention_names(files, path)
    else:
        stored = _strip_unet_prefix({key: key for key in files})
    safetensors_error = _safetensors_error()
    with ExitStack() as stack:
        handles: dict[Path, Any] = {}

        def handle(name: str) -> tuple[Any, str]:
            key = stored[name]
            file = files[key]
            if file not in handles:
                try:
                    handles[file] = stack.enter_context(safe_open(file, framework="pt"))
                except (OSError, safetensors_error) as e:
                    raise StorageError(
                        f"cannot read {file}: {e}", hint="download the model again"
                    ) from e
            return handles[file], key

        def get_tensor(name: str) -> torch.Tensor:
            f, key = handle(name)
            return f.get_tensor(key)

        def get_shape(name: str) -> tuple[int, ...]:
            f, key = handle(name)
            return tuple(int(d) for d in f.get_slice(key).get_shape())

        yield list(stored), get_tensor, get_shape


# --- hashing --------------------------------------------------------------------------------------


def _digest(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """The hash of (name, tensor) pairs, in the order given (callers sort them)."""
    h = hashlib.sha256(_HASH_TAG)
    for name, tensor in items:
        raw = name.encode("utf-8")
        h.update(struct.pack("<Q", len(raw)))
        h.update(raw)
        shape = tuple(int(d) for d in tensor.shape)
        h.update(struct.pack(f"<{len(shape) + 1}Q", len(shape), *shape))
        _update_float16(h, tensor, name=name)
    return f"sha256:{h.hexdigest()}"


def _update_float16(h: Any, tensor: torch.Tensor, *, name: str) -> None:
    """Feeds ``tensor``'s elements to ``h`` as contiguous little-endian float16, chunk by chunk."""
    import torch

    if tensor.is_meta:
        raise StorageError(
            f"the weight {name!r} is not loaded (it is on the meta device)",
            hint="hash the model's folder instead, or load the model without offloading",
        )
    # Quantized weights (int8, packed 4-bit) would "hash" as their codes, matching no published
    # concept; better to say why.
    if not tensor.is_floating_point():
        raise BaseModelMismatchError(
            f"the weight {name!r} has dtype {tensor.dtype}, not a floating-point type",
            hint="hash the unquantized model (e.g. its folder) instead",
        )
    # detach: the bytes are all we need, and numpy() refuses tensors that require grad.
    flat = tensor.detach().reshape(-1)
    for start in range(0, flat.numel(), _CHUNK_ELEMENTS):
        # Convert where the tensor lives, so that only float16 bytes cross to the CPU.
        chunk = flat[start : start + _CHUNK_ELEMENTS].to(dtype=torch.float16)
        array = chunk.cpu().numpy()
        # "<f2" fixes the byte order; on little-endian machines this is not a copy.
        h.update(array.astype("<f2", copy=False))


def _fingerprints(tensors: Sequence[torch.Tensor]) -> tuple[tuple[Any, ...], ...] | None:
    """What identifies the current contents of ``tensors``, or None if that cannot be known.

    The version counter moves on every in-place change made through the tensor or a view of
    it (which is how concepts are applied); the data pointer, layout, dtype and device catch
    ``.data`` replacement, ``.to()`` and the like.
    """
    result = []
    for t in tensors:
        # Inference tensors (created under torch.inference_mode) have no version counter.
        if t.is_inference() or t.is_meta:
            return None
        result.append((t._version, t.data_ptr(), t.dtype, t.device, tuple(t.shape), t.stride()))
    return tuple(result)


def _is_fresh(
    entry: _CacheEntry, tensors: Sequence[torch.Tensor], fingerprints: tuple[tuple[Any, ...], ...]
) -> bool:
    refs, cached, _digest_value = entry
    # Identity as well as the fingerprint: a new tensor may reuse a freed one's memory with the
    # same (zero) version count.
    return cached == fingerprints and all(ref() is t for ref, t in zip(refs, tensors, strict=True))
