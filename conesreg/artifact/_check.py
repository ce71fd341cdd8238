"""The one rule that a mask payload is the one its manifest describes.

The client checks it when it builds a manifest from a draft and when it reads an installed
concept; the server checks it before it publishes a version. A payload that passes decodes within
the manifest's target sizes, and its counts are the manifest's.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import constants
from ._manifest import Manifest
from ._mask import MaskInfo, read_mask_info, validate_mask
from .errors import MaskError

#: The hint of a payload that is a valid mask, but not the one its manifest describes.
_MISMATCH_HINT = (
    "a concept's mask must be the one its manifest was built from: push the draft that "
    "`conesreg find` wrote (push builds both from it)"
)


def check_mask(
    manifest: Manifest,
    data: bytes,
    *,
    max_target_numel: int | None = None,
    known_valid: bool = False,
) -> MaskInfo:
    """Check that ``data`` is the mask payload ``manifest`` describes, in memory ~ its size.

    In order, cheapest first: the manifest's total is within the ceiling; the payload's header
    is a mask's, of the manifest's encoding, for target parameters of the manifest with their
    sizes (so a forged size is refused before any section is read); the payload validates in
    full (:func:`validate_mask`, never decoded); its nonzero counts are the manifest's.

    Args:
        manifest: The parsed manifest (already consistent in itself).
        data: The payload its ``mask.blob`` names (bytes-like).
        max_target_numel: Most target scalars accepted; default ``constants.MAX_TARGET_NUMEL``
            (``CONESREG_MAX_TARGET_NUMEL``), read at call time. A registry may pass its own,
            lower limit.
        known_valid: These exact bytes (by digest) decoded before, so :func:`validate_mask`
            would pass: skip it (the most costly check) and keep the header's. The client's
            cache says so when it holds the indices it decoded from the blob.

    Returns:
        The payload's :class:`MaskInfo`.

    Raises:
        MaskError: the payload is corrupt, or is not the one the manifest describes (the
            message says how; it names no concept, callers add that).
        TypeError: ``data`` is not bytes-like.

    Example:
        >>> check_mask(manifest, mask_path.read_bytes()).selected  # doctest: +SKIP
        1843
    """
    limit = constants.MAX_TARGET_NUMEL if max_target_numel is None else max_target_numel
    total = manifest.mask.total
    if total > limit:
        raise MaskError(
            f"the targets have {total} scalars, more than the {limit} accepted",
            hint="this is not a concept of a supported base model; if it is, raise "
            "CONESREG_MAX_TARGET_NUMEL",
        )
    header = read_mask_info(data)
    if header.encoding != manifest.mask.encoding:
        raise MaskError(
            f"the mask is {header.encoding}, the manifest says {manifest.mask.encoding}",
            hint=_MISMATCH_HINT,
        )
    _check_targets(header, manifest.binding.mask_numels(manifest.base_model.targets))
    info = header if known_valid else validate_mask(data)
    actual = {k: v for k, v in info.counts.items() if v}
    declared = {k: v for k, v in manifest.mask.counts.items() if v}
    if actual != declared:
        raise MaskError(
            f"the mask selects {sum(actual.values())} neurons, not the counts its manifest "
            f"declares ({sum(declared.values())})",
            hint=_MISMATCH_HINT,
        )
    return info


def _check_targets(info: MaskInfo, numels: Mapping[str, int]) -> None:
    """Every parameter of the payload's header is one of ``numels``, with that size."""
    for param, numel in info.numels.items():
        if param not in numels:
            raise MaskError(
                f"the mask addresses {param!r}, which is not a target of its base model",
                hint=_MISMATCH_HINT,
            )
        if numels[param] != numel:
            raise MaskError(
                f"the mask gives {param!r} {numel} scalars, the base model {numels[param]}",
                hint=_MISMATCH_HINT,
            )
