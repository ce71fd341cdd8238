"""conesreg: a registry and package manager for concept neurons of diffusion models.

Example:
    >>> import conesreg
    >>> conesreg.install(["acme/dog@^1.2"])  # doctest: +SKIP
"""

from ._base_hash import base_model_hash
from ._install import install, uninstall
from ._lockfile import LockedConcept, Lockfile
from ._manifest import IndexEntry, Manifest, ManifestDraft
from ._names import ConceptRef, parse_ref
from ._push import build_manifest, push
from ._versions import VersionSpec, parse_spec
from .sources import Source, open_source

__version__ = "0.1.0"

__all__ = [
    "ConceptRef",
    "IndexEntry",
    "LockedConcept",
    "Lockfile",
    "Manifest",
    "ManifestDraft",
    "Source",
    "VersionSpec",
    "__version__",
    "base_model_hash",
    "build_manifest",
    "decode_mask",
    "encode_mask",
    "install",
    "load_mask",
    "open_source",
    "parse_ref",
    "parse_spec",
    "push",
    "save_mask",
    "uninstall",
]


def __getattr__(name: str) -> object:
    # The mask codec needs numpy: load it only when asked for, so `import conesreg` stays light.
    if name in {"encode_mask", "decode_mask", "save_mask", "load_mask"}:
        from . import _mask

        return getattr(_mask, name)
    raise AttributeError(f"module 'conesreg' has no attribute {name!r}")
