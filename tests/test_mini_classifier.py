"""Tests of the mini world's attribute classifier (conesreg.mini.classifier).

The bundled checkpoint is checked on a small fixed sample of fresh renders, so a broken or stale
checkpoint fails here; the full table comes from ``python -m conesreg.mini.classifier eval``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conesreg.mini.classifier import (
    DEFAULT_WEIGHTS,
    HEADS,
    AttributeClassifier,
    augment,
    evaluate,
    gaussian_blur,
    load_classifier,
    predict,
    scene_labels,
    train_classifier,
)
from conesreg.mini.world import (
    BACKGROUNDS,
    COLORS,
    PATTERNS,
    SHAPES,
    SIZES,
    SLOTS,
    Obj,
    Scene,
    render,
    sample_scene,
)


@pytest.fixture(scope="module")
def model() -> AttributeClassifier:
    return load_classifier()


def test_bundled_weights_are_small_fp16() -> None:
    from safetensors import safe_open

    assert DEFAULT_WEIGHTS.stat().st_size < 2 * 1024 * 1024
    with safe_open(str(DEFAULT_WEIGHTS), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
    assert torch.float16 in dtypes
    assert torch.float32 not in dtypes


def test_loaded_model_is_float32_eval(model: AttributeClassifier) -> None:
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bundled_weights_accuracy(model: AttributeClassifier) -> None:
    # A seed of the evaluation stream, which training never draws from.
    scores = evaluate(model, n=200, seed=12345)
    for group in ("single", "multi"):
        for head in HEADS:
            if head == "scene_exact":
                continue
            assert scores[f"{group}/{head}"] >= 0.95, (group, head, scores)


def test_predict_format(model: AttributeClassifier) -> None:
    rng = np.random.default_rng(7)
    scenes = [sample_scene(rng, n_objects=k, allow_held_out=True) for k in (1, 2, 3, 4)]
    images = np.stack([render(s) for s in scenes])
    results = predict(model, images)
    assert len(results) == len(scenes)
    for res in results:
        assert set(res) == {"background", "count", "objects"}
        assert res["background"] in BACKGROUNDS
        assert isinstance(res["count"], int)
        assert res["count"] == len(res["objects"])
        for obj in res["objects"]:
            assert set(obj) == {"slot", "shape", "color", "pattern", "size"}
            assert obj["slot"] in SLOTS
            assert obj["shape"] in SHAPES
            assert obj["color"] in COLORS
            assert obj["pattern"] in PATTERNS
            assert obj["size"] in SIZES
        slots = [o["slot"] for o in res["objects"]]
        assert slots == sorted(slots, key=SLOTS.index)
    assert [r["count"] for r in results] == [1, 2, 3, 4]


def test_predict_reads_a_known_scene(model: AttributeClassifier) -> None:
    scene = Scene(
        objects=(
            Obj("star", "red", "stripes", "large", "top left"),
            Obj("circle", "blue", "plain", "small", "bottom right"),
        ),
        background="gray",
    )
    (res,) = predict(model, render(scene)[None])
    assert res["background"] == "gray"
    assert res["objects"] == [
        {"slot": o.slot, "shape": o.shape, "color": o.color, "pattern": o.pattern, "size": o.size}
        for o in scene.objects
    ]


def test_predict_is_deterministic(model: AttributeClassifier) -> None:
    rng = np.random.default_rng(3)
    images = np.stack([render(sample_scene(rng, allow_held_out=True)) for _ in range(8)])
    assert predict(model, images) == predict(model, images)
    # One image without a batch axis is read as a batch of one.
    assert predict(model, images[0]) == predict(model, images[:1])


def test_predict_resizes_other_sizes(model: AttributeClassifier) -> None:
    scene = sample_scene(np.random.default_rng(5), n_objects=1, allow_held_out=True)
    big = render(scene, size=128)
    (res,) = predict(model, big[None])
    (obj,) = scene.objects
    assert res["objects"][0]["slot"] == obj.slot
    assert res["objects"][0]["shape"] == obj.shape


def test_predict_rejects_bad_input(model: AttributeClassifier) -> None:
    with pytest.raises(ValueError, match="uint8"):
        predict(model, np.zeros((1, 64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="RGB"):
        predict(model, np.zeros((1, 64, 64), dtype=np.uint8))


def test_scene_labels_mask_empty_slots() -> None:
    scene = Scene(objects=(Obj("heart", "green", "dots", "small", "center"),), background="navy")
    row = scene_labels(scene)
    assert row[0] == BACKGROUNDS.index("navy")
    assert row[1] == 0
    per_slot = row[2:].reshape(len(SLOTS), 5)
    assert per_slot[0].tolist() == [1, SHAPES.index("heart"), COLORS.index("green"), 3, 0]
    assert (per_slot[1:, 0] == 0).all()
    assert (per_slot[1:, 1:] == -100).all()


def test_augment_keeps_range_and_is_seeded() -> None:
    x = torch.rand(4, 3, 64, 64)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1


def test_gaussian_blur_zero_sigma_is_identity() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(gaussian_blur(x, 0.0), x)
    blurred = gaussian_blur(x, 1.0)
    assert blurred.std() < x.std()


def test_tiny_training_run_writes_loadable_file(tmp_path: Path) -> None:
    out = tmp_path / "clf.safetensors"
    kwargs = {"steps": 2, "batch_size": 8, "seed": 0, "progress": False, "pool_size": 64}
    trained = train_classifier(out_path=out, **kwargs)
    loaded = load_classifier(out)
    assert isinstance(loaded, AttributeClassifier)
    assert not loaded.training
    images = np.stack([render(sample_scene(np.random.default_rng(i))) for i in range(2)])
    assert len(predict(loaded, images)) == 2
    # Same seed, same weights: training is deterministic on CPU.
    again = train_classifier(out_path=tmp_path / "again.safetensors", **kwargs)
    for (name, a), b in zip(trained.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_load_rejects_foreign_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="not a conesreg mini classifier"):
        load_classifier(path)
