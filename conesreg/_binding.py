"""Token-bound concepts: each concept acts at its own word, and nowhere else.

A token-bound concept switches its neurons off only in the cross-attention keys and values of
its class word's tokens, and takes the switched-off weights' share on the word's state in its
own class prompt (its *anchor*), so that the share is the same wherever the word stands in a
prompt. Other words, the end-of-text and padding tokens and other prompts see the original
weights: concepts of different words compose without touching each other, and a concept leaves
the other classes alone. docs/design.md ("Token-bound concepts") has the method and the
figures. The finder searches the same way (:mod:`conesreg._find`).

Here: where a word stands in token ids (no torch), and :class:`Binder`, which applies the masks
in a diffusers pipeline through an attention processor on each ``attn2`` (torch, imported
lazily).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np


def word_ids(tokenizer: Any, word: str) -> tuple[int, ...]:
    """The token ids that spell ``word`` in a prompt (no start or end token).

    Example:
        >>> word_ids(pipe.tokenizer, "star")  # doctest: +SKIP
        (412,)
    """
    return _word_ids(tokenizer, word)


@lru_cache(maxsize=256)
def _word_ids(tokenizer: Any, word: str) -> tuple[int, ...]:
    return tuple(tokenizer(word, add_special_tokens=False).input_ids)


def word_starts(ids: Sequence[int], tokenizer: Any, word: str) -> list[int]:
    """Where each occurrence of ``word`` starts in ``ids`` (one prompt's ids).

    Example:
        >>> ids = pipe.tokenizer("a photo of a star").input_ids  # doctest: +SKIP
        >>> word_starts(ids, pipe.tokenizer, "star")  # doctest: +SKIP
        [5]
    """
    return _starts(list(ids), word_ids(tokenizer, word))


# -- applying token-bound masks in a pipeline (torch) ---------------------------------------------
#: How many recent text-encoder calls are kept to recognise prompts by their embeddings.
_RECORDS = 8


@dataclass
class BoundMask:
    """One token-bound concept as the binder applies it.

    ``anchor`` is the prompt whose text-encoder state at ``word`` the switched-off weights'
    share is taken on (the concept's class prompt); ``None`` takes it on the state the word
    has in the prompt being drawn (measured against the anchor in docs/design.md).
    """

    key: str
    word: str
    indices: dict[str, np.ndarray]
    anchor: str | None = None


@dataclass
class _Record:
    ids: list[list[int]]
    tokenizer: Any
    states: list[Any]  # (B, L, D): what a pipeline may pass on as encoder_hidden_states


@dataclass
class _Plan:
    """Where the masks act in one batch of encoder hidden states."""

    groups: list[tuple[Any, Any, Any, tuple[int, ...]]]  # (rows, cols, word offsets, masks)
    state: int  # which text-encoder state the rows are (0: last, 1: the one before)
    # (layer, "to_k" or "to_v") -> (the weight's version stamp, [(rows, cols, share)])
    shares: dict[tuple[str, str], Any] = field(default_factory=dict)


class Binder:
    """Applies token-bound masks to one pipeline.

    An attention processor on each ``attn2`` (:class:`BoundAttnProcessor`) subtracts the
    switched-off weights' share from the keys and values at the tokens each mask binds; a hook
    on each text encoder remembers which token ids made which embeddings, since a UNet sees
    only embeddings. The weights are never written, so :meth:`close` (which puts the original
    processors back) leaves the pipeline bitwise as it was.

    Example:
        >>> binder = Binder(pipe)  # doctest: +SKIP
        >>> star = BoundMask("star", "star", mask, anchor="a photo of a star")  # doctest: +SKIP
        >>> binder.set([star])  # doctest: +SKIP
        >>> image = pipe("a photo of a star and a heart").images[0]  # doctest: +SKIP
        >>> binder.close()  # doctest: +SKIP
    """

    def __init__(self, pipe: Any) -> None:
        self.unet = pipe.unet
        self.masks: list[BoundMask] = []
        self.records: list[_Record] = []
        self.encoders = [
            (enc, tok)
            for enc, tok in (
                (getattr(pipe, "text_encoder", None), getattr(pipe, "tokenizer", None)),
                (getattr(pipe, "text_encoder_2", None), getattr(pipe, "tokenizer_2", None)),
            )
            if enc is not None and tok is not None
        ]
        # (weak reference to an encoder_hidden_states tensor, its plan): a pipeline passes the
        # same tensor to every layer at every step, so a prompt is recognised once. Tensors
        # compare by value, so a weak-keyed dict cannot hold them: identity is what counts.
        self._plans: list[tuple[Any, _Plan]] = []
        self._indices: dict[tuple[Any, ...], Any] = {}
        self._anchors: dict[tuple[int, int, Any, Any], Any] = {}
        self._warned = False  # about prompts it could not recognise, once
        self._hooks = [
            enc.register_forward_hook(self._recorder(tok), with_kwargs=True)
            for enc, tok in self.encoders
        ]
        self._processors: dict[str, Any] = {}
        for name, module in self.unet.named_modules():
            if name.endswith("attn2") and hasattr(module, "set_processor"):
                self._processors[name] = module.processor
                module.set_processor(BoundAttnProcessor(self, name))

    def set(self, masks: Sequence[BoundMask]) -> None:
        """Bind these masks from now on (replacing those before)."""
        self.masks = list(masks)
        self._plans.clear()
        self._indices.clear()
        self._anchors.clear()

    def close(self) -> None:
        """Put the original processors back and remove the hooks."""
        for h in self._hooks:
            h.remove()
        for name, proc in self._processors.items():
            self.unet.get_submodule(name).set_processor(proc)
        self._hooks, self._processors, self.masks = [], {}, []

    # -- recognising prompts
    def _recorder(self, tokenizer: Any) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            ids = args[0] if args else kwargs.get("input_ids")
            if ids is None:
                return
            states = [out[0].detach()]
            hidden = getattr(out, "hidden_states", None)
            if hidden:
                states.append(hidden[-2].detach())  # what SDXL passes on
            self.records.append(_Record(ids.tolist(), tokenizer, states))
            del self.records[:-_RECORDS]

        return hook

    def _row_ids(self, row: Any) -> tuple[list[int], Any, int] | None:
        """The token ids, tokenizer and state kind that made this row of hidden states."""
        import torch

        for rec in reversed(self.records):
            for kind, state in enumerate(rec.states):
                if state.shape[1] != row.shape[0] or state.shape[2] > row.shape[1]:
                    continue
                part = row[:, : state.shape[2]]  # SDXL: the first encoder's part
                for b in range(state.shape[0]):
                    if torch.equal(state[b].to(part.device, part.dtype), part):
                        return rec.ids[b], rec.tokenizer, kind
        return None

    def plan(self, ehs: Any) -> _Plan:
        """Where each mask acts in ``ehs`` (recognised by content, planned once per tensor)."""
        import weakref

        import torch

        for ref, known in self._plans:
            if ref() is ehs:
                return known
        cells: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
        matched, kind = False, 0
        for b in range(ehs.shape[0]):
            found = self._row_ids(ehs[b])
            if found is None:
                continue
            ids, tok, kind = found
            matched = True
            per_token: dict[int, tuple[set[int], int]] = {}
            for mi, m in enumerate(self.masks):
                pattern = word_ids(tok, m.word)
                for start in _starts(ids, pattern):
                    for j in range(len(pattern)):
                        per_token.setdefault(start + j, (set(), j))[0].add(mi)
            for pos, (ms, j) in per_token.items():
                cells.setdefault(tuple(sorted(ms)), []).append((b, pos, j))
        if not matched and self.masks and not self._warned and ehs.abs().sum() > 0:
            import warnings

            from .errors import ConesregWarning

            self._warned = True
            warnings.warn(
                "token-bound concepts found no prompt they know in this call (were "
                "prompt_embeds passed in?); they act only on prompts given as text",
                ConesregWarning,
                stacklevel=2,
            )
        plan = _Plan(
            [
                (
                    torch.tensor([c[0] for c in cs], device=ehs.device),
                    torch.tensor([c[1] for c in cs], device=ehs.device),
                    torch.tensor([c[2] for c in cs], device=ehs.device),
                    group,
                )
                for group, cs in cells.items()
            ],
            kind,
        )
        self._plans = [(r, p) for r, p in self._plans[-3:] if r() is not None]
        self._plans.append((weakref.ref(ehs), plan))
        return plan

    # -- the masks' share
    def _union(self, group: tuple[int, ...], name: str, device: Any) -> Any:
        """The union of the group's flat indices into parameter ``name``, on ``device``."""
        import torch

        key = (group, name, device)
        if key not in self._indices:
            parts = [self.masks[i].indices.get(name) for i in group]
            kept = [p for p in parts if p is not None and len(p)]
            idx = np.unique(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
            self._indices[key] = torch.from_numpy(idx.astype(np.int64)).to(device)
        return self._indices[key]

    def _anchor(self, mi: int, kind: int, like: Any) -> Any:
        """Mask ``mi``'s anchor states (word tokens, D) in the state kind the rows are."""
        import torch

        key = (mi, kind, like.device, like.dtype)
        if key not in self._anchors:
            m = self.masks[mi]
            parts = []
            for enc, tok in self.encoders:
                ids = tok(
                    m.anchor,
                    padding="max_length",
                    max_length=tok.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids
                start = next(iter(_starts(ids[0].tolist(), word_ids(tok, m.word))), None)
                if start is None:
                    break
                with torch.no_grad():
                    out = enc(ids.to(enc.device), output_hidden_states=kind == 1)
                state = out[0] if kind == 0 else out.hidden_states[-2]
                parts.append(state[0, start : start + len(word_ids(tok, m.word))])
                if sum(p.shape[-1] for p in parts) >= like.shape[-1]:
                    break
            anchor = torch.cat(parts, -1) if parts else None
            if anchor is None or anchor.shape[-1] != like.shape[-1]:
                anchor = None  # the anchor cannot be formed like these rows: use the prompt's
            self._anchors[key] = None if anchor is None else anchor.to(like.device, like.dtype)
        return self._anchors[key]

    def bind(self, layer: str, raw: Any, context: Any, key: Any, value: Any, attn: Any) -> None:
        """Subtract the switched-off weights' share from ``key`` and ``value``, in place.

        ``raw`` is the encoder hidden states as the UNet got them (recognised by content),
        ``context`` what the projections saw (after the layer's own normalisation, if any).
        The shares depend only on those and the weights, so they are computed once per
        prompt and layer and reused at every step (recomputed if a weight changes).
        """
        plan = self.plan(raw)
        for proj, out, kind in ((attn.to_k, key, "to_k"), (attn.to_v, value, "to_v")):
            w = proj.weight
            stamp = (w._version, w.data_ptr())
            cached = plan.shares.get((layer, kind))
            if cached is None or cached[0] != stamp:
                cached = (stamp, self._shares(plan, layer, kind, w, context, attn))
                plan.shares[(layer, kind)] = cached
            for rows, cols, share in cached[1]:
                out.index_put_((rows, cols), -share.to(out.dtype), accumulate=True)

    def _shares(
        self, plan: _Plan, layer: str, kind: str, w: Any, context: Any, attn: Any
    ) -> list[tuple[Any, Any, Any]]:
        out = []
        for rows, cols, offsets, group in plan.groups:
            idx = self._union(group, f"{layer}.{kind}.weight", context.device)
            if not len(idx):
                continue
            h = context[rows, cols]
            mask = self.masks[group[0]]
            if len(group) == 1 and mask.anchor is not None and attn.norm_cross is None:
                anchor = self._anchor(group[0], plan.state, h)
                if anchor is not None:
                    h = anchor[offsets.clamp(min=0).to(anchor.device)]
            rows_w, cols_w = idx // w.shape[1], idx % w.shape[1]
            # (tokens, k): each switched-off scalar's term W[i, j] * h[j], summed per row i
            terms = h[:, cols_w] * w.detach().view(-1)[idx].to(h.dtype)
            share = h.new_zeros(len(h), w.shape[0]).index_add_(1, rows_w, terms)
            out.append((rows, cols, share))
        return out


def _starts(ids: list[int], pattern: Sequence[int]) -> list[int]:
    n = len(pattern)
    return [i for i in range(len(ids) - n + 1) if n and ids[i : i + n] == list(pattern)]


class BoundAttnProcessor:
    """Cross-attention with a :class:`Binder`'s masks applied to the keys and values.

    Scaled-dot-product attention, as diffusers' default processor computes it, with one step
    between projecting the keys and values and attending: the binder's subtraction. With no
    masks bound it computes exactly what the default processor does.
    """

    def __init__(self, binder: Binder, layer: str) -> None:
        self.binder = binder
        self.layer = layer

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        temb: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        import torch.nn.functional as F

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, ch, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, hh * ww).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, seq = context.shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        raw = context
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        if self.binder.masks and encoder_hidden_states is not None:
            self.binder.bind(self.layer, raw, context, key, value, attn)
        head = key.shape[-1] // attn.heads
        query, key, value = (
            x.view(batch, -1, attn.heads, head).transpose(1, 2) for x in (query, key, value)
        )
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, ch, hh, ww)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
