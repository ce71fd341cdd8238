"""Apply concepts to a diffusers pipeline by switching their neurons off, in place and reversibly.

A concept is a set of flat indices into some UNet weights; applying it sets those scalars to zero
(the Cones paper's "switching off"). Several concepts apply as the union of their sets. The edit is
made on the weights themselves, on their device: generation runs no hooks and costs nothing extra.

Per UNet, one record (``_Applied``) holds the concepts that are on and, for the union of their
positions only, the original values. Every change of the active set restores those values and
switches the new union off, so restoring is bitwise exact in any order, across any sequence of
apply/restore/swap, and after the pipeline moved to another device or dtype (the saved values are
moved and cast like the weights were). Everything that can fail -- base-model hash, parameter
names and shapes, index ranges, device memory -- is checked or allocated before the first write.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import constants
from ._base_hash import base_model_hash
from ._concept import (
    OVERLAP_WARN_JACCARD,
    Concept,
    Overlap,
    load_concepts,
    overlap,
    overlap_suspects,
)
from ._session import Session
from .errors import (
    BaseModelMismatchError,
    ConesregWarning,
    ConfigError,
    DeviceMemoryError,
    MaskError,
    UnsupportedPipelineError,
)

if TYPE_CHECKING:
    import torch

    from ._binding import Binder


@dataclass
class _Applied:
    """What is switched off on one UNet right now."""

    holders: Counter[str] = field(default_factory=Counter)  # digest -> handles holding it
    concepts: dict[str, Concept] = field(default_factory=dict)  # digest -> concept
    # param name -> (flat indices, one tensor per concept, and the original values at them in
    # that order, all on the parameter's device). Kept apart, not concatenated: on the CPU each
    # part is gathered and scattered where it lies (a copy of 64 concepts' indices costs more
    # than the writes).
    saved: dict[str, tuple[tuple[torch.Tensor, ...], torch.Tensor]] = field(default_factory=dict)
    # param name -> the digests whose indices make up saved[name], in order
    saved_by: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # param name -> (digests, indices, original values, the parameter's fingerprint right after
    # they were written back): switching the same concepts off again while nothing else touched
    # the weights reads no originals (they are these) and concatenates nothing
    kept: dict[
        str, tuple[tuple[str, ...], tuple[torch.Tensor, ...], torch.Tensor, tuple[Any, ...]]
    ] = field(default_factory=dict)
    # sorted target names -> hash of the pristine weights, so swaps never re-hash
    base_hashes: dict[tuple[str, ...], str] = field(default_factory=dict)
    # param name -> (owning module, attribute): a dict lookup instead of a walk down the tree,
    # and still the live parameter after .to() or an in-place reload
    owners: dict[str, tuple[Any, str]] = field(default_factory=dict)
    # token-bound concepts act through this (attention processors, text-encoder hooks); None
    # while none is on, so that the pipeline then runs its own processors
    binder: Binder | None = None
    # digest -> the strength a token-bound concept was applied with (the latest apply's)
    strengths: dict[str, float] = field(default_factory=dict)
    # digest -> (the decoded indices, them as int64 tensors on each parameter's device), most
    # recent last: a concept applied again (or a swap back) moves nothing to the device. Valid
    # while the concept's indices are that very dict: a Concept built by hand may reuse a
    # manifest (and its digest) with other indices.
    on_device: OrderedDict[str, tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]] = field(
        default_factory=OrderedDict
    )
    on_device_bytes: int = 0
    # digest -> the indices whose shapes, ranges and base model were checked against this UNet
    checked: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def param(self, unet: Any, name: str) -> Any:
        """The parameter called ``name``, or None."""
        if name not in self.owners:
            path, _, leaf = name.rpartition(".")
            try:
                self.owners[name] = (unet.get_submodule(path) if path else unet, leaf)
            except AttributeError:
                return None
        module, leaf = self.owners[name]
        return module._parameters.get(leaf)


_STATE: weakref.WeakKeyDictionary[Any, _Applied] = weakref.WeakKeyDictionary()
#: What a token-bound concept may address: the keys and values its binder computes.
_BOUND_TARGETS = ("attn2.to_k.weight", "attn2.to_v.weight")


class ConceptHandle:
    """The concepts one :func:`apply` call switched off; ``restore()`` switches them back on.

    Usable as a context manager. Restoring one handle keeps the concepts other handles hold.

    Example:
        >>> with conesreg.apply(pipe, ["acme/dog@^1"]) as handle:  # doctest: +SKIP
        ...     image = pipe("a photo of a dog").images[0]
    """

    def __init__(
        self, unet: Any, concepts: list[Concept], active: list[Concept], overlaps: list[Overlap]
    ) -> None:
        self._unet = weakref.ref(unet)
        self.concepts = concepts
        self._active = active
        self._overlaps: list[Overlap] | None = overlaps if len(active) < 3 else None
        self.active = True

    @property
    def overlaps(self) -> list[Overlap]:
        """Shared neurons of every pair of concepts that were on when this handle was made.

        Computed on first access: apply() itself only looks at pairs that could share enough to
        warn (:func:`~conesreg._concept.overlap_suspects`), which keeps composing linear.
        """
        if self._overlaps is None:
            self._overlaps = overlap(self._active)
        return self._overlaps

    def restore(self) -> None:
        """Switch this handle's concepts back on (no-op if already restored)."""
        unet = self._unet()
        if not self.active or unet is None:
            return
        state = _STATE[unet]
        before = (Counter(state.holders), dict(state.concepts), dict(state.strengths))
        for c in self.concepts:
            state.holders[c.digest] -= 1
            if state.holders[c.digest] <= 0:
                del state.holders[c.digest]
                del state.concepts[c.digest]
                state.strengths.pop(c.digest, None)
        try:
            _sync(unet, state)
        except BaseException:
            state.holders, state.concepts, state.strengths = before
            raise
        self.active = False

    def __enter__(self) -> ConceptHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        names = ", ".join(c.label for c in self.concepts)
        return f"<ConceptHandle [{names}] {'active' if self.active else 'restored'}>"


