"""conesreg: a registry and package manager for concept neurons of diffusion models.

Example:
    >>> import conesreg
    >>> conesreg.install(["acme/dog@^1.2"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._base_hash import base_model_hash
    from ._compose import ConceptHandle, active_concepts, apply, load_pipeline, restore
    from ._concept import Concept, load_concepts, overlap
    from ._demo import run_demo
    from ._find import FindConfig, find_neurons, refine_neurons, write_draft
    from ._find_inputs import load_subject_images
    from ._find_job import plan_find, run_find
    from ._generate import generate, save_png
    from ._install import install, uninstall
    from ._lockfile import LockedConcept, Lockfile
    from ._push import push
    from .artifact import (
        ConceptRef,
        IndexEntry,
        Manifest,
        ManifestDraft,
        VersionSpec,
        build_manifest,
        decode_mask,
        encode_mask,
        load_mask,
        parse_ref,
        parse_spec,
        save_mask,
        validate_mask,
    )
    from .sources import Source, open_source

    __version__: str

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
    "load_subject_images",
    "open_source",
    "overlap",
    "parse_ref",
    "parse_spec",
    "plan_find",
    "push",
    "refine_neurons",
    "restore",
    "run_demo",
    "run_find",
    "save_mask",
    "save_png",
    "uninstall",
    "validate_mask",
    "write_draft",
]


# Every public name is loaded on first use, from the module that defines it: `import conesreg`
# loads no submodule, so registry commands, the server (which shares only `conesreg.artifact`)
# and embedding applications pay only for what they touch. The mask codec needs numpy, composing
# and finding need torch and diffusers.
_LAZY = {
    "ConceptRef": "artifact",
    "IndexEntry": "artifact",
    "Manifest": "artifact",
    "ManifestDraft": "artifact",
    "VersionSpec": "artifact",
    "build_manifest": "artifact",
    "decode_mask": "artifact",
    "encode_mask": "artifact",
    "load_mask": "artifact",
    "parse_ref": "artifact",
    "parse_spec": "artifact",
    "save_mask": "artifact",
    "validate_mask": "artifact",
    "LockedConcept": "_lockfile",
    "Lockfile": "_lockfile",
    "Source": "sources",
    "open_source": "sources",
    "base_model_hash": "_base_hash",
    "install": "_install",
    "uninstall": "_install",
    "push": "_push",
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
    "load_subject_images": "_find_inputs",
    "plan_find": "_find_job",
    "run_find": "_find_job",
    "run_demo": "_demo",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name == "__version__":
        value = importlib.import_module(".constants", __name__).package_version()
        globals()["__version__"] = value  # read once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
