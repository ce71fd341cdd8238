"""Hub repos: model repos written with ``huggingface_hub`` (create_repo, create_commit, tags).

These functions hold the logic of the Hub write emulation; the routes are in
:mod:`registry_server.hub.writes` (writes) and :mod:`registry_server.hub.reads` (reads).

- A repo belongs to a namespace and has a name that no native concept of that namespace has
  (one name, one kind: both sides check in a writer transaction).
- A commit is immutable: its whole tree (path -> blob digest, size and git blob id), its parent,
  title, message and time; its oid is the sha1 of those as canonical JSON (not a git hash).
  Creating a repo writes an initial commit holding ``.gitattributes``, as the Hub does.
- Refs move: the branch ``main`` (the only branch) and tags. A commit moves ``main`` only if
  its parent is still the head; every write is a
  :func:`~registry_server.core.registry.writer_transaction`, as publishing is, so that check
  cannot race.
- File contents are blobs of the content-addressed store, linked from their commits
  (``hub_commit_blobs``) so that gc keeps them; the same file is stored once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

import yaml
from sqlalchemy import and_, delete, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conesreg.artifact import check_file_path, check_text, load_json, utcnow
from conesreg.artifact.errors import InvalidReferenceError, ManifestError

from ..core.auth import Caller, require_push
from ..core.blobstore import Upload
from ..core.checks import TAG_PATTERN, check_names, is_revision
from ..core.db import ConceptRow, HubCommit, HubCommitBlob, HubRef, HubRepo, Namespace
from ..core.errors import Conflict, Invalid, NotFound, Stale, TooLarge
from ..core.queries import hub_repo_visible
from ..core.registry import Registry, writer_transaction
from ..core.uploads import commit_upload
from .ndjson import Base64Sink, Line, LineSplitter, NotBase64Error, PlainSink

#: The one branch of every Hub repo.
BRANCH = "main"
README = "README.md"
#: What a new repo's initial commit holds, as on the Hub (patterns of files git would keep in
#: LFS there; this server stores every file the same way).
_LFS_SUFFIXES = "bin ckpt gguf h5 npy npz onnx pt pth safetensors tar zip"
GITATTRIBUTES = b"".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n".encode() for ext in _LFS_SUFFIXES.split()
)
#: A string of a commit's NDJSON line longer than this (a file's base64 content) is decoded into
#: a temp upload as it arrives instead of being held (see CommitPayload).
SPILL_BYTES = 1 << 20
#: The most a commit line may hold besides one file's content (the header's description, ...).
MAX_LINE_KEPT = 4 << 20
#: The largest README.md whose YAML front matter (the card) is read: a card is read into memory.
MAX_README_BYTES = 10_000_000
#: The most metadata read from a README's front matter (characters, values, nesting).
MAX_CARD_CHARS = 100_000
_MAX_CARD_VALUES = 10_000
_MAX_CARD_DEPTH = 32

_OID_PREFIX_RE = re.compile(r"^[0-9a-fA-F]{7,40}$")
_PARENT_RE = re.compile(r"^[0-9a-fA-F]{5,40}$")
_TAG_RE = re.compile(TAG_PATTERN)


# -- files and trees -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileEntry:
    """A file of a tree: its blob, its size and its git blob id (what preupload reports)."""

    digest: str
    size: int
    sha1: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "sha1": self.sha1}


def git_blob_id(data: bytes) -> str:
    """The id git gives ``data`` as a blob: the Hub client compares it to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tree_of(commit: HubCommit) -> dict[str, FileEntry]:
    """The files of ``commit``, by path."""
    return {path: FileEntry(**entry) for path, entry in json.loads(commit.tree).items()}


def card_of(commit: HubCommit) -> dict[str, Any] | None:
    """The README front matter of ``commit`` (None: no README or no front matter)."""
    return cast("dict[str, Any] | None", json.loads(commit.card)) if commit.card else None


def check_path(path: Any) -> str:
    """A file path of a repo (``check_file_path``, the rule blob paths of manifests follow too).

    Raises:
        Invalid: ``invalid_path``.
    """
    try:
        return check_file_path(path, what="repo path")
    except InvalidReferenceError as e:
        raise Invalid("invalid_path", f"{e.message}: {e.hint}") from None