def apply(
    pipe: Any,
    concepts: Sequence[str | Concept],
    *,
    force: bool = False,
    project_dir: Path | None = None,
    locked: bool = False,
    frozen: bool = False,
    session: Session | None = None,
    strength: float | None = None,
) -> ConceptHandle:
    """Switch the neurons of ``concepts`` off in ``pipe``'s UNet, in place.

    Args:
        pipe: a diffusers pipeline with a ``unet`` (SD 1.x, 2.x, SDXL), or the UNet itself.
        concepts: references (``"acme/dog@^1"``, installed through ``conesreg.lock``) or
            :class:`Concept` objects.
        force: apply even if a concept was made for another base model (with a warning).
        strength: how strongly token-bound concepts act at their words (the switched-off
            weights' share subtracted this many times from the keys; default
            ``TOKEN_STRENGTH``, 1.5, and for a composite's parts ``COMPOSITE_STRENGTH``, 1.25:
            the measured best of each). The values take :func:`value_strength` of it: 5/6 for
            a concept found alone (1.25 at the default), all of it for a composite's parts.
            Global concepts are switched off, whatever it says.
        project_dir, locked, frozen: as for :func:`conesreg.install`.
        session: config, cache and sources to use.

    Returns:
        A :class:`ConceptHandle`; call ``restore()`` (or leave its ``with`` block) to undo.

    Raises:
        UnsupportedPipelineError: ``pipe`` has no UNet.
        BaseModelMismatchError: a concept belongs to another base model, or names a parameter
            this UNet lacks or has with another shape. Nothing is changed.
        MaskError: an index out of range. Nothing is changed.
        DeviceMemoryError: out of memory on the device. Nothing is changed.
        ValueError: a strength that is not a positive number.

    Example:
        >>> handle = conesreg.apply(pipe, ["acme/dog@^1", "acme/cat@1.2"])  # doctest: +SKIP
        >>> handle.restore()  # doctest: +SKIP
    """
    if strength is not None and not (0 < strength < float("inf")):
        raise ValueError(f"strength must be a positive number, not {strength}")
    unet = _unet_of(pipe)
    loaded = load_concepts(
        concepts, project_dir=project_dir, locked=locked, frozen=frozen, session=session
    )
    unique = list({c.digest: c for c in loaded}.values())
    state = _STATE.setdefault(unet, _Applied())
    new = [c for c in unique if c.digest not in state.concepts]
    _check(pipe, unet, state, new, force=force)

    active = list({**state.concepts, **{c.digest: c for c in new}}.values())
    overlaps, crowd = _suspect_pairs(active)
    if crowd:
        warnings.warn(
            f"{len(crowd)} of the {len(active)} concepts on share more than "
            f"{OVERLAP_WARN_JACCARD:.0%} of their neurons with the others ({', '.join(crowd[:3])}"
            f"{', ...' if len(crowd) > 3 else ''}); they may blend (handle.overlaps or "
            "`conesreg info --overlap` lists the pairs)",
            ConesregWarning,
            stacklevel=2,
        )
    words = {c.label: c.manifest.binding.word for c in active}
    for o in overlaps:
        # Token-bound concepts of different words act at different tokens: they never blend.
        apart = words[o.a] is not None and words[o.b] is not None and words[o.a] != words[o.b]
        if o.jaccard > OVERLAP_WARN_JACCARD and not apart:
            warnings.warn(
                f"{o.a} and {o.b} share {o.shared} neurons (Jaccard {o.jaccard:.2f}); "
                "they will blend",
                ConesregWarning,
                stacklevel=2,
            )
    if any(_token_bound(c) for c in new) and state.binder is None:
        if unet is pipe:
            raise UnsupportedPipelineError(
                "token-bound concepts need the whole pipeline (its tokenizer and text "
                "encoder), not the UNet alone",
                hint="pass the pipeline to apply()",
            )
        from ._binding import Binder

        state.binder = Binder(pipe)
    before = (Counter(state.holders), dict(state.concepts), dict(state.strengths))
    for c in unique:
        state.holders[c.digest] += 1
        state.concepts[c.digest] = c
        if _token_bound(c) and (strength is not None or c.digest not in state.strengths):
            state.strengths[c.digest] = default_strength(c) if strength is None else strength
    try:
        _sync(unet, state)
    except BaseException:
        state.holders, state.concepts, state.strengths = before
        _sync_bound(state)
        raise
    return ConceptHandle(unet, unique, active, overlaps if len(active) < 3 else [])


