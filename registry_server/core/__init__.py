"""The registry itself, without HTTP: what it stores and the rules of reading and writing it.

- :mod:`.errors`: the deliberate failures (``NotFound``, ``Conflict``, ``Invalid``, ...), each a
  code and a message; the HTTP families map them to statuses (no FastAPI or Starlette here).
- :mod:`.artifact`: the one module that imports the client (its artifact layer).
- :mod:`.settings`, :mod:`.db` (the tables), :mod:`.blobstore` (the bytes),
  :mod:`.registry` (the three opened, and :func:`~.registry.writer_transaction`, the one way to
  write what must not race).
- :mod:`.auth` (tokens, who may read and push), :mod:`.checks` (names, versions, digests).
- :mod:`.queries` (lookups, search, index, facets), :mod:`.publishing` (publish, yank),
  :mod:`.uploads`, :mod:`.gc`, :mod:`.admin` (namespaces and tokens).

The Hub emulation (:mod:`registry_server.hub`) builds on these; nothing here imports it, though
the tables of Hub repos are here, and so are the rules that span both kinds of repo (one name,
one kind; a blob is readable through a Hub commit; gc keeps what a Hub commit links).
"""
