"""Hostile inputs for the artifact layer, and the properties every one of them must keep.

The artifact layer parses what strangers send: mask payloads, manifests, names, versions and
paths. This module is the fuzz campaign over it, in two budgets:

* ``tests/security/test_fuzz_artifact.py`` runs each target for a few hundred derandomized
  examples in every test run;
* ``fuzz/artifact.py`` runs the same targets for 100,000 inputs or more, counts them, and saves
  a reproducer of every crash.

It needs ``hypothesis`` (the ``test`` extra), which nothing else in conesreg imports.

A *target* is a hypothesis strategy plus a property (a ``check_*`` function). A property raises
``AssertionError`` when the code under test broke a promise; any exception other than the
project's own errors (:class:`conesreg.errors.ConesregError`) escaping it is a crash as well.
The promises:

* codec: valid masks round-trip; for any payload, :func:`validate_mask` stays within
  ``64 * len(payload) + 1 MiB`` of extra memory (measured with tracemalloc) and raises nothing
  but ``MaskError``; a payload validates exactly when it decodes (below the numel ceiling), to
  the counts its header declares; decoding against the wrong model refuses before allocating;
* manifests: :func:`parse_manifest` raises only ``ManifestError``/``IntegrityError``, and what it
  accepts re-parses from its canonical JSON to the same manifest and digest;
* names: :func:`parse_ref`, :func:`check_name`, :func:`check_file_path`, :func:`parse_spec` (and
  :func:`parse_version`) raise only ``ConesregError`` subclasses, and what they accept is what
  the grammar allows.

Example:
    >>> from hypothesis import given
    >>> @given(hostile_masks())
    ... def test(data):
    ...     check_mask_payload(data)
"""

from __future__ import annotations

import contextlib
import json
import math
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from conesreg.artifact import constants
from conesreg.artifact._json import load_json
from conesreg.artifact._manifest import canonical_json, parse_manifest
from conesreg.artifact._mask import (
    decode_mask,
    decode_mask_sets,
    encode_mask,
    read_mask_info,
    validate_mask,
)
from conesreg.artifact._names import NAME_MAX, NAME_RE, check_file_path, check_name, parse_ref
from conesreg.artifact._versions import parse_spec, parse_version
from conesreg.errors import ConesregError, IntegrityError, ManifestError, MaskError

__all__ = [
    "TARGETS",
    "Target",
    "amplification_bound",
    "check_manifest_body",
    "check_mask_payload",
    "check_name_text",
    "check_round_trip",
    "forge_mask",
    "forge_mask_v2",
    "hostile_masks",
    "manifest_bodies",
    "manifest_document",
    "mask_cases",
    "name_texts",
    "raw_safetensors",
    "v1_mask",
]

#: Extra memory validate_mask may use: this many bytes per payload byte, plus SLACK.
AMPLIFICATION = 64
SLACK = 1 << 20
#: Masks claiming at most this many scalars are also fully decoded by the codec property.
DECODE_LIMIT = 1 << 20

#: Integers where arithmetic and limits break: powers of two and their neighbours, int64 and
#: the codec's own ceilings, negatives.
EDGE_INTS = (
    0, 1, 2, 3, 7, 8, 9, 63, 64, 65, 255, 256, 1023, 1024, 65535, 65536, 1 << 20, 1 << 24,
    1 << 28, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 32) + 1, 1 << 40,
    (1 << 40) + 3, 1 << 53, 1 << 61, (1 << 62) - 1, 1 << 62, (1 << 63) - 1, 1 << 63, 1 << 64,
    10**30, -1, -2, -(1 << 63),
)  # fmt: skip

ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-5, 5000), st.integers())
#: Any JSON value, small: what a hostile header or manifest may hold where a number belongs.
json_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def amplification_bound(size: int) -> int:
    """The most extra memory validating a payload of ``size`` bytes may cost."""
    return AMPLIFICATION * size + SLACK


# --- builders -------------------------------------------------------------------------------------