def restore(pipe: Any) -> None:
    """Switch every concept on ``pipe`` back on: the UNet is bitwise as it was loaded.

    Example:
        >>> conesreg.restore(pipe)  # doctest: +SKIP
    """
    unet = _unet_of(pipe)
    state = _STATE.get(unet)
    if state is not None and state.concepts:
        state.holders.clear()
        state.concepts.clear()
        state.strengths.clear()
        _sync(unet, state)


def active_concepts(pipe: Any) -> list[Concept]:
    """The concepts currently switched off in ``pipe``, in the order they were applied."""
    state = _STATE.get(_unet_of(pipe))
    return list(state.concepts.values()) if state else []


def token_strength(pipe: Any, concept: Concept) -> float | None:
    """The strength a token-bound concept acts with in ``pipe`` (``None``: a global concept,
    or one not applied)."""
    state = _STATE.get(_unet_of(pipe))
    return state.strengths.get(concept.digest) if state else None


def pristine_hash(pipe: Any, *, targets: Sequence[str] | None = None) -> str:
    """The base-model hash of ``pipe`` as loaded, whatever concepts are applied now."""
    from ._base_hash import default_targets

    unet = _unet_of(pipe)
    names = tuple(sorted(targets or default_targets(n for n, _ in unet.named_parameters())))
    return _pristine_hash(unet, _STATE.setdefault(unet, _Applied()), names)


# -- internals -----------------------------------------------------------------------------------
def _unet_of(pipe: Any) -> torch.nn.Module:
    import torch

    unet = getattr(pipe, "unet", pipe)
    if not isinstance(unet, torch.nn.Module):
        raise UnsupportedPipelineError(
            f"{type(pipe).__name__} has no UNet to apply concepts to"
            + (" (it is a transformer-based pipeline)" if hasattr(pipe, "transformer") else "")
        )
    return unet


#: What apply() warns about, by the set of concepts that are on: contents are immutable, so the
#: answer never changes, and applying the same set again costs nothing.
_SUSPECTS: OrderedDict[frozenset[str], tuple[list[Overlap], list[str]]] = OrderedDict()
#: Suspects whose pairs apply() still counts one by one; beyond, it warns about them as a crowd
#: (their pairs cost a pass each: 64 concepts would cost 2,016 passes, composing must stay
#: linear).
_MAX_PAIRWISE = 16


