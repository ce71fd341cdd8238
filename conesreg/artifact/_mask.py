"""The mask codec: concept neurons as a compact, lossless safetensors payload.

A mask says, for each target parameter of the UNet (a diffusers state-dict name such as
``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``), which of its scalars are
concept neurons: the sorted, unique flat indices ``0 <= i < numel``.

Layout of the payload (encoding ``cones-rice/1``), a safetensors file:

* one 1-D ``uint8`` tensor per parameter, named by the parameter, holding its indices Rice coded;
* ``__metadata__`` = ``{"encoding": "cones-rice/1", "params": P}`` where ``P`` is the compact
  JSON list ``[[numel, count, b, flags], ...]``, one entry per tensor in sorted name order
  (code point order). ``count`` is the number of selected indices, ``b`` the Rice parameter
  (0..40) and ``flags`` bit 0 means "the complement is stored".

Each tensor codes the ``k`` indices ``x_0 < x_1 < ...`` of its *stored set* (the selected
indices, or their complement within ``range(numel)`` when ``2 * count > numel``, so that a full
set costs nothing) as gaps ``g_i = x_i - x_{i-1} - 1`` with ``x_{-1} = -1``. Gap ``g`` is split
into ``g >> b``, written in unary (that many 0 bits then a 1), and its low ``b`` bits. The tensor
is the low parts of all gaps, MSB first, packed into ``ceil(k * b / 8)`` bytes (zero padded),
then the unary parts packed the same way; the last byte holds the last 1 bit, so the tensor
length is implied and anything after it is corruption. ``b`` is the exact size minimiser, so
uniformly random sets cost within a fraction of a percent of the information bound.

The encoding is deterministic (same indices, same bytes), which the content-addressed registry
relies on: re-encoding a concept reproduces its sha256.

Example:
    >>> import numpy as np
    >>> data = encode_mask({"w": [0, 5, 6]}, numels={"w": 10, "v": 4})
    >>> {name: idx.tolist() for name, idx in decode_mask(data).items()}
    {'v': [], 'w': [0, 5, 6]}
    >>> read_mask_info(data).selected
    3
    >>> validate_mask(data).counts  # every check of decode_mask, in memory ~ the payload's size
    {'v': 0, 'w': 3}
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# numpy at module top is deliberate: callers import this module lazily, only when a mask is
# actually encoded or decoded, so the CLI start-up never pays for it.
import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from . import constants
from .errors import MaskError

__all__ = [
    "IndexSet",
    "MaskInfo",
    "decode_mask",
    "decode_mask_sets",
    "encode_mask",
    "information_bound_bytes",
    "load_mask",
    "read_mask_info",
    "save_mask",
    "validate_mask",
]

#: Largest Rice parameter. 2**40 covers the gaps of any plausible tensor, and keeps
#: ``b + 7 <= 64`` so that a low part always fits one unaligned 64-bit window when decoding.
_MAX_RICE_B = 40
#: Largest numel accepted. Well above any real tensor, and low enough that gap arithmetic in
#: int64 (``q << b`` plus low bits) can never overflow once ``q`` is bounded by ``numel``.
_MAX_NUMEL = 1 << 62
_FLAG_COMPLEMENT = 1
_KNOWN_FLAGS = _FLAG_COMPLEMENT
_METADATA_KEY = "__metadata__"
#: Bytes of a tensor that validate_mask looks at in one step. Its scratch is at most 8 bytes per
#: byte of a chunk (bits unpacked to bytes), so a chunk of 64 KiB keeps it under 1 MiB whatever
#: the payload claims, while the Python loop stays short (16 steps per MiB).
_CHUNK_BYTES = 1 << 16
#: Set bits of every byte value: counting the 1s of the unary section without unpacking it.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

_CORRUPT_HINT = (
    "the mask payload is damaged or was not written by conesreg.encode_mask: download it again "
    "(`conesreg verify --fix`) or re-create it"
)


@dataclass(frozen=True)
class MaskInfo:
    """What a mask payload holds, read from its header without decoding the indices.

    Attributes:
        encoding: The encoding name, e.g. ``"cones-rice/1"``.
        numels: Number of scalars of each target parameter.
        counts: Number of selected indices (concept neurons) of each target parameter.
    """

    encoding: str
    numels: dict[str, int]
    counts: dict[str, int]

    @property
    def total(self) -> int:
        """N: the number of candidate scalars over all target parameters."""
        return sum(self.numels.values())

    @property
    def selected(self) -> int:
        """k: the number of selected indices over all target parameters."""
        return sum(self.counts.values())


@dataclass(frozen=True, eq=False)
class IndexSet:
    """A set of flat indices ``0 <= i < numel`` as a mask stores it, complement not expanded.

    A near-full set of a large parameter is stored as its few missing indices; keeping it that
    way costs memory in proportion to the payload, never to ``numel``, so sets of untrusted masks
    can be counted and intersected (``conesreg info --overlap``) without a pipeline to bound them.

    Attributes:
        numel: Size of the parameter the indices point into.
        stored: Sorted, unique ``int64`` indices: the set itself, or its complement.
        complement: True when the set is every index of ``range(numel)`` *not* in ``stored``.

    Example:
        >>> s = IndexSet(numel=5, stored=np.array([1]), complement=True)
        >>> len(s), s.indices().tolist()
        (4, [0, 2, 3, 4])
    """

    numel: int
    stored: np.ndarray
    complement: bool = False

    def __len__(self) -> int:
        return self.numel - int(self.stored.size) if self.complement else int(self.stored.size)

    def indices(self) -> np.ndarray:
        """The set's own sorted indices (a complement costs ``numel`` bytes of scratch plus the
        result: call this only within sizes the caller trusts)."""
        return _complement(self.stored, self.numel) if self.complement else self.stored


# --- public API ---------------------------------------------------------------------------------


def encode_mask(indices: Mapping[str, npt.ArrayLike], *, numels: Mapping[str, int]) -> bytes:
    """Encode concept-neuron indices as a mask payload (a safetensors file, as bytes).

    Args:
        indices: For each target parameter name, its selected flat indices: a 1-D array-like of
            integers, strictly increasing, each in ``[0, numel)``. An empty sequence of any dtype
            is an empty set.
        numels: Number of scalars of every target parameter. Names present here but absent from
            ``indices`` are encoded as empty sets, so the payload records every candidate.

    Returns:
        The payload. Equal inputs always give equal bytes.

    Raises:
        MaskError: A name of ``indices`` has no numel, a numel is not an integer in
            ``[0, 2**62)``, a name is empty or reserved, or indices are not a 1-D integer array,
            not strictly increasing (unsorted or duplicated; the message names the parameter
            and the first bad position) or out of range.

    Example:
        >>> data = encode_mask({"conv.weight": [3, 7]}, numels={"conv.weight": 64})
        >>> decode_mask(data)["conv.weight"].tolist()
        [3, 7]
    """
    missing = [name for name in indices if name not in numels]
    if missing:
        raise MaskError(
            f"mask parameter {missing[0]!r} has no numel",
            hint="pass numels={name: tensor.numel()} for every parameter of the mask",
        )
    # Checked before sorting: sorted() of mixed key types would raise a bare TypeError.
    checked = {name: _check_numel(name, numel) for name, numel in numels.items()}
    tensors: dict[str, np.ndarray] = {}
    params: list[list[int]] = []
    for name, numel in sorted(checked.items()):
        x = _check_indices(name, indices[name], numel) if name in indices else np.zeros(0, np.int64)
        count = int(x.size)
        flags = 0
        if 2 * count > numel:
            # Store the (smaller) complement: a near-full set then costs about as little as a
            # near-empty one instead of ~1 bit per index.
            x = _complement(x, numel)
            flags |= _FLAG_COMPLEMENT
        payload, b = _rice_encode(x)
        tensors[name] = payload
        params.append([numel, count, b, flags])
    metadata = {
        "encoding": constants.MASK_ENCODING,
        "params": json.dumps(params, separators=(",", ":")),
    }
    return _save_canonical(tensors, metadata)


def decode_mask(data: bytes, *, numels: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Decode a mask payload written by :func:`encode_mask`.

    The payload says how many indices it holds, and a full set of a large parameter is tiny on
    disk: when it is not trusted, pass ``numels`` (the sizes of the parameters the indices will
    be used on), which are checked against the header before anything is allocated. Without a
    consumer to bound it, check it with :func:`validate_mask` or work on
    :func:`decode_mask_sets`, whose memory is proportional to the payload.

    Args:
        data: The payload (``bytes``, ``bytearray`` or ``memoryview``).
        numels: Scalars of each parameter the consumer has. Every parameter of the mask must be
            one of them, of that size. None: trust the header.

    Returns:
        For each target parameter, in name order, its selected indices as a sorted, unique
        ``int64`` array (possibly empty).

    Raises:
        MaskError: The payload is not a mask of a supported encoding, or is corrupt, truncated
            or inconsistent (bad metadata, a tensor that does not decode to exactly the recorded
            count, an index ``>= numel``, trailing bytes), or it does not fit ``numels``.
        TypeError: ``data`` is not bytes-like.

    Example:
        >>> data = encode_mask({"w": [1, 2, 3]}, numels={"w": 4})
        >>> decode_mask(data, numels={"w": 4})["w"]
        array([1, 2, 3])
    """
    return {name: s.indices() for name, s in _iter_sets(data, numels)}


