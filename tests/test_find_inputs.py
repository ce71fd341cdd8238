"""What `conesreg find` reads and checks, through the Python API: subject images, the captions of
a ``metadata.jsonl`` beside them, the option checks and defaults, and a whole search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conesreg
from conesreg._find_inputs import check_find_options, image_files, read_captions
from conesreg._find_job import CHECKPOINT_FILE, find_config
from conesreg.errors import ConesregError


def save_subject(folder: Path, n: int = 3, *, captions: bool = True) -> Path:
    """``n`` small images in ``folder``, captioned "a photo of a dog number i" if ``captions``."""
    folder.mkdir(parents=True)
    for i in range(n):
        image = np.full((16, 16, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    if captions:
        rows = [{"file_name": f"{i}.png", "text": f"a photo of a dog number {i}"} for i in range(n)]
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_load_subject_images_reads_the_captions_of_metadata_jsonl(tmp_path: Path) -> None:
    folder = save_subject(tmp_path / "dogs")
    images, captions = conesreg.load_subject_images(folder, size=8, class_word="dog")
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    assert captions == [f"a photo of a dog number {i}" for i in range(3)]
    # The same from a list of files, and without a metadata.jsonl: no captions.
    files = [folder / "2.png", folder / "0.png"]
    assert conesreg.load_subject_images(files, size=8)[1] == [
        "a photo of a dog number 2",
        "a photo of a dog number 0",
    ]
    plain = save_subject(tmp_path / "plain", captions=False)
    images, captions = conesreg.load_subject_images(str(plain), size=4)
    assert images.shape == (3, 4, 4, 3) and captions is None


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ('{"file_name": "0.png"}\n', "line 1 is not a JSON object with file_name and text"),
        ("\nnot json\n", "line 2 is not a JSON object with file_name and text"),
        ('{"file_name": "0.png", "text": "a photo of a dog"}\n', "1.png has no caption in"),
        (
            "".join(
                json.dumps({"file_name": f"{i}.png", "text": f"a photo of a {w}"}) + "\n"
                for i, w in enumerate(["dog", "cat", "dog"])
            ),
            "does not name the class word 'dog'",
        ),
    ],
)
def test_bad_captions_fail_as_in_the_cli(tmp_path: Path, metadata: str, message: str) -> None:
    folder = save_subject(tmp_path / "dogs")
    (folder / "metadata.jsonl").write_text(metadata)
    with pytest.raises(ConesregError, match=message):
        conesreg.load_subject_images(folder, size=8, class_word="dog")


def test_image_files_and_their_errors(tmp_path: Path) -> None:
    folder = save_subject(tmp_path / "dogs")
    assert [f.name for f in image_files([folder])] == ["0.png", "1.png", "2.png"]
    assert read_captions(image_files([folder / "1.png"])) == ["a photo of a dog number 1"]
    with pytest.raises(ConesregError, match="does not exist"):
        image_files([tmp_path / "nothing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConesregError, match="no images found"):
        image_files([tmp_path / "empty"])
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConesregError, match="cannot read image .*broken.png"):
        conesreg.load_subject_images(tmp_path / "empty", size=8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sparsity": 0.1, "tau": 1e-7}, "give --sparsity or --tau, not both"),
        ({"refine": [("a/b@1", "x"), ("a/c@1", "y")]}, "give IMAGES or --refine, not both"),
        ({"images": []}, "no subject images given"),
        ({"images": [], "refine": [("a/b@1", "x")]}, "--refine needs two concepts or more"),
        ({"class_word": None}, "--class-word is missing"),
    ],
)
def test_bad_option_combinations_raise_the_cli_errors(options: dict, message: str) -> None:
    given = {"images": ["dogs/"], "refine": [], "class_word": "dog", "sparsity": None, "tau": None}
    with pytest.raises(ConesregError, match=message):
        check_find_options(**{**given, **options})


def test_plan_find_checks_before_any_model(isolated: Path) -> None:
    folder = save_subject(isolated / "dogs")
    plan = conesreg.plan_find(name="dog", images=[folder], class_word="dog", steps=20)
    assert (plan.namespace, plan.name) == ("library", "dog")
    assert plan.subject is not None and plan.parents == []
    assert plan.subject.captions == [f"a photo of a dog number {i}" for i in range(3)]
    assert (plan.config.steps, plan.config.rounds, plan.config.sparsity) == (20, 10, 0.05)
    assert plan.config.class_prompt == "a photo of a dog"
    for kwargs, message in (
        ({"name": "acme/dog@1"}, "--name takes NAMESPACE/NAME"),
        ({"sparsity": 0.1, "tau": 1.0}, "not both"),
        ({"refine": [("acme/a@1", folder), ("acme/b@1", folder)]}, "not both"),
        ({"class_word": "cat"}, "does not name the class word 'cat'"),
        ({"preserve": ("a photo of a cat",)}, "need a preservation weight"),
    ):
        args = {"name": "acme/dog", "images": [folder], "class_word": "dog", **kwargs}
        with pytest.raises(ConesregError, match=message):
            conesreg.plan_find(**args)


def test_find_config_defaults() -> None:
    search = find_config(class_word="star")
    refine = find_config(class_word="star", refine=True)
    assert (search.steps, search.rounds, search.sparsity) == (100, 10, 0.05)
    assert (refine.steps, refine.rounds, refine.sparsity) == (20, 2, 0.005)
    tau = find_config(class_word="star", tau=1e-7, prompt="a {class_word}", batch_size=2)
    assert (tau.sparsity, tau.tau, tau.class_prompt, tau.batch_size) == (None, 1e-7, "a star", 2)


def test_run_find_writes_a_draft_with_captions(isolated: Path, tiny_pipeline_dir: Path) -> None:
    folder = save_subject(isolated / "dogs", n=2)
    plan = conesreg.plan_find(
        name="acme/dog", images=[folder], class_word="dog", steps=2, rounds=1, batch_size=1
    )
    steps: list[int] = []
    out = isolated / "draft"
    mask = conesreg.run_find(
        plan, out, base=tiny_pipeline_dir, device="cpu", on_step=lambda s, *_: steps.append(s)
    )
    assert steps == [1, 2] and sum(len(v) for v in mask.values()) > 0
    assert not (out / CHECKPOINT_FILE).exists()
    draft = json.loads((out / "concept.json").read_text())
    assert (draft["namespace"], draft["name"]) == ("acme", "dog")
    assert draft["base_model"]["id"] == str(tiny_pipeline_dir)
