"""Every environment variable and default of the conesreg client, read once at import.

Library code reads these as ``constants.NAME`` at call time (never ``from ... import NAME`` into a
default argument), so tests and embedding applications can patch them in one place.

The artifact's formats and limits (``MASK_ENCODING``, ``MAX_TARGET_NUMEL``, ...) live in
:mod:`conesreg.artifact.constants`, which the server shares: read and patch them there (no copy
here can go stale).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from platformdirs import user_cache_dir, user_config_dir, user_data_dir

# One parser of numeric environment variables, the artifact's (it reads its own limits too).
from .artifact.constants import _env_positive


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name) or default).expanduser()


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def package_version() -> str:
    """conesreg's version as installed: pyproject.toml is the one place it is written, and the
    installed metadata says it (read on first use, once; ``0+unknown`` in a tree never
    installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("conesreg")
    except PackageNotFoundError:
        return "0+unknown"


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

#: torch intra-op threads for CPU work (generating, finding); unset: conesreg's choice (see
#: ``conesreg._threads``), or torch's own when ``OMP_NUM_THREADS`` is set.
THREADS: int | None = (
    int(_env_positive("CONESREG_THREADS", 1, unit="threads"))
    if os.environ.get("CONESREG_THREADS", "").strip()
    else None
)
#: Whether the standard OpenMP variable chose the thread count (torch reads it itself).
OMP_THREADS_SET: bool = bool(os.environ.get("OMP_NUM_THREADS", "").strip())
#: On the CPU, a UNet this small running a batch this small gets one thread: its ops are too
#: short to split, and a second thread on a busy 2-core machine stalls every one of them
#: (measured on the mini model: one image 0.53-0.56 s at 1 thread, 1.95-24.8 s at 2 under load).
SMALL_UNET_PARAMS: int = 50_000_000
SMALL_BATCH: int = 4

#: Seconds between the plain progress lines long commands print when standard error is not a
#: terminal (a pipe, a CI log).
PROGRESS_SECONDS: float = _env_positive("CONESREG_PROGRESS_SECONDS", 5.0)

#: How strongly token-bound concepts act: the switched-off weights' share is subtracted this many
#: times at their words. Measured on the mini model (benchmarks/NOTES.md, "Strength and
#: routing"): 1.5 holds three and four subjects together where 1.0 lets their looks fade, and
#: keeps single subjects; 2.0 breaks some. Overridden per call (``apply(strength=...)``,
#: ``generate --strength``).
TOKEN_STRENGTH = 1.5

#: How strongly the same concepts act on the values at ``TOKEN_STRENGTH`` (a given strength
#: scales both). The keys' boost gets each word its share of its pixels' attention among other
#: words; the same boost on the values overdrives some looks beside another subject (a yellow
#: dotted star drawn plain yellow). Measured on the bundled subjects' tuning seeds
#: (benchmarks/NOTES.md, "Keys and values at their own strengths"): placed 2 / 3 / 4 subjects
#: 0.98 / 0.97 / 0.59 at 1.5 / 1.5, 0.98 / 0.97 / 0.625 at 1.5 / 1.25, 0.85 / 0.91 / 0.57 at
#: 1.5 / 1.0.
TOKEN_VALUE_STRENGTH = 1.25

#: The strength of a composite's parts (``conesreg compose``). Its joint steps grew each part
#: beside the others (at strength 1), so it needs less of a boost to hold among them, and the
#: parents' 1.5 overdrives it. Measured on the bundled subjects' tuning seeds
#: (benchmarks/NOTES.md, "Composites' strength"): placed 2 / 3 / 4 subjects 0.88 / 0.80 / 0.25
#: at 1.0, 0.99 / 0.94 / 0.31 at 1.25, 1.00 / 0.88 / 0.27 at 1.5.
COMPOSITE_STRENGTH = 1.25

#: The base model of ``generate``/``load_pipeline`` when none is given (a folder or Hub id).
BASE_MODEL: str | None = os.environ.get("CONESREG_BASE_MODEL") or None

# --- names and formats -----------------------------------------------------------------------
DEFAULT_REGISTRY = "local"
#: The built-in alias of the Hugging Face Hub (``hf://acme/dog``). Its endpoint, token and
#: offline switch are huggingface_hub's own (``HF_ENDPOINT``, ``HF_TOKEN`` or ``hf auth login``,
#: ``HF_HUB_OFFLINE``), read by that library; a configured registry of kind ``hub`` may name
#: another endpoint.
HUB_REGISTRY = "hf"
LOCKFILE_NAME = "conesreg.lock"
LOCKFILE_VERSION = 1
#: Bumped whenever the on-disk layout of the cache or registry changes; it is part of the folder
#: names, so an old and a new conesreg never read each other's files.
CACHE_FORMAT = "v1"
#: Format of the decoded mask indices the cache keeps beside the blobs (a folder name).
DECODED_FORMAT = "idx1"
#: Format of the base-model hashes the cache keeps per weight-file stamp (a folder name).
BASE_HASH_FORMAT = "bh1"
#: Decoded indices a process keeps in memory for concepts it may apply again (int64: SD 1.x at
#: 1% is 1.5 MiB a concept).
DECODED_MEMORY_BYTES = 256 << 20
#: Concept indices apply() keeps on a UNet's device for concepts applied before (on CUDA they
#: take GPU memory; on the CPU they are views of the decoded arrays).
DEVICE_INDEX_BYTES = 256 << 20
REGISTRY_FORMAT = "v1"

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
#: Largest other JSON answer of a registry (a version listing, a search page), and the most of
#: an error answer that is read to find its message.
HTTP_MAX_JSON_BYTES = 16 << 20
HTTP_MAX_ERROR_BYTES = 64 << 10
#: Most pages of search results one search follows (100 results a page).
HTTP_MAX_PAGES = 100
