"""The one retry policy of every HTTP source (a ``registry_server``, the Hugging Face Hub).

A try that got no answer (the connection was refused, reset, cut or timed out) or a transient
answer (:data:`RETRY_STATUSES`) is tried again, up to ``constants.HTTP_ATTEMPTS`` tries in all.
Before each new try the source waits what the server asked for in ``Retry-After`` (seconds or an
HTTP date, at most :data:`RETRY_AFTER_CAP`), else an exponential backoff from
:data:`BACKOFF_BASE` doubling up to :data:`BACKOFF_CAP`; never past the caller's deadline.
Retrying is safe because every request conesreg sends is idempotent (reads, and writes of
content-addressed or immutable data). Other statuses are final: 507 (a full disk stays full), 501
and 505 (the server will never support the request), and every 4xx but 429.

Which exception means "no answer" is the transport's to say (httpx's ``TransportError`` for a
registry, huggingface_hub's ``HTTPError`` without a response for the Hub); the source passes
``status=None`` for it.

Example:
    >>> for attempt in attempts():  # doctest: +SKIP
    ...     reply = send()
    ...     if not is_transient(reply.status_code) or is_last(attempt):
    ...         break
    ...     pause(attempt, retry_after=reply.headers.get("retry-after"), left=seconds_left())
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from .. import constants

#: Answers worth another try: overload (429, 503) and gateway or server trouble (500, 502, 504).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Seconds before the second try; each later wait doubles, up to the cap.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
#: The longest ``Retry-After`` honoured, in seconds: a server asking for longer gets this (a
#: command should fail with a message rather than hang on one server's say-so).
RETRY_AFTER_CAP = 60.0
#: More digits than any honoured delay needs (and few enough for ``int`` to parse at once).
_MAX_DIGITS = 9


def attempts() -> range:
    """The numbers of the tries of one request: ``1 .. constants.HTTP_ATTEMPTS``.

    Returns:
        `range`: read at call time, so a patched ``constants.HTTP_ATTEMPTS`` counts.
    """
    return range(1, constants.HTTP_ATTEMPTS + 1)


def is_last(attempt: int) -> bool:
    """Whether try number ``attempt`` is the last one allowed.

    Args:
        attempt: the number of the try that just failed, from 1.

    Returns:
        `bool`: true from ``constants.HTTP_ATTEMPTS`` on.
    """
    return attempt >= constants.HTTP_ATTEMPTS


def is_transient(status: int | None) -> bool:
    """Whether a failed try is worth another.

    Args:
        status: the answer's HTTP status, or ``None`` when no answer came (the connection was
            refused, reset, cut or timed out).

    Returns:
        `bool`: true for no answer and for :data:`RETRY_STATUSES`.

    Example:
        >>> is_transient(503), is_transient(None), is_transient(507)
        (True, True, False)
    """
    return status is None or status in RETRY_STATUSES


def backoff(attempt: int) -> float:
    """The wait after failed try number ``attempt`` when the server did not ask for one.

    Args:
        attempt: the number of the try that failed, from 1.

    Returns:
        `float`: seconds; ``BACKOFF_BASE * 2 ** (attempt - 1)``, at most ``BACKOFF_CAP``.

    Example:
        >>> [backoff(n) for n in range(1, 7)]
        [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    """
    # The exponent is capped first: 2 ** 1000 would overflow a float for a large attempt count.
    return min(BACKOFF_BASE * 2 ** min(attempt - 1, 32), BACKOFF_CAP)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (RFC 9110: delay-seconds or an HTTP date).

    Args:
        value: the header's value, or ``None`` when there is none.
        now: the current time, for a date (default: the clock's; a parameter for tests).

    Returns:
        `float | None`: seconds, at most ``RETRY_AFTER_CAP`` (a date in the past gives 0.0), or
        ``None`` when the header is absent or not valid (anything but digits or a date: a
        fraction, a sign, ``nan``, ``inf``).

    Example:
        >>> parse_retry_after("7"), parse_retry_after("86400"), parse_retry_after("soon")
        (7.0, 60.0, None)
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return RETRY_AFTER_CAP if len(text) > _MAX_DIGITS else min(float(text), RETRY_AFTER_CAP)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" (no zone): HTTP dates are in GMT
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def delay(attempt: int, *, retry_after: str | None = None, left: float | None = None) -> float:
    """The wait before the try after failed try number ``attempt``.

    Args:
        attempt: the number of the try that failed, from 1.
        retry_after: the failed answer's ``Retry-After`` header, if any. A valid one that asks
            for a positive wait is honoured (capped); otherwise the backoff applies.
        left: seconds left before the caller's deadline, if it has one: the wait never ends
            past it.

    Returns:
        `float`: seconds, never negative.

    Example:
        >>> delay(1), delay(2, retry_after="7"), delay(3, retry_after="0"), delay(4, left=1.5)
        (0.5, 7.0, 2.0, 1.5)
    """
    wait = parse_retry_after(retry_after) or backoff(attempt)
    if left is not None:
        wait = min(wait, max(left, 0.0))
    return wait


def pause(attempt: int, *, retry_after: str | None = None, left: float | None = None) -> float:
    """Sleep for :func:`delay` before the next try.

    Args:
        attempt: the number of the try that failed, from 1.
        retry_after: the failed answer's ``Retry-After`` header, if any.
        left: seconds left before the caller's deadline, if it has one.

    Returns:
        `float`: the seconds slept.
    """
    wait = delay(attempt, retry_after=retry_after, left=left)
    time.sleep(wait)
    return wait
