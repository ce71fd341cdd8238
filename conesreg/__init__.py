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
    "Concept",
    "ConceptHandle",
    "ConceptRef",
    "FindConfig",
    "IndexEntry",
    "LockedConcept",
    "Lockfile",
    "Manifest",
    "ManifestDraft",
    "Source",
    "VersionSpec",
    "__version__",
    "active_concepts",
    "apply",
    "base_model_hash",
    "build_manifest",
    "decode_mask",
    "encode_mask",
    "find_neurons",
    "generate",
    "install",
    "load_concepts",
    "load_mask",
    "load_pipeline",
    "open_source",
    "overlap",
    "parse_ref",
    "parse_spec",
    "push",
    "refine_neurons",
    "restore",
    "run_demo",
    "save_mask",
    "save_png",
    "uninstall",
    "validate_mask",
    "write_draft",
]


# Loaded on first use: the mask codec needs numpy, composing needs torch and diffusers, and
# `import conesreg` (and every registry command) must stay light.
_LAZY = {
    "encode_mask": "_mask",
    "decode_mask": "_mask",
    "save_mask": "_mask",
    "load_mask": "_mask",
    "validate_mask": "_mask",
    "Concept": "_concept",
    "load_concepts": "_concept",
    "overlap": "_concept",
    "apply": "_compose",
    "restore": "_compose",
    "active_concepts": "_compose",
    "load_pipeline": "_compose",
    "ConceptHandle": "_compose",
    "generate": "_generate",
    "save_png": "_generate",
    "FindConfig": "_find",
    "find_neurons": "_find",
    "refine_neurons": "_find",
    "write_draft": "_find",
    "run_demo": "_demo",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'conesreg' has no attribute {name!r}")
