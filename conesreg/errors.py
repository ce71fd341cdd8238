"""The exceptions conesreg raises (public): the artifact's, :mod:`conesreg.artifact.errors`.

One set of classes for the client, the server and the artifact layer they share; this module is
the client's public name for it, with the same ``__all__``.

Example:
    >>> from conesreg import errors
    >>> issubclass(errors.ConceptNotFoundError, LookupError)
    True
"""

from __future__ import annotations

from .artifact.errors import *  # noqa: F403
from .artifact.errors import __all__  # noqa: F401
