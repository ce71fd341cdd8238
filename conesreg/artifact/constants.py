"""The artifact's formats and limits: what a concept is on the wire, for client and server alike.

The client's own settings (paths, offline mode, HTTP) are :mod:`conesreg.constants`. Code reads
these as ``constants.NAME`` at call time, from this module (never ``from ... import NAME`` into a
default argument), so tests and embedding applications can patch them here, in one place.
"""

from __future__ import annotations

import os


def _env_positive(name: str, default: float, *, unit: str = "seconds") -> float:
    """A positive number from ``name``; anything else falls back to ``default`` with a warning
    (a typo must not make every command fail at import)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        import warnings

        warnings.warn(
            f"{name}={raw!r} is not a positive number of {unit}; using {default:g}", stacklevel=2
        )
        return default
    return value


# --- names and formats -----------------------------------------------------------------------
#: The namespace of a concept named without one (``dog`` is ``library/dog``).
DEFAULT_NAMESPACE = "library"
#: 2 added ``binding`` (token-bound concepts); schema 1 manifests still read, as global.
MANIFEST_SCHEMA_VERSION = 2
CONCEPT_KIND = "cones-mask/1"
#: The mask encoding encode_mask writes: one tensor, front-coded names (conesreg.artifact._mask).
MASK_ENCODING = "cones-rice/2"
#: The first encoding (a tensor per target); still read, never written.
MASK_ENCODING_V1 = "cones-rice/1"
MASK_ENCODINGS_READ = (MASK_ENCODING_V1, MASK_ENCODING)

MEDIA_TYPE_MANIFEST = "application/vnd.conesreg.manifest.v1+json"
MEDIA_TYPE_MASK = "application/vnd.conesreg.mask.v1+safetensors"
#: A concept's stimulation: its subject images as VAE latents, with their captions (opt-in).
MEDIA_TYPE_STIMULATION = "application/vnd.conesreg.stimulation.v1+safetensors"
STIMULATION_FORMAT = "conesreg-stimulation/1"
#: At most this many stimulation images (a search takes 3 to 20).
MAX_STIMULATION_IMAGES = 64
MEDIA_TYPE_PNG = "image/png"
MEDIA_TYPE_JPEG = "image/jpeg"

#: Names inside a draft directory written by ``conesreg find`` and read by ``conesreg push``.
DRAFT_MANIFEST = "concept.json"
DRAFT_MASK = "mask.safetensors"
DRAFT_STIMULATION = "stimulation.safetensors"
DRAFT_PREVIEWS = "previews"
#: File suffixes taken as images: previews in a draft, training images of ``conesreg find``.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})

#: Files of a concept's Hub repo beside its blobs (``hf://``): no blob path may take these names.
HUB_MANIFEST_FILE = "manifest.json"
HUB_CARD_FILE = "README.md"
HUB_YANKED_FILE = "yanked.json"
HUB_LAYOUT_FILES = frozenset({HUB_MANIFEST_FILE, HUB_CARD_FILE, HUB_YANKED_FILE, ".gitattributes"})

# --- limits on what others send (every parser of untrusted bytes honours these) ----------------
#: Deepest nesting of JSON objects and arrays accepted from a file or a server. Manifests nest
#: about 5 deep; the cap keeps a hostile document from exhausting the parser's stack.
MAX_JSON_DEPTH = 64
#: Longest file path inside an artifact or a Hub repo (UTF-8 bytes), and longest path segment
#: (the file-name limit of common file systems).
MAX_PATH_BYTES = 1000
MAX_SEGMENT_BYTES = 255
#: Largest total number of target scalars (N) a manifest or mask may claim. SDXL's whole UNet
#: has 2.6e9 parameters, so every real candidate set fits; a forged header claiming more is
#: refused before anything is allocated for it.
MAX_TARGET_NUMEL: int = int(_env_positive("CONESREG_MAX_TARGET_NUMEL", 1 << 32, unit="scalars"))
#: Largest manifest accepted from any source, in bytes (the server's ``max_manifest_bytes``):
#: a longer body is refused after reading this much, before it is hashed or cached.
MAX_MANIFEST_BYTES: int = int(_env_positive("CONESREG_MAX_MANIFEST_BYTES", 1 << 20, unit="bytes"))
