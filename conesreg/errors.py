"""The exceptions conesreg raises (public): the artifact's, :mod:`conesreg.artifact.errors`.

One set of classes for the client, the server and the artifact layer they share; this module is
the client's public name for it.

Example:
    >>> from conesreg import errors
    >>> issubclass(errors.ConceptNotFoundError, LookupError)
    True
"""

from __future__ import annotations

from .artifact.errors import (
    AuthenticationError,
    BaseModelMismatchError,
    ConceptNotFoundError,
    ConesregError,
    ConesregWarning,
    ConfigError,
    DeviceMemoryError,
    ImmutableVersionError,
    IntegrityError,
    InvalidReferenceError,
    LockfileError,
    ManifestError,
    MaskError,
    OfflineError,
    RevisionMovedError,
    SourceError,
    StaleLockfileError,
    StorageError,
    UnsupportedPipelineError,
    VersionNotFoundError,
    YankedVersionError,
)

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
