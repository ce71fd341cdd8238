"""Push: publish a draft directory (as ``conesreg find`` writes it) as a version of a source."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._session import Session
from .artifact._build import build_manifest
from .artifact._manifest import Manifest, parse_manifest
from .artifact._versions import parse_version
from .errors import (
    ConceptNotFoundError,
    InvalidReferenceError,
    ManifestError,
    VersionNotFoundError,
)


def push(
    draft_dir: Path,
    *,
    version: str,
    ref: str | None = None,
    stimulation: bool = False,
    metadata: Mapping[str, Any] | None = None,
    session: Session | None = None,
) -> tuple[Manifest, bool]:
    """Publish the draft at ``draft_dir`` as ``version``.

    Args:
        draft_dir: the directory ``conesreg find`` wrote.
        version: a full semver version, e.g. ``"1.0.0"``.
        ref: ``[REGISTRY/]NAMESPACE/NAME`` to publish under (default: the draft's own name, in the
            default registry).
        stimulation: publish the subject's images as VAE latents too (``conesreg compose``
            refines concepts jointly on them); they are the author's photos, so only on request.
        metadata: values that replace the draft's: ``description``, ``tags``, ``license``,
            ``class_word`` (the draft on disk is left as it is).
        session: config and sources to use.

    Returns:
        The manifest and True if it was published, False if this exact content was already there.

    Raises:
        ManifestError, MaskError, InvalidReferenceError, ImmutableVersionError, StorageError.

    Example:
        >>> manifest, created = push(Path("out/dog"), version="1.0.0", ref="acme/dog")
        ... # doctest: +SKIP
    """
    s = session or Session()
    target = s.parse(ref) if ref else None
    if target is not None and target.spec:
        raise ManifestError(
            f"push takes a name without a version spec, not {ref!r}", hint="use --version"
        )
    registry = target.registry if target else None
    source = s.source(registry)
    manifest, files = build_manifest(
        draft_dir,
        version=version,
        namespace=target.namespace if target else None,
        name=target.name if target else None,
        stimulation=stimulation,
        metadata=metadata,
    )
    # A re-push of the same draft must be a no-op even though the draft has no timestamp: reuse
    # the published version's creation time so that identical content gives the same digest.
    try:
        existing = parse_manifest(
            source.manifest(manifest.namespace, manifest.name, manifest.version)
        )
    except (ConceptNotFoundError, VersionNotFoundError):
        existing = None
    if existing is not None and existing.metadata.created != manifest.metadata.created:
        manifest, files = build_manifest(
            draft_dir,
            version=version,
            namespace=manifest.namespace,
            name=manifest.name,
            created=existing.metadata.created,
            stimulation=stimulation,
            metadata=metadata,
        )
    return manifest, source.push(manifest, files)


def set_yanked(
    ref: str, *, yanked: bool, reason: str | None = None, session: Session | None = None
) -> str:
    """Yank (or unyank) one exact version; its content never changes.

    Args:
        ref: ``[REGISTRY/]NAMESPACE/NAME@VERSION``: an exact version.
        yanked: True to yank, False to undo a yank.
        reason: Why, shown to users who pin it (yank only).
        session: The session whose sources to use (default: a new one).

    Returns:
        ``NAMESPACE/NAME@VERSION`` as it was changed.

    Raises:
        InvalidReferenceError: ``ref`` names no exact version.
        ConceptNotFoundError, VersionNotFoundError, AuthenticationError: as the source says.

    Example:
        >>> set_yanked("acme/dog@1.2.0", yanked=True, reason="wrong subject")  # doctest: +SKIP
        'acme/dog@1.2.0'
    """
    s = session or Session()
    r = s.parse(ref)
    if not r.spec:
        raise InvalidReferenceError(f"{ref!r} names no version", hint="write NAME@1.2.3")
    version = str(parse_version(r.spec))
    s.source(r.registry).set_yanked(r.namespace, r.name, version, yanked=yanked, reason=reason)
    return f"{r.id}@{version}"