def _suspect_pairs(active: list[Concept]) -> tuple[list[Overlap], list[str]]:
    """The overlaps of the pairs that may share more than the warning threshold (all pairs, when
    there are only two concepts: then that is one pass anyway), or, when too many concepts may,
    their labels."""
    if len(active) < 2:
        return [], []
    key = frozenset(c.digest for c in active)
    if key not in _SUSPECTS:
        threshold = OVERLAP_WARN_JACCARD
        few = active if len(active) == 2 else overlap_suspects(active, threshold=threshold)
        if len(few) > _MAX_PAIRWISE:
            _SUSPECTS[key] = ([], [c.label for c in few])
        else:
            _SUSPECTS[key] = (overlap(few) if len(few) >= 2 else [], [])
        while len(_SUSPECTS) > 256:
            _SUSPECTS.popitem(last=False)
    _SUSPECTS.move_to_end(key)
    return _SUSPECTS[key]


def _check(pipe: Any, unet: Any, state: _Applied, concepts: list[Concept], *, force: bool) -> None:
    concepts = [
        c for c in concepts if state.checked.get(c.digest) is not c.decoded or not c.decoded
    ]
    names = {t.name for c in concepts for t in c.manifest.base_model.targets}
    params = {n: state.param(unet, n) for n in names}
    for c in concepts:
        for t in c.manifest.base_model.targets:
            p = params[t.name]
            if p is None:
                raise BaseModelMismatchError(
                    f"{c.label} addresses {t.name!r}, which this pipeline's UNet does not have"
                )
            if tuple(p.shape) != tuple(t.shape):
                raise BaseModelMismatchError(
                    f"{c.label} expects {t.name!r} of shape {tuple(t.shape)}, "
                    f"the UNet has {tuple(p.shape)}"
                )
            if not p.is_contiguous():
                raise UnsupportedPipelineError(f"parameter {t.name!r} is not contiguous")
    for c in concepts:
        if _token_bound(c):
            other = [
                t.name for t in c.manifest.base_model.targets if not t.name.endswith(_BOUND_TARGETS)
            ]
            if other:
                raise MaskError(
                    f"{c.label} is token-bound but addresses {other[0]!r}; a token-bound "
                    "concept acts on cross-attention keys and values only",
                    hint="find it again with --candidates cross-kv, or with --binding global",
                )
    for c in concepts:
        targets = tuple(sorted(t.name for t in c.manifest.base_model.targets))
        actual = _pristine_hash(unet, state, targets)
        expected = c.manifest.base_model
        if actual != expected.hash:
            where = getattr(getattr(pipe, "config", None), "_name_or_path", None) or "this pipeline"
            msg = (
                f"{c.label} was made for base model {expected.id!r} ({expected.hash}), "
                f"but {where} hashes to {actual}"
            )
            if not force:
                raise BaseModelMismatchError(msg)
            warnings.warn(msg + "; applying anyway (force)", ConesregWarning, stacklevel=3)
    # Masks are decoded only now, within the sizes of the parameters this UNet really has: a
    # payload can claim any size (a full set of a huge parameter is a few bytes), the UNet cannot.
    for c in concepts:
        # A composite's tensors are PART:NAME, each of its parameter's size.
        declared = c.manifest.binding.mask_numels(c.manifest.base_model.targets)
        numels = {k: params[k.rpartition(":")[2]].numel() for k in declared}
        for name, idx in c.decode(numels=numels).items():
            if name not in numels:
                raise BaseModelMismatchError(f"{c.label}'s mask addresses unknown {name!r}")
            # Order and repeats do not matter for zeroing and restoring; the range does.
            if len(idx) and (idx.min() < 0 or idx.max() >= numels[name]):
                raise MaskError(f"{c.label}: indices of {name!r} out of range")
    state.checked.update((c.digest, c.indices) for c in concepts)


def _pristine_hash(unet: Any, state: _Applied, targets: tuple[str, ...]) -> str:
    if targets not in state.base_hashes:
        if state.saved:
            # Concepts are on: hash the weights as loaded by briefly restoring them (exact).
            active, state.concepts = state.concepts, {}
            _sync(unet, state)
            try:
                state.base_hashes[targets] = base_model_hash(unet, targets=list(targets))
            finally:
                state.concepts = active
                _sync(unet, state)
        else:
            state.base_hashes[targets] = base_model_hash(unet, targets=list(targets))
    return state.base_hashes[targets]