def forge_mask(
    params: Sequence[Sequence[Any]] | str,
    tensors: Mapping[str, bytes],
    *,
    encoding: str = constants.MASK_ENCODING_V1,
) -> bytes:
    """A ``cones-rice/1`` safetensors payload with any ``params`` (a list, or JSON text taken
    verbatim) and raw ``uint8`` tensors: nothing is checked, which is the point.

    Example:
        >>> bomb = forge_mask([[1 << 28, 1 << 28, 0, 1]], {"w": b""})  # a full set: 144 bytes
    """
    text = params if isinstance(params, str) else json.dumps(params, separators=(",", ":"))
    arrays = {name: np.frombuffer(data, np.uint8) for name, data in tensors.items()}
    return st_save(arrays, metadata={"encoding": encoding, "params": text})


def forge_mask_v2(names: str, params: str, tensor: bytes, *, encoding: str | None = None) -> bytes:
    """A ``cones-rice/2`` payload with any ``names`` and ``params`` text and tensor bytes.

    Example:
        >>> bomb = forge_mask_v2("0,0,0,w", f"{1 << 40},{1 << 40},0", b"")  # a full set
    """
    metadata = {"encoding": encoding or constants.MASK_ENCODING, "names": names, "params": params}
    return st_save({"rice": np.frombuffer(tensor, np.uint8)}, metadata=metadata)


def v1_mask(indices: Mapping[str, Sequence[int]], *, numels: Mapping[str, int]) -> bytes:
    """What the ``cones-rice/1`` encoder wrote for these indices, rebuilt independently of the
    codec (bit strings): old payloads must keep decoding, and tests need fresh ones to corrupt.

    Example:
        >>> data = v1_mask({"w": [1, 5]}, numels={"w": 8, "v": 2})
    """
    params, tensors = [], {}
    for name in sorted(numels):
        numel, chosen = numels[name], sorted(int(i) for i in indices.get(name, ()))
        complement = 2 * len(chosen) > numel
        stored = sorted(set(range(numel)) - set(chosen)) if complement else chosen
        gaps = [x - prev - 1 for prev, x in zip([-1, *stored], stored, strict=False)]
        # The smallest b whose size is minimal, as the codec chooses it.
        sizes = [
            -(-len(gaps) * b // 8) + -(-sum((g >> b) + 1 for g in gaps) // 8) for b in range(41)
        ]
        b = sizes.index(min(sizes)) if gaps else 0
        params.append([numel, len(chosen), b, int(complement)])
        tensors[name] = rice_stream(gaps, b) if gaps else b""
    return forge_mask(params, tensors)


def raw_safetensors(header: Any, body: bytes, *, size: int | None = None) -> bytes:
    """``size`` (default: the header's length) as 8 little-endian bytes, the header as JSON,
    then ``body``: a safetensors file with whatever header a hostile writer likes."""
    text = json.dumps(header, separators=(",", ":")).encode()
    n = len(text) if size is None else size
    return (n % (1 << 64)).to_bytes(8, "little") + text + body


def rice_stream(gaps: Sequence[int], b: int) -> bytes:
    """Gaps Rice coded with parameter ``b``, written independently of the codec (bit strings)."""
    low = "".join(format(g & ((1 << b) - 1), f"0{b}b") if b else "" for g in gaps)
    unary = "".join("0" * (g >> b) + "1" for g in gaps)

    def pack(bits: str) -> bytes:
        bits += "0" * (-len(bits) % 8)
        return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))

    return pack(low) + pack(unary)


