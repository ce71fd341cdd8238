"""The Rice code of a mask: sorted indices as gaps, each gap a unary high part and b low bits.

The container (:mod:`conesreg.artifact._mask`) decides where the bits of each target parameter
live; this module only turns sorted indices into low bits and high parts and back, and checks
coded bits without decoding them. Gap ``g_i = x_i - x_{i-1} - 1`` (``x_{-1} = -1``) is split
into ``g >> b``, written in unary (that many 0 bits then a 1), and its low ``b`` bits, packed MSB
first into ``ceil(k * b / 8)`` bytes (zero padded).

Every function that reads bits names the target in its errors and raises :class:`MaskError`
with the corrupt-payload hint: these bits come from strangers.
"""

from __future__ import annotations

import numpy as np

from .errors import MaskError

#: Largest Rice parameter. 2**40 covers the gaps of any plausible tensor, and keeps
#: ``b + 7 <= 64`` so that a low part always fits one unaligned 64-bit window when decoding.
MAX_B = 40
#: Bytes of a section that the checks look at in one step. Their scratch is at most 8 bytes per
#: byte of a chunk (bits unpacked to bytes), so a chunk of 64 KiB keeps it under 1 MiB whatever
#: the payload claims, while the Python loop stays short (16 steps per MiB).
CHUNK_BYTES = 1 << 16
#: Set bits of every byte value: counting the 1s of a unary section without unpacking it.
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

CORRUPT_HINT = (
    "the mask payload is damaged or was not written by conesreg.encode_mask: download it again "
    "(`conesreg verify --fix`) or re-create it"
)


def corrupt(message: str) -> MaskError:
    """The error of a payload whose bytes contradict themselves."""
    return MaskError(message, hint=CORRUPT_HINT)


def complement(x: np.ndarray, numel: int) -> np.ndarray:
    """The sorted indices of ``range(numel)`` not in ``x``."""
    # Only called when the result or x holds at least half of range(numel), so the dense
    # boolean scratch costs at most 2 bytes per index held.
    keep = np.ones(numel, dtype=bool)
    keep[x] = False
    return np.flatnonzero(keep).astype(np.int64, copy=False)


