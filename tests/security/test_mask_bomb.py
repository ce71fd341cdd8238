"""Mask decompression bombs (issue 16, finding 1) and the overlap refusal of finding 7.

A full set is stored as its empty complement, so ~144 bytes can claim 2**28 (or 2**40) concept
neurons, and an all-ones unary section codes 8 indices per byte. Before the fix the server and
the client decoded such payloads before checking them against anything: the server's publish
check peaked at 2.45 GB for 2**28 and answered 500 for 2**40, a 4 MiB all-ones section cost
+771 MiB, and ``conesreg info --overlap`` on a 141-byte mask peaked at 650 MB. Now validation
runs in memory ~ the payload (``64 * size + 1 MiB`` at most, measured here with tracemalloc, to
which numpy reports its buffers), decoding happens only within the sizes of the model the indices
are for, and overlap counts on the sets as stored.
"""

from __future__ import annotations

import copy
import json
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conesreg.artifact import constants
from conesreg.artifact._manifest import Manifest, canonical_json, parse_manifest
from conesreg.artifact._mask import decode_mask, decode_mask_sets, encode_mask, validate_mask
from conesreg.errors import BaseModelMismatchError, MaskError
from conesreg.sources import LocalSource
from conesreg.testing import put_manifest, upload_blobs
from conesreg.testing.fuzz import amplification_bound, forge_mask, manifest_document
from registry_server import Settings
from registry_server.testing import Server, running_server

#: A full set of 2**28 neurons, stored as its empty complement (the issue's ~143-byte bomb).
BOMB_28 = forge_mask([[1 << 28, 1 << 28, 0, 1]], {"w": b""})
BOMB_40 = forge_mask([[1 << 40, 1 << 40, 0, 1]], {"w": b""})
#: 4 MiB of 1 bits: 2**25 consecutive indices, 8 per byte, as a valid mask of 2**26 scalars.
ONES_BYTES = 4 << 20
ONES_K = 8 * ONES_BYTES
ONES = forge_mask([[2 * ONES_K, ONES_K, 0, 0]], {"w": b"\xff" * ONES_BYTES})
#: What one request (routing, database, JSON, pydantic) may allocate besides the mask's own
#: share; the unfixed server allocated 2.45 GB for BOMB_28 and 771 MiB for ONES.
REQUEST_OVERHEAD = 16 << 20


def measured(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the most memory it had allocated at once (tracemalloc)."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def raising(exc: type[Exception], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Exception:
    """The ``exc`` that ``fn(*args, **kwargs)`` raises (for measuring a refusal)."""
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    return info.value


def test_payloads_are_what_the_issue_describes() -> None:
    assert len(BOMB_28) < 150 and len(BOMB_40) < 160
    assert len(ONES) - ONES_BYTES < 200


# --- the codec ------------------------------------------------------------------------------------


def test_full_set_bomb_validates_in_memory_of_its_size() -> None:
    info, peak = measured(lambda: validate_mask(BOMB_28))
    assert info.numels == {"w": 1 << 28} and info.counts == {"w": 1 << 28}
    assert peak <= amplification_bound(len(BOMB_28))
    # Its sets as stored: the complement, empty, whatever the claimed size.
    sets, peak = measured(lambda: decode_mask_sets(BOMB_28))
    assert sets["w"].complement and sets["w"].stored.size == 0 and len(sets["w"]) == 1 << 28
    assert peak <= amplification_bound(len(BOMB_28))


def test_decoding_is_bounded_by_the_consumer() -> None:
    # A model whose "w" has 64 scalars refuses the claim before allocating anything for it.
    error, peak = measured(lambda: raising(MaskError, decode_mask, BOMB_28, numels={"w": 64}))
    assert "268435456 scalars" in str(error) and "base model it was made for" in error.hint
    assert peak <= amplification_bound(len(BOMB_28))
    with pytest.raises(MaskError, match="does not have"):
        decode_mask(BOMB_28, numels={"v": 1 << 28})
    # The real size decodes as before.
    small = forge_mask([[64, 64, 0, 1]], {"w": b""})
    assert decode_mask(small, numels={"w": 64})["w"].tolist() == list(range(64))


def test_claims_over_the_numel_ceiling_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MaskError, match="1099511627776 target scalars") as info:
        validate_mask(BOMB_40)
    assert "CONESREG_MAX_TARGET_NUMEL" in info.value.hint
    # The ceiling is read at call time: lowering it refuses the 2**28 claim too.
    monkeypatch.setattr(constants, "MAX_TARGET_NUMEL", 1 << 20)
    with pytest.raises(MaskError, match="more than the 1048576"):
        validate_mask(BOMB_28)


