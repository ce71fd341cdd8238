"""Token-bound concepts: each concept acts at its own word, and nowhere else.

A token-bound concept switches its neurons off only in the cross-attention keys and values of
its class word's tokens, and takes the switched-off weights' share on the word's state in its
own class prompt (its *anchor*), so that the share is the same wherever the word stands in a
prompt; the share is subtracted ``strength`` times (1.5 by default on the keys: in prompts of
several subjects each word gets less of its pixels' attention, and the look fades at 1; 1.25
on the values, where 1.5 overdrives some looks). When a prompt
binds several words, each pixel takes the share of the one word it attends to most and sees
the other words as the base model does, so that one subject's look does not leak into its
neighbours. Other words, the end-of-text and padding tokens and other prompts see the original
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
    ``strength`` is how many times the share is subtracted (1: the neurons switched off);
    ``value_strength``, if given, is that for the values' share, the keys' taking ``strength``.
    """

    key: str
    word: str
    indices: dict[str, np.ndarray]
    anchor: str | None = None
    strength: float = 1.0
    value_strength: float | None = None


@dataclass
class _Record:
    ids: list[list[int]]
    tokenizer: Any
    states: list[Any]  # (B, L, D): what a pipeline may pass on as encoder_hidden_states


@dataclass
class _Plan:
    """Where the masks act in one batch of encoder hidden states.

    A *cell* is one token of one row that some masks bind; cells whose tokens the same masks
    bind form a *group* (one concept's word, or the union of concepts of one word).
    """

    rows: Any  # (n,) the cells' rows
    cols: Any  # (n,) their token positions
    offsets: Any  # (n,) each token's offset within its word
    gid: Any  # (n,) each cell's group
    groups: list[tuple[tuple[int, ...], slice]]  # per group: its masks, its cells
    state: int  # which text-encoder state the rows are (0: last, 1: the one before)
    routed: bool  # some row binds two groups or more: each pixel then takes one group's share
    # Routing works on the bound columns only (m: every row's bound tokens, the union):
    ucols: Any = None  # (m,) the bound token positions
    pos: Any = None  # (n,) each cell's place among ucols
    # and on the rows that bind a word (r of them; the others, such as a classifier-free
    # guidance batch's unconditional half, take plain attention):
    bound: Any = None  # those rows: a slice where they are consecutive, else an index
    rpos: Any = None  # (n,) each cell's row's place among the bound rows
    unit: Any = None  # (r, 1, m, 1) -1/strength of that group, 0 where none
    one_hot: Any = None  # (r, m, G) 1 where the group is bound at the row's column, else 0
    hide: Any = None  # (B, 1, 1, tokens): -inf at the bound rows' bound columns, a mask
    # (layer, "to_k" or "to_v") -> (the weight's version stamp, (n, out) share per cell); also
    # (layer, "kv"): the kept keys and values, and (layer, "columns"): a routed layer's bound
    # columns of them (Binder.project, Binder._bound_columns)
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
        flat = [(cell, g) for g, cs in enumerate(cells.values()) for cell in cs]
        spans, at = [], 0
        for group, cs in cells.items():
            spans.append((group, slice(at, at + len(cs))))
            at += len(cs)
        groups_of_row: dict[int, set[int]] = {}
        for (b, _, _), g in flat:
            groups_of_row.setdefault(b, set()).add(g)

        def column(values: list[int]) -> Any:
            return torch.tensor(values, dtype=torch.long, device=ehs.device)

        plan = _Plan(
            rows=column([c[0] for c, _ in flat]),
            cols=column([c[1] for c, _ in flat]),
            offsets=column([c[2] for c, _ in flat]),
            gid=column([g for _, g in flat]),
            groups=spans,
            state=kind,
            routed=any(len(gs) > 1 for gs in groups_of_row.values()),
        )
        if plan.routed:
            self._dense_plan(plan, ehs.shape[0], ehs.shape[1])
        self._plans = [(r, p) for r, p in self._plans[-3:] if r() is not None]
        # What the plan keeps (the keys and values at every layer) goes with the prompt's
        # embeddings, not with the next prompt's call.
        self._plans.append((weakref.ref(ehs, lambda _: plan.shares.clear()), plan))
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

    def project(self, layer: str, raw: Any, context: Any, attn: Any) -> tuple[Any, Any, _Plan]:
        """The layer's keys and values of ``context``, with the switched-off weights' share
        subtracted at the bound tokens.

        ``raw`` is the encoder hidden states as the UNet got them (recognised by content),
        ``context`` what the projections saw (after the layer's own normalisation, if any).
        The shares depend only on those and the weights, so they are computed once per
        prompt and layer and reused at every step (recomputed if a weight changes). So are
        the keys and values themselves where the projections are plain linear layers (a
        pipeline recomputes the same cross-attention keys and values at every step; this
        saves it, measured in benchmarks/NOTES.md). In a layer that :meth:`attend` routes,
        the keys and values are the original ones: it takes the shares from the plan per
        pixel and hides these columns from the rest.

        Returns:
            (keys, values, the plan with this layer's shares for :meth:`attend`). The keys
            and values may be the ones returned at an earlier step: read them, never write.
        """
        plan = self.plan(raw)
        stamp = _steady(raw, context, attn)
        cached = plan.shares.get((layer, "kv"))
        if stamp is not None and cached is not None and cached[0] == stamp:
            return cached[1], cached[2], plan
        key, value = attn.to_k(context), attn.to_v(context)
        routed = _routes(plan, attn)
        for proj, out, kind in ((attn.to_k, key, "to_k"), (attn.to_v, value, "to_v")):
            share = self._share(plan, layer, kind, proj.weight, context, attn)
            if share is not None and not routed:
                out.index_put_((plan.rows, plan.cols), -share.to(out.dtype), accumulate=True)
        if stamp is not None:
            plan.shares[(layer, "kv")] = (stamp, key, value)
        else:  # nor may the routing take the bound columns of ones kept before
            plan.shares.pop((layer, "kv"), None)
        return key, value, plan

    def _share(
        self, plan: _Plan, layer: str, kind: str, w: Any, context: Any, attn: Any
    ) -> Any | None:
        """Each cell's share of layer ``kind``'s switched-off weights, times its strength
        ((n, out); ``None`` when no mask holds a neuron there), cached per weight version."""
        stamp = (w._version, w.data_ptr())
        cached = plan.shares.get((layer, kind))
        if cached is None or cached[0] != stamp:
            cached = (stamp, self._shares(plan, layer, kind, w, context, attn))
            plan.shares[(layer, kind)] = cached
        return cached[1]

    def _shares(
        self, plan: _Plan, layer: str, kind: str, w: Any, context: Any, attn: Any
    ) -> Any | None:
        out = context.new_zeros(len(plan.rows), w.shape[0])
        found = False
        for group, cells in plan.groups:
            idx = self._union(group, f"{layer}.{kind}.weight", context.device)
            if not len(idx):
                continue
            found = True
            h = context[plan.rows[cells], plan.cols[cells]]
            part = out[cells]  # a view: the group's cells
            mask = self.masks[group[0]]
            if len(group) == 1 and mask.anchor is not None and attn.norm_cross is None:
                anchor = self._anchor(group[0], plan.state, h)
                if anchor is not None:
                    h = anchor[plan.offsets[cells].clamp(min=0).to(anchor.device)]
            rows_w, cols_w = idx // w.shape[1], idx % w.shape[1]
            # (tokens, k): each switched-off scalar's term W[i, j] * h[j], summed per row i
            terms = h[:, cols_w] * w.detach().view(-1)[idx].to(h.dtype)
            part.index_add_(1, rows_w, terms).mul_(self._strength(group, kind))
        return out if found else None

    def _strength(self, group: tuple[int, ...], kind: str) -> float:
        """How many times layer ``kind``'s share is subtracted at the group's word."""
        # Concepts of one word share its tokens: the strongest one's strength holds there.
        if kind == "to_v":
            return max(_value_strength(self.masks[i]) for i in group)
        return max(self.masks[i].strength for i in group)

    def _dense_plan(self, plan: _Plan, batch: int, tokens: int) -> None:
        """The routing's view of the cells: per bound row, by bound column."""
        import torch

        device = plan.rows.device
        bound = sorted(set(plan.rows.tolist()))
        plan.bound = _rows(bound, device)
        place = torch.full((batch,), -1, dtype=torch.long, device=device)
        place[bound] = torch.arange(len(bound), device=device)
        plan.rpos = place[plan.rows]
        plan.ucols, plan.pos = torch.unique(plan.cols, return_inverse=True)
        shape = (len(bound), len(plan.ucols))
        owners = torch.full(shape, -1, dtype=torch.long, device=device)  # -1: no group
        owners[plan.rpos, plan.pos] = plan.gid
        unit = [-1 / self._strength(group, "to_k") for group, _ in plan.groups]
        unit = torch.tensor(unit, device=device)
        plan.unit = torch.zeros(shape, device=device)
        plan.unit[plan.rpos, plan.pos] = unit[plan.gid]
        plan.unit = plan.unit[:, None, :, None]
        groups = torch.arange(len(plan.groups), device=device)
        plan.one_hot = (owners[..., None] == groups).float()
        plan.hide = torch.zeros(batch, 1, 1, tokens, device=device)
        plan.hide[torch.tensor(bound, device=device)[:, None], ..., plan.ucols] = float("-inf")

    def _dense_share(self, plan: _Plan, layer: str, kind: str, heads: int, like: Any) -> Any:
        """Layer ``kind``'s share per bound row and column, (r, heads, m, dim); cached."""
        key = (layer, f"{kind}/dense")
        share = plan.shares[(layer, kind)][1]  # None: no mask holds a neuron in this layer
        cached = plan.shares.get(key)
        if cached is None or cached[0] is not share:
            width = like.shape[-1] * heads
            dense = like.new_zeros(len(plan.one_hot), len(plan.ucols), width)
            if share is not None:
                dense[plan.rpos, plan.pos] = share.to(like.dtype)
            # Head-major and contiguous, as the matmuls of every step read it.
            dense = dense.view(len(dense), len(plan.ucols), heads, -1).transpose(1, 2).contiguous()
            cached = (share, dense)
            plan.shares[key] = cached
        return cached[1]

    def _bound_columns(
        self, plan: _Plan, layer: str, key: Any, value: Any, dk: Any, scale: float
    ) -> tuple[Any, Any]:
        """The bound columns' keys with the keys' share after them, times ``scale``
        ((B, H, 2m, dim)), and their values ((B, H, m, dim)): per step, or once per prompt and
        layer where :meth:`project` kept the keys and values."""
        import torch

        steady = plan.shares.get((layer, "kv"))
        cached = plan.shares.get((layer, "columns"))
        if steady is not None and cached is not None and cached[0] is steady:
            return cached[1], cached[2]
        keys = torch.cat([_columns(key, plan.ucols), dk], 2).mul_(scale)
        values = _columns(value, plan.ucols)
        if steady is not None:
            plan.shares[(layer, "columns")] = (steady, keys, values)
        return keys, values

    def attend(
        self, plan: _Plan, layer: str, query: Any, key: Any, value: Any, mask: Any, scale: float
    ) -> Any:
        """Attention in which each pixel takes the share of one bound word only.

        ``key`` and ``value`` (batch, heads, tokens, dim) are the original projections (in a
        routed layer :meth:`bind` leaves them so). Each pixel is routed to the group whose
        word it attends to most, with the shares at strength 1 (summed over the word's
        tokens, averaged over heads), and takes that group's share at its strength; at the
        other groups' words it sees the original keys and values. Without this, a pixel drawn
        for one subject also reads its neighbours' looks at their words, and in prompts of
        three and four subjects the looks blend (docs/design.md, "Routing").

        Only the bound columns differ between pixels, so the attention is taken in two parts
        and merged by their log-sum-exps: the other columns, the same for every pixel, and
        the bound columns, per pixel.

        Returns:
            (batch, heads, pixels, dim), as scaled dot-product attention returns it.
        """
        import torch

        # The columns no word binds are the same for every pixel: their attention and its
        # log-sum-exp, in one fused pass where torch has one. It is the whole attention of the
        # rows that bind no word (``hide`` leaves their columns alone).
        out, lse = _rest_attention(query, key, value, plan.hide, mask, scale)
        rows = plan.bound
        q, k, v, rest_out, lse_r = (_take(x, rows) for x in (query, key, value, out, lse))
        at = None if mask is None else mask if len(mask) == 1 else _take(mask, rows)
        # Autograd keeps ``out`` for its backward: while it records, nothing is written into it.
        grad = torch.is_grad_enabled()
        if isinstance(rows, slice) and not grad:  # the bound rows' result over their part, a view
            self._routed(plan, layer, q, k, v, at, scale, rest_out, lse_r, into=rest_out)
            return out
        part = self._routed(plan, layer, q, k, v, at, scale, rest_out, lse_r, into=None)
        if isinstance(rows, slice):
            rows = torch.arange(rows.start, rows.stop, device=out.device)
        return out.index_copy(0, rows, part) if grad else out.index_copy_(0, rows, part)

    def _routed(
        self,
        plan: _Plan,
        layer: str,
        query: Any,
        key: Any,
        value: Any,
        mask: Any,
        scale: float,
        out: Any,
        lse_r: Any,
        *,
        into: Any,
    ) -> Any:
        """:meth:`attend` on the bound rows, given the other columns' attention ``out`` and
        its log-sum-exp ``lse_r``; written ``into`` that tensor if one is given."""
        import torch

        u, m = plan.ucols, len(plan.ucols)
        # The per-pixel part is laid out (B, H, columns, pixels) and kept in float32: torch
        # reduces over a few columns many times faster when they are not the innermost dim.
        lse_r = lse_r.float()[:, :, None]  # (B, H, 1, N)
        dk = self._dense_share(plan, layer, "to_k", key.shape[1], query)
        dv = self._dense_share(plan, layer, "to_v", key.shape[1], query)
        # The bound columns' original logits and share_k . q there, in one small matmul.
        keys, values = self._bound_columns(plan, layer, key, value, dk, scale)
        both = (keys @ query.transpose(-1, -2)).float()
        lu, back = both[:, :, :m], both[:, :, m:]
        if mask is not None:
            lu = lu + mask[..., u].float().transpose(-1, -2)
        # Routing sees each word's keys at strength 1, as the finder searched them: measured
        # better for four subjects than routing at the strength drawn with (0.54 against 0.43,
        # benchmarks/NOTES.md) and than routing on the original keys (0.35).
        seen = _weights(lse_r, torch.addcmul(lu, back, plan.unit))[1].sum(1)  # (B, m, N)
        owner = (seen.transpose(1, 2) @ plan.one_hot).argmax(-1)  # (B, N); ties: the first
        # (B, 1, m, N): 1 at the columns of the group each pixel is routed to
        own = plan.one_hot.gather(2, owner[:, None].expand(-1, m, -1))[:, None]
        rest, probs = _weights(lse_r, torch.addcmul(lu, back, own, value=-1))
        rest, probs = rest.to(value.dtype), probs.to(value.dtype)
        bound = probs.transpose(-1, -2) @ values
        bound.sub_((probs * own.to(value.dtype)).transpose(-1, -2) @ dv)
        return torch.addcmul(bound, out, rest.transpose(-1, -2), out=into)