def store_file(reg: Registry, data: bytes, *, namespace: str) -> FileEntry:
    """Put ``data`` into the blob store (once per content) and record it as uploaded now for
    ``namespace``, so that gc leaves it alone until a commit links it."""
    with reg.storage.open_upload(None) as upload:
        upload.write(data)
        commit_upload(reg, upload, namespace=namespace)
    return FileEntry(digest=upload.digest, size=len(data), sha1=git_blob_id(data))


def store_upload(reg: Registry, upload: Upload, *, namespace: str) -> FileEntry:
    """Commit ``upload`` (written in full) as :func:`store_file` does; its git blob id is read
    back from the store (it needs the size first, so it cannot be hashed while received)."""
    with upload:
        commit_upload(reg, upload, namespace=namespace)
    sha1 = hashlib.sha1(b"blob %d\0" % upload.received)
    with reg.storage.open_read(upload.digest) as f:
        while chunk := f.read(1 << 20):
            sha1.update(chunk)
    return FileEntry(digest=upload.digest, size=upload.received, sha1=sha1.hexdigest())


# -- model cards (README.md front matter) ----------------------------------------------------------
class CardError(ValueError):
    """A README whose YAML front matter is not a readable mapping."""


def front_matter(text: str) -> str | None:
    """The YAML between a README's opening ``---`` line and the next ``---`` line, or None."""
    lines = text.lstrip("\ufeff").splitlines()
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    if start == len(lines) or lines[start].rstrip() != "---":
        return None
    for end in range(start + 1, len(lines)):
        if lines[end].rstrip() == "---":
            return "\n".join(lines[start + 1 : end])
    return None


def parse_card(text: str) -> dict[str, Any] | None:
    """The front matter of README text as JSON-able data (None: the README has none).

    Dates become ISO strings, non-finite floats strings, so that the card always serialises.

    Raises:
        CardError: the front matter is not YAML, not a mapping, or too large.
    """
    yaml_text = front_matter(text)
    if yaml_text is None:
        return None
    if len(yaml_text) > MAX_CARD_CHARS:
        raise CardError(f"the metadata is longer than {MAX_CARD_CHARS} characters")
    try:
        data = yaml.safe_load(yaml_text)
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise CardError(f"the metadata is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CardError("the metadata must be a YAML mapping (key: value lines)")
    # Aliases can make a small document a huge tree: count what is converted.
    return cast("dict[str, Any]", _plain(data, [_MAX_CARD_VALUES], 0))


def _plain(value: Any, budget: list[int], depth: int) -> Any:
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_CARD_DEPTH:
        raise CardError("the metadata is too large or too deeply nested")
    if isinstance(value, dict):
        return {str(k): _plain(v, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v, budget, depth + 1) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, date):  # datetimes too
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def card_tags(card: Mapping[str, Any] | None) -> list[str]:
    """The card's ``tags`` (a string or a list of strings), in order, without repeats."""
    tags = (card or {}).get("tags")
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list):
        return []
    return list(dict.fromkeys(t for t in tags if isinstance(t, str)))


def _stored_card_json(reg: Registry, entry: FileEntry) -> str | None:
    """The card of a README.md just stored, read back (at most :data:`MAX_README_BYTES`)."""
    if entry.size > MAX_README_BYTES:
        raise TooLarge(
            "too_large",
            f"{README} has {entry.size} bytes; its metadata is read from at most "
            f"{MAX_README_BYTES}: keep the model card smaller",
        )
    with reg.storage.open_read(entry.digest) as f:
        return _card_json(f.read(MAX_README_BYTES + 1))


