"""What applying concepts again reuses, and when it must not: decoded indices (in memory and
on disk), verified reads of the cache, install answers, device indices, and overlap checks."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conesreg import Concept, _compose, _concept, push
from conesreg._cache import Cache
from conesreg._compose import apply, restore
from conesreg._concept import (
    OVERLAP_WARN_JACCARD,
    load_concepts,
    overlap,
    overlap_suspects,
    read_concept,
)
from conesreg._session import Session
from conesreg.artifact._manifest import parse_manifest
from conesreg.errors import ConesregWarning, IntegrityError
from conesreg.testing import make_tiny_draft


def forget_process_memory() -> None:
    """What a new process would not have: nothing decoded, read or installed before."""
    _concept.forget()
    _compose._SUSPECTS.clear()


@pytest.fixture(autouse=True)
def fresh_process() -> None:
    forget_process_memory()


def _published(isolated: Path, pipe, seed: int = 1) -> str:  # type: ignore[no-untyped-def]
    push(
        make_tiny_draft(isolated / f"d{seed}", pipe, seed=seed, name=f"c{seed}"),
        version="1.0.0",
    )
    return f"acme/c{seed}@^1"


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded (or validated in full) a mask that was decoded before")

    monkeypatch.setattr("conesreg.artifact._mask.decode_mask", refuse)
    monkeypatch.setattr("conesreg.artifact._check.validate_mask", refuse)


# --- decoded indices ----------------------------------------------------------------------------


def test_decoded_indices_survive_the_process(isolated, pipe, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ref = _published(isolated, pipe)
    [first] = load_concepts([ref])
    expected = {n: x.copy() for n, x in first.indices.items()}
    # A new process: nothing in memory, the cache on disk as install and the first read left it.
    forget_process_memory()
    _no_decoding(monkeypatch)
    [again] = load_concepts([ref])
    assert again is not first
    assert {n: x.tolist() for n, x in again.indices.items()} == {
        n: x.tolist() for n, x in expected.items()
    }


def test_damaged_decoded_file_is_decoded_again(isolated, pipe) -> None:  # type: ignore[no-untyped-def]
    ref = _published(isolated, pipe)
    [c] = load_concepts([ref])
    expected = {n: x.tolist() for n, x in c.indices.items()}
    files = [p for p in (Cache.open().root / "decoded").rglob("*") if p.is_file()]
    assert len(files) == 1
    raw = bytearray(files[0].read_bytes())
    raw[-1] ^= 1  # one index off by one: the checksum must catch it
    files[0].write_bytes(bytes(raw))
    forget_process_memory()
    [again] = load_concepts([ref])
    assert {n: x.tolist() for n, x in again.indices.items()} == expected


def test_decoded_cache_round_trip_and_refusals(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path)
    digest = "sha256:" + "ab" * 32
    indices = {"a": np.array([1, 5, 7]), "b": np.zeros(0, np.int64), "c": np.array([2**32 - 1])}
    cache.save_decoded(digest, indices)
    counts = {n: len(x) for n, x in indices.items()}
    got = cache.decoded(digest, counts)
    assert got is not None and {n: x.tolist() for n, x in got.items()} == {
        n: x.tolist() for n, x in indices.items()
    }
    assert all(x.dtype == np.int64 for x in got.values())
    # Counts that do not add up, another mask's digest: not these indices.
    assert cache.decoded(digest, {"a": 3, "b": 0, "c": 2}) is None
    assert cache.decoded("sha256:" + "cd" * 32, counts) is None
    # Indices beyond uint32 are not kept (no real target has them): decoded every time.
    cache.save_decoded("sha256:" + "ef" * 32, {"w": np.array([2**40])})
    assert cache.decoded("sha256:" + "ef" * 32, {"w": 1}) is None


def test_prune_removes_decoded_files_with_their_mask(isolated, pipe) -> None:  # type: ignore[no-untyped-def]
    ref = _published(isolated, pipe)
    assert load_concepts([ref])[0].indices
    cache = Cache.open()
    assert [p for p in (cache.root / "decoded").rglob("*") if p.is_file()]
    cache.prune(keep=set())
    assert not [p for p in (cache.root / "decoded").rglob("*") if p.is_file()]


def test_memory_is_keyed_by_the_payload_not_the_manifest(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = Concept.from_draft(make_tiny_draft(tmp_path / "a", pipe, seed=1))
    b_draft = make_tiny_draft(tmp_path / "b", pipe, seed=2)
    b = Concept.from_draft(b_draft)
    assert a.indices
    # The same manifest with another payload (a hand-made mix-up) decodes its own payload.
    mixed = Concept(a.manifest, mask=(b_draft / "mask.safetensors").read_bytes())
    assert {n: x.tolist() for n, x in mixed.indices.items()} == {
        n: x.tolist() for n, x in b.indices.items()
    }


# --- verified reads and install answers -------------------------------------------------------


def test_read_concept_is_reverified_when_the_blob_changes(isolated, pipe) -> None:  # type: ignore[no-untyped-def]
    ref = _published(isolated, pipe)
    [c] = load_concepts([ref])
    cache = Cache.open()
    manifest = parse_manifest(cache.blobs.read(c.digest))
    assert read_concept(manifest, cache) is c  # unchanged file: the checked concept again
    assert load_concepts([ref]) == [c]  # by reference too, without parsing the manifest again
    path = cache.blobs.path(manifest.mask.blob)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        read_concept(manifest, cache)
    with pytest.raises(IntegrityError):
        load_concepts([ref])


def test_install_is_skipped_while_the_lockfile_is_unchanged(isolated, pipe, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ref = _published(isolated, pipe)
    calls = []
    real = _concept.install

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(_concept, "install", counting)
    load_concepts([ref])
    load_concepts([ref])
    assert len(calls) == 1
    # Another reference, or a changed lockfile, resolves again.
    ref2 = _published(isolated, pipe, seed=2)
    load_concepts([ref, ref2])
    assert len(calls) == 2
    lock = isolated / "project" / "conesreg.lock"
    lock.write_text(lock.read_text())  # same bytes, a new file: resolved again
    load_concepts([ref, ref2])
    assert len(calls) == 3
    # A pruned cache: installed again, which fetches the blobs back.
    Cache.open().prune(keep=set())
    load_concepts([ref, ref2])
    assert len(calls) == 4
    assert Session().cache.blobs.has(load_concepts([ref])[0].digest)


# --- applying again -----------------------------------------------------------------------------


def test_apply_again_reuses_device_indices(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = Concept.from_draft(make_tiny_draft(tmp_path / "a", pipe, seed=1))
    apply(pipe, [a]).restore()
    state = _compose._STATE[pipe.unet]
    held = state.on_device[a.digest][1]
    apply(pipe, [a]).restore()
    assert state.on_device[a.digest][1] is held
    # A Concept with the same manifest but its own indices gets its own tensors (and checks).
    other = {n: x[:1] for n, x in a.indices.items()}
    b = Concept(a.manifest, other)
    with apply(pipe, [b]):
        assert state.on_device[a.digest][1] is not held
        for name, idx in other.items():
            flat = pipe.unet.get_parameter(name).detach().view(-1)
            assert torch.all(flat[torch.from_numpy(idx)] == 0)


def test_overlap_suspects_hold_every_pair_over_the_threshold(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = Concept.from_draft(make_tiny_draft(tmp_path / "base", pipe, seed=1, fraction=0.3))
    pool = [base]
    rng = np.random.default_rng(0)
    for i in range(6):
        # Some concepts share most of base's neurons, others share little.
        share = [0.9, 0.05, 0.5, 0.0, 0.2, 0.12][i]
        indices = {}
        for name, idx in base.indices.items():
            numel = pipe.unet.get_parameter(name).numel()
            keep = idx[rng.random(idx.size) < share]
            extra = rng.choice(numel, max(1, idx.size // 3), replace=False)
            indices[name] = np.unique(np.concatenate([keep, extra]))
        manifest = base.manifest.model_copy(update={"name": f"x{i}"})
        manifest.__dict__.pop("digest", None)
        pool.append(Concept(manifest, indices))
    # Two loners, on neurons nobody else holds: never suspects.
    for i in range(2):
        indices = {}
        for name in base.indices:
            numel = pipe.unet.get_parameter(name).numel()
            taken = np.unique(np.concatenate([c.indices[name] for c in pool]))
            free = np.setdiff1d(np.arange(numel), taken)
            indices[name] = free[i::2][:4]
        manifest = base.manifest.model_copy(update={"name": f"loner{i}"})
        manifest.__dict__.pop("digest", None)
        pool.append(Concept(manifest, indices))
    suspects = {c.label for c in overlap_suspects(pool, threshold=OVERLAP_WARN_JACCARD)}
    rows = overlap(pool)
    over = [r for r in rows if r.jaccard > OVERLAP_WARN_JACCARD]
    assert over, "the pool must hold pairs over the threshold"
    for r in over:
        assert r.a in suspects and r.b in suspects
    assert not any("loner" in label for label in suspects)  # and it does prune


def test_three_concepts_warn_and_report_lazily(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = Concept.from_draft(make_tiny_draft(tmp_path / "a", pipe, seed=1, fraction=0.5))
    b = Concept.from_draft(make_tiny_draft(tmp_path / "b", pipe, seed=2, fraction=0.5))
    c = Concept.from_draft(make_tiny_draft(tmp_path / "c", pipe, seed=3, fraction=0.01))
    with pytest.warns(ConesregWarning, match="share") as caught:
        handle = apply(pipe, [a, b, c])
    assert len([w for w in caught if "share" in str(w.message)]) == 1  # a and b only
    assert len(handle.overlaps) == 3
    assert {(r.a, r.b) for r in handle.overlaps} == {
        (x.label, y.label) for x, y in itertools.combinations([a, b, c], 2)
    }
    restore(pipe)
    # The same set again: the same warning, from the remembered answer.
    with pytest.warns(ConesregWarning, match="share"):
        apply(pipe, [a, b, c]).restore()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConesregWarning)
        apply(pipe, [a, c]).restore()


def test_originals_are_read_again_after_an_outside_edit(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = Concept.from_draft(make_tiny_draft(tmp_path / "a", pipe, seed=1))
    apply(pipe, [a]).restore()
    name, idx = next((n, x) for n, x in a.indices.items() if len(x))
    param = pipe.unet.get_parameter(name)
    with torch.no_grad():
        param.view(-1)[int(idx[0])] = 42.0  # someone edits the weights between two applies
    with apply(pipe, [a]):
        assert float(param.detach().view(-1)[int(idx[0])]) == 0.0
    # Restored to the edited value, not to the originals kept from the first application.
    assert float(param.detach().view(-1)[int(idx[0])]) == 42.0


def test_many_suspects_warn_once_as_a_crowd(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    crowd = [
        Concept.from_draft(make_tiny_draft(tmp_path / f"c{i}", pipe, seed=i, fraction=0.4))
        for i in range(_compose._MAX_PAIRWISE + 2)
    ]
    with pytest.warns(ConesregWarning) as caught:
        handle = apply(pipe, crowd)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "18 of the 18 concepts" in messages[0]
    # The pairs are still there for whoever asks.
    assert len(handle.overlaps) == 18 * 17 // 2
    handle.restore()


def test_suspects_are_found_on_a_sample_of_large_concepts(pipe, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # As large concepts are sampled (here: a sample of ~32 neurons of the smallest concept).
    monkeypatch.setattr(_concept, "_SAMPLED_NEURONS", 32)
    base = Concept.from_draft(make_tiny_draft(tmp_path / "base", pipe, seed=1, fraction=0.3))
    rng = np.random.default_rng(1)
    taken = {n: set(x.tolist()) for n, x in base.indices.items()}

    def made(label: str, share: float) -> Concept:
        indices = {}
        for name, idx in base.indices.items():
            numel = pipe.unet.get_parameter(name).numel()
            keep = idx[rng.random(idx.size) < share]
            free = np.array(sorted(set(range(numel)) - taken[name]))
            extra = rng.choice(free, min(free.size, idx.size - keep.size), replace=False)
            taken[name] |= set(extra.tolist())
            indices[name] = np.unique(np.concatenate([keep, extra]).astype(np.int64))
        manifest = base.manifest.model_copy(update={"name": label})
        manifest.__dict__.pop("digest", None)
        return Concept(manifest, indices)

    sharing, apart = made("sharing", 0.2), made("apart", 0.0)
    suspects = [c.label for c in overlap_suspects([base, sharing, apart], threshold=0.1)]
    assert base.label in suspects and sharing.label in suspects
    assert apart.label not in suspects
    [pair] = [r for r in overlap([base, sharing]) if r.jaccard > 0]
    assert pair.jaccard > 0.1


def test_load_pipeline_remembers_the_hash_of_its_files(
    isolated, tiny_pipeline_dir, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import os
    import shutil

    from conesreg import _base_hash
    from conesreg._compose import load_pipeline

    folder = isolated / "model"
    shutil.copytree(tiny_pipeline_dir, folder)
    expected = _base_hash.base_model_hash(load_pipeline(folder, device="cpu"))
    hashed = []
    real = _base_hash._digest

    def counting(items):  # type: ignore[no-untyped-def]
        hashed.append(1)
        return real(items)

    monkeypatch.setattr(_base_hash, "_digest", counting)
    _base_hash.clear_cache()  # a new process
    pipe = load_pipeline(folder, device="cpu")
    assert _base_hash.base_model_hash(pipe) == expected and not hashed
    # Concepts of that base model apply without hashing it.
    a = Concept.from_draft(make_tiny_draft(isolated / "a", pipe, seed=1))
    apply(pipe, [a]).restore()
    assert not hashed
    # Weights edited in memory: the fingerprints moved, so it is hashed again.
    with torch.no_grad():
        next(p for n, p in pipe.unet.named_parameters() if "attn2.to_k" in n).view(-1)[0] += 1
    assert _base_hash.base_model_hash(pipe) != expected and hashed
    # The file changed on disk: hashed again when loaded.
    hashed.clear()
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _base_hash.clear_cache()
    load_pipeline(folder, device="cpu")
    assert hashed
    # The targets come from the files' headers: the same names the loaded UNet has.
    names = (n for n, _ in pipe.unet.named_parameters())
    assert _base_hash.weights_targets(folder) == _base_hash.default_targets(names)
    # A hash for targets this model lacks is not remembered (it is computed when asked for).
    _base_hash.clear_cache()
    _base_hash.remember(pipe, "sha256:" + "0" * 64, targets=["no.such.attn2.to_k.weight"])
    hashed.clear()
    assert _base_hash.base_model_hash(pipe) != "sha256:" + "0" * 64 and hashed


def test_device_indices_are_bounded(pipe, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from conesreg import constants

    pool = [Concept.from_draft(make_tiny_draft(tmp_path / f"c{i}", pipe, seed=i)) for i in range(6)]
    one = sum(len(x) * 8 for x in pool[0].indices.values())
    monkeypatch.setattr(constants, "DEVICE_INDEX_BYTES", 2 * one)
    with apply(pipe, pool[:3]):  # on: kept whatever the bound
        state = _compose._STATE[pipe.unet]
        assert {c.digest for c in pool[:3]} <= set(state.on_device)
    for c in pool[3:]:
        apply(pipe, [c]).restore()
    assert len(state.on_device) <= 3
    assert state.on_device_bytes == sum(
        sum(t.numel() * 8 for t in held.values()) for _, held in state.on_device.values()
    )
    assert pool[-1].digest in state.on_device  # the most recent stays


def test_writes_move_the_version_counter(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # On the CPU the writes go through numpy, which torch does not see: the hash cache must.
    from conesreg._base_hash import base_model_hash

    a = Concept.from_draft(make_tiny_draft(tmp_path / "a", pipe, seed=1))
    pristine = base_model_hash(pipe)
    with apply(pipe, [a]):
        assert base_model_hash(pipe) != pristine
    assert base_model_hash(pipe) == pristine
