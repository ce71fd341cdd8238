"""The mask codec: concept neurons as a compact, lossless safetensors payload.

A mask says, for each target parameter of the UNet (a diffusers state-dict name such as
``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``), which of its scalars are
concept neurons: the sorted, unique flat indices ``0 <= i < numel``.

Layout of the payload (encoding ``cones-rice/2``, what :func:`encode_mask` writes), a
safetensors file holding one 1-D ``uint8`` tensor ``rice`` and three metadata strings:

* ``encoding`` = ``"cones-rice/2"``;
* ``names``: the target names in sorted (code point) order, front coded, one line each: line
  ``r,p,s,middle`` is the name ``ref[:p] + middle + ref[len(ref) - s:]`` where ``ref`` is the
  name ``r`` lines earlier (``1 <= r <= 16``), or just ``middle`` when ``r = p = s = 0``. The
  encoder picks, for each name, the reference sharing the most prefix plus suffix (the nearest
  on ties), and only that canonical coding is valid. Diffusers names share nearly everything
  (``...attentions.1.transformer_blocks.0.attn2.to_k.weight``), so 32 of them cost ~400 bytes
  instead of 4.7 KB of safetensors tensor entries;
* ``params``: three decimal integers per name, comma separated: ``numel,count,b``, where
  ``count`` is the number of selected indices and ``b`` the Rice parameter (0..40).

Each target codes the ``k`` indices ``x_0 < x_1 < ...`` of its *stored set*: the selected
indices, or their complement within ``range(numel)`` when ``2 * count > numel``, so that a full
set costs nothing (:mod:`conesreg.artifact._rice` has the code itself). The tensor is every
target's low parts, each section ``ceil(k * b / 8)`` bytes (zero padded), in name order, then
one unary section for all targets: their high parts in name order, so target ``t``'s first gap
counts the zeros after the 1 that ends target ``t - 1``. The last byte holds the last 1 bit, so
the length is implied and anything after it is corruption. ``b`` is the exact size minimiser, so
uniformly random sets cost within a fraction of a percent of the information bound, and the
whole container within 1% of it at SD scale.

The previous encoding, ``cones-rice/1``, is still read: one tensor per target, named by it, each
holding its low parts then its own unary section, and ``params`` the JSON list
``[[numel, count, b, flags], ...]`` (``flags`` bit 0: the complement is stored). Its tensor
entries made the header 2.4% of an SD mask and 40% of a mini-model one.

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

import functools
import json
import math
import os
import re
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

from . import _rice, constants
from ._rice import corrupt as _corrupt
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

#: Largest numel accepted. Well above any real tensor, and low enough that gap arithmetic in
#: int64 (``q << b`` plus low bits) can never overflow once ``q`` is bounded by ``numel``.
_MAX_NUMEL = 1 << 62
_METADATA_KEY = "__metadata__"
#: cones-rice/1: flags bit 0, "the complement is stored" (cones-rice/2 derives it from count).
_FLAG_COMPLEMENT = 1
#: cones-rice/2: the one tensor, and how far back a front-coded name may look for its reference.
_TENSOR = "rice"
_NAME_WINDOW = 16
#: cones-rice/2: front coding never expands real names much (SD 1.x: 5.5x, SDXL-like runs of
#: block numbers: under 10x); a header that would is a decompression bomb and is refused before
#: its names are built, keeping validate_mask's memory within its promise.
_NAME_EXPANSION = 32
_NAME_SLACK = 1 << 16
_PARAMS_RE = re.compile(r"(?:(?:0|[1-9][0-9]{0,18})(?:,(?:0|[1-9][0-9]{0,18}))*)?")
_LINE_RE = re.compile(r"(0|[1-9][0-9]{0,8}),(0|[1-9][0-9]{0,8}),(0|[1-9][0-9]{0,8}),(.*)", re.S)


@dataclass(frozen=True)
class _Entry:
    """One target parameter as a header describes it."""

    name: str
    numel: int
    count: int
    b: int

    @property
    def complement(self) -> bool:
        # Canonical in both encodings: the smaller of the set and its complement is stored.
        return 2 * self.count > self.numel

    @property
    def k(self) -> int:
        """Indices actually coded: the set's, or its complement's."""
        return self.numel - self.count if self.complement else self.count

    @property
    def low_bytes(self) -> int:
        return -(-self.k * self.b // 8)


@dataclass(frozen=True)
class _Header:
    encoding: str
    entries: list[_Entry]


@dataclass(frozen=True)
class _Group:
    """Targets that share one unary section, each with its low parts.

    cones-rice/1 has a group per target (its own tensor), cones-rice/2 one for all: decode and
    validate walk groups, so both encodings go through the same checks.
    """

    label: str  # for errors: the tensor that holds the section
    unary: np.ndarray
    members: list[tuple[_Entry, np.ndarray]]


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
        return _rice.complement(self.stored, self.numel) if self.complement else self.stored


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
    names = sorted(checked)
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    params: list[int] = []
    for name in names:
        numel = checked[name]
        x = _check_indices(name, indices[name], numel) if name in indices else np.zeros(0, np.int64)
        entry = _Entry(name=name, numel=numel, count=int(x.size), b=0)
        if entry.complement:
            # Store the (smaller) complement: a near-full set then costs about as little as a
            # near-empty one instead of ~1 bit per index.
            x = _rice.complement(x, numel)
        b = 0
        if x.size:
            low, high, b = _rice.encode(x)
            lows.append(low)
            highs.append(high)
        params += [numel, entry.count, b]
    if highs:
        lows.append(_rice.unary_bits(np.concatenate(highs)))
    tensor = np.concatenate(lows) if lows else np.zeros(0, np.uint8)
    metadata = {
        "encoding": constants.MASK_ENCODING,
        "names": _front_code(tuple(names)),
        "params": ",".join(map(str, params)),
    }
    return _save_canonical({_TENSOR: tensor}, metadata)


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
    header = _read_header(data)
    if numels is not None:
        _check_fits(header.entries, numels)
    for group in _groups(data, header):
        k_total = sum(entry.k for entry, _ in group.members)
        ones = _rice.ones_of(group.unary) if k_total else np.zeros(0, np.int64)
        if ones.size != k_total:
            raise _corrupt(
                f"mask tensor {group.label!r} codes {ones.size} indices, its metadata says "
                f"{k_total}"
            )
        start, before = 0, -1
        for entry, low in group.members:
            x = np.zeros(0, np.int64)
            if entry.k:
                mine = ones[start : start + entry.k]
                start += entry.k
                x = _rice.decode(entry.name, low, mine, before, entry.b, entry.numel)
                before = int(mine[-1])
            yield (
                entry.name,
                IndexSet(numel=entry.numel, stored=x, complement=entry.complement),
            )


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
    header = _read_header(data)
    total = sum(entry.numel for entry in header.entries)
    limit = constants.MAX_TARGET_NUMEL
    if total > limit:
        raise MaskError(
            f"mask claims {total} target scalars, more than the {limit} any supported base model "
            "has",
            hint="this is not a mask of a real base model; if it is, raise "
            "CONESREG_MAX_TARGET_NUMEL",
        )
    for group in _groups(data, header):
        _check_group(group)
    return _info(header)


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
    return _info(_read_header(_as_bytes(data)))


def _info(header: _Header) -> MaskInfo:
    return MaskInfo(
        encoding=header.encoding,
        numels={entry.name: entry.numel for entry in header.entries},
        counts={entry.name: entry.count for entry in header.entries},
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
    different sha256s. The metadata object is the first thing in the header, and its keys and
    values have the same bytes in Python's compact JSON (UTF-8 in both; control characters,
    which each might escape its own way, are refused in names earlier), so it is swapped for
    the sorted serialisation of equal length, which is also what a fixed safetensors writes.
    """
    data = _st_save(tensors, metadata=metadata)
    canonical = json.dumps(
        dict(sorted(metadata.items())), separators=(",", ":"), ensure_ascii=False
    ).encode()
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
    if any(c < " " for c in name):
        # A newline would split the front-coded name list; no state-dict name has any of these.
        raise MaskError(
            f"mask parameter name {name!r} holds a control character",
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


def _check_fits(entries: list[_Entry], numels: Mapping[str, int]) -> None:
    """Refuse a header whose parameters are not the consumer's, before anything is allocated."""
    for entry in entries:
        if entry.name not in numels:
            raise MaskError(
                f"the mask addresses {entry.name!r}, which the model it is used on does not have",
                hint="use the mask with the base model it was made for",
            )
        if numels[entry.name] != entry.numel:
            raise MaskError(
                f"the mask gives {entry.name!r} {entry.numel} scalars, the model it is used on "
                f"has {numels[entry.name]}",
                hint="use the mask with the base model it was made for",
            )


def _read_header(data: bytes) -> _Header:
    """Parse and check the header of either encoding: its targets, in name order."""
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
    if encoding not in constants.MASK_ENCODINGS_READ:
        raise MaskError(
            f"mask encoding {encoding!r} is not supported (this conesreg reads "
            f"{', '.join(constants.MASK_ENCODINGS_READ)})",
            hint="upgrade conesreg, or re-encode the mask with this version",
        )
    for name, spec in header.items():
        # Checked here rather than left to safetensors: a dtype numpy lacks would fail inside
        # safetensors.numpy.load with a bare KeyError, and read_mask_info never loads tensors.
        if (
            not isinstance(spec, dict)
            or spec.get("dtype") != "U8"
            or not isinstance(spec.get("shape"), list)
            or len(spec["shape"]) != 1
        ):
            raise _corrupt(f"mask tensor {name!r} is not a 1-D uint8 tensor")
    if encoding == constants.MASK_ENCODING_V1:
        entries = _v1_entries(sorted(header), metadata.get("params"))
    else:
        if list(header) != [_TENSOR]:
            raise _corrupt(f"a {encoding} mask holds exactly one tensor, {_TENSOR!r}")
        entries = _v2_entries(metadata.get("names"), metadata.get("params"))
    return _Header(encoding=encoding, entries=entries)


def _v1_entries(names: list[str], text: object) -> list[_Entry]:
    try:
        params: Any = json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError) as e:
        raise _corrupt(f"mask metadata 'params' is not valid JSON: {e}") from e
    if not isinstance(params, list) or len(params) != len(names):
        raise _corrupt(
            f"mask metadata 'params' does not list one entry per tensor ({len(names)} tensors)"
        )
    entries = []
    for name, raw in zip(names, params, strict=True):
        if (
            not isinstance(raw, list)
            or len(raw) != 4
            or not all(type(v) is int for v in raw)  # rejects bool and float
        ):
            raise _corrupt(f"mask metadata of {name!r} is {raw!r}, not [numel, count, b, flags]")
        numel, count, b, flags = raw
        entry = _checked_entry(name, numel, count, b)
        # Only canonical payloads are valid: the complement is stored exactly when it is the
        # smaller set, so one mask has one encoding (and one sha256).
        if flags not in (0, _FLAG_COMPLEMENT) or bool(flags) != entry.complement:
            raise _corrupt(f"mask metadata of {name!r} is inconsistent: {raw!r}")
        entries.append(entry)
    return entries