def _card_json(data: bytes) -> str | None:
    try:
        card = parse_card(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise Invalid("invalid_metadata", f"{README} is not UTF-8 text") from None
    except CardError as e:
        raise Invalid("invalid_metadata", f"invalid metadata in {README}: {e}") from None
    return None if card is None else json.dumps(card, sort_keys=True)


# -- repos and revisions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Repo:
    """A Hub repo as the routes need it (plain values: usable after its session closed)."""

    id: int
    namespace: str
    name: str
    #: The repo's own flag or its namespace's: either hides it from other callers.
    private: bool
    created_at: datetime

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"


def _repo_row(session: Session, namespace: str, name: str) -> Repo | None:
    row = session.execute(
        select(HubRepo, Namespace.private)
        .join(Namespace, HubRepo.namespace_id == Namespace.id)
        .where(Namespace.name == namespace, HubRepo.name == name)
    ).first()
    if row is None:
        return None
    repo, ns_private = row
    return Repo(repo.id, namespace, repo.name, repo.private or ns_private, repo.created_at)


def find_repo(session: Session, caller: Caller, namespace: str, name: str) -> Repo | None:
    """The Hub repo ``namespace/name`` if ``caller`` may read it; None if there is none or it is
    private and not the caller's (callers answer both exactly as for a name never used).

    Raises:
        Invalid: invalid names.
    """
    check_names(namespace, name)
    repo = _repo_row(session, namespace, name)
    if repo is None or not caller.can_read(namespace, private=repo.private):
        return None
    return repo


def _is_concept(session: Session, namespace: str, name: str) -> bool:
    query = (
        select(ConceptRow.id)
        .join(Namespace, ConceptRow.namespace_id == Namespace.id)
        .where(Namespace.name == namespace, ConceptRow.name == name)
    )
    return session.scalar(query) is not None


def _native_concept(namespace: str, name: str) -> Conflict:
    return Conflict(
        "name_taken",
        f"{namespace}/{name} is a concept published through /v1, not a Hub repo: "
        "write Hub repos under another name",
    )


def writable_repo(session: Session, caller: Caller, namespace: str, name: str) -> Repo:
    """The Hub repo ``caller`` wants to write to.

    Raises:
        Invalid: invalid names.
        Unauthorized, Forbidden: no push token of ``namespace``.
        Conflict: the name is a native concept's.
        NotFound: no such repo.
    """
    check_names(namespace, name)
    require_push(caller, namespace)
    repo = _repo_row(session, namespace, name)
    if repo is not None:
        return repo
    if _is_concept(session, namespace, name):
        raise _native_concept(namespace, name)
    raise NotFound(
        "repo_not_found",
        f"no Hub repo {namespace}/{name} here: create it first (HfApi.create_repo)",
    )


def revision_not_found(repo: Repo, revision: str) -> NotFound:
    return NotFound(
        "revision_not_found",
        f"no revision {revision[:200]} in {repo.repo_id}: use a branch ({BRANCH}), a tag "
        "or a commit oid (list them with list_repo_refs)",
    )


def resolve(session: Session, repo: Repo, revision: str) -> HubCommit:
    """The commit ``revision`` names: a branch, else a tag, else a commit oid of this repo (in
    full, or a unique prefix of at least 7 hex digits); else ``NotFound``."""
    if not is_revision(revision):
        raise revision_not_found(repo, revision)
    oid = session.scalar(
        select(HubRef.target_oid)
        .where(HubRef.repo_id == repo.id, HubRef.name == revision)
        .order_by(HubRef.kind)  # "branch" before "tag"
        .limit(1)
    )
    if oid is None and _OID_PREFIX_RE.match(revision):
        oids = session.scalars(
            select(HubCommit.oid)
            .where(HubCommit.repo_id == repo.id, HubCommit.oid.startswith(revision.lower()))
            .limit(2)
        ).all()
        oid = oids[0] if len(oids) == 1 else None
    commit = session.get(HubCommit, oid) if oid is not None else None
    if commit is None:
        raise revision_not_found(repo, revision)
    return commit


def _branch(session: Session, repo: Repo, branch: str) -> HubRef:
    ref = session.scalar(
        select(HubRef).where(
            HubRef.repo_id == repo.id, HubRef.kind == "branch", HubRef.name == branch
        )
    )
    if ref is None:
        raise NotFound(
            "revision_not_found",
            f"no branch {branch[:200]} in {repo.repo_id}: commits go to a branch, and this "
            f"server's repos have one, {BRANCH}",
        )
    return ref


def branch_head(session: Session, repo: Repo, branch: str) -> HubCommit:
    """The commit ``branch`` points to (``NotFound`` if it is no branch of ``repo``)."""
    commit = session.get(HubCommit, _branch(session, repo, branch).target_oid)
    assert commit is not None  # a ref's target is a foreign key
    return commit


def history(session: Session, repo: Repo, commit: HubCommit) -> list[HubCommit]:
    """``commit`` and its ancestors, newest first."""
    by_oid = {
        c.oid: c for c in session.scalars(select(HubCommit).where(HubCommit.repo_id == repo.id))
    }
    found = [commit]
    while (parent := found[-1].parent_oid) is not None:
        found.append(by_oid[parent])
    return found


def refs(session: Session, repo: Repo) -> list[HubRef]:
    """Every branch and tag of ``repo``: branches first, then by name."""
    query = select(HubRef).where(HubRef.repo_id == repo.id).order_by(HubRef.kind, HubRef.name)
    return list(session.scalars(query))


# -- writing ---------------------------------------------------------------------------------------
def _new_commit(
    session: Session,
    repo: Repo,
    parent: str | None,
    tree: Mapping[str, FileEntry],
    *,
    title: str,
    message: str,
    card: str | None,
) -> HubCommit:
    """Insert a commit and its blob links (in the caller's transaction)."""
    when = utcnow()
    tree_json = {path: tree[path].to_json() for path in sorted(tree)}
    canonical = {
        "repo": repo.repo_id,
        "parent": parent,
        "tree": tree_json,
        "title": title,
        "message": message,
        "time": when.isoformat(),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    row = HubCommit(
        oid=hashlib.sha1(text.encode()).hexdigest(),
        repo_id=repo.id,
        parent_oid=parent,
        title=title,
        message=message,
        created_at=when,
        tree=json.dumps(tree_json, separators=(",", ":")),
        card=card,
    )
    session.add(row)
    session.flush()
    digests = {entry.digest for entry in tree.values()}
    session.add_all(HubCommitBlob(commit_oid=row.oid, digest=d) for d in digests)
    session.flush()
    return row


def _blob_collected() -> Invalid:
    # Only a blob link can fail: gc removed a file stored long ago between storing and linking.
    return Invalid("blob_unknown", "a file was collected while committing: commit again")


def create_repo(reg: Registry, caller: Caller, namespace: str, name: str, *, private: bool) -> Repo:
    """Create ``namespace/name`` with an initial commit (``.gitattributes``) on ``main``.

    Raises:
        Invalid: invalid names.
        Unauthorized, Forbidden: no push token of ``namespace``.
        Conflict: the repo exists, or the name is a native concept's.
    """
    check_names(namespace, name)
    require_push(caller, namespace)
    attributes = store_file(reg, GITATTRIBUTES, namespace=namespace)  # before the lock: file I/O
    with reg.sessions() as session:
        try:
            # As publishing does: names are checked and the repo created without a race.
            with writer_transaction(session):
                ns = session.scalar(select(Namespace).where(Namespace.name == namespace))
                if ns is None:
                    raise NotFound("namespace_not_found", f"no namespace {namespace}")
                if _is_concept(session, namespace, name):
                    raise _native_concept(namespace, name)
                if _repo_row(session, namespace, name) is not None:
                    raise Conflict("repo_exists", f"the Hub repo {namespace}/{name} exists")
                row = HubRepo(namespace_id=ns.id, name=name, private=private, created_at=utcnow())
                session.add(row)
                session.flush()
                repo = Repo(row.id, namespace, name, private or ns.private, row.created_at)
                first = _new_commit(
                    session,
                    repo,
                    None,
                    {".gitattributes": attributes},
                    title="initial commit",
                    message="",
                    card=None,
                )
                session.add(
                    HubRef(repo_id=repo.id, kind="branch", name=BRANCH, target_oid=first.oid)
                )
        except IntegrityError:
            raise _blob_collected() from None
    return repo


@dataclass(frozen=True)
class AddFile:
    path: str
    entry: FileEntry


@dataclass(frozen=True)
class DeletePath:
    path: str
    folder: bool


class CommitPayload:
    """The NDJSON body of a commit, fed as it arrives: a ``header`` line, then ``file``,
    ``deletedFile`` and ``deletedFolder`` lines. Each file is stored as its line arrives, and
    a file's base64 content is decoded into a temp upload as its bytes arrive
    (:mod:`registry_server.hub.ndjson`): the payload holds digests, never contents, and memory
    stays bounded (about :data:`MAX_LINE_KEPT`) whatever the size of the files.

    Call :meth:`close` in the end whatever happened: it drops an upload still open.
    """

    def __init__(
        self,
        reg: Registry,
        namespace: str,
        *,
        on_header: Callable[[str | None], None] | None = None,
    ) -> None:
        # namespace: the repo's (its files are recorded as uploaded for it); on_header: called
        # with the parent commit (or None) once the header is read, before any file is stored,
        # to refuse a stale parent early.
        self.reg = reg
        self.namespace = namespace
        self._on_header = on_header
        self.title: str | None = None
        self.description = ""
        #: The parent commit the client requires (a prefix of 5 to 40 hex digits), if any.
        self.parent: str | None = None
        self.ops: list[AddFile | DeletePath] = []
        #: The card of each README.md added, by its digest.
        self.cards: dict[str, str | None] = {}
        self._split = LineSplitter(
            open_sink=self._open_sink, spill_at=SPILL_BYTES, max_kept=MAX_LINE_KEPT
        )
        self._spilled: dict[int, Upload] = {}  # id(sink) -> the upload it writes

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the body (any cut, lines may span chunks).

        Raises:
            Invalid: a malformed line, an invalid path or README metadata, an LFS file.
            TooLarge: a file larger than the server's blob limit, or a line too long.
        """
        for line in self._split.feed(chunk):
            self._line(line)

    def finish(self) -> None:
        """The body ended: take its last line (if it had no line break)."""
        for line in self._split.close():
            self._line(line)

    def close(self) -> None:
        """Drop what is half received (a failed request); nothing stored is touched."""
        self._split.abort()
        for upload in self._spilled.values():
            upload.abort()
        self._spilled.clear()

    def _open_sink(self, *, utf8: bool = False) -> Base64Sink | PlainSink:
        """A decoder into a new upload (base64, or the text as UTF-8 for a short utf-8 content),
        remembered until the line that uses it is done."""
        upload = self.reg.storage.open_upload(None)
        limit = self.reg.settings.max_blob_bytes
        plain = PlainSink(upload.write, limit=limit, on_abort=upload.abort)
        sink = plain if utf8 else Base64Sink(plain)
        self._spilled[id(sink)] = upload
        return sink

    def _line(self, line: Line) -> None:
        try:
            self._take(line)
        finally:
            if line.sink is not None:  # not used as a file's content: dropped
                upload = self._spilled.pop(id(line.sink), None)
                if upload is not None:
                    upload.abort()

    def _take(self, line: Line) -> None:
        try:
            item = load_json(line.text, what="a line of the body")
        except ManifestError as e:
            raise _bad_commit(e.message) from None
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise _bad_commit('each line must be {"key": ..., "value": {...}}')
        key, value = item.get("key"), item["value"]
        spilled = line.placeholder is not None
        if spilled and not (key == "file" and value.get("content") == line.placeholder):
            raise _bad_commit(
                f"a line holds a string longer than {SPILL_BYTES} bytes: only a file's "
                "content may be that long"
            )
        if self.title is None:
            if key != "header":
                raise _bad_commit("the first line must be the header (summary, description)")
            self._header(value)
            if self._on_header is not None:
                self._on_header(self.parent)
        elif key == "file":
            self.ops.append(self._file(value, line))
        elif key in ("deletedFile", "deletedFolder"):
            path = value.get("path")
            if key == "deletedFolder" and isinstance(path, str):
                path = path.rstrip("/")
            self.ops.append(DeletePath(check_path(path), folder=key == "deletedFolder"))
        elif key == "lfsFile":
            raise Invalid(
                "lfs_not_supported",
                "this server takes no LFS uploads: preupload answers every file 'regular', so "
                "send its content inline (a file line); copying LFS files is not supported",
            )
        else:
            raise _bad_commit(
                f"unknown line {str(key)[:50]!r}: expected file, deletedFile or deletedFolder"
            )

    def _header(self, value: dict[str, Any]) -> None:
        summary, description = value.get("summary"), value.get("description") or ""
        parent = value.get("parentCommit")
        if not isinstance(summary, str) or not summary.strip():
            raise _bad_commit("the header needs a summary (the commit message)")
        if not isinstance(description, str):
            raise _bad_commit("the header's description must be a string")
        if parent is not None and not (isinstance(parent, str) and _PARENT_RE.fullmatch(parent)):
            raise _bad_commit("parentCommit must be a commit oid (5 to 40 hex digits)")
        self.title, self.description = summary, description
        self.parent = parent.lower() if parent is not None else None

    def _file(self, value: dict[str, Any], line: Line) -> AddFile:
        path = check_path(value.get("path"))
        content, encoding = value.get("content"), value.get("encoding", "base64")
        if not isinstance(content, str):
            raise _bad_commit(f"the file line of {path} has no content")
        if encoding not in ("base64", "utf-8"):
            raise _bad_commit(f"unknown encoding {str(encoding)[:20]!r} of {path}: use base64")
        sink = line.sink
        if sink is not None and encoding != "base64":
            raise _bad_commit(
                f"the content of {path} is over {SPILL_BYTES} bytes: send it base64-encoded"
            )
        if sink is None:  # short enough to be kept in the line: through the same decoder
            try:
                data = content.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800")
                raise _bad_commit(f"the content of {path} is not text") from None
            sink = self._open_sink(utf8=encoding == "utf-8")
            sink.write(data)
        try:
            sink.finish()
        except NotBase64Error as e:
            raise _bad_commit(f"the content of {path} is not base64: {e}") from None
        entry = store_upload(self.reg, self._spilled.pop(id(sink)), namespace=self.namespace)
        if path == README:  # a commit with a broken card fails; the stored blob is gc's
            self.cards[entry.digest] = _stored_card_json(self.reg, entry)
        return AddFile(path, entry)


def _bad_commit(message: str) -> Invalid:
    return Invalid("invalid_commit", message)


def _stale(repo: Repo, branch: str, head: str, parent: str) -> Stale:
    return Stale(
        "stale_parent",
        f"the head of {branch} in {repo.repo_id} is {head}, not the parent commit {parent} "
        "given: someone committed meanwhile; read the new head and commit again",
    )


def check_head(reg: Registry, repo: Repo, branch: str, parent: str | None) -> None:
    """Fail early (``NotFound`` no branch, ``Stale`` parent) before a commit's files are stored;
    the commit checks again in its writer transaction."""
    with reg.sessions() as session:
        head = _branch(session, repo, branch).target_oid
    if parent is not None and not head.startswith(parent):
        raise _stale(repo, branch, head, parent)


def _apply(
    repo: Repo, tree: Mapping[str, FileEntry], ops: list[AddFile | DeletePath]
) -> dict[str, FileEntry]:
    new = dict(tree)
    for op in ops:
        if isinstance(op, AddFile):
            new[op.path] = op.entry
            continue
        gone = [p for p in new if p.startswith(op.path + "/")] if op.folder else [op.path]
        if not gone or any(p not in new for p in gone):
            what = "folder" if op.folder else "file"
            raise NotFound("entry_not_found", f"no {what} {op.path} in {repo.repo_id} to delete")
        for p in gone:
            del new[p]
    for path in new:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in new:
                raise Invalid(
                    "invalid_path",
                    f"{'/'.join(parts[:i])} would be both a file and the folder of {path}",
                )
    return new


def commit(reg: Registry, repo: Repo, branch: str, payload: CommitPayload) -> HubCommit:
    """Commit ``payload`` on ``branch``: the head's tree plus its files minus its deletions.

    Raises:
        Invalid: no header, or a file/folder clash.
        NotFound: no such branch, or nothing to delete at a path.
        Stale: the head is not the payload's parent.
    """
    if payload.title is None:
        raise _bad_commit("the body is empty: send a header line first")
    with reg.sessions() as session:
        try:
            # parent == head is checked and the branch moved without a race.
            with writer_transaction(session):
                ref = _branch(session, repo, branch)
                if payload.parent is not None and not ref.target_oid.startswith(payload.parent):
                    raise _stale(repo, branch, ref.target_oid, payload.parent)
                parent = session.get(HubCommit, ref.target_oid)
                assert parent is not None  # a ref's target is a foreign key
                old = tree_of(parent)
                tree = _apply(repo, old, payload.ops)
                readme = tree.get(README)
                if readme is None:
                    card = None
                elif old.get(README) == readme:
                    card = parent.card
                else:
                    card = payload.cards[readme.digest]
                row = _new_commit(
                    session,
                    repo,
                    parent.oid,
                    tree,
                    title=payload.title,
                    message=payload.description,
                    card=card,
                )
                ref.target_oid = row.oid
        except IntegrityError:
            raise _blob_collected() from None
    return row


def check_tag_name(tag: str) -> str:
    """A tag name (:data:`registry_server.core.checks.TAG_PATTERN`, which the OpenAPI document
    publishes, and no control character).

    Raises:
        Invalid: ``invalid_tag``.
    """
    try:
        check_text(tag, what="tag")
    except InvalidReferenceError:
        pass  # the pattern refuses it too, with the message below
    else:
        if _TAG_RE.fullmatch(tag):
            return tag
    raise Invalid(
        "invalid_tag",
        f"{tag[:200]!r} is not a tag name here: use letters, digits and ._+- "
        "(such as v1.0.0), not main and not a commit oid",
    )


def create_tag(reg: Registry, repo: Repo, tag: str, revision: str, message: str | None) -> HubRef:
    """Tag the commit ``revision`` names (see :func:`resolve`).

    Raises:
        Invalid: an invalid tag name.
        NotFound: no such revision.
        Conflict: the tag exists (moving a tag is delete and create, as on the Hub).
    """
    check_tag_name(tag)
    with reg.sessions() as session, writer_transaction(session):
        target = resolve(session, repo, revision)
        exists = select(HubRef.id).where(
            HubRef.repo_id == repo.id, HubRef.kind == "tag", HubRef.name == tag
        )
        if session.scalar(exists) is not None:
            raise Conflict(
                "tag_exists",
                f"the tag {tag} of {repo.repo_id} exists: delete it first to move it",
            )
        ref = HubRef(repo_id=repo.id, kind="tag", name=tag, target_oid=target.oid, message=message)
        session.add(ref)
    return ref


def delete_tag(reg: Registry, repo: Repo, tag: str) -> None:
    """Delete a tag (``NotFound`` if there is none); the commit it named stays."""
    with reg.sessions() as session, writer_transaction(session):
        result = session.execute(
            delete(HubRef)
            .where(HubRef.repo_id == repo.id, HubRef.kind == "tag", HubRef.name == tag)
            .execution_options(synchronize_session=False)
        )
        if not cast("CursorResult[Any]", result).rowcount:
            raise NotFound("revision_not_found", f"no tag {tag[:200]} in {repo.repo_id} to delete")


# -- listing ---------------------------------------------------------------------------------------
def list_repos(
    session: Session,
    caller: Caller,
    *,
    tags: list[str],
    search: str | None,
    author: str | None,
    limit: int | None,
) -> list[tuple[Repo, HubCommit]]:
    """The Hub repos ``caller`` may read, with the head commit of ``main``, in id order: those
    whose card has every tag of ``tags``, whose id contains ``search`` (ignoring case) and
    whose namespace is ``author``; at most ``limit``."""
    query = (
        select(HubRepo, Namespace.name, Namespace.private, HubCommit)
        .join(Namespace, HubRepo.namespace_id == Namespace.id)
        .join(
            HubRef,
            and_(HubRef.repo_id == HubRepo.id, HubRef.kind == "branch", HubRef.name == BRANCH),
        )
        .join(HubCommit, HubCommit.oid == HubRef.target_oid)
        .where(hub_repo_visible(caller))
        .order_by(Namespace.name, HubRepo.name)
    )
    if author:
        query = query.where(Namespace.name == author)
    if search:
        # Repo ids are lowercase (the name rules), so lowering the search ignores case.
        repo_id = Namespace.name + "/" + HubRepo.name
        query = query.where(repo_id.contains(search.lower(), autoescape=True))
    wanted = set(tags)
    found: list[tuple[Repo, HubCommit]] = []
    for row, namespace, ns_private, head in session.execute(query):
        if limit is not None and len(found) >= limit:
            break
        if wanted - set(card_tags(card_of(head))):
            continue
        repo = Repo(row.id, namespace, row.name, row.private or ns_private, row.created_at)
        found.append((repo, head))
    return found
