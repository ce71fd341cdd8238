"""Push: turn a draft directory (as ``conesreg find`` writes it) into a published version."""

from __future__ import annotations

import mimetypes
from datetime import datetime
from pathlib import Path

from . import constants
from ._digests import sha256_file
from ._install import Session
from ._manifest import BlobRef, Manifest, MaskDescriptor, parse_draft, parse_manifest, utcnow
from ._names import check_name
from ._versions import parse_version
from .errors import ConceptNotFoundError, ManifestError, VersionNotFoundError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def build_manifest(
    draft_dir: Path,
    *,
    version: str,
    namespace: str | None = None,
    name: str | None = None,
    created: datetime | None = None,
) -> tuple[Manifest, dict[str, Path]]:
    """Validate a draft directory and build the manifest it would publish.

    The draft holds ``concept.json`` (a :class:`ManifestDraft`), ``mask.safetensors`` and
    optionally ``previews/*.png``. The mask is fully decoded here, so a mask with indices out of
    range or for parameters the base model lacks is refused before anything is written.

    Returns:
        The manifest and a map from each blob digest to its file.

    Raises:
        ManifestError, MaskError, InvalidReferenceError.
    """
    from ._mask import decode_mask_sets, read_mask_info

    draft_dir = Path(draft_dir)
    concept_file = draft_dir / constants.DRAFT_MANIFEST
    mask_file = draft_dir / constants.DRAFT_MASK
    for required in (concept_file, mask_file):
        if not required.is_file():
            raise ManifestError(
                f"{draft_dir} has no {required.name}",
                hint="push a directory written by `conesreg find` (concept.json, mask)",
            )
    draft = parse_draft(concept_file.read_bytes())
    ns = check_name(namespace or draft.namespace or constants.DEFAULT_NAMESPACE, what="namespace")
    nm = name or draft.name
    if nm is None:
        raise ManifestError(
            f"{concept_file} names no concept", hint="pass --name NAMESPACE/NAME or set 'name'"
        )
    check_name(nm)
    version = str(parse_version(version))

    data = mask_file.read_bytes()
    shapes = {t.name: t.numel for t in draft.base_model.targets}
    # The sizes are checked against the draft's base model before anything is decoded; then every
    # index is checked in memory ~ the file's size: corrupt payloads and bad indices fail here.
    decode_mask_sets(data, numels=shapes)
    info = read_mask_info(data)

    files: dict[str, Path] = {}
    blobs: list[BlobRef] = []

    def add(path: Path, media_type: str) -> str:
        digest, size = sha256_file(path)
        rel = path.relative_to(draft_dir).as_posix()
        if digest not in files:
            files[digest] = path
            blobs.append(BlobRef(digest=digest, size=size, media_type=media_type, path=rel))
        return digest

    mask_digest = add(mask_file, constants.MEDIA_TYPE_MASK)
    preview_paths = [draft_dir / p for p in draft.preview_files] or sorted(
        p
        for p in (draft_dir / constants.DRAFT_PREVIEWS).glob("*")
        if p.suffix.lower() in _IMAGE_SUFFIXES
    )
    previews = []
    for p in preview_paths:
        if not p.is_file():
            raise ManifestError(f"preview {p} listed in {concept_file.name} does not exist")
        previews.append(add(p, mimetypes.guess_type(p.name)[0] or "application/octet-stream"))

    counts = {k: v for k, v in info.counts.items() if v}
    metadata = draft.metadata.model_copy(
        update={
            "previews": tuple(previews),
            "created": created or draft.metadata.created or utcnow(),
        }
    )
    body = {
        "namespace": ns,
        "name": nm,
        "version": version,
        "base_model": draft.base_model.model_dump(),
        "mask": MaskDescriptor(
            blob=mask_digest,
            encoding=info.encoding,
            total=sum(shapes.values()),
            selected=sum(counts.values()),
            counts=counts,
        ).model_dump(),
        "metadata": metadata.model_dump(),
        "blobs": [b.model_dump() for b in blobs],
    }
    return parse_manifest(body), files


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
