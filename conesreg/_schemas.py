"""Export the JSON Schemas of the public file formats into ``schemas/``.

Run ``python -m conesreg._schemas`` after changing a model; a test fails while they are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._lockfile import Lockfile
from .artifact._manifest import IndexEntry, Manifest, ManifestDraft

SCHEMAS = {
    "manifest.schema.json": Manifest,
    "concept-draft.schema.json": ManifestDraft,
    "lockfile.schema.json": Lockfile,
    "index-entry.schema.json": IndexEntry,
}


def render_schemas() -> dict[str, str]:
    """File name -> JSON text of each schema."""
    out = {}
    for filename, model in SCHEMAS.items():
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://conesreg.dev/schemas/{filename}",
            **model.model_json_schema(mode="validation"),
        }
        out[filename] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for filename, text in render_schemas().items():
        (target / filename).write_text(text)
        print(f"wrote {target / filename}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("schemas"))