def manifest_document(
    *,
    targets: Mapping[str, Sequence[int]],
    mask: bytes,
    counts: Mapping[str, int],
    name: str = "dog",
    namespace: str = "acme",
    version: str = "1.0.0",
    base_hash: str = "sha256:" + "ab" * 32,
) -> dict[str, Any]:
    """A published manifest (as JSON data) of one mask blob with these targets and counts.

    Example:
        >>> doc = manifest_document(targets={"w": [4, 4]}, mask=b"...", counts={"w": 3})
        >>> doc["mask"]["total"]
        16
    """
    import hashlib

    digest = "sha256:" + hashlib.sha256(mask).hexdigest()
    nonzero = {k: v for k, v in counts.items() if v}
    return {
        "schema_version": constants.MANIFEST_SCHEMA_VERSION,
        "namespace": namespace,
        "name": name,
        "version": version,
        "kind": constants.CONCEPT_KIND,
        "base_model": {
            "id": "tiny/test",
            "hash": base_hash,
            "targets": [{"name": n, "shape": list(s)} for n, s in targets.items()],
        },
        "mask": {
            "blob": digest,
            "encoding": _encoding_of(mask),
            "total": sum(math.prod(s) for s in targets.values()),
            "selected": sum(nonzero.values()),
            "counts": nonzero,
        },
        "metadata": {
            "class_word": "dog",
            "description": "a good dog",
            "tags": ["animal"],
            "created": "2024-06-01T00:00:00Z",
        },
        "blobs": [
            {
                "digest": digest,
                "size": len(mask),
                "media_type": constants.MEDIA_TYPE_MASK,
                "path": constants.DRAFT_MASK,
            }
        ],
    }


def _encoding_of(mask: bytes) -> str:
    """The encoding a mask's header names (forged masks are often v1), else the current one."""
    try:
        return read_mask_info(mask).encoding
    except MaskError:
        return constants.MASK_ENCODING


# --- strategies: masks ----------------------------------------------------------------------------

param_names = st.text("abcdefghijklmnopqrstuvwxyz._0123456789", min_size=1, max_size=24).filter(
    lambda name: name != "__metadata__"
)


@st.composite
def index_sets(draw: st.DrawFn, numel: int) -> np.ndarray:
    """Sorted unique indices in ``[0, numel)``: empty, full, near-full, runs, random, sparse."""
    dense = numel <= 1 << 16
    kinds = ["empty", "single", "sparse", "explicit", "runs"]
    kinds += ["full", "almost_full", "random"] if dense else []
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "empty":
        return np.zeros(0, np.int64)
    if kind == "full":
        return np.arange(numel, dtype=np.int64)
    if kind == "single":
        return np.array([draw(st.integers(0, numel - 1))], np.int64)
    if kind == "explicit":
        return np.array(sorted(draw(st.sets(st.integers(0, numel - 1), max_size=30))), np.int64)
    if kind == "almost_full":
        holes = rng.integers(0, numel, size=draw(st.integers(0, 5)))
        return np.setdiff1d(np.arange(numel, dtype=np.int64), holes)
    if kind == "random":
        return np.flatnonzero(rng.random(numel) < draw(st.floats(0, 1))).astype(np.int64)
    if kind == "sparse":
        return np.unique(rng.integers(0, numel, size=draw(st.integers(1, 400))))
    starts = rng.integers(0, numel, size=draw(st.integers(1, 12)))
    parts = [np.arange(s, min(int(s) + int(rng.integers(1, 300)), numel)) for s in starts]
    return np.unique(np.concatenate(parts)).astype(np.int64)