def decode_mask_sets(
    data: bytes, *, numels: Mapping[str, int] | None = None
) -> dict[str, IndexSet]:
    """Decode a mask payload without expanding complements: memory ~ the payload's size.

    Every index a payload stores costs it at least one bit, so the stored indices take at most
    64 bytes (one ``int64``) per payload byte, whatever ``numel`` the header claims.

    Args:
        data: The payload (``bytes``, ``bytearray`` or ``memoryview``).
        numels: As for :func:`decode_mask`.

    Returns:
        For each target parameter, in name order, its :class:`IndexSet`.

    Raises:
        MaskError, TypeError: As for :func:`decode_mask`.

    Example:
        >>> sets = decode_mask_sets(encode_mask({"w": [0, 1, 3]}, numels={"w": 4}))
        >>> sets["w"].complement, sets["w"].stored.tolist(), len(sets["w"])
        (True, [2], 3)
    """
    return dict(_iter_sets(data, numels))


def _iter_sets(data: bytes, numels: Mapping[str, int] | None) -> Iterator[tuple[str, IndexSet]]:
    """Decode the tensors one by one, after every check that needs no decoding.

    A generator, so that decode_mask expands each set while its stored indices are still in
    cache and frees them before the next tensor (measurably faster for complemented sets).
    """
    data = _as_bytes(data)
    entries = _read_header(data)
    if numels is not None:
        _check_fits(entries, numels)
    tensors = _load_tensors(data)
    for name, numel, count, b, flags in entries:
        complement = bool(flags & _FLAG_COMPLEMENT)
        k = numel - count if complement else count
        x = _rice_decode(name, tensors[name], k, b, numel)
        yield name, IndexSet(numel=numel, stored=x, complement=complement)


