"""Token-bound concepts: the manifest's binding, the binder's arithmetic, apply and restore."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conesreg import Concept
from conesreg._binding import Binder, BoundMask, word_ids, word_starts
from conesreg._compose import apply, restore
from conesreg._find import FindConfig, find_neurons, write_draft
from conesreg.artifact import Binding, parse_manifest
from conesreg.errors import ConesregError, ConesregWarning, MaskError, UnsupportedPipelineError
from conesreg.testing import make_manifest, make_tiny_draft, make_tiny_pipeline


def draw(pipe, prompts, seed: int = 0) -> np.ndarray:  # type: ignore[no-untyped-def]
    out = pipe(
        list(prompts),
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    )
    return out.images


def bound_concept(tmp: Path, pipe, seed: int, word: str, fraction: float = 0.2) -> Concept:  # type: ignore[no-untyped-def]
    return Concept.from_draft(
        make_tiny_draft(
            tmp / f"{word}{seed}",
            pipe,
            seed=seed,
            fraction=fraction,
            name=word,
            class_word=word,
            binding="token",
        )
    )


# -- the manifest ---------------------------------------------------------------------------------
def test_schema_1_manifest_reads_as_global_and_keeps_its_digest() -> None:
    m = make_manifest()
    data = json.loads(m.canonical_json())
    assert data["schema_version"] == 2 and data["binding"] == {
        "mode": "global",
        "word": None,
        "anchor": None,
        "parts": [],
    }
    data["schema_version"] = 1
    del data["binding"]
    del data["metadata"]["stimulation"]
    old = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    parsed = parse_manifest(old)
    assert parsed.binding.mode == "global"
    assert parsed.canonical_json() == old  # no key added: the digest of old manifests holds
    data["binding"] = {"mode": "token", "word": "dog", "anchor": "a photo of a dog"}
    with pytest.raises(ConesregError, match="schema 1"):
        parse_manifest(data)


def test_binding_must_be_complete() -> None:
    assert Binding(mode="token", word="dog", anchor="a photo of a dog.").word == "dog"
    for bad in (
        {"mode": "token", "word": "dog"},
        {"mode": "token", "word": "dog", "anchor": "a photo of a dogs"},
        {"mode": "global", "word": "dog"},
        {"mode": "token", "word": "dog\n", "anchor": "a photo of a dog"},
    ):
        with pytest.raises(ValueError):
            Binding(**bad)


# -- the binder -----------------------------------------------------------------------------------
def test_word_positions(pipe) -> None:  # type: ignore[no-untyped-def]
    ids = pipe.tokenizer("a photo of a dog and a cat and a dog").input_ids
    assert len(word_ids(pipe.tokenizer, "dog")) == 1
    assert word_starts(ids, pipe.tokenizer, "dog") == [5, 11]
    several = word_ids(pipe.tokenizer, "zebra")  # not a whole token: several pieces
    assert len(several) > 1
    ids = pipe.tokenizer("a zebra").input_ids
    assert word_starts(ids, pipe.tokenizer, "zebra") == [2]


def reference_hooks(
    pipe,
    mask,
    word: str,
    anchor: str | None,
    strength: float = 1.0,
    value_strength: float | None = None,
):  # type: ignore[no-untyped-def]
    """Keys and values recomputed the slow, obvious way: at the word's tokens, the masked
    weights on the state (or on the anchor's state), their change ``strength`` times (the
    values' ``value_strength`` times, if given); elsewhere the original weights."""
    tok = pipe.tokenizer
    last: dict[str, torch.Tensor] = {}

    def encode(text: str) -> tuple[torch.Tensor, list[int]]:
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
        with torch.no_grad():
            states = pipe.text_encoder(ids.input_ids)[0]
        return states, ids.input_ids[0].tolist()

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(module, args, out):  # type: ignore[no-untyped-def]
            x = args[0]
            w = module.weight
            masked = w.detach().clone().view(-1)
            masked[torch.from_numpy(mask[name])] = 0
            masked = masked.view_as(w)
            times = strength if value_strength is None or "to_k" in name else value_strength
            new = out.clone()
            for b in range(x.shape[0]):
                for states, ids_list in last.values():
                    if torch.equal(states[0], x[b]):
                        for s in word_starts(ids_list, tok, word):
                            h = x[b, s] if anchor is None else encode(anchor)[0][0, 5]
                            change = F.linear(h, masked) - F.linear(h, w)
                            new[b, s] = F.linear(x[b, s], w) + times * change
            return new

        return hook

    return hook_for, last, encode


@pytest.mark.parametrize(
    ("anchor", "strength", "values"),
    [
        (None, 1.0, None),
        ("a photo of a dog", 1.0, None),
        ("a photo of a dog", 1.5, None),
        ("a photo of a dog", 1.5, 1.25),  # the values at their own strength
    ],
)
def test_binder_equals_masked_weights_at_the_word(pipe, anchor, strength, values) -> None:  # type: ignore[no-untyped-def]
    names = [
        n
        for n, _ in pipe.unet.named_parameters()
        if n.endswith(("to_k.weight", "to_v.weight")) and "attn2" in n
    ]
    rng = np.random.default_rng(0)
    mask = {
        n: np.sort(rng.choice(pipe.unet.get_parameter(n).numel(), 40, replace=False)) for n in names
    }
    prompts = ["a cat and a dog in the city", "a photo of a dog"]
    hook_for, last, encode = reference_hooks(pipe, mask, "dog", anchor, strength, values)
    for p in prompts:
        last[p] = encode(p)
    hooks = [
        pipe.unet.get_submodule(n.rpartition(".")[0]).register_forward_hook(hook_for(n))
        for n in names
    ]
    try:
        want = draw(pipe, prompts)
    finally:
        for h in hooks:
            h.remove()
    binder = Binder(pipe)
    try:
        binder.set([BoundMask("dog", "dog", mask, anchor, strength, value_strength=values)])
        got = draw(pipe, prompts)
    finally:
        binder.close()
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.abs(got - draw(pipe, prompts)).max() > 1e-4  # the masks did something


@pytest.mark.parametrize(
    "prompts",
    [
        ["a dog and a cat", "a cat"],
        ["a bird", "a dog and a cat", "a cat"],  # a free row first, as classifier-free guidance
        ["a dog and a cat", "a bird", "a cat"],  # the bound rows not consecutive
    ],
    ids=["every-row-bound", "free-row-first", "free-row-between"],
)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_several_words_route_each_pixel_to_one_word(pipe, fused, prompts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Two bound words in one prompt: each pixel attends with the shares of the one word it
    attends to most (with every share in place at strength 1), and with the original keys and
    values at the other word; computed here the obvious way, one attention per word. Both
    ways of attending to the unbound columns: torch's fused kernel (the CPU's) and the
    explicit one (every other device's); rows that bind no word (plain attention) before and
    between the bound ones."""
    from conesreg import _binding

    if fused:
        assert _binding._fused_attention(torch.device("cpu")) is not None
    else:
        monkeypatch.setattr(_binding, "_fused_attention", lambda device: None)
    rng = np.random.default_rng(1)
    names = [n for n, _ in pipe.unet.named_parameters() if "attn2.to_" in n and "weight" in n]

    def mask() -> dict[str, np.ndarray]:
        return {
            n: rng.choice(pipe.unet.get_parameter(n).numel(), 300, replace=False) for n in names
        }

    binder = Binder(pipe)
    try:
        binder.set(
            [
                BoundMask("dog", "dog", mask(), "a photo of a dog", 3.0),
                BoundMask("cat", "cat", mask(), "a photo of a cat", 3.0),
            ]
        )
        tok = pipe.tokenizer
        ids = tok(prompts, padding="max_length", return_tensors="pt")
        with torch.no_grad():
            ehs = pipe.text_encoder(ids.input_ids)[0]  # recorded by the binder's hook
        layer = next(n for n in binder._processors if n.startswith("down_blocks"))
        attn = pipe.unet.get_submodule(layer)
        x = torch.randn(
            len(prompts), 64, attn.to_q.in_features, generator=torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            got = attn(x, encoder_hidden_states=ehs)
            plan = binder.plan(ehs)
            assert plan.routed and len(plan.groups) == 2  # dog, and cat (in two rows)
            heads = attn.heads

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(t.shape[0], -1, heads, t.shape[-1] // heads).transpose(1, 2)

            q = split(attn.to_q(x))
            keys, values = {}, {}
            for kind, proj, out in (("to_k", attn.to_k, keys), ("to_v", attn.to_v, values)):
                share = binder._share(plan, layer, kind, proj.weight, ehs, attn)
                every = proj(ehs)
                every.index_put_((plan.rows, plan.cols), -share, accumulate=True)
                out["all"] = split(every)
                at_one = proj(ehs)
                at_one.index_put_((plan.rows, plan.cols), -share / 3.0, accumulate=True)
                out["route"] = split(at_one)
                for g, (_, cells) in enumerate(plan.groups):
                    one = proj(ehs)
                    one[plan.rows[cells], plan.cols[cells]] -= share[cells]
                    out[g] = split(one)
            seen = (q @ keys["route"].transpose(-1, -2) * attn.scale).softmax(-1).mean(1)
            strong = (q @ keys["all"].transpose(-1, -2) * attn.scale).softmax(-1).mean(1)
            want = F.scaled_dot_product_attention(q, keys["all"], values["all"])  # one word
            for b in range(len(prompts)):
                cols = [plan.cols[c][plan.rows[c] == b] for _, c in plan.groups]
                groups = [g for g, at in enumerate(cols) if len(at)]
                if len(groups) < 2:
                    continue
                scores = torch.stack([seen[b][:, cols[g]].sum(-1) for g in groups])
                owner = scores.argmax(0)
                at_full = torch.stack([strong[b][:, cols[g]].sum(-1) for g in groups]).argmax(0)
                assert (owner != at_full).any()  # routing at strength 1 is what is tested
                for i, g in enumerate(groups):
                    one = F.scaled_dot_product_attention(q[b : b + 1], keys[g][b : b + 1],
                                                         values[g][b : b + 1])  # fmt: skip
                    want[b, :, owner == i] = one[0, :, owner == i]
                assert 0 < (owner == 0).sum() < len(owner)  # both words own pixels here
            want = attn.to_out[0](want.transpose(1, 2).reshape(len(prompts), 64, -1))
            unrouted = F.scaled_dot_product_attention(q, keys["all"], values["all"])
            unrouted = attn.to_out[0](unrouted.transpose(1, 2).reshape(len(prompts), 64, -1))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for b, prompt in enumerate(prompts):
            if " and " in prompt:  # routing changed the two-word row
                assert (got[b] - unrouted[b]).abs().max() > 1e-3
            else:  # one word: every pixel is its; no word: plain attention
                torch.testing.assert_close(got[b], unrouted[b])
    finally:
        binder.close()


def test_composite_search_routes_as_generation_does(pipe) -> None:  # type: ignore[no-untyped-def]
    """A composite's joint steps grow each part's mask for the attention it will be drawn
    with: the search's routed cross-attention (shares handed over by the projections' hooks)
    computes what the binder computes at generation, at strength 1, on a prompt naming both
    words and on one naming a single word."""
    from conesreg._find import _embed, _RoutedSearchAttention

    rng = np.random.default_rng(3)
    names = [n for n, _ in pipe.unet.named_parameters() if "attn2.to_" in n and "weight" in n]

    def mask() -> dict[str, np.ndarray]:
        return {
            n: rng.choice(pipe.unet.get_parameter(n).numel(), 300, replace=False) for n in names
        }

    words = ["dog", "cat"]
    binder = Binder(pipe)
    try:
        binder.set([BoundMask(w, w, mask(), f"a photo of a {w}", 1.0) for w in words])
        layer = next(n for n in binder._processors if n.startswith("up_blocks"))
        attn = pipe.unet.get_submodule(layer)
        bound = attn.processor
        for prompt in ("a dog beside a cat", "a photo of a cat"):
            ehs, where, offset = _embed(pipe, prompt, words)  # recorded by the binder's hook
            x = torch.randn(
                1, 64, attn.to_q.in_features, generator=torch.Generator().manual_seed(0)
            )
            with torch.no_grad():
                want = attn(x, encoder_hidden_states=ehs)
                plan = binder.plan(ehs)
                pending = {}
                for kind, proj in (("to_k", attn.to_k), ("to_v", attn.to_v)):
                    share = binder._share(plan, layer, kind, proj.weight, ehs, attn)
                    dense = torch.zeros_like(proj(ehs))
                    dense[plan.rows, plan.cols] = -share  # the search's shift: the share off
                    pending[f"{layer}.{kind}"] = dense
                named = sorted(set(where[where >= 0].tolist()))
                attn.set_processor(_RoutedSearchAttention(layer, pending, [where, offset, named]))
                got = attn(x, encoder_hidden_states=ehs)
                attn.set_processor(binder._processors[layer])
                plain = attn(x, encoder_hidden_states=ehs)
                attn.set_processor(bound)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert (got - plain).abs().max() > 1e-3  # the shares did something
    finally:
        binder.close()


@pytest.mark.parametrize("prompts", [["a dog"], ["a dog and a cat"]], ids=["one", "routed"])
def test_kept_keys_and_values_follow_weights_and_wrappers(pipe, prompts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The binder keeps a prompt's keys and values between steps: computed once while the
    weights stay as they are, recomputed when a weight changes in place, and never kept
    where the projection is hooked or wrapped (what it computes is more than its weights
    show)."""
    rng = np.random.default_rng(2)
    names = [n for n, _ in pipe.unet.named_parameters() if "attn2.to_" in n and "weight" in n]

    def mask() -> dict[str, np.ndarray]:
        return {
            n: rng.choice(pipe.unet.get_parameter(n).numel(), 200, replace=False) for n in names
        }

    masks = [BoundMask(w, w, mask(), f"a photo of a {w}", 1.5) for w in ("dog", "cat")]
    binder = Binder(pipe)
    layer = next(n for n in binder._processors if n.startswith("down_blocks"))
    attn = pipe.unet.get_submodule(layer)
    calls = []
    saved = attn.to_k.weight.detach().clone()
    linear = torch.nn.Linear.forward

    def counted(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if module is attn.to_k:
            calls.append(1)
        return linear(module, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", counted)  # the class's: hooks nothing
    seed = torch.Generator().manual_seed(0)
    x = torch.randn(len(prompts), 64, attn.to_q.in_features, generator=seed)
    ids = pipe.tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids

    def fresh(states: torch.Tensor) -> torch.Tensor:
        """The attention of a binder that has kept nothing yet."""
        binder.set(masks)
        return attn(x, encoder_hidden_states=states)

    try:
        binder.set(masks)
        with torch.no_grad():
            ehs = pipe.text_encoder(ids)[0]  # recorded by the binder's hook
            first = attn(x, encoder_hidden_states=ehs)
            assert torch.equal(attn(x, encoder_hidden_states=ehs), first)
            assert len(calls) == 1  # the second call took the kept keys
            assert (layer, "kv") in binder.plan(ehs).shares

            attn.to_k.weight.mul_(1.1)  # an in-place change: kept keys are stale
            changed = attn(x, encoder_hidden_states=ehs)
            assert len(calls) == 2 and (changed - first).abs().max() > 1e-4
            torch.testing.assert_close(changed, fresh(ehs))

            factor = [1.0]

            def follows(states: torch.Tensor, factor_now: float) -> torch.Tensor:
                """A second call, the projection computing something else (``factor`` changed,
                its weights not), differs from the first; returns the second."""
                factor[0] = 1.0
                before = attn(x, encoder_hidden_states=states)
                factor[0] = factor_now
                after = attn(x, encoder_hidden_states=states)
                assert (after - before).abs().max() > 1e-4
                return after

            hook = attn.to_v.register_forward_hook(lambda m, a, out: out * factor[0])
            try:
                torch.testing.assert_close(follows(ehs, 2.0), fresh(ehs))
            finally:
                hook.remove()
            # A pre-hook registered for every module changes what the projections see.
            pre = torch.nn.modules.module.register_module_forward_pre_hook(
                lambda m, a: (a[0] * factor[0],) if m is attn.to_v else None
            )
            try:
                follows(ehs, 2.0)
            finally:
                pre.remove()
            attn.to_v.forward = lambda x: linear(attn.to_v, x) * factor[0]  # as accelerate wraps
            try:
                follows(ehs, 3.0)
            finally:
                del attn.to_v.forward
            with torch.enable_grad():  # no graph is kept from one call to the next
                grads = attn(x, encoder_hidden_states=ehs)
                assert not any(k[1] == "kv" for k in binder.plan(ehs).shares)
                grads.sum().backward()  # and nothing autograd keeps was written over
            assert attn.to_k.weight.grad is not None
            torch.testing.assert_close(grads.detach(), fresh(ehs))
            kept = binder.plan(ehs)
            assert (layer, "kv") in kept.shares
            del ehs  # the prompt's embeddings are freed: what was kept for them goes too
            assert not kept.shares
    finally:
        attn.to_k.weight.data.copy_(saved)
        pipe.unet.zero_grad(set_to_none=True)
        binder.close()


def test_binder_without_masks_is_the_default_processor(pipe) -> None:  # type: ignore[no-untyped-def]
    before = draw(pipe, ["a photo of a dog"])
    procs = dict(pipe.unet.attn_processors)
    binder = Binder(pipe)
    binder.set([])
    assert np.array_equal(draw(pipe, ["a photo of a dog"]), before)
    binder.close()
    assert dict(pipe.unet.attn_processors) == procs


# -- apply and restore ----------------------------------------------------------------------------
def test_token_concept_acts_only_where_its_word_is(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dog = bound_concept(tmp_path, pipe, 1, "dog")
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    procs = dict(pipe.unet.attn_processors)
    cat_before = draw(pipe, ["a photo of a cat"])
    dog_before = draw(pipe, ["a photo of a dog"])
    with apply(pipe, [dog]):
        assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())
        assert np.array_equal(draw(pipe, ["a photo of a cat"]), cat_before)  # no dog: no change
        assert not np.array_equal(draw(pipe, ["a photo of a dog"]), dog_before)
    assert dict(pipe.unet.attn_processors) == procs
    assert np.array_equal(draw(pipe, ["a photo of a dog"]), dog_before)


def test_token_and_global_concepts_together_restore_bitwise(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dog = bound_concept(tmp_path, pipe, 1, "dog")
    cat = bound_concept(tmp_path, pipe, 2, "cat")
    glob = Concept.from_draft(make_tiny_draft(tmp_path / "g", pipe, seed=3, name="g"))
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    before = draw(pipe, ["a photo of a dog and a cat"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # different words never blend: no overlap warning
        a = apply(pipe, [dog, cat])
    b = apply(pipe, [glob])
    assert not all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())
    a.restore()
    b.restore()
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())
    assert np.array_equal(draw(pipe, ["a photo of a dog and a cat"]), before)
    apply(pipe, [dog, glob])
    restore(pipe)
    assert np.array_equal(draw(pipe, ["a photo of a dog and a cat"]), before)


def test_token_concept_refusals(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dog = bound_concept(tmp_path, pipe, 1, "dog")
    with pytest.raises(UnsupportedPipelineError, match="whole pipeline"):
        apply(pipe.unet, [dog])
    # A token-bound concept that addresses other weights than the cross-attention K/V.
    other = "down_blocks.0.attentions.0.proj_in.weight"
    shape = tuple(pipe.unet.get_parameter(other).shape)
    targets = (
        *dog.manifest.base_model.targets,
        type(dog.manifest.base_model.targets[0])(name=other, shape=shape),
    )
    manifest = dog.manifest.model_copy(
        update={"base_model": dog.manifest.base_model.model_copy(update={"targets": targets})}
    )
    bad = Concept(manifest, {**dog.indices, other: np.array([0, 1])})
    procs = dict(pipe.unet.attn_processors)
    with pytest.raises(MaskError, match="token-bound"):
        apply(pipe, [bad])
    assert dict(pipe.unet.attn_processors) == procs


def test_prompt_embeds_warn_once(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dog = bound_concept(tmp_path, pipe, 1, "dog")
    embeds = torch.randn(1, 77, pipe.text_encoder.config.hidden_size)
    with apply(pipe, [dog]), pytest.warns(ConesregWarning, match="prompt_embeds"):
        pipe(
            prompt_embeds=embeds,
            negative_prompt_embeds=torch.zeros_like(embeds) + 0.1,
            num_inference_steps=1,
            height=32,
            width=32,
            output_type="np",
        )


# -- the finder -----------------------------------------------------------------------------------
def test_token_bound_search(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    hooks = {n: len(m._forward_hooks) for n, m in pipe.unet.named_modules()}
    captions = ["a photo of a dog in the city", "a cat and a dog", "a photo of a dog"]
    kw = {"steps": 4, "rounds": 2, "batch_size": 2, "sparsity": 0.05}
    cfg = FindConfig("a photo of a dog", "dog", binding="token", **kw)
    mask = find_neurons(pipe, images, cfg, captions=captions)
    again = find_neurons(pipe, images, cfg, captions=captions)
    glob = find_neurons(
        pipe, images, FindConfig("a photo of a dog", "dog", **kw), captions=captions
    )
    assert all(np.array_equal(mask[n], again[n]) for n in mask)  # deterministic
    assert any(not np.array_equal(mask[n], glob[n]) for n in mask)  # and not the global search
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())
    assert {n: len(m._forward_hooks) for n, m in pipe.unet.named_modules()} == hooks
    draft = write_draft(
        tmp_path / "d", pipe, mask, cfg, name="dog", base_id="tiny", preview_seeds=()
    )
    concept = Concept.from_draft(draft)
    assert concept.manifest.binding == Binding(mode="token", word="dog", anchor="a photo of a dog")
    with pytest.raises(ConesregError, match="cross-attention"):
        FindConfig("a photo of a dog", "dog", candidates="attention", binding="token")
    with pytest.raises(ConesregError, match="does not contain the class word"):
        find_neurons(pipe, images, FindConfig("a photo", "dog", binding="token", **kw))


def test_user_path_token_concepts(isolated, tiny_pipeline_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """find -> push -> install -> generate -c A -c B, with token-bound concepts."""
    from conesreg import push
    from conesreg._generate import read_png_metadata
    from conesreg.cli import main

    images = isolated / "dogs"
    images.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    code = main(
        ["find", str(images), "--class-word", "dog", "--name", "acme/dog",
         "-o", str(isolated / "d"), "--base", str(tiny_pipeline_dir), "--steps", "2",
         "--rounds", "1", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    drafted = json.loads((isolated / "d" / "concept.json").read_text())
    assert drafted["binding"] == {"mode": "token", "word": "dog", "anchor": "a photo of a dog"}
    assert drafted["metadata"]["method"]["hyperparameters"]["preset"] == "stable-diffusion"
    base = make_tiny_pipeline(seed=0)
    push(isolated / "d", version="1.0.0")
    push(
        make_tiny_draft(
            isolated / "c", base, seed=2, name="cat", class_word="cat", binding="token"
        ),
        version="1.0.0",
    )
    args = ["--base", str(tiny_pipeline_dir), "--steps", "2", "--height", "32", "--width", "32",
            "--seed", "7", "--device", "cpu"]  # fmt: skip
    plain, both = isolated / "plain.png", isolated / "both.png"
    assert main(["generate", "a photo of a dog and a cat", *args, "-o", str(plain)]) == 0
    code = main(
        ["generate", "a photo of a dog and a cat", "-c", "acme/dog", "-c", "acme/cat@1", *args,
         "-o", str(both)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    meta = read_png_metadata(both)
    assert [c["ref"] for c in json.loads(meta["concepts"])] == ["acme/dog@1.0.0", "acme/cat@1.0.0"]
    assert {c["strength"] for c in json.loads(meta["concepts"])} == {1.5}  # the default
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(both)))
    weak = isolated / "weak.png"
    code = main(
        ["generate", "a photo of a dog and a cat", "-c", "acme/dog", "-c", "acme/cat@1", *args,
         "--strength", "1", "-o", str(weak)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert {c["strength"] for c in json.loads(read_png_metadata(weak)["concepts"])} == {1.0}
    assert not np.array_equal(np.asarray(Image.open(weak)), np.asarray(Image.open(both)))
    capsys.readouterr()
    bad = ["generate", "a dog", "-c", "acme/dog", *args, "--strength", "0", "-o", str(weak)]
    assert main(bad) == 1
    assert "'--strength': 0.0 is not in the range" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["info", "acme/dog"]) == 0
    assert "token: acts at 'dog', anchored on 'a photo of a dog'" in capsys.readouterr().out
    lock = (isolated / "project" / "conesreg.lock").read_text()
    assert 'name = "dog"' in lock and 'name = "cat"' in lock


def test_strength_scales_the_share_and_is_kept_per_concept(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from conesreg._compose import _STATE, token_strength

    def binder_strengths() -> list[tuple[float, float | None]]:
        return [(m.strength, m.value_strength) for m in _STATE[pipe.unet].binder.masks]

    dog = bound_concept(tmp_path, pipe, 1, "dog")
    glob = Concept.from_draft(make_tiny_draft(tmp_path / "g", pipe, seed=3, name="g"))
    before = draw(pipe, ["a photo of a dog"])
    with apply(pipe, [dog], strength=1.0):
        one = draw(pipe, ["a photo of a dog"])
        assert token_strength(pipe, dog) == 1.0
        assert binder_strengths() == [(1.0, pytest.approx(1.0 * 1.25 / 1.5))]  # scaled alike
    with apply(pipe, [dog]):
        assert token_strength(pipe, dog) == 1.5
        assert binder_strengths() == [(1.5, 1.25)]  # the keys' and the values' defaults
        default = draw(pipe, ["a photo of a dog"])
        with apply(pipe, [glob], strength=3.0):
            assert token_strength(pipe, glob) is None  # global concepts are switched off
            assert token_strength(pipe, dog) == 1.5  # another apply leaves it as it was
    assert token_strength(pipe, dog) is None
    assert not np.array_equal(one, default) and not np.array_equal(one, before)
    procs = dict(pipe.unet.attn_processors)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="strength"):
            apply(pipe, [dog], strength=bad)
    assert dict(pipe.unet.attn_processors) == procs
    assert np.array_equal(draw(pipe, ["a photo of a dog"]), before)


def test_generate_warns_when_the_prompt_lacks_the_word(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from conesreg._generate import generate

    dog = bound_concept(tmp_path, pipe, 1, "dog")
    with apply(pipe, [dog]):
        with pytest.warns(ConesregWarning, match="does not name"):
            generate(pipe, "a photo of a cat", steps=1, height=32, width=32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            generate(pipe, "a photo of a dog", steps=1, height=32, width=32)


# -- the stimulation ------------------------------------------------------------------------------
def test_stimulation_is_published_only_on_request(isolated, tiny_pipeline_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from conesreg import push
    from conesreg._find_job import plan_find, run_find
    from conesreg.artifact import constants
    from conesreg.artifact._stimulation import read_stimulation

    images = isolated / "dogs"
    images.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    plan = plan_find(name="acme/dog", images=[images], class_word="dog", steps=2, rounds=1)
    draft = isolated / "d"
    run_find(plan, draft, base=tiny_pipeline_dir, device="cpu")
    stim = read_stimulation((draft / constants.DRAFT_STIMULATION).read_bytes())
    assert stim.latents.shape[0] == 3 and stim.captions == ("a photo of a dog",) * 3
    plain, _ = push(draft, version="1.0.0")
    assert plain.metadata.stimulation is None
    assert all(b.media_type != constants.MEDIA_TYPE_STIMULATION for b in plain.blobs)
    shared, _ = push(draft, version="1.0.1", stimulation=True)
    blob = shared.blob(str(shared.metadata.stimulation))
    assert blob.media_type == constants.MEDIA_TYPE_STIMULATION
    # A manifest naming a stimulation blob it does not list, or as something else, is refused.
    data = json.loads(shared.canonical_json())
    data["blobs"] = [b for b in data["blobs"] if b["digest"] != blob.digest]
    with pytest.raises(ConesregError, match="stimulation"):
        parse_manifest(data)
    (draft / constants.DRAFT_STIMULATION).write_bytes(b"junk")
    with pytest.raises(ConesregError, match="stimulation file is invalid"):
        push(draft, version="1.0.2", stimulation=True)
    (draft / constants.DRAFT_STIMULATION).unlink()
    with pytest.raises(ConesregError, match="no stimulation.safetensors"):
        push(draft, version="1.0.2", stimulation=True)


# -- compose --------------------------------------------------------------------------------------
def _find_placed(isolated: Path, base_dir: Path, word: str, seed: int) -> Path:
    """A token-bound draft of `word` from random images captioned with places."""
    from PIL import Image

    from conesreg._find_job import plan_find, run_find

    folder = isolated / f"img-{word}"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    places = ["top left", "top right", "bottom left", "bottom right"]
    lines = []
    for i, place in enumerate(places):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(
            json.dumps({"file_name": f"{i}.png", "text": f"a photo of a {word} at the {place}"})
        )
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    plan = plan_find(name=f"acme/{word}", images=[folder], class_word=word, steps=2, rounds=1)
    draft = isolated / f"draft-{word}"
    run_find(plan, draft, base=base_dir, device="cpu")
    return draft


def test_compose_token_concepts_without_images(isolated, tiny_pipeline_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from conesreg import push
    from conesreg._composite import compose
    from conesreg.cli import main

    push(_find_placed(isolated, tiny_pipeline_dir, "dog", 0), version="1.0.0", stimulation=True)
    push(_find_placed(isolated, tiny_pipeline_dir, "cat", 1), version="1.0.0", stimulation=True)
    out = isolated / "pair"
    code = main(
        ["compose", "acme/dog@1", "acme/cat@1", "--name", "acme/pair", "-o", str(out),
         "--base", str(tiny_pipeline_dir), "--steps", "2", "--rounds", "1", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    pair = Concept.from_draft(out)
    b = pair.manifest.binding
    assert [p.word for p in b.parts] == ["dog", "cat"] and b.word is None
    assert len(pair.manifest.metadata.parents) == 2
    # The joint steps given win; the rest is the base model's compose preset.
    from conesreg._find_presets import COMPOSE_PRESETS

    hp = pair.manifest.metadata.method.hyperparameters
    joint = COMPOSE_PRESETS["stable-diffusion"]  # the tiny pipeline is not the mini model
    assert (hp["steps"], hp["rounds"]) == (2, 1)
    assert (hp["batch_size"], hp["sparsity"]) == (joint["batch_size"], joint["sparsity"])
    assert {k.split(":")[0] for k in pair.indices} == {"0", "1"}
    dog = Concept.from_draft(isolated / "draft-dog")
    # A concept found alone acts on the values at 5/6 of its keys' strength; a composite's
    # parts, whose joint steps grew them beside each other, at the same strength on both.
    from conesreg._compose import value_strength

    assert value_strength(dog, 1.5) == 1.25 and value_strength(pair, 1.25) == 1.25
    # Each part holds its parent's neurons and at most a few more.
    own = {k.split(":", 1)[1]: v for k, v in pair.indices.items() if k.startswith("0:")}
    assert all(set(dog.indices[n]) <= set(own[n]) for n in dog.indices)
    push(out, version="1.0.0")
    args = ["--base", str(tiny_pipeline_dir), "--steps", "1", "--height", "32", "--width", "32",
            "--device", "cpu"]  # fmt: skip
    code = main(
        ["generate", "a dog and a cat", "-c", "acme/pair", *args, "-o", str(isolated / "p.png")]
    )
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    # A composite acts at its own default strength, not at the parents' boost.
    from conesreg._generate import read_png_metadata

    meta = json.loads(read_png_metadata(isolated / "p.png")["concepts"])
    assert [c["strength"] for c in meta] == [1.25]
    assert main(["info", "acme/pair"]) == 0
    assert "token composite: 'dog'" in capsys.readouterr().out
    # Refusals: one concept, a parent without stimulation, a global parent.
    with pytest.raises(ConesregError, match="two concepts or more"):
        compose(["acme/dog@1"], isolated / "x", name="acme/x")
    push(isolated / "draft-dog", version="1.0.1")
    with pytest.raises(ConesregError, match="carries no stimulation"):
        compose(["acme/dog@1.0.1", "acme/cat@1"], isolated / "x", name="acme/x")
    base = make_tiny_pipeline(seed=0)
    push(make_tiny_draft(isolated / "g", base, seed=3, name="glob"), version="1.0.0")
    with pytest.raises(ConesregError, match="not a token-bound concept"):
        compose(["acme/glob@1", "acme/cat@1"], isolated / "x", name="acme/x")
    assert not (isolated / "x").exists()


def test_cut_mix_needs_places() -> None:
    from conesreg._composite import cut_mix
    from conesreg.artifact._stimulation import Stimulation

    z = np.zeros((2, 4, 8, 8), dtype=np.float16)
    star = Stimulation(z + 1, ("a photo of a star at the top left", "a photo of a star"), "star")
    heart = Stimulation(z + 2, ("a heart at the bottom right", "a photo of a heart"), "heart")
    latents, captions = cut_mix([star, heart])
    assert len(latents) == len(captions) == 6  # 4 own, 2 collages
    first = captions.index(next(c for c in captions[4:] if c.startswith("a photo of a star")))
    assert latents[first][0, 0, 0] == 1 and latents[first][0, 7, 7] == 2  # heart pasted in
    with pytest.raises(ConesregError, match="no places"):
        cut_mix(
            [
                Stimulation(z, ("a star", "a star"), "star"),
                Stimulation(z, ("a heart",) * 2, "heart"),
            ]
        )
