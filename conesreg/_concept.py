"""Installed concepts as ready-to-apply objects (manifest + mask), and their overlap.

No torch here: ``conesreg info --overlap`` and the resolver-facing half of composing run without
it. Applying concepts to a pipeline is :mod:`conesreg._compose`.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import constants
from ._cache import Cache
from ._fetch import fetch
from ._install import install
from ._lockfile import LockedConcept, read_lockfile
from ._session import Session
from .artifact._manifest import IndexEntry, Manifest
from .artifact._versions import parse_spec
from .errors import BaseModelMismatchError, ConesregWarning, MaskError

if TYPE_CHECKING:
    from .artifact._mask import IndexSet

#: Pairs of concepts sharing more than this Jaccard index of their neurons get a warning: a
#: shared neuron serves both subjects, so heavy sharing means they will blend.
OVERLAP_WARN_JACCARD = 0.1


class Concept:
    """One concept version ready to apply: its manifest and its concept neurons.

    Made from decoded indices (``Concept(manifest, indices)``) or from the mask payload
    (``Concept(manifest, mask=payload)``, as installed concepts are). A payload stays encoded
    until the indices are needed: :func:`conesreg.apply` decodes it only once the pipeline's
    parameter shapes and base model matched, and :func:`overlap` counts on the sets as stored, so
    a hostile mask (a full set of a forged huge parameter is a few bytes) costs no more memory
    than the model it is applied to.

    Example:
        >>> dog = Concept(manifest, {"w": np.array([3, 7])})  # doctest: +SKIP
        >>> dog.label, dog.indices["w"].tolist()  # doctest: +SKIP
        ('acme/dog@1.0.0', [3, 7])
    """

    def __init__(
        self,
        manifest: Manifest,
        indices: Mapping[str, np.ndarray] | None = None,
        *,
        mask: bytes | None = None,
        cache: Cache | None = None,
    ) -> None:
        if (indices is None) == (mask is None):
            raise TypeError("a Concept takes either its indices or its mask payload")
        self.manifest = manifest
        self._indices = dict(indices) if indices is not None else None
        self._mask = mask
        # Where decoded indices are kept between processes (installed concepts only).
        self._cache = cache

    def __repr__(self) -> str:
        return f"<Concept {self.label}>"

    @property
    def label(self) -> str:
        m = self.manifest
        return f"{m.namespace}/{m.name}@{m.version}"

    @property
    def pinned(self) -> str:
        """``namespace/name@sha256:...``: the exact content, as a composite records a parent."""
        m = self.manifest
        return f"{m.namespace}/{m.name}@{self.digest}"

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def indices(self) -> dict[str, np.ndarray]:
        """Sorted flat indices per target parameter.

        A payload is decoded on first use, within the sizes its manifest declares for the
        targets; :func:`conesreg.apply` decodes within the pipeline's own sizes instead.
        """
        if self._indices is not None:
            return self._indices  # the common case: no sizes to work out again
        m = self.manifest
        return self.decode(numels=m.binding.mask_numels(m.base_model.targets))

    @property
    def decoded(self) -> dict[str, np.ndarray] | None:
        """The indices if they were given or decoded already, else None (nothing is decoded)."""
        return self._indices

    def decode(self, *, numels: Mapping[str, int]) -> dict[str, np.ndarray]:
        """The indices, decoding the payload (once) only if it fits ``numels``.

        Args:
            numels: Scalars of each parameter the indices will be used on.

        Returns:
            Sorted flat indices per target parameter.

        Raises:
            MaskError: the mask names a parameter not in ``numels`` or of another size.

        Example:
            >>> concept.decode(numels={"w": 64})["w"].tolist()  # doctest: +SKIP
            [3, 7]
        """
        if self._indices is None:
            assert self._mask is not None  # one of the two, by construction
            try:
                self._indices = _decoded(self._mask, numels, cache=self._cache)
            except MaskError as e:
                raise MaskError(f"{self.label}: {e.message}", hint=e.hint) from None
        return self._indices

    def index_sets(self) -> dict[str, IndexSet]:
        """Per target parameter, the neurons as stored: memory ~ the payload, whatever it claims.

        Raises:
            MaskError: the indices name a parameter that is not one of the manifest's targets.
        """
        from .artifact._mask import IndexSet, decode_mask_sets

        m = self.manifest
        numels = m.binding.mask_numels(m.base_model.targets)
        if self._indices is None:
            assert self._mask is not None
            return decode_mask_sets(self._mask, numels=numels)
        out = {}
        for name, idx in self._indices.items():
            if name not in numels:
                raise MaskError(f"{self.label}'s mask addresses {name!r}, not one of its targets")
            x = np.asarray(idx, dtype=np.int64)
            if x.size > 1 and not np.all(x[1:] > x[:-1]):
                x = np.unique(x)  # built by hand: counting needs sorted, unique indices
            out[name] = IndexSet(numel=numels[name], stored=x)
        return out

    @classmethod
    def from_draft(cls, draft_dir: Path, *, version: str = "0.0.0-draft") -> Concept:
        """A concept straight from a draft directory (``conesreg find`` output), unpublished."""
        from .artifact._build import build_manifest

        manifest, files = build_manifest(Path(draft_dir), version=version)
        return cls(manifest, mask=files[manifest.mask.blob].read_bytes())


#: Decoded indices by (sha256 of the mask payload, the sizes it was decoded within), most
#: recently used last: a process that applies a concept again, or builds a new Concept from the
#: same payload, skips decoding. Bounded by constants.DECODED_MEMORY_BYTES.
_DECODED: OrderedDict[tuple[bytes, tuple[tuple[str, int], ...]], dict[str, np.ndarray]] = (
    OrderedDict()
)
_decoded_lock = threading.Lock()
_decoded_bytes = 0


def _nbytes(indices: Mapping[str, np.ndarray]) -> int:
    return sum(x.nbytes for x in indices.values())


def _decoded(
    mask: bytes, numels: Mapping[str, int], *, cache: Cache | None
) -> dict[str, np.ndarray]:
    """``decode_mask(mask, numels=numels)``, through the in-memory and on-disk caches.

    Keyed by the payload's own sha256, never by what a manifest claims, so a Concept built from
    other bytes can never be served these indices.
    """
    from .artifact._mask import decode_mask, read_mask_info

    digest = hashlib.sha256(mask).digest()
    key = (digest, tuple(sorted(numels.items())))
    with _decoded_lock:
        hit = _DECODED.get(key)
        if hit is not None:
            _DECODED.move_to_end(key)
            return hit
    out = None
    if cache is not None:
        info = read_mask_info(mask)
        # The header must fit the consumer before anything is read, exactly as decode_mask does.
        if all(numels.get(n) == v for n, v in info.numels.items()):
            out = cache.decoded(f"sha256:{digest.hex()}", info.counts)
    if out is None:
        out = decode_mask(mask, numels=numels)
        if cache is not None:
            cache.save_decoded(f"sha256:{digest.hex()}", out)
    global _decoded_bytes
    with _decoded_lock:
        if key not in _DECODED:  # another thread may have decoded it meanwhile
            _DECODED[key] = out
            _decoded_bytes += _nbytes(out)
        while _decoded_bytes > constants.DECODED_MEMORY_BYTES and len(_DECODED) > 1:
            _decoded_bytes -= _nbytes(_DECODED.popitem(last=False)[1])
    return out


#: Installed concepts already read and checked by this process, by manifest digest, with the
#: (size, mtime, inode) of their mask blob then: while the file is unchanged, reading the concept
#: again skips re-hashing and re-validating it (and keeps its decoded indices).
_READ: OrderedDict[str, tuple[tuple[int, int, int], Concept]] = OrderedDict()
_READ_LIMIT = 256


def read_concept(manifest: Manifest, cache: Cache) -> Concept:
    """An installed concept from the cache (digest re-checked on read), its mask still encoded.

    The mask must be the one the manifest describes (:func:`~conesreg.artifact.check_mask`:
    validated in full, in memory ~ its size, and fitting the manifest's targets and counts); it
    is decoded later, within the sizes of whatever it is applied to.

    Raises:
        IntegrityError: the cached mask is missing or corrupted.
        MaskError: the mask is corrupt or disagrees with the manifest (encoding, sizes, counts).
    """
    from .artifact._check import check_mask

    seen = _read_before(manifest.digest, cache)
    if seen is not None:
        return seen
    stamp = _stamp(cache.blobs.path(manifest.mask.blob))
    data = cache.blobs.read(manifest.mask.blob)
    try:
        # The blob's digest was just verified; if the cache holds what decoding it gave, those
        # bytes are known to decode, and the full validation (as costly as decoding) is skipped.
        check_mask(manifest, data, known_valid=cache.has_decoded(manifest.mask.blob))
    except MaskError as e:
        raise MaskError(f"{manifest.id}@{manifest.version}: {e.message}", hint=e.hint) from None
    concept = Concept(manifest, mask=data, cache=cache)
    if stamp is not None:
        with _decoded_lock:
            _READ[manifest.digest] = (stamp, concept)
            while len(_READ) > _READ_LIMIT:
                _READ.popitem(last=False)
    return concept


def _read_before(digest: str, cache: Cache) -> Concept | None:
    """The concept of manifest ``digest`` as this process read it, if its mask blob is the same
    file since (a manifest read once was verified against its digest: it cannot change)."""
    with _decoded_lock:
        seen = _READ.get(digest)
    # The stamp (size, mtime, inode) is of the file in the cache that read it: another cache's
    # file has another inode.
    if seen is None or _stamp(cache.blobs.path(seen[1].manifest.mask.blob)) != seen[0]:
        return None
    with _decoded_lock:
        _READ.move_to_end(digest)
    return seen[1]


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def fetch_concept(entry: IndexEntry, *, session: Session | None = None) -> Concept:
    """A published version as a :class:`Concept`, through the cache but outside any lockfile
    (for inspection, e.g. ``conesreg info --overlap``)."""
    s = session or Session()
    return read_concept(fetch(entry, session=s, mask_only=True), s.cache)


def load_concepts(
    refs: Sequence[str | Concept],
    *,
    project_dir: Path | None = None,
    locked: bool = False,
    frozen: bool = False,
    session: Session | None = None,
) -> list[Concept]:
    """Install (through the lockfile) and decode concepts; ``Concept`` objects pass through.

    Example:
        >>> dog, cat = load_concepts(["acme/dog@^1", "acme/cat@1.2"])  # doctest: +SKIP
    """
    s = session or Session()
    names = [r for r in refs if isinstance(r, str)]
    by_key: dict[str, LockedConcept] = {}
    if names:
        by_key = {c.key: c for c in _installed(names, project_dir, locked, frozen, s)}
    out = []
    for r in refs:
        if isinstance(r, Concept):
            out.append(r)
        else:
            ref = s.parse(r)
            entry = by_key[f"{ref.registry}/{ref.namespace}/{ref.name}"]
            # Read before and unchanged: no need to parse and verify its manifest again.
            seen = _read_before(entry.manifest, s.cache)
            out.append(seen or read_concept(s.cache.manifest(entry.manifest), s.cache))
    return out


def _install_for_use(
    names: list[str], path: Path, project_dir: Path | None, locked: bool, frozen: bool, s: Session
) -> list[LockedConcept]:
    """Install for using concepts (apply, generate): what the lockfile holds is used as it is
    when every reference allows it, so that using ``acme/dog@^1`` never rewrites a lock made
    with ``@^1.2``; when the lockfile must change (a concept not in it, a version it does not
    allow), it is written and a warning says so."""
    before = read_lockfile(path)
    held = before is not None and all(
        (entry := before.get(f"{ref.registry}/{ref.namespace}/{ref.name}")) is not None
        and parse_spec(ref.spec).matches(entry.version, entry.manifest)
        for ref in (s.parse(n) for n in names)
    )
    if held and not locked:
        frozen = True
    done = install(names, project_dir=project_dir, locked=locked, frozen=frozen, session=s)
    after = read_lockfile(path)
    if not frozen and after is not None and after != before:
        changed = ", ".join(
            f"{c.namespace}/{c.name}@{c.version} ({c.spec})"
            for c in after.concepts
            if before is None or before.get(c.key) != c
        )
        warnings.warn(f"{path.name} updated: {changed}", ConesregWarning, stacklevel=4)
    return done


#: What install() answered in this process, by everything that could change its answer: the
#: references and flags, the config, the cache, and the lockfile's (size, mtime, inode). Applying
#: the same references again while the lockfile is unchanged skips resolution (uv's "the lock is
#: up to date"); a change to the lockfile, or a new process, resolves again.
_INSTALLED: OrderedDict[tuple[object, ...], list[LockedConcept]] = OrderedDict()


def _installed(
    names: list[str], project_dir: Path | None, locked: bool, frozen: bool, s: Session
) -> list[LockedConcept]:
    from ._lockfile import lockfile_path

    path = lockfile_path(project_dir).resolve()
    key = (
        tuple(names),
        locked,
        frozen,
        str(s.cache.root),
        s.config.model_dump_json(),
        str(path),
        _stamp(path),
    )
    with _decoded_lock:
        hit = _INSTALLED.get(key)
    # A pruned cache since: install again, which fetches what is missing.
    if hit is not None and all(s.cache.blobs.has(c.manifest) for c in hit):
        return hit
    done = _install_for_use(names, path, project_dir, locked, frozen, s)
    # Stamped after install, which may have just written the lockfile.
    key = (*key[:-1], _stamp(path))
    with _decoded_lock:
        _INSTALLED[key] = done
        while len(_INSTALLED) > _READ_LIMIT:
            _INSTALLED.popitem(last=False)
    return done


def forget() -> None:
    """Drop what this process keeps of the concepts it read, decoded and installed, and the
    manifests it parsed, as a new process would start (the cache on disk stays). For tests and
    benchmarks."""
    from .artifact._manifest import forget_parsed

    global _decoded_bytes
    with _decoded_lock:
        _DECODED.clear()
        _decoded_bytes = 0
        _READ.clear()
        _INSTALLED.clear()
    forget_parsed()


@dataclass(frozen=True)
class Overlap:
    """Shared neurons between two concepts."""

    a: str
    b: str
    shared: int
    jaccard: float


def overlap(concepts: Sequence[Concept]) -> list[Overlap]:
    """Shared neurons and Jaccard index for every pair of concepts.

    Counted on the sets as the masks store them (a near-full set as its complement), so the
    memory is proportional to the payloads, never to the sizes their headers claim.

    Raises:
        BaseModelMismatchError: two concepts give one parameter different sizes (they belong to
            different base models, so their neurons cannot be compared).
        MaskError: a mask is corrupt or disagrees with its manifest.

    Example:
        >>> [o.jaccard for o in overlap([dog, cat])]  # doctest: +SKIP
        [0.012]
    """
    sets = [c.index_sets() for c in concepts]
    owner: dict[str, int] = {}
    for i, per_param in enumerate(sets):
        for param, s in per_param.items():
            first = owner.setdefault(param, i)
            if sets[first][param].numel != s.numel:
                a, b = concepts[first], concepts[i]
                raise BaseModelMismatchError(
                    f"{a.label} and {b.label} give {param!r} different sizes "
                    f"({sets[first][param].numel} and {s.numel} scalars): they were made for "
                    "different base models",
                    hint="compare concepts of the same base model (`conesreg info REF` shows it)",
                )
    m = len(concepts)
    shared = np.zeros((m, m), dtype=np.int64)
    for param in sorted(owner):
        per_concept = [per_param.get(param) for per_param in sets]
        both = _stored_intersections([x.stored if x else None for x in per_concept])
        for i, j in itertools.combinations(range(m), 2):
            a, b = per_concept[i], per_concept[j]
            if a is not None and b is not None:
                shared[i, j] += _shared(a, b, int(both[i, j]))
    sizes = [sum(len(x) for x in per_param.values()) for per_param in sets]
    rows = []
    for i, j in itertools.combinations(range(m), 2):
        union = sizes[i] + sizes[j] - int(shared[i, j])
        jaccard = float(shared[i, j] / union) if union else 0.0
        rows.append(Overlap(concepts[i].label, concepts[j].label, int(shared[i, j]), jaccard))
    return rows


#: overlap_suspects looks at about this many neurons of the smallest concept (or all of them):
#: enough that a concept sharing more than the threshold is never missed (see there).
_SAMPLED_NEURONS = 4096


def overlap_suspects(concepts: Sequence[Concept], *, threshold: float) -> list[Concept]:
    """The concepts that may be in a pair with a Jaccard index above ``threshold``: those that
    may share more than ``threshold`` of their neurons with all the others together.

    ``J(A, B) <= |A & B| / |A| <= |A & (others)| / |A|``, so a pair above the threshold has both
    of its concepts here. Counting "held by someone else" takes one pass per concept (a count per
    position, scattered and gathered), where all pairs take a pass per pair: apply() calls this on
    every change, then :func:`overlap` on the few suspects, so that composing many concepts stays
    linear in their neurons. Uses the decoded indices (apply() has decoded them within the
    pipeline's sizes).

    Large concepts are counted on a sample of positions, the same for every concept (a
    multiplicative hash of the position, so no row or column of a weight is favoured), of about
    ``_SAMPLED_NEURONS`` neurons of the smallest concept, and anyone whose sampled share is
    above half the threshold is a suspect. A concept sharing more than the threshold would have
    to fall below half of it in a sample of 4,096: at 0.1, ten standard deviations (0.0047)
    away. The sample only decides who is counted exactly; :func:`overlap` then counts in full.

    Example:
        >>> overlap_suspects([dog, cat], threshold=0.1)  # doctest: +SKIP
        []
    """
    numels: dict[str, int] = {}
    for c in concepts:
        numels.update(c.manifest.binding.mask_numels(c.manifest.base_model.targets))
    decoded = [c.indices for c in concepts]
    sizes = [sum(len(x) for x in d.values()) for d in decoded]
    smallest = min((k for k in sizes if k), default=0)
    # A power of two: position p is in the sample when hash(p) % every == 0.
    every = 1 << max(0, (smallest // _SAMPLED_NEURONS).bit_length() - 1)
    cut = threshold if every == 1 else threshold / 2
    shared = [0] * len(concepts)
    sampled = [0] * len(concepts)
    for name, numel in numels.items():
        held = [(i, _sample(d[name], every)) for i, d in enumerate(decoded) if len(d.get(name, ()))]
        for i, idx in held:
            sampled[i] += int(idx.size)
        if len(held) < 2:
            continue
        counts = np.zeros(numel, dtype=np.uint8)
        for _, idx in held:
            # A concept's indices are unique, so this counts each holder once; saturating keeps
            # 256 holders of one neuron from wrapping to 0 ("more than one" is all that is asked).
            counts[idx] = np.minimum(counts[idx], 254) + 1
        for i, idx in held:
            shared[i] += int(np.count_nonzero(counts[idx] > 1))
    return [c for c, n, k in zip(concepts, shared, sampled, strict=True) if k and n > cut * k]


def _sample(idx: np.ndarray, every: int) -> np.ndarray:
    """The positions of ``idx`` whose hash falls in the sample (all of them when every is 1)."""
    if every == 1:
        return idx
    # Knuth's multiplicative hash (mod 2**64), top bits: spreads neighbouring positions.
    h = (idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    return idx[(h & np.uint64(every - 1)) == 0]


def _shared(a: IndexSet, b: IndexSet, both: int) -> int:
    """|A & B| of two sets of one parameter, from ``both`` = |Sa & Sb| of their stored indices.

    A complemented set is ``U - S``, so inclusion-exclusion reduces every case to ``both``.
    """
    na, nb = int(a.stored.size), int(b.stored.size)
    if a.complement and b.complement:
        return a.numel - na - nb + both
    if a.complement:
        return nb - both
    if b.complement:
        return na - both
    return both


#: Flag bytes of one window of a parameter: the scratch of counting shared indices, whatever
#: size a mask claims (real targets, up to ~2.6M scalars in SDXL, take one to three windows).
_WINDOW = 1 << 20


def _stored_intersections(stored: Sequence[np.ndarray | None]) -> np.ndarray:
    """``|S_i & S_j|`` for every pair of sorted, unique index arrays (None: absent).

    One flag byte per index, one bit per concept (blocks of 8): each concept's indices are
    scattered once and gathered once per block, linear in the indices, instead of a search per
    pair. The flags cover one window of ``_WINDOW`` indices at a time, and only windows that hold
    an index are visited, so neither time nor memory follows a size a mask claims.
    """
    m = len(stored)
    both = np.zeros((m, m), dtype=np.int64)
    present = {i: x for i, x in enumerate(stored) if x is not None and x.size}
    if len(present) < 2:
        return both
    top = max(int(x[-1]) for x in present.values())
    if top < _WINDOW:  # every real target: one window, the arrays as they are
        _count_window(present, top + 1, both)
        return both
    windows = np.unique(np.concatenate([_windows(x, _WINDOW) for x in present.values()]))
    for w in windows.tolist():
        lo, hi = w * _WINDOW, (w + 1) * _WINDOW
        parts = {}
        for i, x in present.items():
            a, b = int(np.searchsorted(x, lo)), int(np.searchsorted(x, hi))
            if b > a:
                parts[i] = x[a:b] - lo
        _count_window(parts, _WINDOW, both)
    return both


def _count_window(parts: dict[int, np.ndarray], width: int, both: np.ndarray) -> None:
    """Add to ``both`` the pairwise shared indices of ``parts`` (concept -> indices < width)."""
    order = sorted(parts)
    for start in range(0, len(order), 8):
        block = order[start : start + 8]
        flags = np.zeros(width, dtype=np.uint8)
        for bit, i in enumerate(block):
            flags[parts[i]] |= np.uint8(1 << bit)
        for i in order[: start + 8]:
            hits = flags[parts[i]]
            for bit, j in enumerate(block):
                if j > i:
                    both[i, j] += np.count_nonzero(hits & np.uint8(1 << bit))


def _windows(x: np.ndarray, width: int) -> np.ndarray:
    """The distinct windows (``index // width``) that sorted indices fall in."""
    w = x // width
    return w[np.flatnonzero(np.diff(w, prepend=-1))]