def validate_mask(data: bytes) -> MaskInfo:
    """Check a mask payload completely, in memory proportional to its size, not to its claims.

    Everything :func:`decode_mask` checks is checked here (header, tensor layout, the count of
    coded indices, every index ``< numel``, stray and trailing bits), so a payload that
    validates always decodes; but the indices are only counted and summed, a chunk at a time,
    never materialised. The total ``numel`` over all targets must also be at most
    ``constants.MAX_TARGET_NUMEL`` (``CONESREG_MAX_TARGET_NUMEL``): no supported base model has
    more. Extra memory stays below 64 bytes per payload byte plus 1 MiB; use it on every payload
    that comes from someone else before deciding to decode it.

    Args:
        data: The payload (``bytes``, ``bytearray`` or ``memoryview``).

    Returns:
        A :class:`MaskInfo`, as :func:`read_mask_info` gives.

    Raises:
        MaskError: The payload would not decode, or claims more scalars than any base model has.
        TypeError: ``data`` is not bytes-like.

    Example:
        >>> data = encode_mask({"w": [1, 5]}, numels={"w": 8})
        >>> validate_mask(data).counts
        {'w': 2}
        >>> validate_mask(data[:-1])  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        conesreg.artifact.errors.MaskError: mask payload is not a valid safetensors file
    """
    data = _as_bytes(data)
    entries = _read_header(data)
    total = sum(numel for _, numel, _, _, _ in entries)
    limit = constants.MAX_TARGET_NUMEL
    if total > limit:
        raise MaskError(
            f"mask claims {total} target scalars, more than the {limit} any supported base model "
            "has",
            hint="this is not a mask of a real base model; if it is, raise "
            "CONESREG_MAX_TARGET_NUMEL",
        )
    tensors = _load_tensors(data)
    for name, numel, count, b, flags in entries:
        k = numel - count if flags & _FLAG_COMPLEMENT else count
        _rice_check(name, tensors[name], k, b, numel)
    return MaskInfo(
        encoding=constants.MASK_ENCODING,
        numels={name: numel for name, numel, _, _, _ in entries},
        counts={name: count for name, _, count, _, _ in entries},
    )