def _value_strength(mask: BoundMask) -> float:
    return mask.strength if mask.value_strength is None else mask.value_strength


def _routes(plan: _Plan, attn: Any) -> bool:
    """Whether :meth:`Binder.attend` computes this layer's attention: several bound words in
    one prompt, where each pixel takes one word's share (a normalised key is not linear in
    the share, so such layers take every share at once)."""
    return plan.routed and getattr(attn, "norm_k", None) is None


def _steady(raw: Any, context: Any, attn: Any) -> tuple[Any, ...] | None:
    """What the layer's keys and values of ``raw`` depend on, where that is all they depend on
    (``None`` otherwise, and then they are computed at every step).

    Plain ``nn.Linear`` projections of the raw states only: a LoRA or offloading wrapper (such
    as accelerate's, which replaces a module's ``forward``), a hook or the layer's own
    normalisation may compute them from more than their weights show.
    Never while gradients are recorded: a kept result would carry one step's graph into the
    next.
    """
    import torch

    if context is not raw or torch.is_grad_enabled():
        return None
    module = torch.nn.modules.module
    # Hooks registered for every module (register_module_forward_hook and _pre_hook) too.
    if getattr(module, "_global_forward_hooks", None) or getattr(
        module, "_global_forward_pre_hooks", None
    ):
        return None
    stamp: list[Any] = [raw._version]
    for proj in (attn.to_k, attn.to_v):
        if type(proj) is not torch.nn.Linear or "forward" in vars(proj):
            return None
        if proj._forward_hooks or proj._forward_pre_hooks:
            return None
        for p in (proj.weight, proj.bias):
            stamp.append(None if p is None else (p._version, p.data_ptr(), p.dtype, p.device))
    return tuple(stamp)


