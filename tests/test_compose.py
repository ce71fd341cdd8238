"""Composing concepts into a pipeline: exact, reversible, union semantics, safety before writes."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import conesreg
from conesreg import Concept
from conesreg._compose import active_concepts, apply, load_pipeline, restore
from conesreg._generate import generate, read_png_metadata, save_png
from conesreg.errors import (
    BaseModelMismatchError,
    ConesregError,
    ConesregWarning,
    DeviceMemoryError,
    MaskError,
    UnsupportedPipelineError,
)
from conesreg.testing import make_tiny_draft, make_tiny_pipeline


def snapshot(pipe) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}


def assert_bitwise(pipe, ref: dict[str, torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
    now = pipe.unet.state_dict()
    for k, v in ref.items():
        a, b = now[k].detach().cpu(), v.to(now[k].dtype).cpu()
        assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), k


def expected_after(ref, concepts) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    out = {k: v.clone() for k, v in ref.items()}
    for c in concepts:
        for name, idx in c.indices.items():
            out[name].view(-1)[torch.from_numpy(idx)] = 0
    return out


def concept(tmp: Path, pipe, seed: int, fraction: float = 0.05) -> Concept:  # type: ignore[no-untyped-def]
    return Concept.from_draft(
        make_tiny_draft(
            tmp / f"c{seed}-{fraction}", pipe, seed=seed, fraction=fraction, name=f"c{seed}"
        )
    )


def test_apply_zeroes_union_and_restore_is_exact(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref = snapshot(pipe)
    a, b = concept(tmp_path, pipe, 1), concept(tmp_path, pipe, 2)
    handle = apply(pipe, [a, b])
    assert_bitwise(pipe, expected_after(ref, [a, b]))
    assert [c.label for c in active_concepts(pipe)] == [a.label, b.label]
    handle.restore()
    assert_bitwise(pipe, ref)
    handle.restore()  # a second restore is a no-op
    assert_bitwise(pipe, ref)


@pytest.mark.filterwarnings("ignore::conesreg.errors.ConesregWarning")
def test_random_sequences_restore_bitwise(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref = snapshot(pipe)
    pool = [concept(tmp_path, pipe, s, f) for s, f in [(1, 0.05), (2, 0.2), (3, 0.01), (4, 0.6)]]
    rng = random.Random(0)
    handles: list = []
    for _ in range(40):
        op = rng.choice(["apply", "apply", "restore", "swap"])
        if op == "apply":
            handles.append(apply(pipe, rng.sample(pool, rng.randint(1, 3))))
        elif op == "restore" and handles:
            handles.pop(rng.randrange(len(handles))).restore()
        elif op == "swap" and handles:
            handles.pop(rng.randrange(len(handles))).restore()
            handles.append(apply(pipe, rng.sample(pool, 2)))
        on = {c.digest: c for h in handles for c in h.concepts}
        assert_bitwise(pipe, expected_after(ref, on.values()))
    for h in handles:
        h.restore()
    assert_bitwise(pipe, ref)


def test_applied_twice_is_idempotent(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref = snapshot(pipe)
    a = concept(tmp_path, pipe, 1)
    h1, h2 = apply(pipe, [a]), apply(pipe, [a, a])
    assert h2.concepts == [a] and active_concepts(pipe) == [a]
    h1.restore()
    assert_bitwise(pipe, expected_after(ref, [a]))  # still held by h2
    h2.restore()
    assert_bitwise(pipe, ref)


def test_context_manager_and_restore_all(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref = snapshot(pipe)
    a, b = concept(tmp_path, pipe, 1), concept(tmp_path, pipe, 2)
    with conesreg.apply(pipe, [a]):
        assert active_concepts(pipe) == [a]
    assert_bitwise(pipe, ref)
    apply(pipe, [a])
    apply(pipe, [b])
    restore(pipe)
    assert_bitwise(pipe, ref)
    assert active_concepts(pipe) == []


def test_base_model_mismatch_refused_untouched(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = make_tiny_pipeline(seed=1)
    foreign = concept(tmp_path, other, 1)
    ref = snapshot(pipe)
    with pytest.raises(BaseModelMismatchError) as e:
        apply(pipe, [concept(tmp_path, pipe, 2), foreign])
    assert foreign.manifest.base_model.hash in str(e.value) and "tiny/test" in str(e.value)
    assert_bitwise(pipe, ref)
    assert active_concepts(pipe) == []
    with pytest.warns(ConesregWarning, match="applying anyway"):
        handle = apply(pipe, [foreign], force=True)
    assert_bitwise(pipe, expected_after(ref, [foreign]))
    handle.restore()
    assert_bitwise(pipe, ref)


def test_missing_or_misshaped_target_refused(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = concept(tmp_path, pipe, 1)
    ref = snapshot(pipe)
    targets = list(good.manifest.base_model.targets)
    renamed = targets[0].model_copy(update={"name": "nope.attn2.to_k.weight"})
    bad = good.manifest.base_model.model_copy(update={"targets": (renamed, *targets[1:])})
    manifest = good.manifest.model_construct(**{**dict(good.manifest), "base_model": bad})
    with pytest.raises(BaseModelMismatchError, match="does not have"):
        apply(pipe, [Concept(manifest, good.indices)])
    shaped = targets[0].model_copy(update={"shape": (4, 256)})
    bad = good.manifest.base_model.model_copy(update={"targets": (shaped, *targets[1:])})
    manifest = good.manifest.model_construct(**{**dict(good.manifest), "base_model": bad})
    with pytest.raises(BaseModelMismatchError, match="shape"):
        apply(pipe, [Concept(manifest, good.indices)])
    assert_bitwise(pipe, ref)


def test_index_out_of_range_refused(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = concept(tmp_path, pipe, 1)
    ref = snapshot(pipe)
    indices = dict(good.indices)
    name = next(iter(indices))
    indices[name] = np.append(indices[name], 10**6)
    with pytest.raises(MaskError, match="out of range"):
        apply(pipe, [good, Concept(good.manifest, indices)])
    assert_bitwise(pipe, ref)


def test_out_of_memory_leaves_pipeline_untouched(pipe, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ref = snapshot(pipe)

    def oom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    a = concept(tmp_path, pipe, 1)
    monkeypatch.setattr(torch, "empty", oom)
    with pytest.raises(DeviceMemoryError, match="left as it was"):
        apply(pipe, [a])
    monkeypatch.undo()
    assert_bitwise(pipe, ref)
    assert active_concepts(pipe) == []


def test_unsupported_pipeline() -> None:
    with pytest.raises(UnsupportedPipelineError, match="has no UNet"):
        apply(object(), [])


def test_restore_after_dtype_move(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref = snapshot(pipe)
    a = concept(tmp_path, pipe, 1)
    handle = apply(pipe, [a])
    pipe.to(torch.float16)
    handle.restore()
    assert_bitwise(pipe, {k: v.half() for k, v in ref.items()})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_restore_after_device_move(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref = snapshot(pipe)
    a, b = concept(tmp_path, pipe, 1), concept(tmp_path, pipe, 2)
    handle = apply(pipe, [a])
    pipe.to("cuda")
    handle.restore()
    assert_bitwise(pipe, ref)
    again = apply(pipe, [b])  # works on the GPU too
    again.restore()
    assert_bitwise(pipe, ref)


def test_overlap_warning_and_report(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = concept(tmp_path, pipe, 1, 0.5)
    b = concept(tmp_path, pipe, 2, 0.5)
    with pytest.warns(ConesregWarning, match="share"):
        handle = apply(pipe, [a, b])
    [row] = handle.overlaps
    shared = sum(len(np.intersect1d(a.indices[n], b.indices[n])) for n in a.indices)
    assert row.shared == shared and 0.2 < row.jaccard < 0.5
    handle.restore()
    c, d = concept(tmp_path, pipe, 3, 0.01), concept(tmp_path, pipe, 4, 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConesregWarning)
        apply(pipe, [c, d]).restore()


def test_generate_metadata_and_exact_return(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kw = dict(seed=3, steps=2, height=32, width=32, guidance=2.0)
    plain = generate(pipe, "a photo of a dog", **kw)
    a = concept(tmp_path, pipe, 1, 0.3)
    with apply(pipe, [a]):
        with_concept = generate(pipe, "a photo of a dog", **kw, num_images=2)
    again = generate(pipe, "a photo of a dog", **kw)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(again.images[0]))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(with_concept.images[0]))
    path = save_png(with_concept, tmp_path / "out.png")
    meta = read_png_metadata(path)
    assert meta["prompt"] == "a photo of a dog" and meta["seed"] == "3" and meta["steps"] == "2"
    assert meta["base_model_hash"] == a.manifest.base_model.hash
    assert json.loads(meta["concepts"]) == [{"ref": a.label, "digest": a.digest}]
    from PIL import Image

    assert Image.open(path).size == (64, 32)  # two images side by side


def test_load_pipeline_with_installed_concepts(isolated, tiny_pipeline_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from conesreg import push

    base = make_tiny_pipeline(seed=0)
    manifest, _ = push(make_tiny_draft(isolated / "d", base, seed=1), version="1.0.0")
    pipe = load_pipeline(tiny_pipeline_dir, concepts=["acme/dog@^1"], device="cpu")
    [c] = active_concepts(pipe)
    assert c.digest == manifest.digest
    assert (isolated / "project" / "conesreg.lock").is_file()
    restore(pipe)
    assert_bitwise(pipe, snapshot(base))


def test_load_pipeline_errors(isolated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConesregError, match="no model_index.json"):
        load_pipeline(tmp_path, device="cpu")
    with pytest.raises(ConesregError, match="cannot load base model"):
        load_pipeline("acme/not-a-real-model", device="cpu", session=_offline_session())
    with (
        pytest.raises(UnsupportedPipelineError, match="no CUDA")
        if not torch.cuda.is_available()
        else pytest.raises(ConesregError)
    ):
        load_pipeline(tmp_path, device="cuda:0")
    with pytest.raises(UnsupportedPipelineError, match="unknown dtype"):
        load_pipeline(tmp_path, device="cpu", dtype="float8")


def _offline_session():  # type: ignore[no-untyped-def]
    from conesreg._session import Session

    s = Session()
    s.config = s.config.model_copy(update={"offline": True})
    return s


def test_cli_generate_and_overlap(isolated, tiny_pipeline_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from conesreg import push
    from conesreg.cli import main

    base = make_tiny_pipeline(seed=0)
    push(make_tiny_draft(isolated / "d", base, seed=1, fraction=0.3), version="1.0.0")
    push(
        make_tiny_draft(isolated / "e", base, seed=2, fraction=0.3, name="cat", class_word="cat"),
        version="1.0.0",
    )
    out = isolated / "img.png"
    code = main(
        [
            "generate",
            "a photo of a dog",
            "-c",
            "acme/dog",
            "-c",
            "acme/cat@1",
            "--base",
            str(tiny_pipeline_dir),
            "--steps",
            "2",
            "--height",
            "32",
            "--width",
            "32",
            "--num-images",
            "3",
            "--seed",
            "7",
            "-o",
            str(out),
            "--device",
            "cpu",
        ]
    )
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert "(64x64, a grid of 3 32x32 images, seed 7" in printed  # the file's size, not one image's
    meta = read_png_metadata(out)
    assert [c["ref"] for c in json.loads(meta["concepts"])] == ["acme/dog@1.0.0", "acme/cat@1.0.0"]
    assert meta["seed"] == "7" and meta["num_images"] == "3"
    code = main(["info", "--overlap", "acme/dog", "acme/cat", "--json"])
    out_json, _ = capsys.readouterr()
    [row] = json.loads(out_json)
    assert code == 0 and row["a"] == "acme/dog@1.0.0" and row["shared"] > 0
    code = main(["generate", "x", "-o", str(isolated / "x.jpg")])
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith("error: ") and "png" in err
    code = main(
        [
            "generate",
            "x",
            "--base",
            str(tiny_pipeline_dir),
            "-c",
            "acme/dog",
            "--device",
            "cpu",
            "--steps",
            "1",
            "-o",
            str(isolated / "y.png"),
            "--frozen",
            "--project",
            str(isolated / "elsewhere"),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 1 and "not in conesreg.lock" in err


def test_sdxl_unet_naming(tmp_path: Path) -> None:
    """SDXL's UNet (several transformer blocks per attention, text-time embedding) composes too."""
    from diffusers import UNet2DConditionModel

    from conesreg._base_hash import default_targets

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=56,
        norm_num_groups=8,
    )
    targets = default_targets(n for n, _ in unet.named_parameters())
    assert "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight" in targets
    ref = {k: v.clone() for k, v in unet.state_dict().items()}
    c = Concept.from_draft(make_tiny_draft(tmp_path / "xl", unet, seed=1, fraction=0.1))
    handle = apply(unet, [c])
    assert all(
        torch.all(unet.get_parameter(n).view(-1)[torch.from_numpy(i)] == 0)
        for n, i in c.indices.items()
    )
    handle.restore()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in ref.items())


