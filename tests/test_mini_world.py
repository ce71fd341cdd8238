"""The mini world: deterministic scenes, renders that show their ground truth, captions."""

from __future__ import annotations

import numpy as np

from conesreg.mini.model import make_tokenizer
from conesreg.mini.world import (
    BACKGROUNDS,
    HELD_OUT,
    PATTERN_WORDS,
    SHAPES,
    WORDS,
    Obj,
    Scene,
    caption,
    full_caption,
    render,
    sample_scene,
)


def test_seeded_and_deterministic() -> None:
    a = [sample_scene(np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    assert np.array_equal(render(a[0]), render(a[1]))
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    assert caption(a[0], r1) == caption(a[0], r2)


def test_scene_sampling_rules() -> None:
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(400):
        s = sample_scene(rng)
        counts.add(len(s.objects))
        slots = [o.slot for o in s.objects]
        assert len(set(slots)) == len(slots)
        if len(slots) > 1:
            assert "center" not in slots
        assert all(o.triple not in HELD_OUT for o in s.objects)
        assert s.background in BACKGROUNDS
    assert counts == {1, 2, 3, 4}
    assert len(HELD_OUT) == 12


def test_render_shows_ground_truth() -> None:
    plain = Scene((Obj("square", "red", "plain", "large", "center"),), "gray")
    img = render(plain).astype(int)
    assert tuple(img[32, 32]) == (220, 30, 35)  # the object's color in the middle
    assert tuple(img[2, 2]) == (120, 120, 120)  # the background in the corner
    # Every pattern and shape changes the pixels.
    renders = {
        (sh, p): render(Scene((Obj(sh, "blue", p, "large", "center"),), "black")).tobytes()
        for sh in SHAPES
        for p in PATTERN_WORDS
    }
    assert len(set(renders.values())) == len(renders)
    tl = render(Scene((Obj("circle", "yellow", "plain", "small", "top left"),), "navy"))
    assert tuple(tl[17, 17]) == (245, 220, 30) and tuple(tl[46, 46]) == (20, 25, 80)


def test_captions() -> None:
    s = Scene(
        (
            Obj("star", "orange", "stripes", "small", "top left"),
            Obj("heart", "purple", "dots", "large", "bottom right"),
        ),
        "brown",
    )
    assert full_caption(s) == (
        "a photo of a small striped orange star at the top left and "
        "a large dotted purple heart at the bottom right on a brown background"
    )
    rng = np.random.default_rng(0)
    texts = {caption(s, rng) for _ in range(200)}
    assert len(texts) > 20  # attributes come and go
    assert all("star" in t and "heart" in t for t in texts)  # shapes always stay


def test_tokenizer_spells_every_word_as_one_token() -> None:
    tok = make_tokenizer()
    for word in WORDS:
        assert len(tok(word).input_ids) == 3, word
    long = full_caption(sample_scene(np.random.default_rng(1), n_objects=4))
    ids = tok(long).input_ids
    assert len(ids) <= tok.model_max_length and tok.eos_token_id in ids


def test_subject_captions_describe_the_renders_but_not_the_subject() -> None:
    from conesreg.mini.subjects import (
        SUBJECTS,
        _subject_scenes,
        subject_captions,
        subject_images,
    )
    from conesreg.mini.world import COLORS, PATTERN_WORDS, where

    s = SUBJECTS["purple-checker-star"]
    captions = subject_captions(s, n=6, seed=7)
    scenes = _subject_scenes(s, 6, 7)
    assert len(captions) == len(subject_images(s, n=6, seed=7)) == 6
    for text, scene in zip(captions, scenes, strict=True):
        assert text.startswith("a photo of a star ")
        assert where(scene.objects[0].slot) in text
        assert f"on a {scene.background} background" in text
        # The color and the pattern are the concept's to supply, never the caption's.
        assert not set(text.split()) & {*COLORS, *PATTERN_WORDS.values()}


def test_find_config_preserves_the_other_classes_only_with_a_weight() -> None:
    from conesreg.mini.subjects import SUBJECTS

    s = SUBJECTS["orange-striped-heart"]
    with_weight = s.find_config(seed=1, lam=0.5)
    assert with_weight.class_prompt == "a photo of a heart"
    assert set(with_weight.preserve) == {f"a photo of a {sh}" for sh in SHAPES if sh != "heart"}
    assert s.find_config(seed=1, lam=0.0).preserve == ()
