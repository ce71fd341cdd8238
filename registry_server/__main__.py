"""``python -m registry_server [--data DIR] [--host H] [--port P] [--database-url URL]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conesreg.artifact.errors import ConesregError

from .app import serve
from .core.settings import Settings


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and serve (settings not given fall back to CONESREG_SERVER_*)."""
    parser = argparse.ArgumentParser(prog="python -m registry_server", description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="data folder")
    parser.add_argument("--database-url", default=None, help="SQLAlchemy URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8750)
    args = parser.parse_args(argv)
    try:
        serve(
            Settings.from_env(data=args.data, database_url=args.database_url),
            host=args.host,
            port=args.port,
        )
    except ConesregError as e:
        sys.exit(f"error: {e.one_line()}")


if __name__ == "__main__":
    main()