def _sync(unet: Any, state: _Applied) -> None:
    """Make the weights match ``state.concepts``: restore saved values, switch the union off."""
    import torch

    _sync_bound(state)
    on = [c for c in state.concepts.values() if not _token_bound(c)]
    names = {n for c in on for n, idx in c.indices.items() if len(idx)}
    params = {n: state.param(unet, n) for n in {*names, *state.saved}}
    # Allocate everything first: an out-of-memory error then leaves the weights untouched.
    try:
        back = {
            n: (
                tuple(i.to(params[n].device) for i in idx),
                vals.to(params[n].device, params[n].dtype),
            )
            for n, (idx, vals) in state.saved.items()
        }
        parts: dict[str, list[torch.Tensor]] = {}
        by: dict[str, list[str]] = {}
        for c in on:
            for n, idx in _on_device(state, c, params).items():
                parts.setdefault(n, []).append(idx)
                by.setdefault(n, []).append(c.digest)
        plan, reuse = {}, set()
        for n, p in parts.items():
            kept = state.kept.get(n)
            # The same concepts, and the weights untouched since their originals were written
            # back (then nothing at all touched this parameter, so it is not in `back` either).
            if kept is not None and kept[0] == tuple(by[n]) and kept[3] == _fingerprint(params[n]):
                plan[n] = kept[1:3]
                reuse.add(n)
                continue
            # Not de-duplicated: originals are all read before any zeroing, so a position held
            # by two concepts is saved twice with the same value, and writing it back twice is
            # still exact. Skipping the sort-based union makes a swap several times faster.
            total = sum(i.shape[0] for i in p)
            plan[n] = (tuple(p), torch.empty(total, dtype=params[n].dtype, device=p[0].device))
    except torch.OutOfMemoryError as e:
        raise DeviceMemoryError(
            f"out of memory while applying concepts ({e}); the pipeline was left as it was"
        ) from None

    with torch.no_grad():
        for n, (idx, vals) in back.items():
            _scatter(params[n], idx, vals)
            by_n = state.saved_by.get(n, ())
            state.kept[n] = (by_n, idx, vals, _fingerprint(params[n]))
        for n, (idx, buf) in plan.items():
            if n not in reuse:
                _gather(params[n], idx, buf)
            _scatter(params[n], idx, None)
    state.saved = plan
    state.saved_by = {n: tuple(by[n]) for n in plan}


#: dtypes numpy has: on the CPU their gathers and scatters go through numpy, ~40% faster than
#: torch's index ops on one thread (measured: 132 against 212 us for 39k of 983k floats).
_NUMPY_DTYPES = ("float16", "float32", "float64")


def _numpy_view(p: Any) -> Any:
    """The parameter's flat numpy view on the CPU, or None where torch must do the work."""
    if p.device.type != "cpu" or str(p.dtype).removeprefix("torch.") not in _NUMPY_DTYPES:
        return None
    return p.detach().view(-1).numpy()


def _gather(p: Any, parts: tuple[Any, ...], out: Any) -> None:
    """``out[:] = p.flat[concatenated parts]``."""
    import torch

    flat = _numpy_view(p)
    if flat is None:
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)
        torch.index_select(p.view(-1), 0, idx, out=out)
        return
    dest, at = out.numpy(), 0
    for part in parts:
        idx = part.numpy()
        np.take(flat, idx, out=dest[at : at + idx.shape[0]])
        at += idx.shape[0]


def _scatter(p: Any, parts: tuple[Any, ...], vals: Any | None) -> None:
    """``p.flat[concatenated parts] = vals`` (0 when None), counted as an in-place change."""
    import torch

    flat = _numpy_view(p)
    if flat is None:
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)
        if vals is None:
            p.view(-1).index_fill_(0, idx, 0)
        else:
            p.view(-1).index_copy_(0, idx, vals)
        return
    source, at = (None if vals is None else vals.numpy()), 0
    for part in parts:
        idx = part.numpy()  # (torch's len() costs more than numpy's shape)
        flat[idx] = 0 if source is None else source[at : at + idx.shape[0]]
        at += idx.shape[0]
    # numpy writes bypass torch's version counter, which the base-model hash cache and the kept
    # originals trust: an in-place op on an empty slice moves it as the write itself would have.
    p.detach().view(-1)[:0].zero_()


def _fingerprint(p: Any) -> tuple[Any, ...]:
    """What changes whenever a parameter's values may have: its version counter moves on every
    in-place edit, and ``.to()`` or a reload give it other storage."""
    return (p._version, p.data_ptr(), p.dtype, p.device)


