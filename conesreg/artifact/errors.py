"""The exceptions conesreg raises.

Every error is a :class:`ConesregError` *and* the built-in exception it is closest to, so callers
can catch either. Each one carries a ``hint``: the next thing the user should do. The CLI prints
``error: <message> (hint: <hint>)`` on one line and exits 1; anything else is a bug (exit 2).

Example:
    >>> from conesreg import errors
    >>> try:
    ...     raise errors.ConceptNotFoundError("no concept 'acme/dgo'", hint="check the spelling")
    ... except LookupError as e:
    ...     print(e, "|", e.hint)
    no concept 'acme/dgo' | check the spelling
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BaseModelMismatchError",
    "ConceptNotFoundError",
    "ConesregError",
    "ConesregWarning",
    "ConfigError",
    "DeviceMemoryError",
    "ImmutableVersionError",
    "IntegrityError",
    "InvalidReferenceError",
    "LockfileError",
    "ManifestError",
    "MaskError",
    "OfflineError",
    "RevisionMovedError",
    "SourceError",
    "StaleLockfileError",
    "StorageError",
    "UnsupportedPipelineError",
    "VersionNotFoundError",
    "YankedVersionError",
]


class ConesregError(Exception):
    """Base class of every error conesreg raises on purpose."""

    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and the hint on a single line, as the CLI prints them."""
        text = " ".join(self.message.split())
        return f"{text} (hint: {self.hint})" if self.hint else text


class InvalidReferenceError(ConesregError, ValueError):
    """A concept name, version or version spec that does not parse."""

    default_hint = "write references as [REGISTRY/]NAMESPACE/NAME[@SPEC], e.g. acme/dog@^1.2"


class ConceptNotFoundError(ConesregError, LookupError):
    """The source has no concept of that name."""

    default_hint = "check the spelling with `conesreg search`"


class VersionNotFoundError(ConesregError, LookupError):
    """The concept exists but no version matches the spec."""

    default_hint = "list the versions with `conesreg versions NAME`"


class YankedVersionError(VersionNotFoundError):
    """Only yanked versions match: they are skipped unless pinned exactly."""

    default_hint = "pin the exact version (NAME@1.2.3) to use a yanked version anyway"


class ManifestError(ConesregError, ValueError):
    """A manifest or draft that fails the schema."""

    default_hint = "fix the file so that it matches schemas/manifest.schema.json"


class MaskError(ConesregError, ValueError):
    """Mask indices out of range, unsorted or duplicated, or an undecodable mask payload."""

    default_hint = "write the mask with conesreg.encode_mask from sorted, unique, in-range indices"


class IntegrityError(ConesregError, ValueError):
    """Content whose sha256 or size is not what its manifest or file name says."""

    default_hint = "run `conesreg verify --fix` (or `conesreg cache prune`) and install again"


class RevisionMovedError(IntegrityError):
    """A locked version's tag now points to another revision (Hub tags can be moved)."""

    default_hint = "`conesreg install --frozen` installs the locked revision"


class ImmutableVersionError(ConesregError, FileExistsError):
    """A published version pushed again with different content."""

    default_hint = "published versions never change: push under a new version number"


class LockfileError(ConesregError, ValueError):
    """A lockfile that cannot be read or was edited by hand."""

    default_hint = "delete conesreg.lock and run `conesreg install` to regenerate it"


class StaleLockfileError(LockfileError):
    """``--locked`` was given, but installing would change the lockfile."""

    default_hint = "run `conesreg install` without --locked to update conesreg.lock"


class StorageError(ConesregError, OSError):
    """A cache or registry directory that cannot be written or read."""

    default_hint = "choose a writable directory with CONESREG_CACHE_DIR / CONESREG_REGISTRY_DIR"


class OfflineError(ConesregError, ConnectionError):
    """Offline mode is on and something is missing from the cache."""

    default_hint = "unset CONESREG_OFFLINE (and HF_HUB_OFFLINE) to download it"


class SourceError(ConesregError, ConnectionError):
    """A remote source failed (network, server error) after retries."""

    default_hint = "check the registry URL with `conesreg config list` and try again"


class AuthenticationError(ConesregError, PermissionError):
    """A registry refused the request: no token, a wrong or expired one, or too narrow a scope."""

    default_hint = "log in with `conesreg login REGISTRY` and a token that may do this"


class ConfigError(ConesregError, ValueError):
    """An unknown or malformed configuration key, value or registry."""

    default_hint = "see `conesreg config list` for the keys and registries in use"


class BaseModelMismatchError(ConesregError, ValueError):
    """A concept was made for another base model than the one it is applied to."""

    default_hint = "use the base model the concept names, or pass force=True / --force"


class UnsupportedPipelineError(ConesregError, TypeError):
    """The object concepts are applied to has no UNet conesreg knows how to edit."""

    default_hint = "pass a diffusers Stable Diffusion pipeline (SD 1.x, 2.x or SDXL) or its .unet"


class DeviceMemoryError(ConesregError, MemoryError):
    """The device ran out of memory while applying concepts; the pipeline was left as it was."""

    default_hint = "free device memory, or load the pipeline on the CPU (--device cpu)"


class ConesregWarning(UserWarning):
    """Something worth knowing that is not an error (overlapping concepts, a forced mismatch)."""
