"""A version's preview images, written where a user can open them, under readable names.

Previews live in the cache as sha256-named blobs; their manifest records the path each had in
the draft (``previews/with-mask-0.png``, as ``conesreg find`` writes them). They are written out
under those names, with the finder's ``with-mask``/``without-mask`` read as
``with-concept``/``without-concept``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ._fetch import fetch
from ._session import Session
from ._storage import atomic_write
from .artifact._manifest import IndexEntry
from .errors import ConesregError


def save_previews(
    entry: IndexEntry, out_dir: Path, *, session: Session | None = None
) -> list[Path]:
    """Fetch the version ``entry`` is and write its previews into ``out_dir``.

    Args:
        entry: the version, as :meth:`Session.select` or a search gives it.
        out_dir: the folder to write into (created if missing); files already there with the
            same names are replaced.
        session: config, cache and sources to use.

    Returns:
        The files written, with the concept first and without it second when named so.

    Raises:
        ConesregError: the version has no previews. And what :func:`fetch` raises.

    Example:
        >>> save_previews(Session().select("acme/dog@^1"), Path("previews"))  # doctest: +SKIP
        [PosixPath('previews/with-concept-0.png'), PosixPath('previews/without-concept-0.png')]
    """
    s = session or Session()
    manifest = fetch(entry, session=s)
    wanted = set(manifest.metadata.previews)
    blobs = [b for b in manifest.blobs if b.digest in wanted]
    if not blobs:
        raise ConesregError(
            f"{manifest.id}@{manifest.version} has no previews",
            hint="previews are made by `conesreg find`; a draft pushed without them has none",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for blob in sorted(blobs, key=lambda b: _readable(b.path)):
        path = out_dir / _readable(blob.path)
        if path in written:  # two previews of one name in different folders of the draft
            path = path.with_name(f"{path.stem}-{blob.digest[7:15]}{path.suffix}")
        atomic_write(path, s.cache.blobs.read(blob.digest))
        written.append(path)
    return written


def _readable(blob_path: str) -> str:
    name = PurePosixPath(blob_path).name
    return name.replace("without-mask", "without-concept").replace("with-mask", "with-concept")