def _on_device(state: _Applied, concept: Concept, params: dict[str, Any]) -> dict[str, Any]:
    """The concept's indices as int64 tensors on each parameter's device, made once per UNet
    (on the CPU they share the decoded arrays' memory) and kept for the recently used."""
    import torch

    indices = concept.indices
    source, held = state.on_device.get(concept.digest, (None, {}))
    if source is not indices or any(t.device != params[n].device for n, t in held.items()):
        if source is not None:
            state.on_device_bytes -= _nbytes(held)
        held = {
            n: torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(params[n].device)
            for n, idx in indices.items()
            if len(idx)
        }
        state.on_device[concept.digest] = (indices, held)
        state.on_device_bytes += _nbytes(held)
    state.on_device.move_to_end(concept.digest)
    # Least recently used first, never a concept that is on.
    for digest in list(state.on_device):
        if state.on_device_bytes <= constants.DEVICE_INDEX_BYTES:
            break
        if digest not in state.concepts:
            state.on_device_bytes -= _nbytes(state.on_device.pop(digest)[1])
    return held


def _nbytes(held: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in held.values())


def default_strength(concept: Concept) -> float:
    """The strength a token-bound concept acts with unless told: a composite's parts at
    ``COMPOSITE_STRENGTH`` (their joint steps grew them beside each other, so they need less
    of a boost), any other concept at ``TOKEN_STRENGTH``."""
    return (
        constants.COMPOSITE_STRENGTH if concept.manifest.binding.parts else constants.TOKEN_STRENGTH
    )


def value_strength(concept: Concept, strength: float) -> float:
    """How strongly a token-bound concept acts on the values when its keys act at
    ``strength``: a concept found alone at ``TOKEN_VALUE_STRENGTH / TOKEN_STRENGTH`` of it (the
    keys' boost gets a word its share of attention among other words, and the same boost on the
    values overdrives some subjects' looks), a composite's parts at ``strength`` itself (their
    joint steps grew them beside each other)."""
    if concept.manifest.binding.parts:
        return strength
    return strength * constants.TOKEN_VALUE_STRENGTH / constants.TOKEN_STRENGTH


def _token_bound(concept: Concept) -> bool:
    return concept.manifest.binding.mode == "token"


def _sync_bound(state: _Applied) -> None:
    """Make the binder hold the token-bound concepts that are on; close it when none is."""
    from ._binding import BoundMask

    bound = [c for c in state.concepts.values() if _token_bound(c)]
    if state.binder is None:
        return
    if not bound:
        state.binder.close()  # the pipeline's own processors are back: bitwise as loaded
        state.binder = None
        return
    masks = []
    for c in bound:
        b = c.manifest.binding
        strength = state.strengths.get(c.digest, default_strength(c))
        values = value_strength(c, strength)
        if not b.parts:
            masks.append(BoundMask(c.digest, str(b.word), c.indices, b.anchor, strength, values))
            continue
        for i, part in enumerate(b.parts):  # a composite: each part at its own word
            prefix = f"{i}:"
            own = {k[len(prefix) :]: v for k, v in c.indices.items() if k.startswith(prefix)}
            key = f"{c.digest}:{i}"
            masks.append(BoundMask(key, part.word, own, part.anchor, strength, values))
    state.binder.set(masks)


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; other values pass through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedPipelineError(
            f"device {device!r} asked for, but no CUDA GPU is available", hint="use --device cpu"
        )
    return device


_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    """A torch dtype from a name; ``None`` -> float16 on CUDA, float32 elsewhere."""
    import torch

    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise UnsupportedPipelineError(
            f"unknown dtype {dtype!r}", hint="use float32, float16 or bfloat16"
        )
    return getattr(torch, name)


