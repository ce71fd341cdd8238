"""What the server takes from the client: the artifact layer, imported here and nowhere else.

The server shares the manifest schema and digests, the name and version rules, the mask codec,
depth-capped JSON parsing, media types and limits, and the errors these raise, with ``conesreg``
and nothing else of it (docs/design.md). Every module of ``registry_server`` that needs one of
these names imports it from here, so that the seam between the two packages is this one file.

``constants`` is the module itself, not copies of its values: settings read a limit when they
are made (tests and operators may change it), never at import.
"""

from conesreg import constants
from conesreg._json import load_json
from conesreg._manifest import IndexEntry, Manifest, parse_manifest
from conesreg._mask import validate_mask
from conesreg._names import NAME_MAX, NAME_RE, check_file_path, check_name, check_text
from conesreg._versions import DIGEST_RE, parse_version, sort_releases
from conesreg.errors import InvalidReferenceError, ManifestError, MaskError

__all__ = [
    "DIGEST_RE",
    "NAME_MAX",
    "NAME_RE",
    "IndexEntry",
    "InvalidReferenceError",
    "Manifest",
    "ManifestError",
    "MaskError",
    "check_file_path",
    "check_name",
    "check_text",
    "constants",
    "load_json",
    "parse_manifest",
    "parse_version",
    "sort_releases",
    "validate_mask",
]
