"""Tests of the mask codec (conesreg.artifact._mask): round trips, validation, corrupt payloads."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from conesreg.artifact import constants
from conesreg.artifact._mask import (
    MaskInfo,
    decode_mask,
    decode_mask_sets,
    encode_mask,
    information_bound_bytes,
    load_mask,
    read_mask_info,
    save_mask,
    validate_mask,
)
from conesreg.errors import ConesregError, MaskError
from conesreg.testing.fuzz import forge_mask_v2, index_sets, v1_mask

# Moderate example counts: the CI machine has 2 cores and the whole file must stay fast.
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAME = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
#: Beyond int32, so that indices and gaps must travel as int64; 2**50 + 7 needs a large Rice b.
LARGE_NUMELS = (2**31 + 5, 2**40 + 3, 2**50 + 7)
#: Largest numel for which a strategy may build a dense set (full sets, random densities).
DENSE_LIMIT = 20_000


# --- strategies (index sets are the fuzz campaign's own: conesreg.testing.fuzz) ---------------

numels_st = st.one_of(
    st.just(1),
    st.integers(1, 64),
    st.integers(1, DENSE_LIMIT),
    st.sampled_from(LARGE_NUMELS),
)


@st.composite
def masks(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Several parameters with different numels, some absent from the indices (empty)."""
    count = draw(st.integers(1, 5))
    names = draw(
        st.lists(
            st.text("abcdefghijklmnopqrstuvwxyz._0123456789", min_size=1, max_size=30).filter(
                lambda name: name != "__metadata__"  # reserved by safetensors
            ),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    numels = {name: draw(numels_st) for name in names}
    indices = {name: draw(index_sets(numel)) for name, numel in numels.items()}
    omitted = draw(st.sets(st.sampled_from(names)))
    return {n: x for n, x in indices.items() if n not in omitted}, numels


def _expected(indices: dict[str, np.ndarray], numels: dict[str, int]) -> dict[str, list[int]]:
    return {name: indices.get(name, np.zeros(0, np.int64)).tolist() for name in numels}


# --- helpers to forge payloads ------------------------------------------------------------------


def _metadata(data: bytes) -> dict[str, str]:
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size])["__metadata__"]


def _forge(data: bytes, **changes: Any) -> bytes:
    """Re-save a payload with changed metadata (``params=`` a list) and/or tensors."""
    tensors = st_load(data)
    tensors.update(changes.pop("tensors", {}))
    metadata = _metadata(data)
    if "params" in changes:
        metadata["params"] = json.dumps(changes.pop("params"))
    metadata.update(changes)
    return st_save(tensors, metadata=metadata)


def _one(indices: list[int], numel: int) -> bytes:
    return encode_mask({NAME: np.array(indices, np.int64)}, numels={NAME: numel})


def _one_v1(indices: list[int], numel: int) -> bytes:
    return v1_mask({NAME: indices}, numels={NAME: numel})


# --- round trips --------------------------------------------------------------------------------


@PROPERTY
@given(masks())
def test_round_trip(mask: tuple[dict[str, np.ndarray], dict[str, int]]) -> None:
    indices, numels = mask
    data = encode_mask(indices, numels=numels)
    decoded = decode_mask(data)
    assert sorted(decoded) == sorted(numels)
    for array in decoded.values():
        assert array.dtype == np.int64
        assert array.ndim == 1
    assert {name: x.tolist() for name, x in decoded.items()} == _expected(indices, numels)
    # Deterministic: the registry addresses payloads by sha256.
    assert encode_mask(indices, numels=numels) == data
    info = read_mask_info(data)
    assert info.numels == numels
    assert info.counts == {name: len(x) for name, x in _expected(indices, numels).items()}


@PROPERTY
@given(numel=numels_st, data=st.data())
def test_round_trip_single_parameter(numel: int, data: st.DataObject) -> None:
    x = data.draw(index_sets(numel))
    assert decode_mask(_one(x.tolist(), numel))[NAME].tolist() == x.tolist()


@pytest.mark.parametrize("numel", [1, 2, 7, 8, 9, 1000, 2**31 + 5])
def test_edge_sets(numel: int) -> None:
    cases = [[], [0], [numel - 1], [0, numel - 1] if numel > 1 else [0]]
    if numel <= 1000:
        cases += [list(range(numel)), list(range(1, numel)), list(range(numel - 1))]
    for x in cases:
        assert decode_mask(_one(x, numel))[NAME].tolist() == x