def _rows(rows: list[int], device: Any) -> Any:
    """Rows as a slice where they are consecutive (a view, no copy), else as an index."""
    import torch

    if rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, dtype=torch.long, device=device)


def _take(x: Any, rows: Any) -> Any:
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)


def _columns(x: Any, cols: Any) -> Any:
    """``x[:, :, cols]`` of (B, H, tokens, dim), gathered along the tokens of the (B, tokens,
    H, dim) layout the projections wrote: a contiguous copy per token, several times faster
    than advanced indexing across the heads' strides."""
    return x.transpose(1, 2).index_select(1, cols).transpose(1, 2)


def _fused_attention(device: Any) -> Any | None:
    """torch's fused attention that also returns the log-sum-exp, where there is one."""
    import torch

    if device.type != "cpu":
        return None
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _rest_attention(
    query: Any, key: Any, value: Any, hide: Any, mask: Any, scale: float
) -> tuple[Any, Any]:
    """Attention with the columns ``hide`` holds at -inf left out: its output and its
    log-sum-exp (B, H, N).

    On the CPU, torch's fused kernel returns both (a private op, so its absence is not an
    error); elsewhere they are computed explicitly. A broadcast mask costs the kernel next to
    nothing, where gathering the other columns would copy the keys and values.
    """
    mask = hide if mask is None else mask + hide
    fused = _fused_attention(query.device)
    if fused is not None:
        out, lse = fused(query, key, value, 0.0, False, attn_mask=mask.to(query.dtype), scale=scale)
        return out, lse
    logits = (query * scale) @ key.transpose(-1, -2) + mask.to(query.dtype)
    lse = logits.float().logsumexp(-1)
    return (logits - lse[..., None].to(logits.dtype)).exp() @ value, lse


