"""The artifact format: canonical JSON, digests, validation and the exported JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conesreg._schemas import render_schemas
from conesreg.artifact import build_manifest
from conesreg.artifact._manifest import parse_manifest
from conesreg.errors import IntegrityError, ManifestError
from conesreg.testing import make_draft

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


@pytest.fixture
def manifest_dict(tmp_path: Path) -> dict:
    manifest, _ = build_manifest(make_draft(tmp_path / "d"), version="1.2.3")
    return manifest.model_dump(mode="json")


def test_canonical_json_round_trip(manifest_dict: dict) -> None:
    m = parse_manifest(manifest_dict)
    raw = m.canonical_json()
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    # Any spelling of the same JSON gives the same manifest and digest.
    pretty = json.dumps(manifest_dict, indent=4)
    assert parse_manifest(pretty).digest == m.digest
    assert parse_manifest(raw, expected_digest=m.digest) == m
    with pytest.raises(IntegrityError):
        parse_manifest(raw, expected_digest="sha256:" + "0" * 64)


def test_any_field_changes_digest(manifest_dict: dict) -> None:
    base = parse_manifest(manifest_dict).digest
    changed = json.loads(json.dumps(manifest_dict))
    changed["metadata"]["description"] += "!"
    assert parse_manifest(changed).digest != base


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.update(version="1.2"), "version"),
        (lambda d: d.update(name="Dog"), "name"),
        (lambda d: d.update(kind="lora/1"), "kind"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["mask"].update(blob="sha256:" + "1" * 64), "not listed in blobs"),
        (lambda d: d["mask"].update(selected=3), "sum of mask.counts"),
        (lambda d: d["mask"].update(total=3), "number of target scalars"),
        (lambda d: d["metadata"].update(created=None), "created"),
        (lambda d: d["blobs"][0].update(path="../../etc/passwd"), "segment '..'"),
        # What no real concept has (issue 16, finding 8): refused at publish and on every read.
        (lambda d: d["blobs"][0].update(path="C:/x"), "holds ':'"),
        (lambda d: d["blobs"][0].update(path="p/" + "x" * 256), "over 255 bytes"),
        (lambda d: d["blobs"][0].update(path="manifest.json"), "reserved"),
        (lambda d: d["blobs"][0].update(path="README.md"), "reserved"),
        (lambda d: d["blobs"][0].update(path="x\u0000y"), "control character"),
        (lambda d: d["blobs"][0].update(path="a\\b"), "holds '\\\\'"),
        (lambda d: d["base_model"]["targets"][0].update(shape=[-64, -64]), "shape"),
        (lambda d: d["base_model"]["targets"][0].update(shape=[10**2000]), "shape"),
        (lambda d: d["base_model"]["targets"][0].update(name="a\u0000b"), "control character"),
        (lambda d: d["base_model"]["targets"].append(d["base_model"]["targets"][0]), "twice"),
        (lambda d: d["metadata"].update(tags=["ok", "bad\u001b[31m"]), "control character"),
        (lambda d: d["metadata"].update(class_word="dog\n"), "control character"),
        (lambda d: d["blobs"][0].update(digest="md5:abc"), "blobs.0.digest"),
        (lambda d: d["mask"]["counts"].update({"nope.weight": 1}), "not a target parameter"),
    ],
)
def test_schema_violations(manifest_dict: dict, edit, needle: str) -> None:  # type: ignore[no-untyped-def]
    edit(manifest_dict)
    with pytest.raises(ManifestError, match="fails the schema") as e:
        parse_manifest(manifest_dict)
    assert needle in str(e.value)


def test_not_json() -> None:
    with pytest.raises(ManifestError):
        parse_manifest(b"{not json")


def test_exported_schemas_are_current() -> None:
    for filename, text in render_schemas().items():
        path = SCHEMAS / filename
        assert path.is_file(), f"missing {path}: run python -m conesreg._schemas"
        assert path.read_text() == text, f"{path} is stale: run python -m conesreg._schemas"


def test_schema_accepts_real_manifest(manifest_dict: dict) -> None:
    import jsonschema

    schema = json.loads((SCHEMAS / "manifest.schema.json").read_text())
    jsonschema.validate(manifest_dict, schema)


def test_check_mask_is_the_one_rule(tmp_path: Path) -> None:
    from conesreg.artifact import check_mask, encode_mask
    from conesreg.errors import MaskError

    manifest, files = build_manifest(make_draft(tmp_path / "d"), version="1.0.0")
    data = files[manifest.mask.blob].read_bytes()
    assert {k: v for k, v in check_mask(manifest, data).counts.items() if v} == manifest.mask.counts
    numels = {t.name: t.numel for t in manifest.base_model.targets}
    first = sorted(numels)[0]
    for payload, message in [
        (encode_mask({first: [0, 1]}, numels=numels), "not the counts"),
        (encode_mask({"other.weight": [0]}, numels={"other.weight": 4}), "not a target"),
        (encode_mask({first: [0]}, numels={first: numels[first] + 1}), "scalars, the base model"),
        (data[:-7], "safetensors"),
    ]:
        with pytest.raises(MaskError, match=message):
            check_mask(manifest, payload)
    other = manifest.mask.model_copy(update={"encoding": "other/1"})
    with pytest.raises(MaskError, match="the manifest says other/1"):
        check_mask(manifest.model_copy(update={"mask": other}), data)
    with pytest.raises(MaskError, match="more than the 8 accepted"):
        check_mask(manifest, data, max_target_numel=8)


def test_the_same_bytes_parse_once_and_every_check_still_holds() -> None:
    from conesreg.testing import make_manifest

    data = make_manifest().canonical_json()
    first = parse_manifest(data, expected_digest=make_manifest().digest)
    assert parse_manifest(bytes(data)) is first  # remembered: not validated again
    from conesreg.artifact._manifest import forget_parsed

    forget_parsed()  # as a new process
    assert parse_manifest(data) is not first and parse_manifest(data) == first
    with pytest.raises(IntegrityError):  # the pin is checked on every call
        parse_manifest(data, expected_digest="sha256:" + "0" * 64)
    bad = data.replace(b'"namespace"', b'"namespaces"')
    for _ in range(2):  # what fails is never remembered
        with pytest.raises(ManifestError):
            parse_manifest(bad)


def test_metadata_overrides_are_validated_and_keep_a_token_bound_word(tmp_path: Path) -> None:
    from conesreg.artifact._build import build_manifest

    draft = make_draft(tmp_path / "d")
    m, _ = build_manifest(draft, version="1.0.0", metadata={"tags": ("x", "y"), "license": "MIT"})
    assert (m.metadata.tags, m.metadata.license) == (("x", "y"), "MIT")
    assert m.metadata.description == "a good dog"  # what was not given stays the draft's
    with pytest.raises(ManifestError, match="tags"):
        build_manifest(draft, version="1.0.0", metadata={"tags": ("two\nlines",)})
    concept = json.loads((draft / "concept.json").read_text())
    concept["binding"] = {"mode": "token", "word": "dog", "anchor": "a photo of a dog"}
    (draft / "concept.json").write_text(json.dumps(concept))
    assert build_manifest(draft, version="1.0.0", metadata={"class_word": "dog"})[0]
    with pytest.raises(ManifestError, match="token-bound.*'dog'.*'cat'"):
        build_manifest(draft, version="1.0.0", metadata={"class_word": "cat"})
