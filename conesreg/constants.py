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
MAX_TARGET_NUMEL: int = int(os.environ.get("CONESREG_MAX_TARGET_NUMEL") or 1 << 32)

#: Temp files older than this are leftovers of a killed process and may be removed.
STALE_TMP_SECONDS = 3600

# -- HTTP registries ----------------------------------------------------------------------------
#: Seconds to connect, and to wait for each read, before a request to a registry fails.
HTTP_CONNECT_TIMEOUT = 10.0
HTTP_READ_TIMEOUT = 60.0
#: Tries of an idempotent request (every request conesreg sends is one) on connection errors,
#: 5xx and 429, with exponential backoff.
HTTP_ATTEMPTS = 4
