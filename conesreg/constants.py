"""Every environment variable and default of conesreg, read once at import.

Library code reads these as ``constants.NAME`` at call time (never ``from ... import NAME`` into a
default argument), so tests and embedding applications can patch them in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_config_dir, user_data_dir


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name) or default).expanduser()


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


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


# --- where things live -------------------------------------------------------------------------
#: Root of the verified, content-addressed download cache.
CACHE_DIR: Path = _env_path("CONESREG_CACHE_DIR", user_cache_dir("conesreg"))
#: The embedded local registry (the default source): a plain directory, no server.
REGISTRY_DIR: Path = _env_path(
    "CONESREG_REGISTRY_DIR", str(Path(user_data_dir("conesreg")) / "registry")
)
#: The user's config file (registries, default namespace, ...).
CONFIG_FILE: Path = _env_path(
    "CONESREG_CONFIG", str(Path(user_config_dir("conesreg")) / "config.toml")
)

# --- behaviour -------------------------------------------------------------------------------
#: Never touch the network; fail with the list of what is missing instead.
OFFLINE: bool = _env_bool("CONESREG_OFFLINE")
#: Show tracebacks for every error (the CLI otherwise prints one line).
DEBUG: bool = _env_bool("CONESREG_DEBUG")

#: The base model of ``generate``/``load_pipeline`` when none is given (a folder or Hub id).
BASE_MODEL: str | None = os.environ.get("CONESREG_BASE_MODEL") or None

# --- names and formats -----------------------------------------------------------------------
DEFAULT_NAMESPACE = "library"
DEFAULT_REGISTRY = "local"
#: The built-in alias of the Hugging Face Hub (``hf://acme/dog``). Its endpoint, token and
#: offline switch are huggingface_hub's own (``HF_ENDPOINT``, ``HF_TOKEN`` or ``hf auth login``,
#: ``HF_HUB_OFFLINE``), read by that library; a configured registry of kind ``hub`` may name
#: another endpoint.
HUB_REGISTRY = "hf"
LOCKFILE_NAME = "conesreg.lock"
LOCKFILE_VERSION = 1
MANIFEST_SCHEMA_VERSION = 1
CONCEPT_KIND = "cones-mask/1"
MASK_ENCODING = "cones-rice/1"
#: Bumped whenever the on-disk layout of the cache or registry changes; it is part of the folder
#: names, so an old and a new conesreg never read each other's files.
CACHE_FORMAT = "v1"
REGISTRY_FORMAT = "v1"

MEDIA_TYPE_MANIFEST = "application/vnd.conesreg.manifest.v1+json"
MEDIA_TYPE_MASK = "application/vnd.conesreg.mask.v1+safetensors"
MEDIA_TYPE_PNG = "image/png"
MEDIA_TYPE_JPEG = "image/jpeg"

#: Names inside a draft directory written by ``conesreg find`` and read by ``conesreg push``.
DRAFT_MANIFEST = "concept.json"
DRAFT_MASK = "mask.safetensors"
DRAFT_PREVIEWS = "previews"

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

#: Temp files older than this are leftovers of a killed process and may be removed.
STALE_TMP_SECONDS = 3600

# -- HTTP registries ----------------------------------------------------------------------------
#: Seconds to connect, and to wait for each read, before a request to a registry fails.
HTTP_CONNECT_TIMEOUT = 10.0
HTTP_READ_TIMEOUT: float = _env_positive("CONESREG_HTTP_TIMEOUT", 60.0)
#: Seconds one command may spend on one registry, from its first request: a server that drips a
#: byte every few seconds never trips the read timeout, so the whole exchange has a deadline.
HTTP_DEADLINE: float = _env_positive("CONESREG_HTTP_DEADLINE", 900.0)
#: Tries of an idempotent request (every request conesreg sends is one) on connection errors,
#: 502/503/504, 500 and 429, with exponential backoff (never 507: a full disk stays full).
HTTP_ATTEMPTS = 4
#: Redirects followed for one read before the registry is deemed to loop.
HTTP_MAX_REDIRECTS = 5
#: Largest manifest accepted from any source, in bytes (the server's ``max_manifest_bytes``):
#: a longer body is refused after reading this much, before it is hashed or cached.
MAX_MANIFEST_BYTES: int = int(_env_positive("CONESREG_MAX_MANIFEST_BYTES", 1 << 20, unit="bytes"))
#: Largest other JSON answer of a registry (a version listing, a search page), and the most of
#: an error answer that is read to find its message.
HTTP_MAX_JSON_BYTES = 16 << 20
HTTP_MAX_ERROR_BYTES = 64 << 10
#: Most pages of search results one search follows (100 results a page).
HTTP_MAX_PAGES = 100
