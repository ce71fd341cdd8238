"""The concept artifact: manifest, draft and index entry models.

One version of a concept is a manifest plus content-addressed blobs (the mask payload and preview
images). The manifest is serialised as *canonical JSON* (sorted keys, no whitespace, UTF-8) and
the sha256 of those bytes is the version's digest: two registries holding the same version agree
on its digest byte for byte, and a digest pin (``acme/dog@sha256:...``) is unforgeable.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from . import constants
from ._digests import sha256_bytes
from ._names import check_file_path, check_text
from ._versions import parse_version
from .errors import ConesregError, IntegrityError, ManifestError

Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$", max_length=64)]


def _semver(value: str) -> str:
    try:
        return str(parse_version(value))
    except ConesregError as e:
        raise ValueError(e.message) from None


#: A full semver version, spelled canonically. Listings from servers are held to it too: a
#: version ends up in cache paths and URLs.
Version = Annotated[str, AfterValidator(_semver)]


class _Model(BaseModel):
    # Unknown keys are refused rather than dropped: a manifest is hashed, so silently losing a
    # field would change what the digest means.
    # defer_build: validators are compiled on first use, so commands that never touch a model
    # (most of them touch two or three) do not pay for building all of them at import.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class BlobRef(_Model):
    """One file of the artifact, addressed by content."""

    digest: Digest
    size: int = Field(ge=0)
    media_type: str
    path: str = Field(description="file name inside the artifact, e.g. previews/with-mask.png")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        # Sources write files by this path (a Hub repo, a download folder): one plain relative
        # path, the same file on every OS, never one of the Hub layout's own files.
        try:
            check_file_path(value, what="blob path")
        except ConesregError as e:
            raise ValueError(e.message) from None
        if value in constants.HUB_LAYOUT_FILES:
            raise ValueError(f"blob path {value!r} is reserved for the artifact's own layout")
        return value


#: A dimension of a real tensor: at least 1, and far below anything that could overflow a product.
Dim = Annotated[int, Field(ge=1, le=1 << 40)]


class TargetParam(_Model):
    """A candidate parameter of the base model, as a diffusers state-dict name."""

    name: str = Field(min_length=1, max_length=constants.MAX_PATH_BYTES)
    shape: tuple[Dim, ...] = Field(max_length=8)

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        return _plain_text(value, what="target name")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class BaseModelRef(_Model):
    """The base model a concept belongs to."""

    id: str = Field(description="free text, e.g. a Hub repo id or 'conesreg/mini'")
    hash: Digest = Field(description="conesreg base-model hash over the target parameters")
    targets: tuple[TargetParam, ...]


class MaskDescriptor(_Model):
    """Where the mask is and what it holds."""

    blob: Digest
    encoding: str = constants.MASK_ENCODING
    total: int = Field(ge=0, description="N: number of candidate scalars over all targets")
    selected: int = Field(ge=0, description="k: number of concept neurons")
    counts: dict[str, int] = Field(description="k per target parameter")


class BindingPart(_Model):
    """One part of a token-bound composite: the word it acts at and its anchor prompt."""

    word: str
    anchor: str

    @field_validator("word", "anchor")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _plain_text(value, what="binding text")

    @model_validator(mode="after")
    def _anchored(self) -> BindingPart:
        _check_anchor(self.word, self.anchor)
        return self


def _check_anchor(word: str | None, anchor: str | None) -> None:
    if not word or not word.strip():
        raise ValueError("a token binding needs its word")
    if not anchor or not re.search(rf"(?<!\w){re.escape(word)}(?!\w)", anchor, re.IGNORECASE):
        raise ValueError(f"the binding's anchor must contain its word {word!r}")


class Binding(_Model):
    """Where a concept's neurons are switched off (manifest schema 2).

    ``global``: in the weights themselves, for every token of every prompt (the paper's
    method; every schema-1 manifest). ``token``: only in the cross-attention keys and values of
    ``word``'s tokens, each concept at its own word; the switched-off weights' share is taken
    on the text encoder's state at ``word`` in ``anchor`` (the class prompt), so it is the
    same wherever the word stands in a prompt (docs/design.md, "Token-bound concepts").
    """

    mode: Literal["global", "token"] = "global"
    word: str | None = Field(default=None, description="token: the word the concept acts at")
    anchor: str | None = Field(
        default=None, description="token: the prompt whose state at the word anchors the share"
    )
    parts: tuple[BindingPart, ...] = Field(
        default=(),
        description="token composite (`conesreg compose`): one word and anchor per part, its "
        "mask's tensors named PART:PARAMETER; word and anchor are then unset",
    )

    @field_validator("word", "anchor")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None:
            _plain_text(value, what="binding text")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Binding:
        if self.mode == "global" and (self.word or self.anchor or self.parts):
            raise ValueError("a global binding names no word, anchor or parts")
        if self.mode == "token" and self.parts:
            if self.word or self.anchor or len(self.parts) < 2:
                raise ValueError("a composite binding has two parts or more and no word of its own")
        elif self.mode == "token":
            _check_anchor(self.word, self.anchor)
        return self

    def mask_numels(self, targets: tuple[TargetParam, ...]) -> dict[str, int]:
        """The mask's tensor names and sizes: the targets', or ``PART:NAME`` per part."""
        if not self.parts:
            return {t.name: t.numel for t in targets}
        return {f"{i}:{t.name}": t.numel for i in range(len(self.parts)) for t in targets}


class MethodInfo(_Model):
    """How the concept was found."""

    name: str = "cones"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class ConceptMetadata(_Model):
    """What users see and search."""

    class_word: str = Field(min_length=1, description="the class prompt word, e.g. 'dog'")
    trigger_word: str | None = None
    prompt_template: str = "a photo of a {class_word}"
    description: str = ""
    tags: tuple[str, ...] = ()
    license: str | None = None
    authors: tuple[str, ...] = ()
    created: datetime | None = None
    method: MethodInfo = Field(default_factory=MethodInfo)
    previews: tuple[Digest, ...] = ()
    parents: tuple[str, ...] = Field(default=(), description="name@digest of composed concepts")
    stimulation: Digest | None = Field(
        default=None,
        description="schema 2: the subject's images as VAE latents with their captions, published "
        "on request so that others can compose the concept (`conesreg compose`)",
    )

    @field_validator("class_word", "trigger_word", "license", "tags", "authors", "parents")
    @classmethod
    def _one_line(cls, value: Any) -> Any:
        for text in value if isinstance(value, tuple) else (value,):
            if text is not None:
                _plain_text(text, what="metadata text")
        return value

    @field_validator("prompt_template", "description")
    @classmethod
    def _free_text(cls, value: str) -> str:
        return _plain_text(value, what="metadata text", multiline=True)

    @field_validator("created")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # One spelling of each instant, so the canonical JSON (and the digest) is stable.
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(microsecond=0)


class Manifest(_Model):
    """One immutable version of a concept."""

    schema_version: Literal[1, 2] = constants.MANIFEST_SCHEMA_VERSION
    namespace: Name
    name: Name
    version: Version
    kind: Literal["cones-mask/1"] = constants.CONCEPT_KIND
    base_model: BaseModelRef
    mask: MaskDescriptor
    metadata: ConceptMetadata
    blobs: tuple[BlobRef, ...]
    # Schema 1 had no binding: such a manifest reads as global and is dumped without the key,
    # so its canonical JSON, and its digest, stay what they were.
    binding: Binding = Field(default_factory=Binding)

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.schema_version == 1:
            data.pop("binding", None)
            data.get("metadata", {}).pop("stimulation", None)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.schema_version == 1 and (
            self.binding.mode != "global" or self.metadata.stimulation is not None
        ):
            raise ValueError(
                "a schema 1 manifest has no binding or stimulation; use schema_version 2"
            )
        by_digest = {b.digest: b for b in self.blobs}
        _check_layout(self.blobs)
        if self.mask.blob not in by_digest:
            raise ValueError(f"mask blob {self.mask.blob} is not listed in blobs")
        stimulation = self.metadata.stimulation
        if stimulation is not None and (
            stimulation not in by_digest
            or by_digest[stimulation].media_type != constants.MEDIA_TYPE_STIMULATION
        ):
            raise ValueError(f"stimulation {stimulation} is not listed in blobs as one")
        missing = [d for d in self.metadata.previews if d not in by_digest]
        if missing:
            raise ValueError(f"preview {missing[0]} is not listed in blobs")
        if self.metadata.created is None:
            raise ValueError("metadata.created is required in a published manifest")
        targets = {t.name: t for t in self.base_model.targets}
        if len(targets) != len(self.base_model.targets):
            raise ValueError("base_model.targets names a parameter twice")
        numels = self.binding.mask_numels(self.base_model.targets)
        if self.mask.total > constants.MAX_TARGET_NUMEL:
            raise ValueError(
                f"mask.total is {self.mask.total}, over the {constants.MAX_TARGET_NUMEL} scalars "
                "any supported base model has (CONESREG_MAX_TARGET_NUMEL)"
            )
        if set(self.mask.counts) - set(numels):
            extra = sorted(set(self.mask.counts) - set(numels))[0]
            raise ValueError(f"mask counts name {extra!r}, which is not a target parameter")
        for name, count in self.mask.counts.items():
            if not 0 <= count <= numels[name]:
                raise ValueError(f"mask count {count} out of range for {name!r}")
        if sum(self.mask.counts.values()) != self.mask.selected:
            raise ValueError("mask.selected is not the sum of mask.counts")
        if sum(t.numel for t in self.base_model.targets) != self.mask.total:
            raise ValueError("mask.total is not the number of target scalars")
        return self

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def canonical_json(self) -> bytes:
        """The exact bytes that are stored and hashed."""
        return canonical_json(self.model_dump(mode="json"))

    @cached_property
    def digest(self) -> str:
        """``sha256:`` of :meth:`canonical_json`: the version's identity (computed once)."""
        return sha256_bytes(self.canonical_json())

    @property
    def size(self) -> int:
        """Bytes of all blobs."""
        return sum(b.size for b in self.blobs)

    def blob(self, digest: str) -> BlobRef:
        return next(b for b in self.blobs if b.digest == digest)


