"""The Hugging Face Hub as a concept source, through ``huggingface_hub``.

One concept is one model repo ``NAMESPACE/NAME``; one version is one commit holding
``manifest.json``, the blobs at their manifest paths and a ``README.md`` model card, tagged
``v{version}``. ``huggingface_hub`` does the transport, its retries, its cache and file locks;
this module adds only what it lacks: semver over tags, the commit SHA behind each tag (Hub tags
can be moved, so the lockfile pins the SHA), digest checks (the Hub client checks sizes, not
sha256; the conesreg cache re-hashes everything it receives), yank state and the index entry.

Yank state lives in ``yanked.json`` on the ``main`` branch (``{"1.0.0": "reason" | null}``):
versions are tags, and a tag cannot carry a flag without being moved.

Example:
    >>> src = HubSource(name="hf")  # doctest: +SKIP
    >>> [e.version for e in src.versions("acme", "dog")]  # doctest: +SKIP
    ['1.0.0', '1.1.0']
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from ..artifact import constants as artifact_constants
from ..artifact._card import hub_card_data
from ..artifact._digests import sha256_bytes
from ..artifact._json import load_json
from ..artifact._manifest import IndexEntry, Manifest, parse_manifest
from ..artifact._versions import parse_version, sort_releases
from ..errors import (
    AuthenticationError,
    ConceptNotFoundError,
    ConesregError,
    ImmutableVersionError,
    OfflineError,
    SourceError,
    VersionNotFoundError,
)
from . import _retry
from ._base import BlobOrigin

T = TypeVar("T")

MANIFEST_FILE = artifact_constants.HUB_MANIFEST_FILE
CARD_FILE = artifact_constants.HUB_CARD_FILE
YANKED_FILE = artifact_constants.HUB_YANKED_FILE
#: Files of a repo that are not part of any version (never deleted by a version commit).
_REPO_FILES = {YANKED_FILE, ".gitattributes"}
#: The tag that names a version: ``v`` and a full semver version.
TAG_PREFIX = "v"


class HubSource:
    """Concepts on the Hugging Face Hub (or a server speaking its API, e.g. ``registry_server``).

    Args:
        name: the registry alias (``hf`` unless configured otherwise).
        endpoint: the Hub's URL (default: ``HF_ENDPOINT``, else https://huggingface.co).
        token: a token for pushes and private repos (default: ``huggingface_hub``'s own login,
            i.e. ``HF_TOKEN`` or ``hf auth login``).
    """

    remote = True

    def __init__(self, *, name: str = "hf", endpoint: str | None = None, token: str | None = None):
        from huggingface_hub import HfApi
        from huggingface_hub import constants as hf_constants

        self.name = name
        self.endpoint = (endpoint or hf_constants.ENDPOINT).rstrip("/")
        #: huggingface_hub's own offline switch (``HF_HUB_OFFLINE``), read by it at import.
        self.offline = bool(hf_constants.HF_HUB_OFFLINE)
        self._token = token
        self._api = HfApi(endpoint=self.endpoint, token=token)
        #: Tags of the last listed repos that name no installable version, with the reason.
        self.ignored: dict[str, list[tuple[str, str, str]]] = {}

    def location(self) -> str:
        return self.endpoint

    # -- reading ---------------------------------------------------------------------------------
    def versions(self, namespace: str, name: str) -> list[IndexEntry]:
        """Every version tag of ``namespace/name`` with its commit SHA (``IndexEntry.revision``).

        Tags that are not ``v<semver>``, or whose commit holds no valid manifest of this concept,
        are skipped and kept in :attr:`ignored` (``conesreg versions --all`` lists them).

        Raises:
            ConceptNotFoundError: no such repo (or private without a token), or no version tag.
        """
        repo = f"{namespace}/{name}"
        refs = self._refs(repo)
        main = next((b.target_commit for b in refs.branches if b.name == "main"), None)
        yanked = self._yanked(repo, main)
        entries: list[IndexEntry] = []
        ignored: list[tuple[str, str, str]] = []
        for tag in refs.tags:
            version = _tag_version(tag.name)
            if version is None:
                ignored.append((tag.name, tag.target_commit, "not a v<semver> tag"))
                continue
            try:
                manifest = self._manifest_at(repo, tag.target_commit)
            except ConesregError as e:
                ignored.append((tag.name, tag.target_commit, e.message))
                continue
            if (manifest.namespace, manifest.name, manifest.version) != (namespace, name, version):
                why = f"its manifest is {manifest.id}@{manifest.version}"
                ignored.append((tag.name, tag.target_commit, why))
                continue
            entry = IndexEntry.of(
                manifest,
                registry=self.name,
                yanked=version in yanked,
                reason=yanked.get(version),
            )
            entries.append(entry.model_copy(update={"revision": tag.target_commit}))
        self.ignored[repo] = ignored
        if not entries:
            reasons = "; ".join(f"{t}: {why}" for t, _, why in ignored) or "no tags"
            raise ConceptNotFoundError(
                f"{self._ref(repo)} has no conesreg version on {self.endpoint} ({reasons})",
                hint="conesreg concepts carry v<semver> tags on commits with a manifest.json; "
                "see `conesreg versions --all hf://NAMESPACE/NAME`",
            )
        return sort_releases(entries)

    def manifest(
        self, namespace: str, name: str, version: str, *, revision: str | None = None
    ) -> bytes:
        repo = f"{namespace}/{name}"
        commit = revision or self._tag_commit(repo, version)
        return self._download_bytes(repo, MANIFEST_FILE, commit)

    def fetch_blob(self, digest: str, out: BinaryIO, *, origin: BlobOrigin | None = None) -> None:
        if origin is None:  # a Hub repo stores files by path, not digest
            raise SourceError(f"the Hub source cannot fetch {digest} without its concept and path")
        repo = f"{origin.namespace}/{origin.name}"
        revision = origin.revision or self._tag_commit(repo, origin.version)
        with open(self._download(repo, origin.path, revision), "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    def search(
        self,
        query: str = "",
        *,
        tags: Sequence[str] = (),
        base_model_hash: str | None = None,
        class_word: str | None = None,
        limit: int = 50,
    ) -> list[IndexEntry]:
        """Repos tagged ``conesreg`` (and every tag asked for) whose card describes a version
        that matches, best match first. Each hit is the version its ``main`` card describes (the
        last pushed), read from the card's ``conesreg`` block, and matched as the other sources
        match (name, namespace, class word, description, tags): at most two requests.
        """
        from ._local import rank_matches

        words = query.split()

        def listing(search: str | None) -> list[Any]:
            return list(
                self._api.list_models(
                    filter=["conesreg", *[t.lower() for t in tags]],
                    search=search,
                    cardData=True,
                    limit=max(limit * 4, 100),
                )
            )

        # The Hub's own search matches repo ids only: a word found in a description alone would
        # be missed by it. So the tagged repos are listed plainly too, and every word is matched
        # against the cards' fields here; the id search adds matches beyond that listing.
        models = {m.id: m for m in self._call("searching", listing, None)}
        if len(words) == 1:
            models.update((m.id, m) for m in self._call("searching", listing, words[0]))
        entries: list[IndexEntry] = []
        for model in models.values():
            block = (model.card_data or {}).get("conesreg") if model.card_data else None
            namespace, _, name = model.id.partition("/")
            if not isinstance(block, dict) or not name:
                continue  # tagged conesreg by hand, not pushed by conesreg
            try:
                entries.append(
                    IndexEntry.model_validate(
                        {**block, "registry": self.name, "namespace": namespace, "name": name}
                    )
                )
            except ValueError:
                continue
        return rank_matches(
            entries,
            query,
            tags=tags,
            base_model_hash=base_model_hash,
            class_word=class_word,
            limit=limit,
        )

    # -- writing ---------------------------------------------------------------------------------
    def push(self, manifest: Manifest, files: Mapping[str, Path]) -> bool:
        """One commit on ``main`` (parented on the head seen, so a concurrent push fails rather
        than mixing files) with the manifest, the blobs and the card, then the tag."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        repo = f"{manifest.namespace}/{manifest.name}"
        tag = TAG_PREFIX + manifest.version
        from huggingface_hub.errors import HfUriError

        # HfUriError: the repo exists, and huggingface_hub cannot parse the URL it then builds
        # for an endpoint other than huggingface.co. Nothing to create; the commit says the rest.
        with contextlib.suppress(HfUriError):
            self._call(f"creating {self._ref(repo)}", self._api.create_repo, repo, exist_ok=True)
        refs = self._refs(repo)
        existing = next((t for t in refs.tags if t.name == tag), None)
        if existing is not None:
            return self._same_or_conflict(repo, tag, existing.target_commit, manifest)
        head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
        present = (
            set(self._call("listing files", self._api.list_repo_files, repo, revision=head))
            if head
            else set()
        )
        keep = {MANIFEST_FILE, CARD_FILE, *(b.path for b in manifest.blobs)}
        operations: list[Any] = [
            CommitOperationAdd(MANIFEST_FILE, manifest.canonical_json()),
            CommitOperationAdd(CARD_FILE, model_card(manifest, endpoint=self.endpoint).encode()),
            *(CommitOperationAdd(b.path, str(files[b.digest])) for b in manifest.blobs),
            *(CommitOperationDelete(p) for p in sorted(present - keep - _REPO_FILES)),
        ]
        commit = self._call(
            f"committing {repo}@{manifest.version}",
            self._api.create_commit,
            repo,
            operations=operations,
            commit_message=f"{manifest.id} {manifest.version}",
            commit_description=f"Published by conesreg: manifest digest {manifest.digest}",
            parent_commit=head,
        )
        try:
            self._call(
                f"tagging {repo}@{tag}",
                self._api.create_tag,
                repo,
                tag=tag,
                revision=commit.oid,
                tag_message=f"{manifest.id} {manifest.version} ({manifest.digest})",
            )
        except SourceError:
            # Tagged by a concurrent push of the same version: the same content is fine.
            refs = self._refs(repo)
            existing = next((t for t in refs.tags if t.name == tag), None)
            if existing is None:
                raise
            return self._same_or_conflict(repo, tag, existing.target_commit, manifest)
        return True

    def set_yanked(
        self, namespace: str, name: str, version: str, *, yanked: bool, reason: str | None = None
    ) -> None:
        from huggingface_hub import CommitOperationAdd

        repo = f"{namespace}/{name}"
        if version not in {e.version for e in self.versions(namespace, name)}:
            raise VersionNotFoundError(f"{self._ref(repo)}@{version} is not published")
        refs = self._refs(repo)
        head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
        state = self._yanked(repo, head)
        if yanked:
            state[version] = reason
        else:
            state.pop(version, None)
        body = json.dumps(dict(sorted(state.items())), indent=2).encode() + b"\n"
        self._call(
            f"recording the yank state of {repo}",
            self._api.create_commit,
            repo,
            operations=[CommitOperationAdd(YANKED_FILE, body)],
            commit_message=f"{'yank' if yanked else 'unyank'} {version}",
            parent_commit=head,
        )

    # -- plumbing --------------------------------------------------------------------------------
    def _refs(self, repo: str) -> Any:
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            return self._call(f"listing {self._ref(repo)}", self._api.list_repo_refs, repo)
        except RepositoryNotFoundError:
            raise ConceptNotFoundError(
                f"no repo {self._ref(repo)} on {self.endpoint} (or it is private)",
                hint="check the name; for a private repo log in with `hf auth login` or set "
                "HF_TOKEN",
            ) from None

    def _tag_commit(self, repo: str, version: str) -> str:
        ns, _, name = repo.partition("/")
        for e in self.versions(ns, name):
            if e.version == version and e.revision:
                return e.revision
        raise VersionNotFoundError(f"{self._ref(repo)} has no tag {TAG_PREFIX}{version}")

    def _manifest_at(self, repo: str, commit: str) -> Manifest:
        from ..errors import ManifestError

        data = self._download_bytes(repo, MANIFEST_FILE, commit)
        try:
            return parse_manifest(data)
        except ManifestError as e:
            raise ManifestError(f"its manifest.json is invalid ({e.message})") from None

    def _same_or_conflict(self, repo: str, tag: str, commit: str, manifest: Manifest) -> bool:
        if sha256_bytes(self._download_bytes(repo, MANIFEST_FILE, commit)) == manifest.digest:
            return False
        raise ImmutableVersionError(
            f"{self._ref(repo)}@{manifest.version} is already published (tag {tag}) with "
            "other content"
        )

    def _yanked(self, repo: str, main: str | None) -> dict[str, str | None]:
        from huggingface_hub.errors import EntryNotFoundError

        if main is None:
            return {}
        try:
            data = load_json(self._download_bytes(repo, YANKED_FILE, main), what=YANKED_FILE)
        except EntryNotFoundError:
            return {}
        except ValueError:
            return {}  # an unreadable yank list yanks nothing rather than hiding versions
        if not isinstance(data, dict):
            return {}
        return {str(k): (str(v) if v is not None else None) for k, v in data.items()}

    def _download(self, repo: str, filename: str, revision: str) -> str:
        """The local path of one file at ``revision``, through huggingface_hub's cache."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return self._call(
                f"downloading {filename} of {self._ref(repo)}",
                hf_hub_download,
                repo_id=repo,
                filename=filename,
                revision=revision,
                endpoint=self.endpoint,
                token=self._token,
            )
        except RepositoryNotFoundError:
            raise ConceptNotFoundError(
                f"no repo {self._ref(repo)} on {self.endpoint} (or it is private)",
                hint="check the name; for a private repo log in with `hf auth login`",
            ) from None
        except RevisionNotFoundError:
            raise VersionNotFoundError(
                f"{self._ref(repo)} has no revision {revision}", hint="list versions with --all"
            ) from None
        except EntryNotFoundError as e:
            if filename == MANIFEST_FILE:
                from ..errors import ManifestError

                raise ManifestError(f"no {MANIFEST_FILE} at {revision[:12]}") from None
            if filename == YANKED_FILE:
                raise
            raise SourceError(f"{self._ref(repo)}@{revision[:12]} lacks {filename}: {e}") from None

    def _download_bytes(self, repo: str, filename: str, revision: str) -> bytes:
        """A small file's bytes (the manifest, the yank list): huggingface_hub downloads it
        into its own cache, and one larger than any manifest may be is refused unread."""
        path = Path(self._download(repo, filename, revision))
        with open(path, "rb") as f:
            data = f.read(artifact_constants.MAX_MANIFEST_BYTES + 1)
        if len(data) > artifact_constants.MAX_MANIFEST_BYTES:
            raise SourceError(
                f"{self._ref(repo)}@{revision[:12]} has a {filename} of more than "
                f"{artifact_constants.MAX_MANIFEST_BYTES:,} bytes, which no conesreg version has",
                hint="the repo (or the endpoint) is broken or hostile; do not install from it",
            )
        return data

    def _ref(self, repo: str) -> str:
        """``repo`` as a user names it: ``hf://NS/NAME`` on the Hub alias, else ``ALIAS/NS/NAME``
        (another hub-kind registry is never called hf://)."""
        return f"hf://{repo}" if self.name == "hf" else f"{self.name}/{repo}"

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried on connection errors and transient statuses as
        :mod:`._retry` says (Hub rate limits come with Retry-After); failures become conesreg
        errors with a next step. Not-found errors pass through for the caller to name."""
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            HTTPError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        for attempt in _retry.attempts():
            try:
                return fn(*args, **kwargs)
            except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
                raise
            except OfflineModeIsEnabled:
                raise OfflineError(
                    f"HF_HUB_OFFLINE is set and {what} needs the Hub",
                    hint="unset HF_HUB_OFFLINE, or use what is installed already",
                ) from None
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else 0
                message = " ".join(str(e).split())[:300]
                if status in (401, 403):
                    # One line: the Hub's own words if it gave a short reason, never its raw
                    # error object.
                    said = (getattr(e, "server_message", None) or "").strip().splitlines()
                    reason = f" ({said[0][:120]})" if said and "{" not in said[0] else ""
                    raise AuthenticationError(
                        f"registry {self.name!r} at {self.endpoint} refused {what}: not logged "
                        f"in, or the token may not do this{reason}",
                        hint="log in with `hf auth login` (or set HF_TOKEN) with a token that "
                        "may write there",
                    ) from None
                if status < 500 and not _retry.is_transient(status):
                    raise SourceError(f"the Hub refused {what}: {message}") from None
                if not _retry.is_transient(status):  # 507, 501, 505: another try fails the same
                    raise SourceError(
                        f"the Hub failed {what} (HTTP {status}): {message}",
                        hint="retry later; https://status.huggingface.co says whether it is down",
                    ) from None
                if _retry.is_last(attempt):
                    raise SourceError(
                        f"the Hub failed {what} (HTTP {status}) {attempt} times: {message}",
                        hint="retry later; https://status.huggingface.co says whether it is down",
                    ) from None
                retry_after = (
                    e.response.headers.get("retry-after") if e.response is not None else None
                )
            except HTTPError as e:  # connection refused, reset, timed out: no answer
                if _retry.is_last(attempt):
                    raise SourceError(
                        f"cannot reach the Hub at {self.endpoint} while {what}: {e}",
                        hint="check the connection, or work from the cache with "
                        "HF_HUB_OFFLINE=1 or --offline",
                    ) from None
                retry_after = None
            except ConesregError:
                raise
            except OSError as e:
                raise _local_error(e, what) from None
            _retry.pause(attempt, retry_after=retry_after)
        raise AssertionError("unreachable")  # pragma: no cover


def _local_error(e: OSError, what: str) -> ConesregError:
    """An ``OSError`` out of huggingface_hub: its cache's disk is full or unwritable, or a
    download failed its own size check (``errno`` unset: the Hub sent other bytes than it
    announced)."""
    from huggingface_hub import constants as hf_constants

    from .._storage import write_error

    if e.errno is not None:
        hint = "free space on that disk, or point HF_HUB_CACHE at another one"
        return write_error(e, Path(e.filename or hf_constants.HF_HUB_CACHE), hint=hint)
    message = " ".join(str(e).split())[:300]
    return SourceError(
        f"the Hub download failed while {what}: {message}",
        hint="retry; if it persists, the endpoint serves other bytes than it announces",
    )


def _tag_version(tag: str) -> str | None:
    if not tag.startswith(TAG_PREFIX):
        return None
    try:
        return str(parse_version(tag[len(TAG_PREFIX) :]))
    except ConesregError:
        return None


def model_card(manifest: Manifest, *, endpoint: str) -> str:
    """The ``README.md`` of a version: YAML front matter the Hub indexes (``base_model``,
    ``tags`` with ``conesreg``, license, the class word and a ``conesreg`` block with the index
    entry that search reads) and a body with previews and the install command."""
    from huggingface_hub import ModelCardData

    m, md = manifest, manifest.metadata
    data = ModelCardData(**hub_card_data(m))
    previews = "\n".join(
        f"![preview {i + 1}]({b.path})"
        for i, b in enumerate(b for b in m.blobs if b.digest in md.previews)
    )
    ref = f"hf://{m.namespace}/{m.name}@{m.version}"
    install = f"conesreg install {ref}"
    if endpoint.rstrip("/") != "https://huggingface.co":
        install = f"HF_ENDPOINT={endpoint} {install}"
    body = [
        f"# {m.namespace}/{m.name} {m.version}",
        "",
        md.description or f"A conesreg concept: the concept neurons of a {md.class_word}.",
        "",
        f"Concept neurons of `{m.base_model.id}`: {m.mask.selected:,} of {m.mask.total:,} "
        f'scalars switched off, so that "{md.prompt_template.format(class_word=md.class_word)}"'
        " draws this subject.",
        "",
        previews,
        "",
        "```bash",
        install,
        "```",
        "",
        f"Manifest digest: `{m.digest}`",
        "",
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