@pytest.mark.parametrize("b", [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40])
def test_every_rice_width(b: int) -> None:
    # Gaps of about 2**b make the encoder pick b near it: covers every read width of the decoder,
    # including k not a multiple of 8 (partial last row of low parts).
    rng = np.random.default_rng(b)
    gaps = rng.integers(0, 2 ** (b + 1), size=37)
    x = np.cumsum(gaps + 1) - 1
    numel = int(x[-1]) + 1 + int(rng.integers(0, 5))
    data = _one(x.tolist(), numel)
    assert decode_mask(data)[NAME].tolist() == x.tolist()


def test_inputs_of_other_types() -> None:
    numels = {"a": 10, "b": 10, "c": 10, "d": 10}
    indices = {
        "a": [1, 2, 3],  # list of Python ints
        "b": np.array([4, 9], dtype=np.uint64),
        "c": np.array([0], dtype=np.int8),
        "d": [],  # float64 once converted, but empty
    }
    decoded = decode_mask(encode_mask(indices, numels=numels))
    assert {k: v.tolist() for k, v in decoded.items()} == {
        "a": [1, 2, 3],
        "b": [4, 9],
        "c": [0],
        "d": [],
    }
    data = encode_mask({"a": [1]}, numels={"a": 2})
    assert decode_mask(bytearray(data))["a"].tolist() == [1]
    assert decode_mask(memoryview(data))["a"].tolist() == [1]
    with pytest.raises(TypeError):
        decode_mask("not bytes")  # type: ignore[arg-type]


def test_payload_layout() -> None:
    numels = {"w": 100, "v": 10, "e": 5}
    data = encode_mask({"w": [3, 50, 99], "v": list(range(9))}, numels=numels)
    tensors = st_load(data)
    assert list(tensors) == ["rice"]
    assert tensors["rice"].dtype == np.uint8 and tensors["rice"].ndim == 1
    metadata = _metadata(data)
    assert metadata["encoding"] == constants.MASK_ENCODING == "cones-rice/2"
    # Names in code point order, none sharing a prefix or suffix with another here.
    assert metadata["names"] == "0,0,0,e\n0,0,0,v\n0,0,0,w"
    # numel, count, b per name; v stores its 1-index complement (2 * 9 > 10), e nothing.
    numbers = [int(v) for v in metadata["params"].split(",")]
    assert numbers[0::3] == [5, 10, 100]
    assert numbers[1::3] == [0, 9, 3]
    assert numbers[2] == 0


def test_names_are_front_coded() -> None:
    prefix = "down_blocks.0.attentions."
    names = [f"{prefix}{i}.transformer_blocks.0.attn2.to_{p}.weight" for i in (0, 1) for p in "kv"]
    data = encode_mask({}, numels=dict.fromkeys(names, 4))
    lines = _metadata(data)["names"].split("\n")
    # The first in full; to_v from the to_k before it (prefix and ".weight"); attentions.1's
    # to_k from attentions.0's to_k, two back (only the block number differs).
    assert lines[0] == f"0,0,0,{names[0]}"
    assert lines[1] == f"1,{len(names[0]) - 8},7,v"
    assert lines[2] == f"2,{len(prefix)},{len(names[0]) - len(prefix) - 1},1"
    assert list(decode_mask(data)) == names


def test_full_set_is_tiny() -> None:
    data = _one(list(range(100_000)), 100_000)
    assert st_load(data)["rice"].size == 0
    assert len(data) < 250


def test_deterministic_metadata_order() -> None:
    # safetensors writes metadata in random HashMap order; the codec must not.
    data = _one([1, 2], 4)
    size = int.from_bytes(data[:8], "little")
    assert data[8 : 8 + size].startswith(
        b'{"__metadata__":{"encoding":"cones-rice/2","names":"0,0,0,down_blocks'
    )


def test_non_ascii_names_are_canonical() -> None:
    # Names go into the header as UTF-8, as safetensors writes them, and the bytes do not
    # depend on the process (metadata order is fixed by the codec).
    data = encode_mask({"é.w": [1]}, numels={"é.w": 4, "ü.v": 2})
    assert "é.w".encode() in data
    assert list(decode_mask(data)) == ["é.w", "ü.v"]
    with pytest.raises(MaskError, match="control character"):
        encode_mask({}, numels={"a\nb": 4})


