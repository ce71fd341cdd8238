"""The concept artifact: what a published concept is, shared by the client and the server.

Names and versions, the manifest (canonical JSON, digests), the mask codec and the one check
that a mask is the one its manifest describes, the search rule, the errors, the formats and
limits (:mod:`conesreg.artifact.constants`). No torch, no network, no files but a draft's:
``registry_server`` imports this package and nothing else of the client.

Every name is loaded on first use (the mask codec needs numpy, the models pydantic), so
``import conesreg.artifact`` costs nothing until something is used.

Example:
    >>> from conesreg.artifact import parse_ref
    >>> ref = parse_ref("acme/dog@^1.2")
    >>> ref.namespace, ref.name
    ('acme', 'dog')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import constants, errors
    from ._build import build_manifest
    from ._card import CARD_TAGS, hub_card_data
    from ._check import check_mask
    from ._digests import sha256_bytes, sha256_file
    from ._json import load_json
    from ._manifest import (
        BaseModelRef,
        Binding,
        BindingPart,
        BlobRef,
        ConceptMetadata,
        IndexEntry,
        Manifest,
        ManifestDraft,
        MaskDescriptor,
        TargetParam,
        canonical_json,
        parse_draft,
        parse_manifest,
        utcnow,
    )
    from ._mask import (
        IndexSet,
        MaskInfo,
        decode_mask,
        decode_mask_sets,
        encode_mask,
        load_mask,
        read_mask_info,
        save_mask,
        validate_mask,
    )
    from ._names import (
        NAME_MAX,
        NAME_RE,
        ConceptRef,
        check_file_path,
        check_name,
        check_text,
        parse_ref,
    )
    from ._ranking import SCORE_BASE, SCORE_EXACT, SCORE_PARTIAL, match_score
    from ._versions import (
        DIGEST_RE,
        VersionSpec,
        check_digest,
        parse_spec,
        parse_version,
        select_version,
        sort_releases,
    )

#: Public name -> the module (relative to this package) that defines it; a module itself maps to
#: None. One table, read by ``__getattr__`` and ``__dir__``.
_LAZY: dict[str, str | None] = {
    "constants": None,
    "errors": None,
    # names and versions
    "NAME_MAX": "_names",
    "NAME_RE": "_names",
    "ConceptRef": "_names",
    "check_file_path": "_names",
    "check_name": "_names",
    "check_text": "_names",
    "parse_ref": "_names",
    "DIGEST_RE": "_versions",
    "VersionSpec": "_versions",
    "check_digest": "_versions",
    "parse_spec": "_versions",
    "parse_version": "_versions",
    "select_version": "_versions",
    "sort_releases": "_versions",
    # the manifest (pydantic)
    "BaseModelRef": "_manifest",
    "Binding": "_manifest",
    "BindingPart": "_manifest",
    "BlobRef": "_manifest",
    "ConceptMetadata": "_manifest",
    "IndexEntry": "_manifest",
    "Manifest": "_manifest",
    "ManifestDraft": "_manifest",
    "MaskDescriptor": "_manifest",
    "TargetParam": "_manifest",
    "canonical_json": "_manifest",
    "parse_draft": "_manifest",
    "parse_manifest": "_manifest",
    "utcnow": "_manifest",
    "build_manifest": "_build",
    "CARD_TAGS": "_card",
    "hub_card_data": "_card",
    # the mask codec (numpy)
    "IndexSet": "_mask",
    "MaskInfo": "_mask",
    "decode_mask": "_mask",
    "decode_mask_sets": "_mask",
    "encode_mask": "_mask",
    "load_mask": "_mask",
    "read_mask_info": "_mask",
    "save_mask": "_mask",
    "validate_mask": "_mask",
    "check_mask": "_check",
    # digests, JSON from others, search
    "sha256_bytes": "_digests",
    "sha256_file": "_digests",
    "load_json": "_json",
    "SCORE_BASE": "_ranking",
    "SCORE_EXACT": "_ranking",
    "SCORE_PARTIAL": "_ranking",
    "match_score": "_ranking",
}

__all__ = [
    "CARD_TAGS",
    "DIGEST_RE",
    "NAME_MAX",
    "NAME_RE",
    "SCORE_BASE",
    "SCORE_EXACT",
    "SCORE_PARTIAL",
    "BaseModelRef",
    "Binding",
    "BindingPart",
    "BlobRef",
    "ConceptMetadata",
    "ConceptRef",
    "IndexEntry",
    "IndexSet",
    "Manifest",
    "ManifestDraft",
    "MaskDescriptor",
    "MaskInfo",
    "TargetParam",
    "VersionSpec",
    "build_manifest",
    "canonical_json",
    "check_digest",
    "check_file_path",
    "check_mask",
    "check_name",
    "check_text",
    "constants",
    "decode_mask",
    "decode_mask_sets",
    "encode_mask",
    "errors",
    "hub_card_data",
    "load_json",
    "load_mask",
    "match_score",
    "parse_draft",
    "parse_manifest",
    "parse_ref",
    "parse_spec",
    "parse_version",
    "read_mask_info",
    "save_mask",
    "select_version",
    "sha256_bytes",
    "sha256_file",
    "sort_releases",
    "utcnow",
    "validate_mask",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _LAZY[name]
    if module is None:
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