def best_b(g: np.ndarray) -> int:
    """The b in 0..40 minimising the exact byte size of the coded gaps (smallest on ties)."""
    k = int(g.size)
    top = min(int(g.max()).bit_length(), MAX_B)
    best, best_size = 0, -1
    q = g.copy()
    for b in range(top + 1):
        # q == g >> b here; shifting in place keeps this one pass over k values per b.
        size = -(-k * b // 8) + -(-(k + int(q.sum())) // 8)
        if best_size < 0 or size < best_size:
            best, best_size = b, size
        q >>= 1
    return best


def encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Code the sorted unique int64 indices ``x`` (``x.size > 0``).

    Returns:
        The packed low parts (uint8), the high parts (int64, one per index, for the unary
        section the container writes) and ``b``.
    """
    k = int(x.size)
    g = np.diff(x, prepend=np.int64(-1))
    g -= 1
    b = best_b(g)
    low_bits = np.empty((k, b), dtype=np.uint8)
    for j in range(b):
        # Column j is bit (b - 1 - j) of every gap: MSB first, as np.packbits expects.
        np.bitwise_and(g >> (b - 1 - j), 1, out=low_bits[:, j], casting="unsafe")
    return np.packbits(low_bits.ravel()), g >> b, b


def unary_bits(high: np.ndarray) -> np.ndarray:
    """The packed unary section of the high parts ``high`` (int64, at least one)."""
    # The i-th 1 follows high_0 + ... + high_i zeros and i earlier ones.
    ones = np.cumsum(high + 1) - 1
    bits = np.zeros(int(ones[-1]) + 1, dtype=np.uint8)
    bits[ones] = 1
    return np.packbits(bits)


def ones_of(unary: np.ndarray) -> np.ndarray:
    """Bit positions (MSB first) of the 1s of a packed unary section."""
    # As bool, flatnonzero takes numpy's fast path (several times faster than on uint8).
    return np.flatnonzero(np.unpackbits(unary).view(np.bool_))


def decode(
    name: str, low: np.ndarray, ones: np.ndarray, before: int, b: int, numel: int
) -> np.ndarray:
    """The indices of one target from its low parts and the positions of its unary 1s.

    Args:
        name: The target, for errors.
        low: Its packed low parts, exactly ``ceil(k * b / 8)`` bytes.
        ones: Bit positions of its ``k > 0`` unary 1s, increasing.
        before: Position of the 1 that ends the previous target's section, -1 if none: the zeros
            between it and ``ones[0]`` are the first high part.
        b: Its Rice parameter.
        numel: Size of the target; every index must be below it.
    """
    k = int(ones.size)
    q = np.diff(ones, prepend=before)
    q -= 1
    # Bounding q before shifting keeps q << b below numel < 2**62: no int64 overflow below.
    if int(q.max()) > (numel - 1) >> b:
        raise corrupt(f"mask parameter {name!r} codes an index >= numel ({numel})")
    if b:
        q <<= b
        q |= unpack_low(name, low, k, b)
    gaps = q
    gaps += 1
    x = np.cumsum(gaps, out=gaps)
    x -= 1
    # Gaps are >= 0, so the sums only decrease if int64 wrapped; a wrap always passes through
    # a negative value, which min() catches.
    if int(x[-1]) >= numel or int(x.min()) < 0:
        raise corrupt(f"mask parameter {name!r} codes an index >= numel ({numel})")
    return x


def unary_ends(unary: np.ndarray, wanted: list[int]) -> tuple[int, list[int]]:
    """Count the 1s of a packed unary section and find some of them, a chunk at a time.

    Args:
        unary: The section.
        wanted: Increasing 1-based ranks ``c`` of 1s to find.

    Returns:
        The number of 1s, and the bit position of the ``c``-th 1 for each wanted ``c`` that the
        section has (fewer positions than ``wanted`` when it has fewer 1s).
    """
    found: list[int] = []
    seen = 0
    for start in range(0, int(unary.size), CHUNK_BYTES):
        chunk = unary[start : start + CHUNK_BYTES]
        running = np.cumsum(POPCOUNT[chunk], dtype=np.int64)
        total = int(running[-1])
        while len(found) < len(wanted) and wanted[len(found)] <= seen + total:
            need = wanted[len(found)] - seen
            byte = int(np.searchsorted(running, need))  # first byte reaching the rank
            rank = need - (int(running[byte - 1]) if byte else 0)
            bits = int(chunk[byte])
            bit = 0
            for bit in range(8):
                if bits & (0x80 >> bit):
                    rank -= 1
                    if rank == 0:
                        break
            found.append((start + byte) * 8 + bit)
        seen += total
    return seen, found


def sum_low(name: str, low: np.ndarray, k: int, b: int) -> int:
    """The sum of the ``k`` b-bit values packed MSB first in ``low``, a chunk at a time.

    A row of 8 values is exactly ``b`` bytes, and bit ``t`` of every row belongs to value
    ``t // b`` with weight ``2 ** (b - 1 - t % b)``. So the sum is the per-position count of set
    bits over all rows, weighted: one unpack of each chunk, no per-value array.
    """
    if not b:
        return 0
    full = k // 8
    counts = np.zeros(8 * b, dtype=np.int64)
    rows_per_chunk = max(1, CHUNK_BYTES // b)
    for row in range(0, full, rows_per_chunk):
        rows = min(rows_per_chunk, full - row)
        chunk = low[row * b : (row + rows) * b].reshape(rows, b)
        counts += np.unpackbits(chunk, axis=1).sum(axis=0, dtype=np.int64)
    weights = [1 << (b - 1 - t % b) for t in range(8 * b)]
    total = sum(int(c) * w for c, w in zip(counts.tolist(), weights, strict=True))
    rest = k - 8 * full
    if rest:
        # The last, partial row ends the section, so unpack_low also checks its padding bits
        # (full rows have none: 8 values of b bits fill b bytes).
        total += int(unpack_low(name, low[full * b :], rest, b).sum())
    return total


def unpack_low(name: str, low: np.ndarray, k: int, b: int) -> np.ndarray:
    """The ``k`` b-bit values packed MSB first in ``low``, as int64."""
    n_low = int(low.size)
    pad = n_low * 8 - k * b
    if pad and int(low[-1]) & ((1 << pad) - 1):
        raise corrupt(f"mask parameter {name!r} has stray bits after its low parts")
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