# --- the old encoding (cones-rice/1) stays readable -------------------------------------------

OLD = Path(__file__).parent / "data" / "mask-v1"


@pytest.mark.parametrize("stem", ["several", "mini-star"])
def test_old_format_reads(stem: str) -> None:
    # Files written by the cones-rice/1 encoder before cones-rice/2 existed.
    data = (OLD / f"{stem}.safetensors").read_bytes()
    expected = json.loads((OLD / f"{stem}.json").read_text())
    expected.pop("__numels__", None)
    info = validate_mask(data)
    assert info.encoding == read_mask_info(data).encoding == "cones-rice/1"
    decoded = decode_mask(data, numels=info.numels)
    assert {name: x.tolist() for name, x in decoded.items()} == expected
    sets = decode_mask_sets(data)
    assert {name: len(s) for name, s in sets.items()} == info.counts
    # Re-encoding writes the new format, smaller, with the same indices.
    again = encode_mask(decoded, numels=info.numels)
    assert read_mask_info(again).encoding == "cones-rice/2" and len(again) < len(data)
    assert {n: x.tolist() for n, x in decode_mask(again).items()} == expected


def test_old_format_rebuilt_independently() -> None:
    # v1_mask (the tests' own cones-rice/1 writer) matches the old encoder: same header, body.
    data = (OLD / "several.safetensors").read_bytes()
    expected = json.loads((OLD / "several.json").read_text())
    numels = expected.pop("__numels__")
    rebuilt = v1_mask(expected, numels=numels)
    assert _metadata(rebuilt) == _metadata(data)
    assert {n: t.tobytes() for n, t in st_load(rebuilt).items()} == {
        n: t.tobytes() for n, t in st_load(data).items()
    }