def test_all_ones_unary_section_validates_in_memory_of_its_size() -> None:
    info, peak = measured(lambda: validate_mask(ONES))
    assert info.counts == {"w": ONES_K}
    assert peak <= amplification_bound(len(ONES)), peak
    # Damage anywhere in such a section is found in the same memory: a count one too few, a
    # trailing zero byte, and (k indices with gaps of 3: low parts 0b11) a last index one past
    # numel. (That validate refuses exactly what decode refuses, the fuzz campaign checks.)
    k = ONES_K // 4
    for label, params, tensor, message in [
        ("count", [[2 * ONES_K, ONES_K - 1, 0, 0]], b"\xff" * ONES_BYTES, "codes"),
        ("trailing", [[2 * ONES_K, ONES_K, 0, 0]], b"\xff" * ONES_BYTES + b"\0", "trailing"),
        ("range", [[4 * k - 1, k, 2, 0]], b"\xff" * (k // 4 + k // 8), ">= numel"),
    ]:
        forged = forge_mask(params, {"w": tensor})
        error, peak = measured(lambda f=forged: raising(MaskError, validate_mask, f))
        assert message in str(error), label
        assert peak <= amplification_bound(len(forged)), label


# --- the server -----------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path) as s:
        yield s


def _publish(
    server: Server, tmp: Path, mask: bytes, *, shape: list[int], count: int, name: str = "bomb"
) -> tuple[Any, int]:
    """Upload ``mask`` and publish a manifest of it; returns the response and the peak memory
    of the manifest request alone (the one that checks the mask)."""
    doc = manifest_document(targets={"w": shape}, mask=mask, counts={"w": count}, name=name)
    body = canonical_json(doc)
    manifest = Manifest.model_construct(namespace="acme", name=name, version="1.0.0")
    blob = tmp / f"{name}.safetensors"
    blob.write_bytes(mask)
    digest = doc["mask"]["blob"]
    [r] = upload_blobs(server.client, {digest: blob}, namespace="acme", token=server.token)
    assert r.status_code in (200, 201), r.text
    return measured(lambda: put_manifest(server.client, body, manifest, token=server.token))


def test_server_publishes_a_full_set_bomb_in_bounded_memory(server: Server, tmp_path: Path) -> None:
    # 2**28 scalars is a legal (if unusual) concept under the default ceiling: it is published,
    # at the cost of its few bytes, never of its claim.
    r, peak = _publish(server, tmp_path, BOMB_28, shape=[1 << 14, 1 << 14], count=1 << 28)
    assert r.status_code == 201, r.text
    assert peak <= amplification_bound(len(BOMB_28)) + REQUEST_OVERHEAD, peak


def test_server_all_ones_section_in_bounded_memory(server: Server, tmp_path: Path) -> None:
    r, peak = _publish(server, tmp_path, ONES, shape=[1 << 13, 1 << 13], count=ONES_K)
    assert r.status_code == 201, r.text
    assert peak <= amplification_bound(len(ONES)) + REQUEST_OVERHEAD, peak


def test_server_refuses_what_no_supported_model_has(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2**40 scalars in the manifest: over the ceiling, refused (it used to be a 500).
    r, peak = _publish(server, tmp_path, BOMB_40, shape=[1 << 20, 1 << 20], count=1 << 40)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_manifest", r.text
    # The same claim in the mask's header only, behind a manifest of 64 scalars.
    r, peak = _publish(server, tmp_path, BOMB_40, shape=[8, 8], count=64, name="hidden")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_mask", r.text
    assert peak <= amplification_bound(len(BOMB_40)) + REQUEST_OVERHEAD


def test_server_max_target_numel_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONESREG_SERVER_MAX_TARGET_NUMEL", str(1 << 20))
    assert Settings.from_env(data=tmp_path).max_target_numel == 1 << 20
    monkeypatch.delenv("CONESREG_SERVER_MAX_TARGET_NUMEL")
    # The default follows the client's ceiling, read when the settings are made.
    monkeypatch.setattr(constants, "MAX_TARGET_NUMEL", 1 << 41)
    assert Settings(data=tmp_path).max_target_numel == 1 << 41
    # A registry may accept less than every client: its own limit, enforced at publish. (Here
    # clients would accept 2**41, so only the server's setting stops the 2**40 claim.)
    with running_server(tmp_path / "small", max_target_numel=1 << 20) as server:
        r, _ = _publish(server, tmp_path, BOMB_28, shape=[1 << 14, 1 << 14], count=1 << 28)
        assert r.status_code == 422, r.text
        assert "max_target_numel" in r.json()["error"]["message"]
        r, peak = _publish(
            server, tmp_path, BOMB_40, shape=[1 << 20, 1 << 20], count=1 << 40, name="huge"
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_manifest", r.text
        assert peak <= amplification_bound(len(BOMB_40)) + REQUEST_OVERHEAD


# --- the client -----------------------------------------------------------------------------------


def publish_local(
    tmp: Path, name: str, targets: dict[str, list[int]], mask: bytes, counts: dict[str, int]
) -> Manifest:
    """Put a concept straight into the embedded registry, as a hostile shared folder could."""
    doc = manifest_document(targets=targets, mask=mask, counts=counts, name=name)
    manifest = parse_manifest(canonical_json(doc))
    path = tmp / f"{name}.safetensors"
    path.write_bytes(mask)
    LocalSource().push(manifest, {manifest.mask.blob: path})
    return manifest


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from conesreg.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


#: 2**24 scalars: a full set of it decoded is 128 MiB of int64 (the unfixed client's cost).
BIG = [1 << 12, 1 << 12]


def test_info_overlap_on_a_hostile_mask(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = forge_mask([[1 << 24, 1 << 24, 0, 1]], {"w": b""})
    assert len(bomb) < 150
    publish_local(isolated, "bomb", {"w": BIG}, bomb, {"w": 1 << 24})
    few = np.arange(0, 1 << 24, 1 << 17)  # 128 indices
    small = encode_mask({"w": few}, numels={"w": 1 << 24})
    publish_local(isolated, "few", {"w": BIG}, small, {"w": few.size})
    run_cli(capsys, "info", "--overlap", "acme/few", "acme/few")  # imports, caches: not counted
    (code, out, err), peak = measured(
        lambda: run_cli(capsys, "info", "--overlap", "acme/bomb", "acme/few", "--json")
    )
    assert code == 0, err
    [row] = json.loads(out)
    # Every neuron of "few" is in the full set: shared 128, Jaccard 128 / 2**24.
    assert row["shared"] == few.size and row["jaccard"] == few.size / (1 << 24)
    assert peak <= 8 << 20, peak


def test_info_overlap_refuses_different_sizes(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = encode_mask({"w": [1, 2, 3]}, numels={"w": 64})
    b = encode_mask({"w": [5, 900]}, numels={"w": 1024})
    publish_local(isolated, "small", {"w": [8, 8]}, a, {"w": 3})
    publish_local(isolated, "large", {"w": [32, 32]}, b, {"w": 2})
    code, _, err = run_cli(capsys, "info", "--overlap", "acme/small", "acme/large")
    assert code == 1, err
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and "different sizes" in line and "(hint: " in line
    assert "acme/small@1.0.0" in line and "acme/large@1.0.0" in line and "'w'" in line


def test_apply_checks_shapes_before_decoding(isolated: Path, tiny_pipeline: Any) -> None:
    from conesreg._compose import apply

    unet = copy.deepcopy(tiny_pipeline.unet)
    name = next(n for n, _ in unet.named_parameters() if n.endswith("attn2.to_k.weight"))
    # A real parameter name, a forged 2**26-scalar shape, and the full set of it.
    bomb = forge_mask([[1 << 26, 1 << 26, 0, 1]], {name: b""})
    publish_local(isolated, "bomb", {name: [1 << 13, 1 << 13]}, bomb, {name: 1 << 26})
    with pytest.raises(BaseModelMismatchError, match="expects"):
        apply(unet, ["acme/bomb"])  # installs it (and warms the caches) first
    _, peak = measured(lambda: raising(BaseModelMismatchError, apply, unet, ["acme/bomb"]))
    assert peak <= 16 << 20, peak  # decoding it would take 512 MiB


def test_apply_checks_the_base_model_before_decoding(
    isolated: Path, tiny_pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conesreg._base_hash import target_shapes
    from conesreg._compose import apply
    from conesreg.artifact import _mask

    unet = copy.deepcopy(tiny_pipeline.unet)
    shapes = {n: list(s) for n, s in target_shapes(unet).items()}
    numels = {n: int(np.prod(s)) for n, s in shapes.items()}
    mask = encode_mask({n: [0] for n in numels}, numels=numels)
    # Right shapes, another base model (manifest_document's hash is not the tiny UNet's).
    publish_local(isolated, "other", shapes, mask, dict.fromkeys(numels, 1))

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded before the base model was checked")

    monkeypatch.setattr(_mask, "decode_mask", no_decoding)
    monkeypatch.setattr(_mask, "decode_mask_sets", no_decoding)
    with pytest.raises(BaseModelMismatchError, match="was made for base model"):
        apply(unet, ["acme/other"])


def test_overlap_on_stored_sets_is_exact() -> None:
    # Counting on stored sets (complements, windows of a large parameter) gives what the
    # decoded sets give: near-full sets of a small parameter, sparse ones of a large one.
    from conesreg._concept import Concept, overlap

    rng = np.random.default_rng(7)
    numels = {"small": 5000, "large": 3 << 20}
    concepts, truth = [], []
    for n, density in enumerate([0.9, 0.7, 0.2, 0.95]):
        indices = {
            "small": np.flatnonzero(rng.random(5000) < density),
            "large": np.unique(rng.integers(0, 3 << 20, 3000 + 1000 * n)),
        }
        mask = encode_mask(indices, numels=numels)
        doc = manifest_document(
            targets={"small": [50, 100], "large": [3, 1 << 20]},
            mask=mask,
            counts={k: len(v) for k, v in indices.items()},
            name=f"c{n}",
        )
        manifest = parse_manifest(canonical_json(doc))
        concepts.append(Concept(manifest, mask=mask) if n % 2 else Concept(manifest, indices))
        truth.append(indices)
    rows = overlap(concepts)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    for row, (i, j) in zip(rows, pairs, strict=True):
        shared = sum(len(np.intersect1d(truth[i][p], truth[j][p])) for p in numels)
        size = sum(len(v) for v in truth[i].values()) + sum(len(v) for v in truth[j].values())
        assert row.shared == shared and row.jaccard == shared / (size - shared)