def _v2_entries(names_text: object, params_text: object) -> list[_Entry]:
    if not isinstance(names_text, str) or not isinstance(params_text, str):
        raise _corrupt("mask metadata 'names' and 'params' must be strings")
    if not _PARAMS_RE.fullmatch(params_text):
        raise _corrupt("mask metadata 'params' is not a comma-separated list of integers")
    names = _front_decode(names_text)
    numbers = [int(v) for v in params_text.split(",")] if params_text else []
    if len(numbers) != 3 * len(names):
        raise _corrupt(
            f"mask metadata 'params' holds {len(numbers)} numbers for {len(names)} names, not 3 "
            "per name"
        )
    return [_checked_entry(name, *numbers[3 * i : 3 * i + 3]) for i, name in enumerate(names)]


def _checked_entry(name: str, numel: int, count: int, b: int) -> _Entry:
    entry = _Entry(name=name, numel=numel, count=count, b=b)
    if not (0 <= numel < _MAX_NUMEL and 0 <= count <= numel and 0 <= b <= _rice.MAX_B):
        raise _corrupt(f"mask metadata of {name!r} is inconsistent: {[numel, count, b]}")
    if entry.k == 0 and b:
        raise _corrupt(f"mask metadata of {name!r} gives an empty set a Rice parameter")
    return entry