def test_generate_keeps_a_compatible_lock_and_says_when_it_writes(
    isolated, tiny_pipeline_dir: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """Using a concept never rewrites the lock silently: a compatible reference takes the locked
    version as it is; one the lock does not allow updates it, with a warning."""
    from conesreg import install, push
    from conesreg.cli import main

    base = make_tiny_pipeline(seed=0)
    for i, version in enumerate(["1.2.0", "1.3.0"]):
        push(make_tiny_draft(isolated / f"d{i}", base, seed=1 + i, fraction=0.3), version=version)
    install(["acme/dog@~1.2"])  # locks 1.2.0 as ~1.2
    lock = isolated / "project" / "conesreg.lock"
    before = lock.read_bytes()

    def generate(ref: str) -> tuple[int, str]:
        argv = ["generate", "a photo of a dog", "-c", ref, "--base", str(tiny_pipeline_dir)]
        argv += ["--steps", "1", "--height", "32", "--width", "32", "--device", "cpu"]
        code = main([*argv, "-o", str(isolated / "img.png")])
        return code, capsys.readouterr()[1]

    code, err = generate("acme/dog@^1")  # ^1 allows the locked 1.2.0
    assert code == 0 and "conesreg.lock" not in err, err
    assert lock.read_bytes() == before
    meta = read_png_metadata(isolated / "img.png")
    assert [c["ref"] for c in json.loads(meta["concepts"])] == ["acme/dog@1.2.0"]
    code, err = generate("acme/dog@1.3")  # the lock does not allow it: updated, and said
    assert code == 0 and "warning: conesreg.lock updated: acme/dog@1.3.0 (1.3)" in err, err
    assert lock.read_bytes() != before