def load_pipeline(
    base: str | Path | None = None,
    *,
    concepts: Sequence[str | Concept] = (),
    device: str = "auto",
    dtype: Any = None,
    force: bool = False,
    project_dir: Path | None = None,
    locked: bool = False,
    frozen: bool = False,
    session: Session | None = None,
    strength: float | None = None,
) -> Any:
    """Load a Stable Diffusion pipeline and switch ``concepts`` off in it.

    Args:
        base: a local diffusers folder or a Hub repo id (default: the configured base model,
            else the bundled mini model).
        concepts: references or :class:`Concept` objects, as for :func:`apply`.
        device: ``"auto"`` (CUDA if present), ``"cuda"``, ``"cuda:1"``, ``"cpu"``...
        dtype: ``"float16"``, ``"float32"``, ``"bfloat16"`` or a torch dtype (default: float16 on
            CUDA, float32 on CPU).
        force, project_dir, locked, frozen, session, strength: as for :func:`apply`.

    Returns:
        The diffusers pipeline, on ``device``, with the concepts applied (see
        :func:`active_concepts`; undo with :func:`restore`).

    Raises:
        ConfigError: no base given or configured, and the bundled mini model is missing.
        ConesregError: the base model cannot be loaded (not found, offline and not cached).
        and everything :func:`apply` raises.

    Example:
        >>> pipe = conesreg.load_pipeline("runwayml/stable-diffusion-v1-5",
        ...                               concepts=["acme/dog@^1"], device="cuda")  # doctest: +SKIP
        >>> image = pipe("a photo of a dog on the beach").images[0]  # doctest: +SKIP
    """
    s = session or Session()
    base = base or s.config.base_model() or _bundled_base()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    pipe = _from_pretrained(str(base), torch_dtype, offline=s.config.is_offline)
    pipe.to(dev)
    _known_hash(pipe, Path(str(base)).expanduser(), torch_dtype, s)
    if concepts:
        apply(
            pipe,
            concepts,
            force=force,
            project_dir=project_dir,
            locked=locked,
            frozen=frozen,
            session=s,
            strength=strength,
        )
    return pipe


def _known_hash(pipe: Any, folder: Path, torch_dtype: Any, s: Session) -> None:
    """Give a freshly loaded pipeline the base-model hash its weight files had before, so that
    the first apply does not hash 19M weights again (SD 1.x: 35-180 ms on one thread); or
    hash it now and record it for the next load. Only for local folders loaded in float32 or
    float16, whose values hash exactly as the files' (the hash rounds to float16)."""
    import torch

    from ._base_hash import base_model_hash, remember, weights_stamp, weights_targets
    from .errors import ConesregError

    if not folder.is_dir() or torch_dtype not in (torch.float32, torch.float16):
        return
    unet = _unet_of(pipe)
    try:
        # The model was just loaded from these files: their names are its parameters'.
        targets = weights_targets(folder)
        key = [weights_stamp(folder), targets]
    except (ConesregError, OSError):
        return
    if not targets:
        return
    known = s.cache.base_hash(key)
    if known is not None:
        remember(unet, known, targets=targets)
        return
    try:
        s.cache.save_base_hash(key, base_model_hash(unet, targets=targets))
    except ConesregError:
        return  # files and model disagree: the first apply hashes what is loaded


def _bundled_base() -> str:
    """The bundled mini model's folder: the base model when none is given or configured."""
    from .mini.model import mini_model_path

    try:
        return str(mini_model_path())
    except FileNotFoundError as e:
        raise ConfigError(
            str(e),
            hint="pass --base MODEL (a diffusers folder or Hub id) or "
            "`conesreg config set default_base MODEL`",
        ) from None


def _from_pretrained(base: str, torch_dtype: Any, *, offline: bool) -> Any:
    from diffusers import DiffusionPipeline

    from .errors import ConesregError

    local = Path(base).expanduser()
    is_local = local.exists()
    if is_local and not (local / "model_index.json").is_file():
        raise ConesregError(
            f"{base} is not a diffusers pipeline folder (it has no model_index.json)",
            hint="pass a folder written by save_pretrained, or a Hub repo id",
        )
    from diffusers.utils import deprecation_utils

    # diffusers renamed torch_dtype to dtype (and warns on the old name); older ones lack it.
    dtype_kw = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(local) if is_local else base,
            local_files_only=offline or is_local,
            **{dtype_kw: torch_dtype},
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConesregError(
            f"cannot load base model {base!r}: {first}",
            hint="pass a local diffusers folder or a Hub id; offline, the model must already be "
            "in the Hugging Face cache",
        ) from None
    pipe.set_progress_bar_config(disable=True)
    _unet_of(pipe)  # refuse pipelines without a UNet right away
    return pipe


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' chatter (optional-dependency notices, loading bars).

    The CLI calls this before a command loads a pipeline: the variables must be set before the
    first import of transformers/diffusers, which read them then.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