@functools.lru_cache(maxsize=16)
def _front_code(names: tuple[str, ...]) -> str:
    """The canonical front coding of sorted names (see the module docstring).

    Cached: the masks of one base model all share one name list, and finding references costs
    ~1 ms for SD's 32 names, as much as decoding a mask's indices.
    """
    lines = []
    for i, name in enumerate(names):
        best = (0, 0, 0)
        for r in range(1, min(i, _NAME_WINDOW) + 1):
            ref = names[i - r]
            p = _common_run(ref, name, step=1, limit=min(len(ref), len(name)))
            s = _common_run(ref, name, step=-1, limit=min(len(ref), len(name)) - p)
            if p + s > best[1] + best[2]:
                best = (r, p, s)
        r, p, s = best
        lines.append(f"{r},{p},{s},{name[p : len(name) - s]}")
    return "\n".join(lines)


def _common_run(a: str, b: str, *, step: int, limit: int) -> int:
    """Characters ``a`` and ``b`` share at their start (step 1) or end (step -1), at most limit.

    A binary search over slice comparisons: each is one C-level compare, where a loop over
    characters would be one Python step each.
    """
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        same = a[:mid] == b[:mid] if step == 1 else a[len(a) - mid :] == b[len(b) - mid :]
        if same:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _front_decode(text: str) -> tuple[str, ...]:
    """The names of a front-coded list, refusing anything but the canonical coding of sorted,
    unique names, and any list that would expand past ``_NAME_EXPANSION`` times its text."""
    if len(text) <= _CACHED_NAMES_TEXT:
        return _front_decode_cached(text)
    return _front_decode_uncached(text)