def read_mask_info(data: bytes) -> MaskInfo:
    """Read the parameters, numels and counts of a mask payload without decoding it.

    Only the header is parsed, so this is cheap, but it does not prove that the tensors decode:
    :func:`validate_mask` does (in memory ~ the payload), and so does :func:`decode_mask`.

    Args:
        data: The payload (``bytes``, ``bytearray`` or ``memoryview``).

    Returns:
        A :class:`MaskInfo`.

    Raises:
        MaskError: The header is not that of a mask of a supported encoding.
        TypeError: ``data`` is not bytes-like.

    Example:
        >>> info = read_mask_info(encode_mask({"w": [1, 2]}, numels={"w": 8, "v": 2}))
        >>> info.counts, info.total, info.selected
        ({'v': 0, 'w': 2}, 10, 2)
    """
    entries = _read_header(_as_bytes(data))
    return MaskInfo(
        encoding=constants.MASK_ENCODING,
        numels={name: numel for name, numel, _, _, _ in entries},
        counts={name: count for name, _, count, _, _ in entries},
    )


def save_mask(
    path: str | os.PathLike[str],
    indices: Mapping[str, npt.ArrayLike],
    *,
    numels: Mapping[str, int],
) -> None:
    """Encode a mask and write it to ``path`` atomically.

    The payload goes to a temporary file in the same folder first and is then moved over
    ``path``, so readers never see a half-written mask.

    Args:
        path: Destination file (its folder must exist).
        indices: As for :func:`encode_mask`.
        numels: As for :func:`encode_mask`.

    Raises:
        MaskError: As for :func:`encode_mask`; nothing is written then.
        OSError: The file cannot be written.

    Example:
        >>> save_mask("mask.safetensors", {"w": [0, 3]}, numels={"w": 4})  # doctest: +SKIP
    """
    data = encode_mask(indices, numels=numels)
    path = Path(path)
    # Same folder so that os.replace is an atomic rename on the same file system; the ".tmp"
    # suffix lets cleaners spot leftovers of a killed process.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_mask(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read and decode the mask file at ``path``.

    Args:
        path: A file written by :func:`save_mask` (or any file holding an encoded mask).

    Returns:
        As for :func:`decode_mask`.

    Raises:
        MaskError: As for :func:`decode_mask`.
        OSError: The file cannot be read.

    Example:
        >>> load_mask("mask.safetensors")["w"]  # doctest: +SKIP
        array([0, 3])
    """
    return decode_mask(Path(path).read_bytes())


def information_bound_bytes(n: int, k: int) -> float:
    """The information-theoretic size of a k-subset of n items: ``log2(C(n, k)) / 8`` bytes.

    No lossless code can store every k-subset of n in fewer bytes on average; the benchmark
    compares payload sizes against it.

    Args:
        n: Number of items.
        k: Number of selected items, ``0 <= k <= n``.

    Returns:
        The bound in bytes (a float; 0.0 for the empty and the full set).

    Raises:
        ValueError: ``k`` is not within ``[0, n]``.

    Example:
        >>> round(information_bound_bytes(16, 8), 3)
        1.706
    """
    if not 0 <= k <= n:
        raise ValueError(f"k must be within [0, n], got n={n}, k={k}")
    bits = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
    # lgamma rounding can leave a tiny negative for k in {0, n}.
    return max(bits, 0.0) / 8


def _save_canonical(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """``safetensors.numpy.save`` with the metadata keys in sorted order.

    safetensors (up to at least 0.8) writes ``__metadata__`` from a Rust HashMap, in an order
    that changes from process to process (safetensors issue #584), so equal masks would get
    different sha256s. The metadata object is the first thing in the header; with ASCII keys and
    values it has the same bytes as Python's compact JSON, so it is swapped for the sorted
    serialisation of equal length, which is also what a fixed safetensors would write.
    """
    data = _st_save(tensors, metadata=metadata)
    canonical = json.dumps(dict(sorted(metadata.items())), separators=(",", ":")).encode()
    start = 8 + len(b'{"__metadata__":')
    end = start + len(canonical)
    try:
        same = data[8:start] == b'{"__metadata__":' and json.loads(data[start:end]) == metadata
    except ValueError:
        same = False
    if not same:
        # Not reachable with the safetensors layouts known so far: refuse rather than guess.
        raise RuntimeError("unexpected safetensors header layout; cannot canonicalise the mask")
    return data[:start] + canonical + data[end:]


# --- validation ---------------------------------------------------------------------------------


def _check_numel(name: object, numel: object) -> int:
    if not isinstance(name, str) or not name or name == _METADATA_KEY:
        raise MaskError(
            f"mask parameter name {name!r} is empty, not a string or reserved",
            hint="name mask parameters by their state-dict names",
        )
    # bool is an int subclass but never a meaningful numel.
    if isinstance(numel, bool) or not isinstance(numel, int | np.integer):
        raise MaskError(
            f"numel of mask parameter {name!r} is {numel!r}, not an integer",
            hint="pass numels={name: tensor.numel()}",
        )
    numel = int(numel)
    if not 0 <= numel < _MAX_NUMEL:
        raise MaskError(
            f"numel of mask parameter {name!r} is {numel}, outside [0, 2**62)",
            hint="pass numels={name: tensor.numel()}",
        )
    return numel


def _check_indices(name: str, raw: npt.ArrayLike, numel: int) -> np.ndarray:
    try:
        x = np.asarray(raw)
    except (TypeError, ValueError) as e:
        raise MaskError(
            f"indices of mask parameter {name!r} are not an array: {e}",
            hint="pass a 1-D array of int64 flat indices",
        ) from e
    if x.ndim != 1:
        raise MaskError(
            f"indices of mask parameter {name!r} have shape {x.shape}, expected a 1-D array",
            hint="flatten the indices: use flat (raveled) positions, e.g. np.flatnonzero(mask)",
        )
    if x.size == 0:
        # np.asarray([]) is float64; an empty set has no value of the wrong type.
        return np.zeros(0, np.int64)
    if x.dtype.kind not in "iu":
        raise MaskError(
            f"indices of mask parameter {name!r} have dtype {x.dtype}, expected integers",
            hint="pass integer flat indices, e.g. np.flatnonzero(mask)",
        )
    # Range first, in the input dtype: a uint64 value >= 2**63 must not wrap on the cast below.
    below = np.flatnonzero(x < 0) if x.dtype.kind == "i" else np.zeros(0, np.intp)
    above = np.flatnonzero(x >= numel)
    if below.size or above.size:
        pos = int(min(below[:1].tolist() + above[:1].tolist()))
        raise MaskError(
            f"index {int(x[pos])} at position {pos} of mask parameter {name!r} is outside "
            f"[0, {numel})",
            hint="use flat indices into the parameter (0 <= i < numel)",
        )
    x = x.astype(np.int64, copy=False)
    steps = np.diff(x)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        pos = int(bad[0]) + 1
        what = "duplicated" if steps[bad[0]] == 0 else "not sorted"
        raise MaskError(
            f"indices of mask parameter {name!r} are {what} at position {pos} "
            f"({int(x[pos - 1])} then {int(x[pos])}); they must be strictly increasing",
            hint="pass np.unique(indices), which sorts and removes duplicates",
        )
    return x


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"a mask payload is bytes, not {type(data).__name__}")


def _corrupt(message: str) -> MaskError:
    return MaskError(message, hint=_CORRUPT_HINT)


def _check_fits(entries: list[tuple[str, int, int, int, int]], numels: Mapping[str, int]) -> None:
    """Refuse a header whose parameters are not the consumer's, before anything is allocated."""
    for name, numel, _, _, _ in entries:
        if name not in numels:
            raise MaskError(
                f"the mask addresses {name!r}, which the model it is used on does not have",
                hint="use the mask with the base model it was made for",
            )
        if numels[name] != numel:
            raise MaskError(
                f"the mask gives {name!r} {numel} scalars, the model it is used on has "
                f"{numels[name]}",
                hint="use the mask with the base model it was made for",
            )


def _load_tensors(data: bytes) -> dict[str, np.ndarray]:
    """The payload's tensors (views of one copy of their bytes), after safetensors' own checks.

    decode and validate share this, so they accept exactly the same file layouts.
    """
    try:
        tensors = _st_load(data)
    except (SafetensorError, KeyError, TypeError, ValueError) as e:
        raise MaskError(
            f"mask payload is not a valid safetensors file: {e}", hint=_CORRUPT_HINT
        ) from e
    for name, buf in tensors.items():
        if buf.dtype != np.uint8 or buf.ndim != 1:
            raise MaskError(
                f"mask tensor {name!r} has dtype {buf.dtype} and shape {buf.shape}, "
                "expected a 1-D uint8 tensor",
                hint=_CORRUPT_HINT,
            )
    return tensors


def _read_header(data: bytes) -> list[tuple[str, int, int, int, int]]:
    """Parse and check the header: ``(name, numel, count, b, flags)`` per tensor, name order."""
    if len(data) < 8:
        raise _corrupt(f"mask payload is truncated: {len(data)} bytes, not even a header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise _corrupt(f"mask payload is truncated: header of {size} bytes, {len(data) - 8} left")
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise _corrupt(f"mask payload header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise _corrupt("mask payload header is not a JSON object")
    metadata = header.pop(_METADATA_KEY, None)
    if not isinstance(metadata, dict):
        raise _corrupt("mask payload has no metadata; it is not a conesreg mask")
    encoding = metadata.get("encoding")
    if encoding != constants.MASK_ENCODING:
        raise MaskError(
            f"mask encoding {encoding!r} is not supported (this conesreg reads "
            f"{constants.MASK_ENCODING!r})",
            hint="upgrade conesreg, or re-encode the mask with this version",
        )
    try:
        params: Any = json.loads(metadata.get("params", ""))
    except (TypeError, ValueError, RecursionError) as e:
        raise _corrupt(f"mask metadata 'params' is not valid JSON: {e}") from e
    names = sorted(header)
    for name in names:
        # Checked here rather than left to safetensors: a dtype numpy lacks would fail inside
        # safetensors.numpy.load with a bare KeyError, and read_mask_info never loads tensors.
        spec = header[name]
        if (
            not isinstance(spec, dict)
            or spec.get("dtype") != "U8"
            or not isinstance(spec.get("shape"), list)
            or len(spec["shape"]) != 1
        ):
            raise _corrupt(f"mask tensor {name!r} is not a 1-D uint8 tensor")
    if not isinstance(params, list) or len(params) != len(names):
        raise _corrupt(
            f"mask metadata 'params' does not list one entry per tensor ({len(names)} tensors)"
        )
    entries = []
    for name, entry in zip(names, params, strict=True):
        if (
            not isinstance(entry, list)
            or len(entry) != 4
            or not all(type(v) is int for v in entry)  # rejects bool and float
        ):
            raise _corrupt(f"mask metadata of {name!r} is {entry!r}, not [numel, count, b, flags]")
        numel, count, b, flags = entry
        if not (
            0 <= numel < _MAX_NUMEL
            and 0 <= count <= numel
            and 0 <= b <= _MAX_RICE_B
            and flags & ~_KNOWN_FLAGS == 0
            and flags >= 0
            # Only canonical payloads are valid: the complement is stored exactly when it is the
            # smaller set, so one mask has one encoding (and one sha256).
            and bool(flags & _FLAG_COMPLEMENT) == (2 * count > numel)
        ):
            raise _corrupt(f"mask metadata of {name!r} is inconsistent: {entry!r}")
        entries.append((name, numel, count, b, flags))
    return entries


# --- the Rice code ------------------------------------------------------------------------------


def _complement(x: np.ndarray, numel: int) -> np.ndarray:
    # Only called when the result or x holds at least half of range(numel), so the dense
    # boolean scratch costs at most 2 bytes per index held.
    keep = np.ones(numel, dtype=bool)
    keep[x] = False
    return np.flatnonzero(keep).astype(np.int64, copy=False)


def _best_rice_b(g: np.ndarray) -> int:
    """The b in 0..40 minimising the exact byte size of the coded gaps (smallest on ties)."""
    k = int(g.size)
    top = min(int(g.max()).bit_length(), _MAX_RICE_B)
    best_b, best_size = 0, -1
    q = g.copy()
    for b in range(top + 1):
        # q == g >> b here; shifting in place keeps this one pass over k values per b.
        size = -(-k * b // 8) + -(-(k + int(q.sum())) // 8)
        if best_size < 0 or size < best_size:
            best_b, best_size = b, size
        q >>= 1
    return best_b


def _rice_encode(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Code the sorted unique int64 indices ``x``; returns the uint8 payload and ``b``."""
    k = int(x.size)
    if k == 0:
        return np.zeros(0, np.uint8), 0
    g = np.diff(x, prepend=np.int64(-1))
    g -= 1
    b = _best_rice_b(g)
    low_bits = np.empty((k, b), dtype=np.uint8)
    for j in range(b):
        # Column j is bit (b - 1 - j) of every gap: MSB first, as np.packbits expects.
        np.bitwise_and(g >> (b - 1 - j), 1, out=low_bits[:, j], casting="unsafe")
    q = g >> b
    # The i-th 1 of the unary section follows q_0 + ... + q_i zeros and i earlier ones.
    ones = np.cumsum(q + 1) - 1
    unary = np.zeros(int(ones[-1]) + 1, dtype=np.uint8)
    unary[ones] = 1
    return np.concatenate([np.packbits(low_bits.ravel()), np.packbits(unary)]), b


def _sections(name: str, buf: np.ndarray, k: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Split one tensor into its low parts and unary parts, checking their sizes (``k > 0``)."""
    n_low = -(-k * b // 8)
    if buf.size <= n_low:
        raise _corrupt(
            f"mask tensor {name!r} is truncated: {buf.size} bytes for {n_low} bytes of low parts "
            "and the unary parts"
        )
    unary = buf[n_low:]
    if unary[-1] == 0:
        raise _corrupt(f"mask tensor {name!r} has trailing bytes after its last index")
    return buf[:n_low], unary


def _check_empty(name: str, buf: np.ndarray, b: int) -> None:
    if buf.size or b:
        raise _corrupt(f"mask tensor {name!r} holds {buf.size} bytes for an empty set")


def _rice_decode(name: str, buf: np.ndarray, k: int, b: int, numel: int) -> np.ndarray:
    """Decode ``k`` indices from one tensor, checking it against the header's numbers."""
    if k == 0:
        _check_empty(name, buf, b)
        return np.zeros(0, np.int64)
    low, unary = _sections(name, buf, k, b)
    # As bool, flatnonzero takes numpy's fast path (several times faster than on uint8).
    ones = np.flatnonzero(np.unpackbits(unary).view(np.bool_))
    if ones.size != k:
        raise _corrupt(f"mask tensor {name!r} codes {ones.size} indices, its metadata says {k}")
    q = np.diff(ones, prepend=-1)
    q -= 1
    # Bounding q before shifting keeps q << b below numel < 2**62: no int64 overflow below.
    if int(q.max()) > (numel - 1) >> b:
        raise _corrupt(f"mask tensor {name!r} codes an index >= numel ({numel})")
    if b:
        q <<= b
        q |= _unpack_low(name, low, k, b)
    gaps = q
    gaps += 1
    x = np.cumsum(gaps, out=gaps)
    x -= 1
    # Gaps are >= 0, so the sums only decrease if int64 wrapped; a wrap always passes through
    # a negative value, which min() catches.
    if int(x[-1]) >= numel or int(x.min()) < 0:
        raise _corrupt(f"mask tensor {name!r} codes an index >= numel ({numel})")
    return x


def _rice_check(name: str, buf: np.ndarray, k: int, b: int, numel: int) -> None:
    """What :func:`_rice_decode` checks, without decoding: O(chunk) memory, whatever ``k``.

    The indices are increasing, so they are all ``< numel`` exactly when the last one is, and
    the last one is a sum: ``x = (Z << b) + L + k - 1`` where ``Z`` is the number of 0 bits
    before the last 1 of the unary section (the sum of all high parts) and ``L`` the sum of all
    low parts. Counting 1s, finding the last 1 and summing low parts never needs the indices;
    Python integers keep the sums exact (decode's int64 overflow checks have no counterpart).
    """
    if k == 0:
        _check_empty(name, buf, b)
        return
    low, unary = _sections(name, buf, k, b)
    ones = 0
    for start in range(0, int(unary.size), _CHUNK_BYTES):
        ones += int(_POPCOUNT[unary[start : start + _CHUNK_BYTES]].sum(dtype=np.int64))
    if ones != k:
        raise _corrupt(f"mask tensor {name!r} codes {ones} indices, its metadata says {k}")
    tail = int(unary[-1])  # not 0 (checked): its lowest set bit is the last 1 of the section
    last_one = unary.size * 8 - (tail & -tail).bit_length()
    zeros = last_one + 1 - k
    last = (zeros << b) + (_sum_low(name, low, k, b) if b else 0) + k - 1
    if last >= numel:
        raise _corrupt(f"mask tensor {name!r} codes an index >= numel ({numel})")


def _sum_low(name: str, low: np.ndarray, k: int, b: int) -> int:
    """The sum of the ``k`` b-bit values packed MSB first in ``low``, a chunk at a time.

    A row of 8 values is exactly ``b`` bytes, and bit ``t`` of every row belongs to value
    ``t // b`` with weight ``2 ** (b - 1 - t % b)``. So the sum is the per-position count of set
    bits over all rows, weighted: one unpack of each chunk, no per-value array.
    """
    full = k // 8
    counts = np.zeros(8 * b, dtype=np.int64)
    rows_per_chunk = max(1, _CHUNK_BYTES // b)
    for row in range(0, full, rows_per_chunk):
        rows = min(rows_per_chunk, full - row)
        chunk = low[row * b : (row + rows) * b].reshape(rows, b)
        counts += np.unpackbits(chunk, axis=1).sum(axis=0, dtype=np.int64)
    weights = [1 << (b - 1 - t % b) for t in range(8 * b)]
    total = sum(int(c) * w for c, w in zip(counts.tolist(), weights, strict=True))
    rest = k - 8 * full
    if rest:
        # The last, partial row ends the section, so _unpack_low also checks its padding bits
        # (full rows have none: 8 values of b bits fill b bytes).
        total += int(_unpack_low(name, low[full * b :], rest, b).sum())
    return total


def _unpack_low(name: str, low: np.ndarray, k: int, b: int) -> np.ndarray:
    """The ``k`` b-bit values packed MSB first in ``low``, as int64."""
    n_low = int(low.size)
    pad = n_low * 8 - k * b
    if pad and int(low[-1]) & ((1 << pad) - 1):
        raise _corrupt(f"mask tensor {name!r} has stray bits after its low parts")
    # Value i starts at bit i*b, so values 8r+j (a row r of 8 values is exactly b bytes) start
    # at the same byte (j*b >> 3) and bit (j*b & 7) of every row. For each j, one strided
    # big-endian 64-bit read per row covers the value (it spans at most b + 7 <= 47 bits), and a
    # constant shift and mask extract it: 8 passes over k/8 values, no gather, no bit unpacking.
    rows = -(-k // 8)
    scratch = np.zeros(rows * b + 8, dtype=np.uint8)
    scratch[:n_low] = low
    out = np.empty((rows, 8), dtype=np.uint64)
    mask = np.uint64((1 << b) - 1)
    for j in range(8):
        start = j * b
        words = np.ndarray(
            shape=(rows,), dtype=">u8", buffer=scratch, offset=start >> 3, strides=(b,)
        )
        column = out[:, j]
        column[...] = words
        column >>= np.uint64(64 - b - (start & 7))
        column &= mask
    return out.reshape(-1)[:k].view(np.int64)