def _weights(lse_rest: Any, logits: Any) -> tuple[Any, Any]:
    """Softmax over the other columns (given by their log-sum-exp, (B, H, 1, N)) and
    ``logits`` (B, H, m, N): the other columns' total weight and each of these columns'."""
    import torch

    p = torch.cat([lse_rest, logits], 2).softmax(2)
    return p[:, :, :1], p[:, :, 1:]


def _starts(ids: list[int], pattern: Sequence[int]) -> list[int]:
    n = len(pattern)
    return [i for i in range(len(ids) - n + 1) if n and ids[i : i + n] == list(pattern)]


class BoundAttnProcessor:
    """Cross-attention with a :class:`Binder`'s masks applied to the keys and values.

    Scaled-dot-product attention, as diffusers' default processor computes it, with one step
    between projecting the keys and values and attending: the binder's subtraction. When a
    prompt binds two words or more, the attention is computed by :meth:`Binder.attend`
    instead, which routes each pixel to one word. With no masks bound it computes exactly
    what the default processor does.
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
        plan = None
        if self.binder.masks and encoder_hidden_states is not None:
            key, value, plan = self.binder.project(self.layer, raw, context, attn)
        else:
            key, value = attn.to_k(context), attn.to_v(context)
        head = key.shape[-1] // attn.heads
        query, key, value = (
            x.view(batch, -1, attn.heads, head).transpose(1, 2) for x in (query, key, value)
        )
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        if plan is not None and _routes(plan, attn):
            out = self.binder.attend(
                plan, self.layer, query, key, value, attention_mask, attn.scale
            )
        else:
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