@st.composite
def mask_cases(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Valid inputs of :func:`encode_mask`: indices and numels of 1-4 parameters."""
    names = draw(st.lists(param_names, min_size=1, max_size=4, unique=True))
    numel_st = st.one_of(
        st.integers(1, 64),
        st.integers(1, 1 << 16),
        st.sampled_from([1, 7, 8, 9, (1 << 31) + 5, 1 << 40, (1 << 62) - 1]),
    )
    numels = {name: draw(numel_st) for name in names}
    indices = {name: draw(index_sets(numel)) for name, numel in numels.items()}
    omitted = draw(st.sets(st.sampled_from(names)))
    return {n: x for n, x in indices.items() if n not in omitted}, numels


@st.composite
def _mutated(draw: st.DrawFn, *, v1: bool = False) -> bytes:
    """A valid payload with 1-4 byte-level mutations, mostly in the coded indices."""
    indices, numels = draw(mask_cases())
    if v1:
        # v1_mask works on bit strings: keep its inputs small.
        numels = {n: v for n, v in numels.items() if v <= 1 << 12}
        indices = {n: x for n, x in indices.items() if n in numels}
        data = bytearray(v1_mask(indices, numels=numels))
    else:
        data = bytearray(encode_mask(indices, numels=numels))
    body = 8 + int.from_bytes(data[:8], "little")
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "flip", "set", "truncate", "extend", "insert", "size"]))
        low = body if body < len(data) and draw(st.booleans()) else 0
        if not data:
            break
        pos = draw(st.integers(low, len(data) - 1))
        if how == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif how == "set":
            data[pos] = draw(st.integers(0, 255))
        elif how == "truncate":
            del data[pos:]
        elif how == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif how == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:  # the header length itself
            data[:8] = (draw(st.sampled_from(EDGE_INTS)) % (1 << 64)).to_bytes(8, "little")
    return bytes(data)


def _mutated_v1() -> st.SearchStrategy[bytes]:
    """Mutated cones-rice/1 payloads: the old format is still read from strangers."""
    return _mutated(v1=True)


def _tensor_bytes() -> st.SearchStrategy[bytes]:
    patterned = st.tuples(
        st.sampled_from([b"\xff", b"\x00", b"\x80", b"\x01", b"\x55", b"\xff\x00"]),
        st.integers(0, 1 << 15),
    ).map(lambda t: t[0] * t[1])
    return st.one_of(st.binary(max_size=64), patterned)


@st.composite
def _forged_params(draw: st.DrawFn) -> bytes:
    """Well-formed safetensors, random params: any numel/count/b/flags, any tensor bytes."""
    names = draw(st.lists(param_names, min_size=1, max_size=3, unique=True))
    entry = st.one_of(
        st.lists(ints, min_size=4, max_size=4),
        st.lists(ints, max_size=6),
        st.lists(json_values, max_size=5),
        json_values,
    )
    params: Any = [draw(entry) for _ in names]
    if draw(st.integers(0, 9)) == 0:
        params = draw(json_values)
    text = json.dumps(params)
    if draw(st.integers(0, 19)) == 0:
        text = draw(st.sampled_from(["", "[", "[" * 5000 + "]" * 5000, "null", "1e999"]))
    encoding = constants.MASK_ENCODING_V1 if draw(st.integers(0, 9)) else draw(st.text(max_size=12))
    tensors = {name: draw(_tensor_bytes()) for name in names}
    return forge_mask(text, tensors, encoding=encoding)


@st.composite
def _forged_v2(draw: st.DrawFn) -> bytes:
    """cones-rice/2 headers with any names and params text around the grammar, any tensor."""
    names = sorted(set(draw(st.lists(param_names, min_size=1, max_size=4))))
    lines = [f"0,0,0,{names[0]}"] + [f"1,{len(n) // 2},0,{n[len(n) // 2 :]}" for n in names[1:]]
    line_st = st.one_of(
        st.sampled_from(lines),
        st.builds(lambda r, p, q, m: f"{r},{p},{q},{m}", ints, ints, ints, st.text(max_size=6)),
        st.text(max_size=12),
    )
    text = "\n".join(draw(st.lists(line_st, min_size=0, max_size=5)))
    if draw(st.integers(0, 19)) == 0:
        text = draw(st.sampled_from(["1,0,0,a", "0,0,0,a\n1,1000000,0,", "0,0,0,\x01"]))
    numbers = draw(st.lists(ints, max_size=12))
    params = ",".join(str(v) for v in numbers)
    if draw(st.integers(0, 9)) == 0:
        params = draw(st.sampled_from(["", ",", "1,,2", "+1,0,0", "01,0,0", "1e3,0,0", " 1,0,0"]))
    return forge_mask_v2(text, params, draw(_tensor_bytes()))


@st.composite
def _near_valid_v2(draw: st.DrawFn) -> bytes:
    """Two targets sharing one unary section, bit-exact, with numels and counts near the truth:
    the boundary between targets is where decode and validate could drift apart."""
    sections = []
    for _ in range(2):
        b = draw(st.sampled_from([0, 1, 3, 8, 17, 40]))
        k = draw(st.integers(0, 20))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        gaps = [int(g) for g in rng.integers(0, (draw(st.sampled_from([1, 4, 100])) << b), size=k)]
        b = b if k else 0
        last = sum(gaps) + k - 1
        numel = max(0, last + draw(st.sampled_from([-1, 0, 1, 2, k, last + 1, 2 * k + 3])))
        count = k + draw(st.sampled_from([0, 0, 0, -1, 1]))
        if 2 * k > numel and draw(st.booleans()):
            count = numel - count  # the complement is stored
        sections.append((gaps, b, numel, max(0, count)))
    low = b"".join(rice_stream(g, b)[: -(-len(g) * b // 8)] for g, b, _, _ in sections)
    unary = "".join("0" * (g >> b) + "1" for gaps, b, _, _ in sections for g in gaps)
    unary += "0" * (-len(unary) % 8)
    tensor = bytearray(low + bytes(int(unary[i : i + 8], 2) for i in range(0, len(unary), 8)))
    if tensor and draw(st.integers(0, 3)) == 0:
        tensor[draw(st.integers(0, len(tensor) - 1))] ^= 1 << draw(st.integers(0, 7))
    params = ",".join(f"{numel},{count},{b}" for _, b, numel, count in sections)
    return forge_mask_v2("0,0,0,v\n0,0,0,w", params, bytes(tensor))


@st.composite
def _near_valid(draw: st.DrawFn) -> bytes:
    """Rice streams that are well-formed bit by bit, with numel and count around the truth.

    These reach the deepest checks (index sums against numel, padding bits, counts), where
    validate_mask and decode_mask could drift apart by one.
    """
    b = draw(st.sampled_from([0, 0, 1, 2, 3, 7, 8, 9, 16, 33, 40]))
    k = draw(st.integers(1, 40))
    high = draw(st.sampled_from([0, 1, 3, 100]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gaps = [int(g) for g in rng.integers(0, (high + 1) << b, size=k)]
    stream = bytearray(rice_stream(gaps, b))
    if stream and draw(st.integers(0, 3)) == 0:
        stream[draw(st.integers(0, len(stream) - 1))] ^= 1 << draw(st.integers(0, 7))
    last = sum(gaps) + k - 1
    numel = max(0, last + draw(st.sampled_from([-1, 0, 1, 2, k, last + 1])))
    count = k + draw(st.sampled_from([0, 0, 0, -1, 1]))
    complement = draw(st.booleans())
    if complement:
        # Store the complement: the header count is numel - k.
        count = numel - count
    flags = int(2 * count > numel) if draw(st.integers(0, 4)) else int(complement)
    return forge_mask([[numel, count, b, flags]], {"w": bytes(stream)})


@st.composite
def _raw_headers(draw: st.DrawFn) -> bytes:
    """Hand-built safetensors headers: any dtype, shape and offsets, any metadata."""
    header: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        entries = draw(st.lists(st.lists(ints, min_size=4, max_size=4), max_size=3))
        header["__metadata__"] = {
            "encoding": constants.MASK_ENCODING_V1,
            "params": json.dumps(entries),
        }
    else:
        header["__metadata__"] = draw(json_values)
    body = draw(st.binary(max_size=64))
    offsets = st.lists(st.integers(-2, len(body) + 2), min_size=2, max_size=2)
    for name in draw(st.lists(param_names, max_size=3, unique=True)):
        header[name] = {
            "dtype": draw(st.sampled_from(["U8", "U8", "I8", "F32", "BOOL", "F8_E4M3", "X"])),
            "shape": draw(st.one_of(st.lists(ints, max_size=3), json_values)),
            "data_offsets": draw(st.one_of(offsets, json_values)),
        }
    size = draw(st.one_of(st.none(), st.sampled_from(EDGE_INTS)))
    return raw_safetensors(header, body, size=size if size is None or size >= 0 else None)


def hostile_masks() -> st.SearchStrategy[bytes]:
    """Payloads a stranger could upload: mutated masks, forged headers, near-valid streams,
    hand-built safetensors, and the known bombs (full sets of huge claimed parameters)."""
    bombs = st.sampled_from(
        [
            forge_mask([[1 << 28, 1 << 28, 0, 1]], {"w": b""}),
            forge_mask([[1 << 40, 1 << 40, 0, 1]], {"w": b""}),
            forge_mask([[(1 << 62) - 1, (1 << 62) - 1, 0, 1]], {"w": b""}),
            forge_mask([[1 << 21, 1 << 18, 0, 0]], {"w": b"\xff" * (1 << 15)}),
            forge_mask_v2("0,0,0,w", f"{1 << 40},{1 << 40},0", b""),
            forge_mask_v2(
                "0,0,0,v\n0,0,0,w",
                f"{1 << 28},{1 << 28},0,{1 << 21},{1 << 18},0",
                b"\xff" * (1 << 15),
            ),
            # A names bomb: each line grows the name by one character.
            forge_mask_v2(
                "\n".join(["0,0,0,a"] + [f"1,{i},0,a" for i in range(1, 3000)]),
                ",".join(["1,0,0"] * 3000),
                b"",
            ),
        ]
    )
    return st.one_of(
        _mutated(),
        _mutated_v1(),
        _forged_params(),
        _forged_v2(),
        _near_valid(),
        _near_valid_v2(),
        _raw_headers(),
        bombs,
        st.binary(max_size=256),
    )


# --- strategies: manifests ------------------------------------------------------------------------


def _valid_document() -> dict[str, Any]:
    mask = encode_mask({"w": [1, 5, 9]}, numels={"w": 64, "v": 16})
    return manifest_document(targets={"w": [8, 8], "v": [4, 4]}, mask=mask, counts={"w": 3})


_VALID_MANIFEST = canonical_json(_valid_document())


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


hostile_strings = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "..",
            "../../etc/passwd",
            "C:/x",
            "a\\b",
            "x\x00y",
            "\x1b[31m",
            "manifest.json",
            "a" * 300,
            "é" * 200,
            "sha256:" + "0" * 64,
            "1.0.0-" + "a" * 500,
            "\ud800",
        ]
    ),
)


@st.composite
def _mutated_manifest(draw: st.DrawFn) -> bytes:
    doc = _valid_document()
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths[1:]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        how = draw(st.sampled_from(["value", "string", "int", "delete", "add", "nest"]))
        key = path[-1]
        if how == "delete":
            del parent[key]
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(json_values)
        elif how == "nest":
            parent[key] = json.loads("[" * 200 + "1" + "]" * 200)
        elif how == "string":
            parent[key] = draw(hostile_strings)
        elif how == "int":
            parent[key] = draw(ints)
        else:
            parent[key] = draw(json_values)
    try:
        text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    except (ValueError, OverflowError):
        text = "{}"
    return text.encode("utf-8", "surrogatepass")


@st.composite
def _byte_mutated_manifest(draw: st.DrawFn) -> bytes:
    data = bytearray(_VALID_MANIFEST)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    return bytes(data)


def manifest_bodies() -> st.SearchStrategy[bytes]:
    """Manifest bodies: schema-aware mutations of a valid one, byte flips, deep nesting, any
    JSON, any bytes."""
    return st.one_of(
        _mutated_manifest(),
        _byte_mutated_manifest(),
        st.just(_VALID_MANIFEST),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 100_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.binary(max_size=200),
    )


# --- strategies: names ----------------------------------------------------------------------------

_FRAGMENTS = [
    "acme", "dog", "a", "0", "-", "_", ".", "/", "@", "://", "hf", "^", "~", ">=", "<", ",", " ",
    "1", "1.2", "1.2.3", "1.2.3-rc.1", "+build", "*", "x", "latest", "sha256:", "0" * 64, "..",
    "\x00", "\n", "\u200b", "Ä", "\ud800", "\\", ":", "C:", "con", ".git", "|", "?", "a" * 64,
    "a" * 65, "1" * 30, "9" * 400,
]  # fmt: skip


def name_texts() -> st.SearchStrategy[str]:
    """Text near the grammar (fragments of refs, specs and paths glued together) and any text."""
    glued = st.lists(st.sampled_from(_FRAGMENTS), max_size=12).map("".join)
    return st.one_of(glued, glued, st.text(max_size=80), st.text(max_size=2000))


# --- properties -------------------------------------------------------------------------------


@dataclass
class Stats:
    """What the properties measured, for the long run's report."""

    validate_peak: int = 0  # the largest extra memory of one validate_mask call
    worst_ratio: float = 0.0  # the largest (extra memory) / amplification_bound over inputs
    # Outcomes: one per input, except names (one per parser and input: five parsers).
    accepted: int = 0  # accepted by the code under test
    refused: int = 0  # refused with the project's own error
    by_error: dict[str, int] = field(default_factory=dict)

    def refuse(self, e: ConesregError) -> None:
        self.refused += 1
        self.by_error[type(e).__name__] = self.by_error.get(type(e).__name__, 0) + 1


STATS: dict[str, Stats] = {}


def _stats(target: str) -> Stats:
    return STATS.setdefault(target, Stats())


def _measured(fn: Callable[[], Any]) -> tuple[Any, ConesregError | None, int]:
    """``fn()``'s result or project error, and its extra memory: the tracemalloc peak over what
    was traced when it started (numpy reports its buffers to tracemalloc). Tracing is switched on
    for the call only, when it is not on already, so that the rest of a campaign runs at full
    speed. Any exception other than the project's own propagates."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        result, error = fn(), None
    except ConesregError as e:
        result, error = None, e
    finally:
        peak = tracemalloc.get_traced_memory()[1] - before
        if started:
            tracemalloc.stop()
    return result, error, peak


def _record_peak(stats: Stats, peak: int, size: int) -> None:
    bound = amplification_bound(size)
    stats.validate_peak = max(stats.validate_peak, peak)
    stats.worst_ratio = max(stats.worst_ratio, peak / bound)
    assert peak <= bound, f"validate_mask used {peak} bytes on a {size}-byte payload, over {bound}"


def check_round_trip(indices: Mapping[str, np.ndarray], numels: Mapping[str, int]) -> None:
    """A valid mask encodes deterministically and validates and decodes back to itself."""
    data = encode_mask(indices, numels=numels)
    assert encode_mask(indices, numels=numels) == data, "encoding is not deterministic"
    expected = {n: np.asarray(indices.get(n, []), np.int64).tolist() for n in numels}
    counts = {n: len(v) for n, v in expected.items()}
    stats = _stats("codec-roundtrip")
    info, error, peak = _measured(lambda: validate_mask(data))
    _record_peak(stats, peak, len(data))
    total = sum(numels.values())
    if total <= constants.MAX_TARGET_NUMEL:
        assert error is None, f"validate_mask refused a valid mask: {error}"
        assert info.counts == counts
    else:
        assert isinstance(error, MaskError), f"validate_mask accepted {total} scalars"
    sets = decode_mask_sets(data, numels=numels)
    assert {n: len(s) for n, s in sets.items()} == counts
    if sum(s.stored.size for s in sets.values()) <= DECODE_LIMIT and all(
        s.numel <= DECODE_LIMIT for s in sets.values() if s.complement
    ):
        decoded = decode_mask(data, numels=numels)
        assert {n: x.tolist() for n, x in decoded.items()} == expected
    stats.accepted += 1


def check_mask_payload(data: bytes) -> None:
    """Any payload: bounded validation, only MaskError, validate-ok exactly when decode-ok."""
    stats = _stats("codec-hostile")
    bound = amplification_bound(len(data))
    info, error, peak = _measured(lambda: validate_mask(data))
    if error is not None:
        assert isinstance(error, MaskError), f"validate_mask raised {error!r}"
        stats.refuse(error)
    _record_peak(stats, peak, len(data))

    try:
        header = read_mask_info(data)
    except MaskError:
        header = None
    try:
        sets = decode_mask_sets(data)  # memory ~ the payload: safe on anything
    except MaskError:
        sets = None

    if info is None:
        if sets is not None and header is not None:
            assert header.total > constants.MAX_TARGET_NUMEL, (
                "decode_mask_sets accepted a payload validate_mask refused"
            )
        return
    stats.accepted += 1
    assert header == info, "read_mask_info and validate_mask disagree on the header"
    assert sets is not None, "validate_mask accepted a payload that does not decode"
    assert list(sets) == sorted(info.numels)
    for name, s in sets.items():
        assert s.numel == info.numels[name] and len(s) == info.counts[name]
        x = s.stored
        assert x.dtype == np.int64 and x.ndim == 1
        if x.size:
            assert x[0] >= 0 and x[-1] < s.numel and bool(np.all(x[1:] > x[:-1]))
    if info.total <= DECODE_LIMIT:
        decoded = decode_mask(data, numels=info.numels)
        assert {n: len(x) for n, x in decoded.items()} == info.counts
    if info.numels:
        # A consumer with other sizes is refused before anything is allocated.
        other = {n: v + 1 for n, v in info.numels.items()}
        _, error, peak = _measured(lambda: decode_mask(data, numels=other))
        assert isinstance(error, MaskError), "decode_mask ignored the consumer's numels"
        assert peak <= bound, f"decode_mask allocated {peak} bytes before refusing"


def check_manifest_body(body: bytes) -> None:
    """Only ManifestError/IntegrityError; what parses re-parses from its canonical JSON."""
    stats = _stats("manifest")
    with contextlib.suppress(ManifestError):
        load_json(body, what="the manifest")
    try:
        manifest = parse_manifest(body)
    except ManifestError as e:
        stats.refuse(e)
        return
    stats.accepted += 1
    again = parse_manifest(manifest.canonical_json(), expected_digest=manifest.digest)
    assert again == manifest and again.digest == manifest.digest
    try:
        parse_manifest(body, expected_digest="sha256:" + "0" * 64)
    except IntegrityError:
        pass
    else:
        raise AssertionError("a manifest matched a digest it does not have")


def check_name_text(text: str) -> None:
    """The name grammar's parsers raise only ConesregError, and accept only the grammar."""
    stats = _stats("names")
    for fn in (_ref, _name, _path, _spec, _version):
        try:
            fn(text)
        except ConesregError as e:
            stats.refuse(e)
        else:
            stats.accepted += 1


def _ref(text: str) -> None:
    ref = parse_ref(text, default_namespace="library")
    for part in (ref.namespace, ref.name):
        assert NAME_RE.match(part) and len(part) <= NAME_MAX, part
    if ref.registry is None or NAME_RE.match(ref.registry):
        assert parse_ref(str(ref)) == ref, f"{text!r} does not round-trip"
    if ref.spec is not None:
        parse_spec(ref.spec)


def _name(text: str) -> None:
    assert check_name(text) == text
    assert NAME_RE.match(text) and len(text) <= NAME_MAX


def _path(text: str) -> None:
    assert check_file_path(text) == text
    parts = text.split("/")
    assert ".." not in parts and "" not in parts and "\\" not in text and "\x00" not in text


def _spec(text: str) -> None:
    spec = parse_spec(text)
    spec.matches("1.2.3")  # a parsed spec can always be applied


def _version(text: str) -> None:
    parse_version(text)


@dataclass(frozen=True)
class Target:
    """One fuzz target: a strategy of inputs and the property every input must keep."""

    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]
    #: Share of a campaign's inputs.
    weight: float


TARGETS = (
    Target("codec-roundtrip", mask_cases(), lambda case: check_round_trip(*case), 0.1),
    Target("codec-hostile", hostile_masks(), check_mask_payload, 0.4),
    Target("manifest", manifest_bodies(), check_manifest_body, 0.3),
    Target("names", name_texts(), check_name_text, 0.2),
)
