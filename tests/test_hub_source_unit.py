"""The Hub source's own logic, without a server: retries and error mapping around
huggingface_hub, version tags, and the model card it writes."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
import yaml
from huggingface_hub.errors import HfHubHTTPError

from conesreg import constants
from conesreg.artifact import build_manifest
from conesreg.artifact._manifest import IndexEntry
from conesreg.errors import AuthenticationError, SourceError
from conesreg.sources._hub import HubSource, _tag_version, model_card
from conesreg.testing import make_draft


def _http_error(status: int, headers: dict[str, str] | None = None) -> HfHubHTTPError:
    request = httpx2.Request("GET", "http://hub.test/api/models/acme/dog/refs")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    return HfHubHTTPError(f"{status} error", response=response)


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch) -> tuple[HubSource, list[float]]:
    slept: list[float] = []
    monkeypatch.setattr("conesreg.sources._retry.time.sleep", slept.append)
    return HubSource(endpoint="http://hub.test"), slept


def _flaky(failures: list[BaseException], result: object = "refs") -> object:
    calls = []

    def call(*args: object, **kwargs: object) -> object:
        calls.append(args)
        if failures:
            raise failures.pop(0)
        return result

    call.calls = calls  # type: ignore[attr-defined]
    return call


def test_429_and_5xx_are_retried_with_backoff_honouring_retry_after(
    source: tuple[HubSource, list[float]],
) -> None:
    src, slept = source
    fn = _flaky([_http_error(503), _http_error(429, {"Retry-After": "7"}), _http_error(502)])
    assert src._call("listing", fn) == "refs"
    assert len(fn.calls) == 4  # type: ignore[attr-defined]
    assert slept == [0.5, 7.0, 2.0]  # backoff, the server's Retry-After, backoff


def test_persistent_5xx_ends_in_one_clear_error(source: tuple[HubSource, list[float]]) -> None:
    src, _ = source
    fn = _flaky([_http_error(500) for _ in range(constants.HTTP_ATTEMPTS)])
    with pytest.raises(SourceError, match=r"the Hub failed listing \(HTTP 500\) 4 times") as e:
        src._call("listing", fn)
    assert "retry later" in e.value.hint


@pytest.mark.parametrize("status", [401, 403])
def test_refusals_say_how_to_log_in(source: tuple[HubSource, list[float]], status: int) -> None:
    src, slept = source
    with pytest.raises(AuthenticationError) as e:
        src._call("pushing", _flaky([_http_error(status)]))
    assert "hf auth login" in e.value.hint and slept == []  # never retried


def test_other_client_errors_are_not_retried(source: tuple[HubSource, list[float]]) -> None:
    src, slept = source
    with pytest.raises(SourceError, match="the Hub refused committing"):
        src._call("committing", _flaky([_http_error(412)]))
    assert slept == []


def test_unreachable_hub(source: tuple[HubSource, list[float]]) -> None:
    src, _ = source
    down = [httpx2.ConnectError("connection refused") for _ in range(constants.HTTP_ATTEMPTS)]
    with pytest.raises(SourceError, match="cannot reach the Hub at http://hub.test") as e:
        src._call("listing", _flaky(down))
    assert "HF_HUB_OFFLINE=1" in e.value.hint


@pytest.mark.parametrize(
    ("tag", "version"),
    [
        ("v1.2.3", "1.2.3"),
        ("v2.0.0-rc.1", "2.0.0-rc.1"),
        ("1.2.3", None),  # versions are v-prefixed
        ("v1.2", None),
        ("latest", None),
        ("vnext", None),
    ],
)
def test_version_tags(tag: str, version: str | None) -> None:
    assert _tag_version(tag) == version


def test_model_card_front_matter(tmp_path: Path) -> None:
    draft = make_draft(tmp_path / "d", tags=("animal", "pet"), previews=2)
    manifest, _ = build_manifest(draft, version="1.2.0")
    card = model_card(manifest, endpoint="https://huggingface.co")
    front, body = card.removeprefix("---\n").split("\n---\n", 1)
    meta = yaml.safe_load(front)
    assert meta["base_model"] == "tiny/test"
    assert meta["tags"][0] == "conesreg" and {"animal", "pet"} <= set(meta["tags"])
    assert meta["license"] == "other" and meta["class_word"] == "dog"
    # The block search reads back is a whole index entry of this version.
    entry = IndexEntry.model_validate(
        {**meta["conesreg"], "registry": "hf", "namespace": "acme", "name": "dog"}
    )
    assert entry == IndexEntry.of(manifest, registry="hf")
    assert "conesreg install hf://acme/dog@1.2.0" in body
    assert body.count("![preview") == 2 and manifest.digest in body
    other = model_card(manifest, endpoint="http://127.0.0.1:9")
    assert "HF_ENDPOINT=http://127.0.0.1:9 conesreg install hf://acme/dog@1.2.0" in other