#: Name lists of real base models are a few KB; only those are kept (a hostile one may be MBs).
_CACHED_NAMES_TEXT = 1 << 15


@functools.lru_cache(maxsize=16)
def _front_decode_cached(text: str) -> tuple[str, ...]:
    return _front_decode_uncached(text)


def _front_decode_uncached(text: str) -> tuple[str, ...]:
    if not text:
        return ()
    budget = _NAME_EXPANSION * len(text) + _NAME_SLACK
    names: list[str] = []
    for line in text.split("\n"):
        match = _LINE_RE.fullmatch(line)
        if match is None:
            raise _corrupt(f"mask metadata 'names' has a line {line[:40]!r} not of r,p,s,middle")
        r, p, s = (int(v) for v in match.groups()[:3])
        middle = match.group(4)
        if r > min(len(names), _NAME_WINDOW) or (r == 0 and (p or s)):
            raise _corrupt(f"mask metadata 'names' refers to a name it does not have ({r} back)")
        name = middle
        if r:
            ref = names[-r]
            if p + s > len(ref):
                raise _corrupt(f"mask metadata 'names' takes {p + s} characters of a shorter name")
            name = ref[:p] + middle + ref[len(ref) - s :]
        budget -= len(name)
        if budget < 0:
            raise _corrupt("mask metadata 'names' expands to implausibly many characters")
        if not name or any(c < " " for c in name) or (names and name <= names[-1]):
            raise _corrupt("mask metadata 'names' are not sorted, unique, printable names")
        names.append(name)
    if _front_code(tuple(names)) != text:
        # One mask, one encoding, one sha256: only the encoder's own choice of references.
        raise _corrupt("mask metadata 'names' is not in its canonical front coding")
    return tuple(names)


