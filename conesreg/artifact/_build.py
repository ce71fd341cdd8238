"""A draft directory (as ``conesreg find`` writes it) made into the manifest it would publish.

Pure: files in, a :class:`Manifest` and its blob files out; no session, cache or network, so
loading a draft (:meth:`conesreg.Concept.from_draft`) and publishing one (:func:`conesreg.push`)
build the same manifest by the same code.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from . import constants
from ._digests import sha256_file
from ._manifest import (
    Binding,
    BlobRef,
    ConceptMetadata,
    Manifest,
    MaskDescriptor,
    _validate,
    parse_draft,
    parse_manifest,
    utcnow,
)
from ._names import check_name
from ._versions import parse_version
from .errors import ManifestError

#: The metadata ``find`` and ``push`` let users set (``--description``, ``--tag``, ``--license``,
#: ``--class-word``).
METADATA_OVERRIDES = ("description", "tags", "license", "class_word")


def with_metadata(
    metadata: ConceptMetadata, binding: Binding, overrides: Mapping[str, Any]
) -> ConceptMetadata:
    """``metadata`` with ``overrides`` (keys of :data:`METADATA_OVERRIDES`) set, validated.

    Raises:
        ManifestError: an override fails the schema, or would give a token-bound concept another
            class word than the word it acts at.

    Example:
        >>> with_metadata(draft.metadata, draft.binding, {"tags": ("shape",)})  # doctest: +SKIP
    """
    unknown = sorted(set(overrides) - set(METADATA_OVERRIDES))
    if unknown:
        raise ValueError(f"not a metadata override: {', '.join(unknown)}")
    word = overrides.get("class_word")
    if word is not None and binding.word is not None and word != binding.word:
        raise ManifestError(
            f"this concept is token-bound: it acts at the word {binding.word!r}, so its class "
            f"word cannot become {word!r}",
            hint=f"find it again with --class-word {word}, or leave --class-word out",
        )
    merged = {**metadata.model_dump(), **overrides}
    return _validate(ConceptMetadata, merged, what="the metadata")  # type: ignore[no-any-return]


def build_manifest(
    draft_dir: Path,
    *,
    version: str,
    namespace: str | None = None,
    name: str | None = None,
    created: datetime | None = None,
    stimulation: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[Manifest, dict[str, Path]]:
    """Validate a draft directory and build the manifest it would publish.

    The draft holds ``concept.json`` (a :class:`ManifestDraft`), ``mask.safetensors`` and
    optionally ``previews/*.png``. The mask is checked in full against the manifest
    (:func:`check_mask`), so a mask with indices out of range or for parameters the base model
    lacks is refused before anything is written.

    Args:
        draft_dir: The draft directory.
        version: A full semver version, e.g. ``"1.0.0"``.
        namespace: The namespace to publish under (default: the draft's, else
            ``constants.DEFAULT_NAMESPACE``).
        name: The concept name (default: the draft's).
        created: The creation time (default: the draft's, else now).
        stimulation: Publish the draft's ``stimulation.safetensors`` too (the subject's
            images as VAE latents, so that others can compose the concept); off by default,
            since they are the author's photos.
        metadata: Values that replace the draft's (see :func:`with_metadata`).

    Returns:
        The manifest and a map from each blob digest to its file.

    Raises:
        ManifestError: a file is missing or fails the schema.
        MaskError: the mask is corrupt or does not fit the draft's base model.
        InvalidReferenceError: a bad namespace, name or version.

    Example:
        >>> manifest, files = build_manifest(Path("out/dog"), version="1.0.0")  # doctest: +SKIP
    """
    # The mask codec needs numpy: loaded here, so that importing the publish path stays light.
    from ._check import _check_targets, check_mask
    from ._mask import read_mask_info

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
    shapes = draft.binding.mask_numels(draft.base_model.targets)
    # The header's sizes are checked against the draft's base model before the manifest is
    # built from its counts (a misfit is the mask's error, not the manifest's); check_mask below
    # then validates every index, in memory ~ the file's size.
    info = read_mask_info(data)
    _check_targets(info, shapes)

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
        if p.suffix.lower() in constants.IMAGE_SUFFIXES
    )
    previews = []
    for p in preview_paths:
        if not p.is_file():
            raise ManifestError(f"preview {p} listed in {concept_file.name} does not exist")
        previews.append(add(p, mimetypes.guess_type(p.name)[0] or "application/octet-stream"))

    stimulation_digest = None
    if stimulation:
        from ._stimulation import read_stimulation

        path = draft_dir / constants.DRAFT_STIMULATION
        if not path.is_file():
            raise ManifestError(
                f"{draft_dir} has no {constants.DRAFT_STIMULATION} to publish",
                hint="find the concept again with this version of conesreg, or push without "
                "--with-stimulation",
            )
        read_stimulation(path.read_bytes())
        stimulation_digest = add(path, constants.MEDIA_TYPE_STIMULATION)

    counts = {k: v for k, v in info.counts.items() if v}
    given = with_metadata(draft.metadata, draft.binding, metadata) if metadata else draft.metadata
    metadata_out = given.model_copy(
        update={
            "stimulation": stimulation_digest,
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
            total=sum(t.numel for t in draft.base_model.targets),
            selected=sum(counts.values()),
            counts=counts,
        ).model_dump(),
        "metadata": metadata_out.model_dump(),
        "blobs": [b.model_dump() for b in blobs],
        "binding": draft.binding.model_dump(),
    }
    manifest = parse_manifest(body)
    check_mask(manifest, data)
    return manifest, files
