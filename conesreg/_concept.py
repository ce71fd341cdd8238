"""Installed concepts as ready-to-apply objects (manifest + decoded mask), and their overlap.

No torch here: ``conesreg info --overlap`` and the resolver-facing half of composing run without
it. Applying concepts to a pipeline is :mod:`conesreg._compose`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._cache import Cache
from ._install import Session, install
from ._lockfile import LockedConcept
from ._manifest import IndexEntry, Manifest
from .errors import MaskError
from .sources import BlobOrigin

#: Pairs of concepts sharing more than this Jaccard index of their neurons get a warning: a
#: shared neuron serves both subjects, so heavy sharing means they will blend.
OVERLAP_WARN_JACCARD = 0.1


@dataclass(frozen=True)
class Concept:
    """One concept version ready to apply: its manifest and its sorted flat indices per target."""

    manifest: Manifest
    indices: dict[str, np.ndarray]

    @property
    def label(self) -> str:
        m = self.manifest
        return f"{m.namespace}/{m.name}@{m.version}"

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @classmethod
    def from_draft(cls, draft_dir: Path, *, version: str = "0.0.0-draft") -> Concept:
        """A concept straight from a draft directory (``conesreg find`` output), unpublished."""
        from ._mask import decode_mask
        from ._push import build_manifest

        manifest, files = build_manifest(Path(draft_dir), version=version)
        return cls(manifest, decode_mask(files[manifest.mask.blob].read_bytes()))


def read_concept(manifest: Manifest, cache: Cache) -> Concept:
    """Decode an installed concept's mask from the cache (digest re-checked on read).

    Raises:
        IntegrityError: the cached mask is missing or corrupted.
        MaskError: the mask disagrees with the manifest (counts or sizes).
    """
    from ._mask import decode_mask, read_mask_info

    data = cache.blobs.read(manifest.mask.blob)
    info = read_mask_info(data)
    shapes = {t.name: t.numel for t in manifest.base_model.targets}
    for param, numel in info.numels.items():
        if shapes.get(param) != numel:
            raise MaskError(
                f"{manifest.id}@{manifest.version}: mask size of {param!r} disagrees with manifest"
            )
    counts = {k: v for k, v in info.counts.items() if v}
    if counts != manifest.mask.counts:
        raise MaskError(f"{manifest.id}@{manifest.version}: mask counts disagree with manifest")
    return Concept(manifest, decode_mask(data))


def fetch_concept(entry: IndexEntry, *, session: Session | None = None) -> Concept:
    """A published version as a :class:`Concept`, through the cache but outside any lockfile
    (for inspection, e.g. ``conesreg info --overlap``)."""
    s = session or Session()
    e = entry
    manifest = s.manifest(e.registry, e.namespace, e.name, e.version, e.digest, revision=e.revision)
    mask = manifest.blob(manifest.mask.blob)
    origin = BlobOrigin(e.namespace, e.name, e.version, mask.path, e.revision)
    s.blob(e.registry, mask, origin=origin)
    return read_concept(manifest, s.cache)


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
        done = install(names, project_dir=project_dir, locked=locked, frozen=frozen, session=s)
        by_key = {c.key: c for c in done}
    out = []
    for r in refs:
        if isinstance(r, Concept):
            out.append(r)
        else:
            ref = s.parse(r)
            entry = by_key[f"{ref.registry}/{ref.namespace}/{ref.name}"]
            out.append(read_concept(s.cache.manifest(entry.manifest), s.cache))
    return out


@dataclass(frozen=True)
class Overlap:
    """Shared neurons between two concepts."""

    a: str
    b: str
    shared: int
    jaccard: float


def overlap(concepts: Sequence[Concept]) -> list[Overlap]:
    """Shared neurons and Jaccard index for every pair of concepts.

    Example:
        >>> [o.jaccard for o in overlap([dog, cat])]  # doctest: +SKIP
        [0.012]
    """
    m = len(concepts)
    shared = np.zeros((m, m), dtype=np.int64)
    numels = {t.name: t.numel for c in concepts for t in c.manifest.base_model.targets}
    for param in sorted({p for c in concepts for p in c.indices}):
        arrays = [c.indices.get(param) for c in concepts]
        # One bit per concept in a byte-per-neuron flag array: each concept's neurons are
        # scattered once and gathered once per block of 8, instead of a search per pair.
        for start in range(0, m, 8):
            flags = np.zeros(numels[param], dtype=np.uint8)
            for bit, idx in enumerate(arrays[start : start + 8]):
                if idx is not None:
                    flags[idx] |= np.uint8(1 << bit)
            for i, idx in enumerate(arrays[: start + 8]):
                if idx is None:
                    continue
                hits = flags[idx]
                for j in range(max(i + 1, start), min(start + 8, m)):
                    shared[i, j] += np.count_nonzero(hits & np.uint8(1 << (j - start)))
    sizes = [sum(len(v) for v in c.indices.values()) for c in concepts]
    rows = []
    for i, j in itertools.combinations(range(m), 2):
        union = sizes[i] + sizes[j] - shared[i, j]
        jaccard = float(shared[i, j] / union) if union else 0.0
        rows.append(Overlap(concepts[i].label, concepts[j].label, int(shared[i, j]), jaccard))
    return rows
