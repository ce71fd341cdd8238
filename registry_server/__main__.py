"""``python -m registry_server [--data DIR] [--host H] [--port P] [--database URL] [--blobs S]
[--blob-redirect] [--workers N]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from conesreg.artifact.errors import ConesregError

from .app import serve
from .core.settings import Settings


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and serve (settings not given fall back to CONESREG_SERVER_*)."""
    parser = argparse.ArgumentParser(prog="python -m registry_server", description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="data folder")
    parser.add_argument("--database", "--database-url", dest="database", help="SQLAlchemy URL")
    parser.add_argument("--blobs", default=None, help="s3://BUCKET[/PREFIX] or a folder")
    parser.add_argument("--blob-redirect", action="store_true", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8750)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(
            data=args.data,
            database_url=args.database,
            blobs=args.blobs,
            blob_redirect=args.blob_redirect,
        )
        serve(settings, host=args.host, port=args.port, workers=args.workers)
    except ConesregError as e:
        sys.exit(f"error: {e.one_line()}")
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        sys.exit(f"error: invalid server setting {where}: {err['msg']}")


if __name__ == "__main__":
    main()