class ManifestDraft(_Model):
    """``concept.json`` in a draft directory, as ``conesreg find`` writes it.

    Push fills in the version, the mask descriptor, the blobs and the preview digests.
    """

    namespace: Name | None = None
    name: Name | None = None
    base_model: BaseModelRef
    metadata: ConceptMetadata
    binding: Binding = Field(default_factory=Binding)
    preview_files: tuple[str, ...] = Field(
        default=(), description="paths relative to the draft; default: every image in previews/"
    )


class IndexEntry(_Model):
    """One version as listed by ``search``/``versions``: the manifest's summary plus yank state."""

    registry: str
    namespace: Name
    name: Name
    version: Version
    digest: Digest
    yanked: bool = False
    yank_reason: str | None = None
    class_word: str
    description: str = ""
    tags: tuple[str, ...] = ()
    base_model_id: str
    base_model_hash: Digest
    selected: int
    total: int
    size: int
    created: datetime | None = None
    revision: str | None = Field(
        default=None,
        description="the source's own pointer to this version where a version name alone can "
        "move (a Hub commit SHA behind a tag); None where versions are immutable by construction",
    )

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(
        cls, manifest: Manifest, *, registry: str, yanked: bool = False, reason: str | None = None
    ) -> IndexEntry:
        m = manifest
        return cls(
            registry=registry,
            namespace=m.namespace,
            name=m.name,
            version=m.version,
            digest=m.digest,
            yanked=yanked,
            yank_reason=reason,
            class_word=m.metadata.class_word,
            description=m.metadata.description,
            tags=m.metadata.tags,
            base_model_id=m.base_model.id,
            base_model_hash=m.base_model.hash,
            selected=m.mask.selected,
            total=m.mask.total,
            size=m.size,
            created=m.metadata.created,
        )