def test_size_at_sd_scale() -> None:
    # A 1% mask over SD 1.x's 32 K/V tensors (as benchmarks/mask_codec.py builds it) stays
    # within 1% of the information bound, header included.
    inner = [320] * 2 + [640] * 2 + [1280] * 2 + [1280] + [1280] * 3 + [640] * 3 + [320] * 3
    blocks = [f"down_blocks.{i // 2}.attentions.{i % 2}" for i in range(6)]
    blocks += ["mid_block.attentions.0"]
    blocks += [f"up_blocks.{1 + i // 3}.attentions.{i % 3}" for i in range(9)]
    numels = {
        f"{block}.transformer_blocks.0.attn2.to_{p}.weight": width * 768
        for block, width in zip(blocks, inner, strict=True)
        for p in "kv"
    }
    rng = np.random.default_rng(5)
    indices = {n: np.sort(rng.choice(v, v // 100, replace=False)) for n, v in numels.items()}
    data = encode_mask(indices, numels=numels)
    bound = information_bound_bytes(sum(numels.values()), sum(v // 100 for v in numels.values()))
    assert len(data) <= 1.01 * bound


# --- read_mask_info and the bound -----------------------------------------------------------------


def test_read_mask_info() -> None:
    numels = {"a": 100, "b": 1, "c": 2**31 + 5}
    data = encode_mask({"a": list(range(60)), "c": [0, 2**31 + 4]}, numels=numels)
    info = read_mask_info(data)
    assert info == MaskInfo(
        encoding="cones-rice/2", numels=numels, counts={"a": 60, "b": 0, "c": 2}
    )
    assert info.total == 100 + 1 + 2**31 + 5
    assert info.selected == 62
    with pytest.raises(AttributeError):
        info.encoding = "x"  # type: ignore[misc]


def test_information_bound_bytes() -> None:
    assert information_bound_bytes(10, 0) == 0.0
    assert information_bound_bytes(10, 10) == 0.0
    assert information_bound_bytes(4, 2) == pytest.approx(math.log2(6) / 8)
    assert information_bound_bytes(1000, 10) == pytest.approx(math.log2(math.comb(1000, 10)) / 8)
    with pytest.raises(ValueError):
        information_bound_bytes(3, 4)
    with pytest.raises(ValueError):
        information_bound_bytes(3, -1)


def test_size_near_bound() -> None:
    # A behavioural check of compactness (the SD-scale target is test_size_at_sd_scale's; this
    # is one large random tensor): within 1% + a small header of the bound.
    rng = np.random.default_rng(0)
    n, k = 1_000_000, 10_000
    x = np.sort(rng.choice(n, size=k, replace=False))
    size = len(_one(x.tolist(), n))
    assert size <= 1.01 * information_bound_bytes(n, k) + 300


# --- save / load --------------------------------------------------------------------------------


def test_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "mask.safetensors"
    save_mask(path, {"w": [1, 5]}, numels={"w": 8, "v": 3})
    save_mask(str(path), {"w": [2]}, numels={"w": 8})  # overwrite, str path
    assert {k: v.tolist() for k, v in load_mask(path).items()} == {"w": [2]}
    assert [p.name for p in tmp_path.iterdir()] == ["mask.safetensors"]


def test_save_failure_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mask.safetensors"
    save_mask(path, {"w": [1]}, numels={"w": 8})
    before = path.read_bytes()
    with pytest.raises(MaskError):
        save_mask(path, {"w": [9]}, numels={"w": 8})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mask.safetensors"]


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "absent.safetensors")


# --- encode validation --------------------------------------------------------------------------


def _encode_error(indices: Any, numel: Any = 10) -> MaskError:
    with pytest.raises(MaskError) as info:
        encode_mask({NAME: indices}, numels={NAME: numel})
    error = info.value
    assert isinstance(error, ConesregError) and isinstance(error, ValueError)
    assert error.hint
    return error


def test_unsorted() -> None:
    error = _encode_error(np.array([1, 4, 3, 7]))
    assert NAME in str(error) and "position 2" in str(error) and "not sorted" in str(error)


def test_duplicated() -> None:
    error = _encode_error([0, 2, 5, 5, 6])
    assert NAME in str(error) and "position 3" in str(error) and "duplicated" in str(error)


def test_out_of_range() -> None:
    error = _encode_error([1, 10])
    assert NAME in str(error) and "position 1" in str(error) and "10" in str(error)
    _encode_error([0], numel=0)
    _encode_error(np.array([2**63 + 1], dtype=np.uint64), numel=2**31 + 5)


def test_negative() -> None:
    error = _encode_error([2, -1, 3])
    assert NAME in str(error) and "position 1" in str(error)


@pytest.mark.parametrize(
    "indices",
    [
        np.array([1.0, 2.0]),
        np.array([True, False]),
        ["1", "2"],
        np.array([[1, 2], [3, 4]]),
        np.int64(3),
        [[1], [2, 3]],
    ],
    ids=["float", "bool", "str", "2-D", "0-D", "ragged"],
)
def test_not_a_1d_integer_array(indices: Any) -> None:
    assert NAME in str(_encode_error(indices))


def test_missing_numel() -> None:
    with pytest.raises(MaskError, match="no numel") as info:
        encode_mask({"a": [1], "b": [2]}, numels={"a": 4})
    assert "'b'" in str(info.value)


@pytest.mark.parametrize("numel", [-1, 1.5, True, "10", None, 2**62])
def test_bad_numel(numel: Any) -> None:
    _encode_error([], numel=numel)


@pytest.mark.parametrize("name", ["", "__metadata__", 3])
def test_bad_name(name: Any) -> None:
    with pytest.raises(MaskError):
        encode_mask({name: [0]}, numels={name: 1})


# --- corrupt, truncated and inconsistent payloads ---------------------------------------------


def _payload_parts() -> tuple[dict[str, np.ndarray], dict[str, int]]:
    rng = np.random.default_rng(1)
    indices = {"a": np.sort(rng.choice(5000, 300, replace=False)), "b": np.arange(50)}
    return indices, {"a": 5000, "b": 60, "c": 7}


@pytest.fixture(params=["cones-rice/1", "cones-rice/2"])
def payload(request: pytest.FixtureRequest) -> bytes:
    """The same mask in each encoding this conesreg reads."""
    indices, numels = _payload_parts()
    if request.param == "cones-rice/1":
        return v1_mask({n: x.tolist() for n, x in indices.items()}, numels=numels)
    return encode_mask(indices, numels=numels)


@pytest.fixture
def v1_payload() -> bytes:
    indices, numels = _payload_parts()
    return v1_mask({n: x.tolist() for n, x in indices.items()}, numels=numels)


def test_truncated(payload: bytes) -> None:
    for size in range(len(payload)):
        with pytest.raises(MaskError):
            decode_mask(payload[:size])


def test_trailing_garbage(payload: bytes) -> None:
    for tail in (b"\x00", b" ", b"\xff" * 9):
        with pytest.raises(MaskError):
            decode_mask(payload + tail)


def test_wrong_encoding(payload: bytes) -> None:
    with pytest.raises(MaskError, match="cones-rice/999") as info:
        decode_mask(_forge(payload, encoding="cones-rice/999"))
    assert "upgrade" in info.value.hint
    with pytest.raises(MaskError, match="not supported"):
        read_mask_info(_forge(payload, encoding="cones-rice/999"))


def test_not_a_mask() -> None:
    with pytest.raises(MaskError, match="metadata"):
        decode_mask(st_save({"w": np.zeros(3, np.uint8)}))
    with pytest.raises(MaskError):
        decode_mask(b"")
    with pytest.raises(MaskError):
        decode_mask(b"definitely not a safetensors file")
    with pytest.raises(MaskError):
        decode_mask(b"\x02\x00\x00\x00\x00\x00\x00\x00[]")
    float_tensor = st_save(
        {"w": np.zeros(2, np.float32)},
        metadata={"encoding": constants.MASK_ENCODING_V1, "params": "[[8,1,0,0]]"},
    )
    with pytest.raises(MaskError, match="uint8"):
        decode_mask(float_tensor)


@pytest.mark.parametrize(
    "params",
    [
        "not json",
        "[[",
        "[" * 100_000 + "]" * 100_000,
        '{"a": 1}',
        "[[5000,300,4,0],[60,50,0,1]]",  # one entry short
        "[[5000,300,4,0],[60,50,0,1],[7,0,0,0],[1,0,0,0]]",  # one too many
        "[[5000,300,4],[60,50,0,1],[7,0,0,0]]",
        "[[5000,300,4.0,0],[60,50,0,1],[7,0,0,0]]",
        "[[5000,300,4,false],[60,50,0,1],[7,0,0,0]]",
        "[[5000,300,41,0],[60,50,0,1],[7,0,0,0]]",  # b too large
        "[[5000,300,4,2],[60,50,0,1],[7,0,0,0]]",  # unknown flag
        "[[5000,300,4,1],[60,50,0,1],[7,0,0,0]]",  # complement of a small set
        "[[5000,300,4,0],[60,50,0,0],[7,0,0,0]]",  # big set without its complement flag
        "[[5000,5001,4,1],[60,50,0,1],[7,0,0,0]]",  # count > numel
        "[[-5,0,0,0],[60,50,0,1],[7,0,0,0]]",
    ],
)
def test_bad_metadata(v1_payload: bytes, params: str) -> None:
    metadata = _metadata(v1_payload)
    metadata["params"] = params
    forged = st_save(st_load(v1_payload), metadata=metadata)
    with pytest.raises(MaskError):
        decode_mask(forged)
    with pytest.raises(MaskError):
        read_mask_info(forged)


@pytest.mark.parametrize(
    ("names", "params"),
    [
        (None, ""),  # no numbers
        (None, "5000,300,4,60,50,0"),  # one target short
        (None, "5000,300,4,60,50,0,7,0,0,1,0,0"),  # one too many
        (None, "5000,300,4,60,50,0,7,0,1"),  # a Rice parameter for an empty set
        (None, "5000,300,41,60,50,0,7,0,0"),  # b too large
        (None, "5000,5001,4,60,50,0,7,0,0"),  # count > numel
        (None, "5000,300,04,60,50,0,7,0,0"),  # not canonical decimal
        (None, "5000,300,4,60,50,0,7,0,-0"),
        (None, "5000, 300,4,60,50,0,7,0,0"),
        (None, "[[5000,300,4,0],[60,50,0,1],[7,0,0,0]]"),  # the old layout
        ("0,0,0,a\n0,0,0,b", None),  # one name short
        ("0,0,0,b\n0,0,0,a\n0,0,0,c", None),  # not sorted
        ("0,0,0,a\n0,0,0,a\n0,0,0,c", None),  # duplicated
        ("0,0,0,a\n1,1,0,\n0,0,0,c", None),  # "a" again, from a reference
        ("0,0,0,a\n2,0,0,b\n0,0,0,c", None),  # a reference before the first name
        ("0,0,0,a\n1,2,0,b\n0,0,0,c", None),  # more of the reference than it has
        ("0,0,0,a\n0,1,0,b\n0,0,0,c", None),  # a prefix without a reference
        ("0,0,0,a\n0,0,0,b\n1,0,0,c", None),  # a reference sharing nothing: not canonical
        ("0,0,0,a\n0,0,0,b\n0,0,0,\x01", None),  # a control character
        ("0,0,0,a\n0,0,0,b\nc", None),  # not r,p,s,middle
        ("0,0,0,a\n0,0,0,b\n0,0,0,c\n", None),  # an empty last line
    ],
)
def test_bad_v2_metadata(names: str | None, params: str | None) -> None:
    indices, numels = _payload_parts()
    data = encode_mask(indices, numels=numels)
    metadata = _metadata(data)
    assert metadata["names"] == "0,0,0,a\n0,0,0,b\n0,0,0,c"
    forged = forge_mask_v2(
        names if names is not None else metadata["names"],
        params if params is not None else metadata["params"],
        st_load(data)["rice"].tobytes(),
    )
    for read in (decode_mask, read_mask_info, validate_mask):
        with pytest.raises(MaskError):
            read(forged)


def test_v2_names_bomb_is_refused() -> None:
    # Each line adds one character to a name that copies the previous one: 27 KB of text would
    # build 4.5 million characters of names.
    lines = ["0,0,0,a"] + [f"1,{i},0,a" for i in range(1, 3000)]
    forged = forge_mask_v2("\n".join(lines), ",".join(["1,0,0"] * 3000), b"")
    with pytest.raises(MaskError, match="implausibly many"):
        read_mask_info(forged)


def test_v2_tensor_tampering() -> None:
    data = _one([0, 7, 8, 300, 301, 302, 999], 1000)
    raw = st_load(data)["rice"]
    metadata = _metadata(data)
    forged = {
        "trailing zero": np.concatenate([raw, [0]]).astype(np.uint8),
        "trailing one": np.concatenate([raw, [0x80]]).astype(np.uint8),
        "cut": raw[:-1],
        "empty": raw[:0],
    }
    for label, tensor in forged.items():
        bad = forge_mask_v2(metadata["names"], metadata["params"], tensor.tobytes())
        for read in (decode_mask, validate_mask):
            with pytest.raises(MaskError):
                read(bad)
                pytest.fail(f"{label}: accepted")
    numbers = metadata["params"].split(",")
    for count, message in (("6", "codes 7 indices"), ("8", "codes 7 indices")):
        bad = forge_mask_v2(metadata["names"], ",".join([numbers[0], count, numbers[2]]), raw)
        with pytest.raises(MaskError, match=message):
            decode_mask(bad)
    bad = forge_mask_v2(metadata["names"], ",".join(["999", "7", numbers[2]]), raw)
    with pytest.raises(MaskError, match="numel"):
        validate_mask(bad)
    with pytest.raises(MaskError, match="numel"):
        decode_mask(bad)


def test_v2_second_target_starts_after_the_first() -> None:
    # The unary section is shared: the second target's first gap counts from the first
    # target's last 1, so moving an index between them changes both.
    numels = {"a": 100, "b": 100}
    data = encode_mask({"a": [10, 90], "b": [0, 5]}, numels=numels)
    assert {n: x.tolist() for n, x in decode_mask(data).items()} == {"a": [10, 90], "b": [0, 5]}
    assert validate_mask(data).counts == {"a": 2, "b": 2}
    metadata = _metadata(data)
    a, b = metadata["params"].split(",")[2], metadata["params"].split(",")[5]
    # Claim one index fewer for a and one more for b: the bits no longer add up.
    bad = forge_mask_v2(metadata["names"], f"100,1,{a},100,3,{b}", st_load(data)["rice"])
    for read in (decode_mask, validate_mask):
        with pytest.raises(MaskError):
            read(bad)


def test_wrong_count_of_ones() -> None:
    data = _one_v1([3, 40, 41, 90], 100)
    params = json.loads(_metadata(data)["params"])
    for count in (3, 5):
        params[0][1] = count
        with pytest.raises(MaskError, match="codes 4 indices"):
            decode_mask(_forge(data, params=params))


def test_index_beyond_numel() -> None:
    data = _one_v1([3, 99], 100)
    params = json.loads(_metadata(data)["params"])
    params[0][0] = 50  # same count, so the complement flag stays consistent
    with pytest.raises(MaskError, match="numel"):
        decode_mask(_forge(data, params=params))
    # A valid read_mask_info does not mean a valid payload: only decode_mask checks the tensors.
    assert read_mask_info(_forge(data, params=params)).numels == {NAME: 50}


def test_tensor_tampering() -> None:
    data = _one_v1([0, 7, 8, 300, 301, 302, 999], 1000)
    raw = st_load(data)[NAME]
    forged = {
        "trailing zero": np.concatenate([raw, [0]]).astype(np.uint8),
        "trailing one": np.concatenate([raw, [0x80]]).astype(np.uint8),
        "cut": raw[:-1],
        "empty": raw[:0],
        "stray padding bit": _stray_padding(data),
    }
    for label, tensor in forged.items():
        with pytest.raises(MaskError):
            decode_mask(_forge(data, tensors={NAME: tensor}))
            pytest.fail(f"{label}: decoded")


def _set_bit(raw: np.ndarray, bit: int) -> np.ndarray:
    out = raw.copy()
    out[bit // 8] |= np.uint8(0x80 >> (bit % 8))
    return out


def _stray_padding(data: bytes) -> np.ndarray:
    """The tensor with a 1 in the zero padding that ends its low-part section."""
    _numel, count, b, _flags = json.loads(_metadata(data)["params"])[0]
    n_low = -(-count * b // 8)
    assert n_low * 8 > count * b, "test payload must have padding after its low parts"
    return _set_bit(st_load(data)[NAME], n_low * 8 - 1)


def test_empty_set_with_bytes() -> None:
    data = _one_v1([], 10)
    with pytest.raises(MaskError, match="empty set"):
        decode_mask(_forge(data, tensors={NAME: np.array([1], np.uint8)}))


def test_overflow_is_caught() -> None:
    # Many maximal gaps of a large numel would sum past 2**63 if not checked.
    numel = 2**61
    b = 40
    k = 64
    q = (numel - 1) >> b  # the largest quotient the decoder accepts
    low = np.packbits(np.ones(k * b, np.uint8))
    unary = np.zeros(k * (q + 1), np.uint8)
    unary[q :: q + 1] = 1
    tensor = np.concatenate([low, np.packbits(unary)])
    forged = st_save(
        {NAME: tensor},
        metadata={
            "encoding": constants.MASK_ENCODING_V1,
            "params": json.dumps([[numel, k, b, 0]]),
        },
    )
    with pytest.raises(MaskError, match="numel"):
        decode_mask(forged)


@FUZZ
@given(data=st.data())
def test_mutations_never_crash(data: st.DataObject) -> None:
    # Any byte change must give MaskError or a valid mask (a flipped low bit can legitimately
    # decode to another set), never an IndexError/ValueError/... from numpy or safetensors.
    indices, numels = data.draw(masks())
    payload = bytearray(encode_mask(indices, numels=numels))
    # Mostly hit the coded indices: the header is most of a small payload, and safetensors
    # itself already rejects most header damage.
    body = 8 + int.from_bytes(payload[:8], "little")
    region = data.draw(st.sampled_from(["any", "body", "body"]))
    low = body if region == "body" and body < len(payload) else 0
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(low, len(payload) - 1))
        if data.draw(st.booleans()):
            payload[position] ^= 1 << data.draw(st.integers(0, 7))
        else:
            payload[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_mask(bytes(payload))
    except MaskError:
        return
    info = read_mask_info(bytes(payload))
    assert sorted(decoded) == sorted(info.numels)
    for name, x in decoded.items():
        assert x.dtype == np.int64 and x.ndim == 1 and x.size == info.counts[name]
        if x.size:
            assert x[0] >= 0 and x[-1] < info.numels[name]
            assert np.all(np.diff(x) > 0)
