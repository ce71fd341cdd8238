"""The artifact fuzz campaign on a short, deterministic budget (the long run: fuzz/artifact.py).

Each target's strategy and property live in ``conesreg.testing.fuzz``, shared with the
long run; here every target runs a fixed number of derandomized examples with no example
database, so each run of the suite tries the same inputs. A property fails on a broken promise
(the memory bound of validation, validate-ok without decode-ok, a parse that does not
round-trip) and on any exception other than the project's own errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from conesreg.artifact._mask import decode_mask, encode_mask, read_mask_info
from conesreg.artifact._names import check_file_path
from conesreg.artifact._versions import parse_spec
from conesreg.errors import InvalidReferenceError
from conesreg.testing import fuzz as fz


def budget(examples: int) -> settings:
    """A fixed, derandomized budget: the same inputs on every run, nothing stored between runs."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@budget(300)
@given(fz.mask_cases())
def test_codec_round_trip(case: tuple[dict[str, np.ndarray], dict[str, int]]) -> None:
    fz.check_round_trip(*case)


@budget(1500)
@given(fz.hostile_masks())
def test_codec_hostile_payloads(data: bytes) -> None:
    fz.check_mask_payload(data)


@budget(800)
@given(fz.manifest_bodies())
def test_manifest_parsing(body: bytes) -> None:
    fz.check_manifest_body(body)


@budget(1000)
@given(fz.name_texts())
def test_name_grammar(text: str) -> None:
    fz.check_name_text(text)


def test_what_the_campaign_found() -> None:
    """Crashes the campaign found, each an internal error (exit 2) before its fix."""
    # A JSON "\ud800" escape gives a lone surrogate, which no UTF-8 can encode.
    with pytest.raises(InvalidReferenceError, match="surrogate"):
        check_file_path("previews/a\ud800.png")
    # semantic_version's hyphen ranges raise AttributeError on a bound that is no version.
    with pytest.raises(InvalidReferenceError, match="spec"):
        parse_spec("a - b")


def test_properties_catch_broken_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """The properties are not vacuous: swapped for broken versions, the code under test fails."""
    ones = fz.forge_mask([[1 << 21, 1 << 18, 0, 0]], {"w": b"\xff" * (1 << 15)})
    corrupt = bytearray(encode_mask({"w": [3, 9]}, numels={"w": 10}))
    corrupt[-1] = 0  # trailing zero byte: the header still parses, the stream does not decode
    fz.check_mask_payload(ones)  # the real code keeps every promise on both
    fz.check_mask_payload(bytes(corrupt))

    # A validation that decodes: ~190x the payload, over the bound.
    monkeypatch.setattr(fz, "validate_mask", lambda d: (decode_mask(d), read_mask_info(d))[1])
    with pytest.raises(AssertionError, match="over"):
        fz.check_mask_payload(ones)
    # A validation that only reads the header: validate-ok without decode-ok.
    monkeypatch.setattr(fz, "validate_mask", read_mask_info)
    with pytest.raises(AssertionError, match="does not decode"):
        fz.check_mask_payload(bytes(corrupt))
    # A name check that accepts anything.
    monkeypatch.setattr(fz, "check_name", lambda text: text)
    with pytest.raises(AssertionError):
        fz.check_name_text("Not A Name")
