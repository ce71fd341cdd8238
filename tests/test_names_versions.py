"""Reference grammar and version-spec semantics."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conesreg.artifact._names import ConceptRef, check_name, parse_ref
from conesreg.artifact._versions import check_digest, parse_spec, parse_version, select_version
from conesreg.errors import InvalidReferenceError, VersionNotFoundError, YankedVersionError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("acme/dog", ConceptRef("acme", "dog")),
        ("acme/dog@1.2", ConceptRef("acme", "dog", "1.2")),
        ("team/acme/dog@^1.2", ConceptRef("acme", "dog", "^1.2", "team")),
        ("hf://acme/dog@>=1.2,<2", ConceptRef("acme", "dog", ">=1.2,<2", "hf")),
        ("dog", ConceptRef("library", "dog")),
        ("a.b_c-d/x9", ConceptRef("a.b_c-d", "x9")),
        ("  acme/dog@latest ", ConceptRef("acme", "dog", "latest")),
    ],
)
def test_parse_ref(text: str, expected: ConceptRef) -> None:
    assert parse_ref(text, default_namespace="library") == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "acme/",
        "/dog",
        "Acme/dog",
        "acme/dog/",
        "acme//dog",
        "a/b/c/d",
        "acme/dog@",
        "acme/-dog",
        "acme/dog-",
        "acme/d..og",
        "acme/" + "x" * 65,
        "acme/../dog",
        "acme/dög",
        "acme/dog x",
    ],
)
def test_parse_ref_rejects(text: str) -> None:
    with pytest.raises(InvalidReferenceError) as e:
        parse_ref(text, default_namespace=None)
    assert e.value.hint  # every refusal says how to fix it


@pytest.mark.parametrize("text", ["dog\n", "dog\x00", "\ndog"])
def test_check_name_matches_the_whole_text(text: str) -> None:
    # re.match with `$` accepts a trailing newline: names reach URLs, paths and headers.
    with pytest.raises(InvalidReferenceError):
        check_name(text)
    with pytest.raises(InvalidReferenceError):
        check_digest("sha256:" + "a" * 64 + text.replace("dog", ""))


def test_name_length_limit() -> None:
    assert parse_ref("acme/" + "x" * 64).name == "x" * 64


VERSIONS = [
    "0.9.0",
    "1.0.0",
    "1.2.0",
    "1.2.5",
    "1.3.0-rc.1",
    "1.3.0",
    "1.10.0",
    "2.0.0-alpha",
    "2.0.0",
]


def _releases(yanked: tuple[str, ...] = ()) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(version=v, digest=f"sha256:{i:064x}", yanked=v in yanked)
        for i, v in enumerate(VERSIONS)
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("latest", "2.0.0"),
        (None, "2.0.0"),
        ("1.2.0", "1.2.0"),
        ("1.2", "1.2.5"),
        ("1", "1.10.0"),
        ("^1.2", "1.10.0"),
        ("~1.2", "1.2.5"),
        (">=1.2,<1.3", "1.2.5"),
        (">=1.2, <2", "1.10.0"),
        (">=1.2 <2", "1.10.0"),
        ("<1", "0.9.0"),
        ("1.3.0-rc.1", "1.3.0-rc.1"),  # pre-releases when asked for by name
        ("^2.0.0-alpha", "2.0.0"),
        ("*", "2.0.0"),
    ],
)
def test_select(spec: str | None, expected: str) -> None:
    assert select_version(parse_spec(spec), _releases(), concept="acme/dog").version == expected


def test_prereleases_only_when_asked() -> None:
    releases = [r for r in _releases() if r.version != "2.0.0"]
    assert select_version(parse_spec("latest"), releases, concept="x/y").version == "1.10.0"
    assert select_version(parse_spec(">=1.10"), releases, concept="x/y").version == "1.10.0"


def test_yanked_skipped_unless_pinned() -> None:
    releases = _releases(yanked=("2.0.0", "1.2.5"))
    assert select_version(parse_spec("latest"), releases, concept="a/b").version == "1.10.0"
    assert select_version(parse_spec("1.2"), releases, concept="a/b").version == "1.2.0"
    assert select_version(parse_spec("1.2.5"), releases, concept="a/b").version == "1.2.5"
    digest = releases[-1].digest
    assert select_version(parse_spec(digest), releases, concept="a/b").version == "2.0.0"


def test_only_yanked_matches() -> None:
    with pytest.raises(YankedVersionError, match="only yanked"):
        select_version(parse_spec("~1.2"), _releases(yanked=("1.2.0", "1.2.5")), concept="a/b")


def test_no_match_lists_nearest() -> None:
    with pytest.raises(VersionNotFoundError) as e:
        select_version(parse_spec("~1.4"), _releases(), concept="acme/dog")
    assert "1.3.0" in str(e.value) and "1.10.0" in str(e.value)
    with pytest.raises(VersionNotFoundError, match="nearest: .*2.0.0"):
        select_version(parse_spec("3"), _releases(), concept="acme/dog")
    with pytest.raises(VersionNotFoundError, match="no versions"):
        select_version(parse_spec("1"), [], concept="acme/dog")


@pytest.mark.parametrize("spec", ["^^1", "1.2.x.y", ">=a", "sha256:xyz", "1.2.3.4", "=>1"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_spec(spec)


@pytest.mark.parametrize("version", ["1.2", "v", "1.2.3.4", "01.2.3", "latest", ""])
def test_bad_versions(version: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_version(version)
