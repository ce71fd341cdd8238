"""Versions (semver 2.0) and version specs, with npm's semantics via ``semantic_version``.

Specs: an exact version (``1.2.3``), a partial one (``1.2`` = latest 1.2.x), ``^1.2``, ``~1.2``,
comparator ranges (``>=1.2,<2``; commas and spaces both mean AND), ``latest`` (or no spec), and a
digest pin ``sha256:<hex>``. Pre-releases match only when the spec names one on the same
major.minor.patch (npm's rule). Yanked versions are skipped unless pinned exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import semantic_version as sv

from .errors import InvalidReferenceError, VersionNotFoundError, YankedVersionError

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANCHOR_RE = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def parse_version(text: str) -> sv.Version:
    """Parse a full semantic version such as ``1.2.3`` or ``2.0.0-rc.1``.

    Raises:
        InvalidReferenceError: when ``text`` is not a full semver version.

    Example:
        >>> str(parse_version("1.2.3-rc.1"))
        '1.2.3-rc.1'
    """
    try:
        return sv.Version(text.strip().removeprefix("v"))
    except ValueError:
        raise InvalidReferenceError(
            f"invalid version {text!r}",
            hint="versions are MAJOR.MINOR.PATCH with an optional -prerelease, e.g. 1.2.0",
        ) from None


def check_digest(text: str) -> str:
    """Return ``text`` if it is ``sha256:`` followed by 64 lowercase hex digits."""
    if not DIGEST_RE.fullmatch(text):
        raise InvalidReferenceError(
            f"invalid digest {text!r}", hint="write digests as sha256:<64 lowercase hex digits>"
        )
    return text


@dataclass(frozen=True)
class VersionSpec:
    """A parsed spec; ``kind`` says how it selects."""

    text: str
    kind: Literal["latest", "exact", "range", "digest"]
    npm: sv.NpmSpec | None = None

    @property
    def pins(self) -> bool:
        """True for an exact version or a digest: such pins may select a yanked version."""
        return self.kind in ("exact", "digest")

    def matches(self, version: str, digest: str | None = None) -> bool:
        """Whether ``version`` (with manifest ``digest``) satisfies the spec."""
        if self.kind == "digest":
            return digest == self.text
        v = sv.Version(version)
        if self.kind == "latest":
            return not v.prerelease
        if self.kind == "exact":
            # Compared directly: npm ranges treat "1.3.0-rc.1" as a floor that 1.3.0 also passes.
            return v == sv.Version(self.text)
        assert self.npm is not None
        return v in self.npm

    def __str__(self) -> str:
        return self.text


def parse_spec(text: str | None) -> VersionSpec:
    """Parse a version spec; ``None`` or ``""`` means ``latest``.

    Raises:
        InvalidReferenceError: for a spec that does not parse, naming it.

    Example:
        >>> parse_spec("^1.2").matches("1.9.0")
        True
    """
    text = (text or "latest").strip()
    if text == "latest":
        return VersionSpec(text, "latest")
    if text.startswith("sha256:"):
        return VersionSpec(check_digest(text), "digest")
    exact = True
    try:
        sv.Version(text)
    except ValueError:
        exact = False
    # npm writes AND as a space; we also accept the comma that pip and cargo users type.
    npm_text = " ".join(part.strip() for part in text.split(",") if part.strip())
    try:
        npm = sv.NpmSpec(npm_text)
    # AttributeError: semantic_version's hyphen ranges crash on a bound that is no version
    # ("a - b", found by fuzz/artifact.py); it is a malformed spec like any other.
    except (ValueError, AttributeError):
        raise InvalidReferenceError(
            f"invalid version spec {text!r}",
            hint="use 1.2.3, 1.2, ^1.2, ~1.2, '>=1.2,<2', latest or sha256:<hex>",
        ) from None
    return VersionSpec(text, "exact" if exact else "range", npm)


class Release(Protocol):
    """What the selector needs to know of a published version."""

    @property
    def version(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def yanked(self) -> bool: ...


R = TypeVar("R", bound=Release)


def sort_releases(releases: Sequence[R]) -> list[R]:
    """Releases in ascending semver order."""
    return sorted(releases, key=lambda r: sv.Version(r.version))


def select_version(spec: VersionSpec, releases: Sequence[R], *, concept: str) -> R:
    """Pick the highest release that satisfies ``spec``, skipping yanked ones unless pinned.

    Args:
        spec: from :func:`parse_spec`.
        releases: every published version of the concept.
        concept: the concept's name, for error messages.

    Returns:
        The selected release.

    Raises:
        YankedVersionError: only yanked releases match.
        VersionNotFoundError: nothing matches; the message lists the nearest versions.

    Example:
        >>> from types import SimpleNamespace as R
        >>> rs = [R(version=v, digest="", yanked=False) for v in ("1.2.0", "1.3.1", "2.0.0")]
        >>> select_version(parse_spec("^1.2"), rs, concept="acme/dog").version
        '1.3.1'
    """
    matching = [r for r in sort_releases(releases) if spec.matches(r.version, r.digest)]
    usable = matching if spec.pins else [r for r in matching if not r.yanked]
    if usable:
        return usable[-1]
    if matching:
        yanked = ", ".join(r.version for r in matching)
        raise YankedVersionError(f"{concept}@{spec} matches only yanked versions ({yanked})")
    near = nearest_versions(spec, releases)
    listed = f"; nearest: {', '.join(near)}" if near else "; it has no versions"
    raise VersionNotFoundError(f"no version of {concept} matches {spec.text!r}{listed}")


def nearest_versions(spec: VersionSpec, releases: Sequence[Release], *, n: int = 4) -> list[str]:
    """Up to ``n`` non-yanked versions closest to the first version number written in the spec."""
    ordered = [r.version for r in sort_releases(releases) if not r.yanked]
    anchor = _ANCHOR_RE.search(spec.text) if spec.kind != "digest" else None
    if not anchor:
        return ordered[-n:]
    key = tuple(int(g or 0) for g in anchor.groups())
    pos = sum(1 for v in ordered if tuple(sv.Version(v))[:3] < key)
    lo = max(0, min(pos - n // 2, len(ordered) - n))
    return ordered[lo : lo + n]