def _groups(data: bytes, header: _Header) -> list[_Group]:
    """Cut the tensors into each target's low parts and the unary sections, checking sizes."""
    try:
        tensors = _st_load(data)
    except (SafetensorError, KeyError, TypeError, ValueError) as e:
        raise _corrupt(f"mask payload is not a valid safetensors file: {e}") from e
    if header.encoding == constants.MASK_ENCODING_V1:
        groups = []
        for entry in header.entries:
            buf = tensors[entry.name]
            if not entry.k:
                _check_empty(entry.name, buf.size)
                groups.append(_Group(entry.name, buf, [(entry, buf)]))
                continue
            _check_unary(entry.name, buf, entry.low_bytes)
            groups.append(
                _Group(entry.name, buf[entry.low_bytes :], [(entry, buf[: entry.low_bytes])])
            )
        return groups
    buf = tensors[_TENSOR]
    members, pos = [], 0
    for entry in header.entries:
        end = pos + entry.low_bytes
        if end > buf.size:
            raise _corrupt(
                f"mask tensor {_TENSOR!r} is truncated: {buf.size} bytes, the low parts up to "
                f"{entry.name!r} take {end}"
            )
        members.append((entry, buf[pos:end]))
        pos = end
    unary = buf[pos:]
    if any(entry.k for entry in header.entries):
        _check_unary(_TENSOR, buf, pos)
    else:
        _check_empty(_TENSOR, unary.size)
    return [_Group(_TENSOR, unary, members)]


def _check_empty(label: str, size: int) -> None:
    if size:
        raise _corrupt(f"mask tensor {label!r} holds {size} bytes for an empty set")


def _check_unary(label: str, buf: np.ndarray, low_bytes: int) -> None:
    """The bytes after the low parts are a unary section: at least one, the last holding 1s."""
    if buf.size <= low_bytes:
        raise _corrupt(
            f"mask tensor {label!r} is truncated: {buf.size} bytes for {low_bytes} bytes of low "
            "parts and the unary parts"
        )
    if int(buf[-1]) == 0:
        raise _corrupt(f"mask tensor {label!r} has trailing bytes after its last index")


def _check_group(group: _Group) -> None:
    """What decoding a group checks, without decoding: O(chunk) memory, whatever its counts.

    The indices of a target are increasing, so they are all ``< numel`` exactly when the last
    one is, and the last one is a sum: ``x = (Z << b) + L + k - 1`` where ``Z`` is the number
    of 0 bits between the 1 that ends the previous target and this target's last 1 (the sum of
    its high parts) and ``L`` the sum of its low parts. Counting 1s, finding the targets' last
    1s and summing low parts never needs the indices; Python integers keep the sums exact
    (decode's int64 overflow checks have no counterpart).
    """
    ranks, rank = [], 0
    for entry, _ in group.members:
        rank += entry.k
        if entry.k:
            ranks.append(rank)
    if not rank:
        return
    ones, ends = _rice.unary_ends(group.unary, ranks)
    if ones != rank:
        raise _corrupt(
            f"mask tensor {group.label!r} codes {ones} indices, its metadata says {rank}"
        )
    before = -1
    coded = iter(ends)
    for entry, low in group.members:
        if not entry.k:
            continue
        end = next(coded)
        zeros = end - before - entry.k
        before = end
        last = (zeros << entry.b) + _rice.sum_low(entry.name, low, entry.k, entry.b) + entry.k - 1
        if last >= entry.numel:
            raise _corrupt(f"mask parameter {entry.name!r} codes an index >= numel ({entry.numel})")
