"""The one retry policy of the HTTP sources (conesreg.sources._retry): which failures are tried
again, how often, and how long the client waits in between."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from conesreg import constants
from conesreg.errors import SourceError
from conesreg.sources import _retry

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize("status", [None, 429, 500, 502, 503, 504])
def test_no_answer_overload_and_gateway_trouble_are_transient(status: int | None) -> None:
    assert _retry.is_transient(status)


@pytest.mark.parametrize("status", [200, 201, 206, 304, 400, 401, 403, 404, 409, 412, 422, 501])
def test_answers_and_refusals_are_final(status: int) -> None:
    assert not _retry.is_transient(status)


@pytest.mark.parametrize("status", [505, 507, 508])
def test_a_full_disk_or_an_unsupported_request_is_never_retried(status: int) -> None:
    assert not _retry.is_transient(status)


def test_attempts_follow_the_constant_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(_retry.attempts()) == list(range(1, constants.HTTP_ATTEMPTS + 1))
    assert [_retry.is_last(n) for n in _retry.attempts()][-1]
    assert not any(_retry.is_last(n) for n in list(_retry.attempts())[:-1])
    monkeypatch.setattr(constants, "HTTP_ATTEMPTS", 40)
    assert len(_retry.attempts()) == 40 and not _retry.is_last(39) and _retry.is_last(40)


def test_backoff_doubles_up_to_its_cap() -> None:
    waits = [_retry.backoff(n) for n in range(1, 9)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert waits[-1] == _retry.BACKOFF_CAP
    assert _retry.backoff(10_000) == _retry.BACKOFF_CAP  # no overflow on a long campaign


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("7", 7.0),
        (" 12 ", 12.0),
        ("60", 60.0),
        ("61", 60.0),  # capped
        ("86400", 60.0),
        ("9" * 5000, 60.0),  # too many digits for int(): capped, not an error
    ],
)
def test_retry_after_in_seconds_is_capped(value: str, seconds: float) -> None:
    assert _retry.parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-1", "+5", "1.5", "nan", "inf", "1e3", "٣", "0x10", "Mon, 99"]
)
def test_an_absent_or_invalid_retry_after_is_none(value: str | None) -> None:
    assert _retry.parse_retry_after(value, now=NOW) is None


def test_retry_after_as_an_http_date() -> None:
    in_ten = format_datetime(NOW + timedelta(seconds=10), usegmt=True)
    assert in_ten.endswith("GMT")
    assert _retry.parse_retry_after(in_ten, now=NOW) == 10.0
    # RFC 850 and asctime forms are HTTP dates too (asctime has no zone: GMT).
    assert _retry.parse_retry_after("Friday, 02-Jan-26 03:04:35 GMT", now=NOW) == 30.0
    assert _retry.parse_retry_after("Fri Jan  2 03:04:25 2026", now=NOW) == 20.0


def test_retry_after_dates_far_ahead_are_capped_and_past_ones_are_zero() -> None:
    tomorrow = format_datetime(NOW + timedelta(days=1), usegmt=True)
    yesterday = format_datetime(NOW - timedelta(days=1), usegmt=True)
    assert _retry.parse_retry_after(tomorrow, now=NOW) == _retry.RETRY_AFTER_CAP
    assert _retry.parse_retry_after(yesterday, now=NOW) == 0.0


def test_retry_after_date_defaults_to_the_clock() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25.0 <= (_retry.parse_retry_after(soon) or 0.0) <= 30.0


def test_delay_honours_a_positive_retry_after_else_backs_off() -> None:
    assert _retry.delay(1) == 0.5
    assert _retry.delay(2, retry_after="7") == 7.0
    assert _retry.delay(1, retry_after="3600") == _retry.RETRY_AFTER_CAP
    # "Now", a date past, or nonsense: the client's own backoff, never a busy loop.
    assert _retry.delay(3, retry_after="0") == 2.0
    assert _retry.delay(3, retry_after="Thu, 01 Jan 1970 00:00:00 GMT") == 2.0
    assert _retry.delay(4, retry_after="nan") == 4.0


def test_delay_never_ends_past_the_deadline() -> None:
    assert _retry.delay(4, left=1.5) == 1.5
    assert _retry.delay(1, retry_after="30", left=2.0) == 2.0
    assert _retry.delay(1, left=100.0) == 0.5
    assert _retry.delay(1, left=0.0) == 0.0
    assert _retry.delay(1, left=-3.0) == 0.0  # never negative


def test_pause_sleeps_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("conesreg.sources._retry.time.sleep", slept.append)
    assert _retry.pause(2) == 1.0
    assert _retry.pause(1, retry_after="9", left=4.0) == 4.0
    assert slept == [1.0, 4.0]


# -- the registry source follows it ------------------------------------------------------------
#: An answer of the fake registry: status, headers, JSON body.
Answer = tuple[int, dict[str, str], Any]


def _source(monkeypatch: pytest.MonkeyPatch, answers: list[Answer]) -> tuple[Any, list, list]:
    """An HttpSource whose requests the ``answers`` answer in turn; also the requests sent and
    the seconds slept."""
    from conesreg.sources._http import HttpSource

    sent: list[httpx.Request] = []
    slept: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        status, headers, body = answers.pop(0)
        # A raw stream, as from a socket: the source reads bodies with iter_raw.
        return httpx.Response(
            status, headers=headers, stream=httpx.ByteStream(json.dumps(body).encode())
        )

    monkeypatch.setattr("conesreg.sources._retry.time.sleep", slept.append)
    source = HttpSource("http://registry.test", name="team")
    source._client = httpx.Client(
        base_url=source.url, transport=httpx.MockTransport(handle), follow_redirects=False
    )
    return source, sent, slept


def test_the_registry_source_honours_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Answer] = [
        (503, {"Retry-After": "3"}, {}),
        (429, {}, {}),
        (502, {"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}, {}),
        (200, {}, {"versions": []}),
    ]
    source, sent, slept = _source(monkeypatch, answers)
    assert source.versions("acme", "dog") == []
    assert len(sent) == 4
    assert slept == [3.0, 1.0, 2.0]  # the server's Retry-After, backoff, backoff


def test_the_registry_source_never_retries_507(monkeypatch: pytest.MonkeyPatch) -> None:
    full = {"error": {"code": "insufficient_storage", "message": "disk full"}}
    source, sent, slept = _source(monkeypatch, [(507, {"Retry-After": "1"}, full)])
    with pytest.raises(SourceError, match=r"out of storage \(HTTP 507\): disk full"):
        source.versions("acme", "dog")
    assert len(sent) == 1 and slept == []


def test_the_registry_source_gives_up_after_the_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Answer] = [(503, {}, {}) for _ in _retry.attempts()]
    source, sent, slept = _source(monkeypatch, answers)
    with pytest.raises(SourceError, match=r"failed \(HTTP 503\)"):
        source.versions("acme", "dog")
    assert len(sent) == constants.HTTP_ATTEMPTS
    assert slept == [_retry.backoff(n) for n in range(1, constants.HTTP_ATTEMPTS)]
