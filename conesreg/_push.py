"""Push: publish a draft directory (as ``conesreg find`` writes it) as a version of a source."""

from __future__ import annotations

from pathlib import Path

from ._session import Session
from .artifact._build import build_manifest
from .artifact._manifest import Manifest, parse_manifest
from .errors import ConceptNotFoundError, ManifestError, VersionNotFoundError


def push(
    draft_dir: Path,
    *,
    version: str,
    ref: str | None = None,
    session: Session | None = None,
) -> tuple[Manifest, bool]:
    """Publish the draft at ``draft_dir`` as ``version``.

    Args:
        draft_dir: the directory ``conesreg find`` wrote.
        version: a full semver version, e.g. ``"1.0.0"``.
        ref: ``[REGISTRY/]NAMESPACE/NAME`` to publish under (default: the draft's own name, in the
            default registry).
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
        )
    return manifest, source.push(manifest, files)