def _plain_text(value: str, *, what: str, multiline: bool = False) -> str:
    try:
        return check_text(value, what=what, multiline=multiline)
    except ConesregError as e:
        raise ValueError(e.message) from None


def _check_layout(blobs: tuple[BlobRef, ...]) -> None:
    """Blob paths name distinct files on every OS: no two equal ignoring case, none both a file
    and the folder of another (a case-insensitive file system could not hold both)."""
    seen: set[str] = set()
    for blob in blobs:
        key = blob.path.casefold()
        if key in seen:
            raise ValueError(f"blob path {blob.path!r} is listed twice (ignoring case)")
        seen.add(key)
    for key in seen:
        parts = key.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise ValueError(f"blob path {'/'.join(parts[:i])!r} is a file and a folder")


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _validate(model: type[_Model], data: bytes | str | dict, *, what: str) -> Any:
    try:
        if isinstance(data, dict):
            return model.model_validate(data)
        return model.model_validate_json(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        raise ManifestError(f"{what} fails the schema at {where}: {err['msg']}") from None


# The same bytes always parse to the same (frozen) manifest: a process that reads a manifest
# again (install, then apply, then generate) skips validating it again, which costs ~0.5 ms of
# pydantic and canonical JSON for an SD manifest. Bounded in entries and entry size; only what
# validated is kept.
_PARSED: OrderedDict[bytes, Manifest] = OrderedDict()
_PARSED_LIMIT = 512
_PARSED_MAX_BYTES = 64 * 1024
_parsed_lock = threading.Lock()


def forget_parsed() -> None:
    """Drop the manifests :func:`parse_manifest` remembers, as a new process starts (tests and
    benchmarks)."""
    with _parsed_lock:
        _PARSED.clear()


def parse_manifest(data: bytes | str | dict, *, expected_digest: str | None = None) -> Manifest:
    """Validate a manifest; with ``expected_digest``, also check that it is the one pinned.

    Raises:
        ManifestError: the JSON fails the schema (the message names the field).
        IntegrityError: the bytes do not hash to ``expected_digest``.

    Example:
        >>> m = parse_manifest(path.read_bytes())  # doctest: +SKIP
    """
    memo = isinstance(data, bytes) and len(data) <= _PARSED_MAX_BYTES
    with _parsed_lock:
        manifest = _PARSED.get(data) if memo else None  # type: ignore[call-overload]
        if manifest is not None:
            _PARSED.move_to_end(data)  # type: ignore[arg-type]
    if manifest is None:
        manifest = _validate(Manifest, data, what="manifest")
        if memo:
            with _parsed_lock:
                _PARSED[data] = manifest  # type: ignore[index]
                while len(_PARSED) > _PARSED_LIMIT:
                    _PARSED.popitem(last=False)
    if expected_digest is not None and manifest.digest != expected_digest:
        raise IntegrityError(f"manifest hashes to {manifest.digest}, expected {expected_digest}")
    return manifest


def parse_draft(data: bytes | str) -> ManifestDraft:
    """Validate a ``concept.json`` draft (see :class:`ManifestDraft`)."""
    return _validate(ManifestDraft, data, what=constants.DRAFT_MANIFEST)


def utcnow() -> datetime:
    """Now, in UTC (aware). Manifests keep whole seconds: their model truncates on validation.

    Example:
        >>> utcnow().tzinfo
        datetime.timezone.utc
    """
    return datetime.now(UTC)


__all__ = [
    "BaseModelRef",
    "Binding",
    "BindingPart",
    "BlobRef",
    "ConceptMetadata",
    "IndexEntry",
    "Manifest",
    "ManifestDraft",
    "MaskDescriptor",
    "MethodInfo",
    "TargetParam",
    "canonical_json",
    "parse_draft",
    "parse_manifest",
]
