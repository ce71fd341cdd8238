"""The Cones finder on the tiny pipeline: the criterion's promise, determinism, a pushable draft."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conesreg._find import FindConfig, candidate_names, find_neurons, write_draft
from conesreg.errors import ConesregError
from conesreg.testing import make_tiny_pipeline

CONFIG = FindConfig("a photo of a dog", "dog", steps=24, rounds=4, sparsity=0.05, batch_size=2)


@pytest.fixture(scope="module")
def subject() -> np.ndarray:
    # A "subject": the same bright, textured square in every image, unlike anything random.
    images = np.full((4, 32, 32, 3), 40, dtype=np.uint8)
    images[:, 8:24, 8:24] = (230, 200, 20)
    images[:, 8:24:4, 8:24] = (20, 20, 200)
    return images


def fixed_loss(pipe, images: np.ndarray, prompt: str = CONFIG.class_prompt) -> float:  # type: ignore[no-untyped-def]
    """The stimulation loss on one fixed batch of noise and timesteps."""
    from conesreg._find import _embed, _latents

    g = torch.Generator().manual_seed(123)
    z = _latents(pipe, images).repeat(4, 1, 1, 1)
    noise = torch.randn(z.shape, generator=g)
    t = torch.linspace(50, 950, len(z)).long()
    zt = pipe.scheduler.add_noise(z, noise, t)
    with torch.no_grad():
        pred = pipe.unet(zt, t, _embed(pipe, prompt)[0].expand(len(z), -1, -1)).sample
    v_pred = pipe.scheduler.config.prediction_type == "v_prediction"
    target = pipe.scheduler.get_velocity(z, noise, t) if v_pred else noise
    return float(F.mse_loss(pred, target))


def masked_loss(pipe, mask: dict, images: np.ndarray, prompt: str = CONFIG.class_prompt) -> float:  # type: ignore[no-untyped-def]
    """:func:`fixed_loss` with ``mask`` applied as a pushed concept would be."""
    import tempfile

    from conesreg._compose import apply
    from conesreg._concept import Concept

    with tempfile.TemporaryDirectory() as tmp:
        draft = write_draft(
            Path(tmp), pipe, mask, CONFIG, name="dog", base_id="tiny", preview_seeds=(0,)
        )
        with apply(pipe, [Concept.from_draft(draft)]):
            return fixed_loss(pipe, images, prompt)


def test_mask_lowers_the_stimulation_loss(subject: np.ndarray) -> None:
    pipe = make_tiny_pipeline(seed=0)
    mask = find_neurons(pipe, subject, CONFIG)
    total = sum(pipe.unet.get_parameter(n).numel() for n in candidate_names(pipe.unet))
    selected = sum(len(v) for v in mask.values())
    assert 0.02 * total < selected <= 0.05 * total + 1
    assert masked_loss(pipe, mask, subject) < fixed_loss(pipe, subject)


def test_v_prediction_models_are_scored_on_their_own_objective(subject: np.ndarray) -> None:
    from diffusers import DDIMScheduler

    eps_pipe, v_pipe = make_tiny_pipeline(seed=0), make_tiny_pipeline(seed=0)
    v_pipe.scheduler = DDIMScheduler.from_config(
        v_pipe.scheduler.config, prediction_type="v_prediction"
    )
    # Same weights, noise and timesteps: only the target differs, so must the neurons.
    eps_mask = find_neurons(eps_pipe, subject, CONFIG)
    v_mask = find_neurons(v_pipe, subject, CONFIG)
    assert any(
        not np.array_equal(eps_mask.get(n, []), v_mask.get(n, [])) for n in eps_mask | v_mask
    )
    assert masked_loss(v_pipe, v_mask, subject) < fixed_loss(v_pipe, subject)


def test_deterministic_and_leaves_the_pipeline_untouched(subject: np.ndarray) -> None:
    pipe = make_tiny_pipeline(seed=0)
    ref = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    grads = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    a = find_neurons(pipe, subject, CONFIG)
    b = find_neurons(pipe, subject, CONFIG)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert all(torch.equal(ref[k], v) for k, v in pipe.unet.state_dict().items())
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == grads
    other = find_neurons(pipe, subject, FindConfig(**{**CONFIG.__dict__, "seed": 1}))
    assert any(not np.array_equal(a[n], other[n]) for n in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("autocast", [False, True])
def test_runs_on_cuda(subject: np.ndarray, autocast: bool) -> None:
    pipe = make_tiny_pipeline(seed=0).to("cuda")
    ref = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    mask = find_neurons(pipe, subject, FindConfig(**{**CONFIG.__dict__, "autocast": autocast}))
    assert all(torch.equal(ref[k], v) for k, v in pipe.unet.state_dict().items())
    total = sum(pipe.unet.get_parameter(n).numel() for n in candidate_names(pipe.unet))
    assert 0.02 * total < sum(len(v) for v in mask.values()) <= 0.05 * total + 1
    pipe.to("cpu")  # the criterion's promise, on the fixed batch the CPU tests use
    assert masked_loss(pipe, mask, subject) < fixed_loss(pipe, subject)


@pytest.mark.parametrize("candidates", ["cross-self-kv", "attention"])
def test_other_candidate_sets(subject: np.ndarray, candidates: str) -> None:
    pipe = make_tiny_pipeline(seed=0)
    names = candidate_names(pipe.unet, candidates)
    assert set(candidate_names(pipe.unet)) < set(names)
    cfg = FindConfig(**{**CONFIG.__dict__, "candidates": candidates})
    mask = find_neurons(pipe, subject, cfg)
    assert sorted(mask) == names
    assert any(len(mask[n]) for n in set(names) - set(candidate_names(pipe.unet)))
    assert masked_loss(pipe, mask, subject) < fixed_loss(pipe, subject)  # composes, and helps


def test_tau_mode(subject: np.ndarray) -> None:
    pipe = make_tiny_pipeline(seed=0)
    cfg = FindConfig("a photo of a dog", "dog", steps=8, rounds=2, sparsity=None, tau=1e-9)
    mask = find_neurons(pipe, subject, cfg)
    assert sum(len(v) for v in mask.values()) > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity": None},
        {"tau": 1e-6},
        {"sparsity": 1.5},
        {"steps": 0},
        {"rounds": 99},
        {"candidates": "everything"},
        {"preserve": ("a photo of a cat",)},  # without a preservation weight
        {"bands": 0},
        {"bands": 3},  # more bands than the batch has images
    ],
)
def test_bad_configs(kwargs: dict) -> None:
    with pytest.raises(ConesregError):
        FindConfig(**{**CONFIG.__dict__, **kwargs})


def test_draft_pushes_and_installs(isolated: Path, subject: np.ndarray) -> None:
    from conesreg import install, push
    from conesreg._compose import active_concepts, apply

    pipe = make_tiny_pipeline(seed=0)
    mask = find_neurons(pipe, subject, CONFIG)
    draft = write_draft(
        isolated / "draft",
        pipe,
        mask,
        CONFIG,
        name="dog",
        namespace="acme",
        base_id="tiny",
        preview_seeds=(0,),
    )
    assert sorted(p.name for p in (draft / "previews").iterdir()) == [
        "with-mask-0.png",
        "without-mask-0.png",
    ]
    manifest, created = push(draft, version="1.0.0")
    assert created and manifest.metadata.method.hyperparameters["sparsity"] == 0.05
    assert len(manifest.metadata.previews) == 2
    install(["acme/dog@1"])
    with apply(pipe, ["acme/dog@1"]):
        assert [c.label for c in active_concepts(pipe)] == ["acme/dog@1.0.0"]


def test_resume_equals_uninterrupted(tmp_path: Path, subject: np.ndarray) -> None:
    pipe = make_tiny_pipeline(seed=0)
    whole = find_neurons(pipe, subject, CONFIG)
    ckpt = tmp_path / "search.pt"

    class Stop(Exception):
        pass

    def stop_after_round_two(step: int, loss: float, sparsity: float) -> None:
        if step == 2 * CONFIG.steps // CONFIG.rounds + 1:
            raise Stop

    with pytest.raises(Stop):
        find_neurons(pipe, subject, CONFIG, checkpoint=ckpt, on_step=stop_after_round_two)
    resumed = find_neurons(pipe, subject, CONFIG, checkpoint=ckpt)
    assert all(np.array_equal(whole[n], resumed[n]) for n in whole)
    with pytest.raises(ConesregError, match="other settings"):
        find_neurons(pipe, subject, FindConfig(**{**CONFIG.__dict__, "seed": 5}), checkpoint=ckpt)


def _find_args(folder: Path, out: Path, base: Path) -> list[str]:
    return [
        "find",
        str(folder),
        "--class-word",
        "dog",
        "--name",
        "acme/dog",
        "-o",
        str(out),
        "--base",
        str(base),
        "--steps",
        "8",
        "--rounds",
        "2",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]


def test_cli_find_then_push(
    isolated: Path,
    tiny_pipeline_dir: Path,
    subject: np.ndarray,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conesreg import constants
    from conesreg.cli import main

    folder = _save_images(isolated / "subject", subject)
    out = isolated / "draft"
    meta = ["--description", "our dog", "--tag", "pet", "--tag", "animal", "--license", "MIT"]
    # Standard error is not a terminal here: progress comes as plain lines (often, for the test).
    monkeypatch.setattr(constants, "PROGRESS_SECONDS", 0.001)
    code = main([*_find_args(folder, out, tiny_pipeline_dir), *meta])
    err = capsys.readouterr().err
    assert code == 0, err
    assert re.search(r"^finding\s+loss \d\.\d+\s+off [\d.]+%: \d/8 steps, \d+ s$", err, re.M), err
    assert not (out / ".find-checkpoint.pt").exists()
    assert main(["push", str(out), "--version", "1.0.0"]) == 0
    capsys.readouterr()
    assert main(["info", "acme/dog", "--json"]) == 0
    published = json.loads(capsys.readouterr().out)["manifest"]["metadata"]
    assert (published["description"], published["tags"], published["license"]) == (
        "our dog",
        ["pet", "animal"],
        "MIT",
    )
    # A bad value is refused before the search, and nothing is written.
    bad = [*_find_args(folder, isolated / "never", tiny_pipeline_dir), "--tag", "a\tb\nc"]
    assert main(bad) == 1 and "tags" in capsys.readouterr().err
    assert not (isolated / "never").exists()
    code = main(_find_args(isolated / "nothing", out, tiny_pipeline_dir))
    err = capsys.readouterr().err
    assert code == 1 and "does not exist" in err
    args = _find_args(folder, isolated / "never", tiny_pipeline_dir)
    assert main([*args, "--preserve", "a photo of a cat"]) == 1
    err = capsys.readouterr().err
    assert "need a preservation weight" in err and "--lambda" in err
    assert not (isolated / "never").exists()


def second_subject() -> np.ndarray:
    images = np.full((4, 32, 32, 3), 200, dtype=np.uint8)
    images[:, 4:14, 18:30] = (20, 160, 60)
    return images


def test_soft_shutting_with_rho_one_equals_hard(subject: np.ndarray) -> None:
    pipe = make_tiny_pipeline(seed=0)
    hard = find_neurons(pipe, subject, CONFIG)
    soft_one = find_neurons(pipe, subject, FindConfig(**{**CONFIG.__dict__, "rho": 1.0}))
    assert all(np.array_equal(hard[n], soft_one[n]) for n in hard)
    soft = find_neurons(pipe, subject, FindConfig(**{**CONFIG.__dict__, "rho": 0.5}))
    # Same budget, other choices: later rounds see the earlier ones only half switched off.
    assert sum(map(len, soft.values())) == sum(map(len, hard.values()))
    assert any(not np.array_equal(hard[n], soft[n]) for n in hard)


def test_each_timestep_band_gets_its_share_of_the_budget() -> None:
    from conesreg._find import _switch_off

    # Band 0 scores scalars 0-9 high (as the noisy timesteps would), band 1 scores 10-19 low.
    loud = torch.zeros(40)
    loud[:10] = torch.arange(10, 0, -1) * 100.0
    quiet = torch.zeros(40)
    quiet[10:20] = torch.arange(10, 0, -1) * 1.0
    picked = {}
    for bands in (1, 2):
        cfg = FindConfig(**{**CONFIG.__dict__, "sparsity": 0.1, "rounds": 1, "bands": bands})
        keep = {"w": torch.ones(40)}
        scores = [{"w": loud + quiet}] if bands == 1 else [{"w": loud}, {"w": quiet}]
        _switch_off(scores, keep, cfg, 1, 40, 1, 0)
        picked[bands] = torch.nonzero(keep["w"] < 1).view(-1).tolist()
    assert picked[1] == [0, 1, 2, 3]
    assert picked[2] == [0, 1, 10, 11]


def test_selection_breaks_ties_by_index_on_every_device() -> None:
    from conesreg._find import _switch_off, top_indices

    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, -torch.inf, 3.0])
    assert sorted(top_indices(scores, 2).tolist()) == [1, 2]
    assert sorted(top_indices(scores, 5).tolist()) == [1, 2, 3, 4, 6]
    assert top_indices(scores, 0).numel() == 0
    assert sorted(top_indices(scores, 99).tolist()) == list(range(7))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    # Many equal scores (as a flat region of the loss gives): the same pick, run after run, on
    # every device, and it is the lowest indices among the ties.
    flat = torch.cat([torch.full((5000,), 0.5), torch.tensor([2.0, 1.0])])
    picks = []
    for device in devices:
        for _ in range(3):
            keep = {"a": torch.ones(3000, device=device), "b": torch.ones(2002, device=device)}
            scores_d = [{"a": flat[:3000].to(device), "b": flat[3000:].to(device)}]
            cfg = FindConfig(**{**CONFIG.__dict__, "sparsity": 0.001, "rounds": 1, "bands": 1})
            _switch_off(scores_d, keep, cfg, 1, 5002, 1, 0)
            assert keep["a"].device.type == device  # selected where the scores are
            picks.append(
                (torch.nonzero(keep["a"] < 1).view(-1).tolist(),
                 torch.nonzero(keep["b"] < 1).view(-1).tolist())
            )  # fmt: skip
    assert all(p == picks[0] for p in picks)
    # 0.1% of 5002 is 5: the two high scores, then three ties, lowest indices first.
    assert picks[0] == ([0, 1, 2], [2000, 2001])


def test_banded_search_keeps_the_budget_and_the_promise(subject: np.ndarray) -> None:
    pipe = make_tiny_pipeline(seed=0)
    one = find_neurons(pipe, subject, CONFIG)
    two = find_neurons(pipe, subject, FindConfig(**{**CONFIG.__dict__, "bands": 2}))
    assert sum(map(len, two.values())) == sum(map(len, one.values()))
    assert any(not np.array_equal(one[n], two[n]) for n in one)
    assert masked_loss(pipe, two, subject) < fixed_loss(pipe, subject)


def test_gradient_checkpointing_gives_the_same_mask(subject: np.ndarray) -> None:
    pipe = make_tiny_pipeline(seed=0)
    plain = find_neurons(pipe, subject, CONFIG)
    cfg = FindConfig(**{**CONFIG.__dict__, "gradient_checkpointing": True})
    checkpointed = find_neurons(pipe, subject, cfg)
    assert all(np.array_equal(plain[n], checkpointed[n]) for n in plain)
    assert not pipe.unet.is_gradient_checkpointing  # switched back off


def test_autocast_scores_in_float32_and_restores(subject: np.ndarray) -> None:
    pipe = make_tiny_pipeline(seed=0)
    ref = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    mask = find_neurons(pipe, subject, FindConfig(**{**CONFIG.__dict__, "autocast": True}))
    assert sum(map(len, mask.values())) > 0
    assert all(torch.equal(ref[k], v) for k, v in pipe.unet.state_dict().items())
    assert all(v.dtype == torch.float32 for v in pipe.unet.state_dict().values())


def test_prior_images_are_cached(isolated: Path, subject: np.ndarray) -> None:
    from conesreg import constants

    pipe = make_tiny_pipeline(seed=0)
    cfg = FindConfig(**{**CONFIG.__dict__, "lam": 0.5, "prior_images": 2, "steps": 4})
    first = find_neurons(pipe, subject, cfg)
    cached = list((constants.CACHE_DIR).glob("find-priors-*/*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (2, 32, 32, 3)
    calls = []
    original = type(pipe).__call__

    def counting(self, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(self, *a, **k)

    type(pipe).__call__ = counting  # type: ignore[method-assign]
    try:
        second = find_neurons(pipe, subject, cfg)
    finally:
        type(pipe).__call__ = original  # type: ignore[method-assign]
    assert not calls and all(np.array_equal(first[n], second[n]) for n in first)
    without_prior = find_neurons(pipe, subject, FindConfig(**{**cfg.__dict__, "lam": 0.0}))
    assert any(not np.array_equal(first[n], without_prior[n]) for n in first)


def test_preserving_another_prompt_spares_it(isolated: Path, subject: np.ndarray) -> None:
    from conesreg import constants
    from conesreg._find import _prior_images

    pipe = make_tiny_pipeline(seed=0)
    other = "a photo of a cat"
    cfg = FindConfig(**{**CONFIG.__dict__, "lam": 4.0, "prior_images": 4, "preserve": (other,)})
    kept = find_neurons(pipe, subject, cfg)
    plain = find_neurons(pipe, subject, CONFIG)
    # One cached prior set, of the preserved prompt only (not of the class prompt).
    assert len(list(constants.CACHE_DIR.glob("find-priors-*/*.npy"))) == 1
    cats = _prior_images(pipe, other, 4, cfg.seed + 1)
    base = fixed_loss(pipe, cats, other)
    # What the base model draws for the preserved prompt moves less under the preserving mask,
    # and the mask still serves its subject.
    assert abs(masked_loss(pipe, kept, cats, other) - base) < abs(
        masked_loss(pipe, plain, cats, other) - base
    )
    assert masked_loss(pipe, kept, subject) < fixed_loss(pipe, subject)


def test_refine_keeps_the_union_and_adds_to_it(subject: np.ndarray) -> None:
    from conesreg._find import refine_neurons

    pipe = make_tiny_pipeline(seed=0)
    a = find_neurons(pipe, subject, CONFIG)
    b = find_neurons(pipe, second_subject(), FindConfig(**{**CONFIG.__dict__, "seed": 3}))
    union = {n: np.union1d(a[n], b[n]) for n in a}
    cfg = FindConfig("a photo of a dog and cat", "dog and cat", steps=4, rounds=2, sparsity=0.01)
    ref = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    joint = refine_neurons(
        pipe, [(subject, "a photo of a dog"), (second_subject(), "a photo of a cat")], union, cfg
    )
    total = sum(pipe.unet.get_parameter(n).numel() for n in candidate_names(pipe.unet))
    added = sum(map(len, joint.values())) - sum(map(len, union.values()))
    assert 0 < added <= round(0.01 * total)
    assert all(np.isin(union[n], joint[n]).all() for n in union)
    assert all(torch.equal(ref[k], v) for k, v in pipe.unet.state_dict().items())
    with pytest.raises(ConesregError, match="not a cross-kv candidate"):
        refine_neurons(pipe, [(subject, "a photo of a dog")], {"conv_in.weight": [0]}, cfg)


def _save_images(folder: Path, images: np.ndarray) -> Path:
    from PIL import Image

    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i}.png")
    return folder


def test_cli_refine_writes_a_composite_with_parents(
    isolated: Path, tiny_pipeline_dir: Path, subject: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    from conesreg import push
    from conesreg.cli import main

    pipe = make_tiny_pipeline(seed=0)
    digests = []
    for name, images in (("dog", subject), ("cat", second_subject())):
        cfg = FindConfig(f"a photo of a {name}", name, steps=4, rounds=2)
        mask = find_neurons(pipe, images, cfg)
        draft = write_draft(
            isolated / name,
            pipe,
            mask,
            cfg,
            name=name,
            namespace="acme",
            base_id="tiny",
            preview_seeds=(),
        )
        digests.append(push(draft, version="1.0.0")[0].digest)
    dogs = _save_images(isolated / "dogs", subject)
    cats = _save_images(isolated / "cats", second_subject())
    args = [
        "find",
        "--name",
        "acme/pair",
        "-o",
        str(isolated / "pair"),
        "--base",
        str(tiny_pipeline_dir),
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--device",
        "cpu",
    ]
    code = main([*args, "--refine", f"acme/dog@1={dogs}", "--refine", f"acme/cat@1={cats}"])
    assert code == 0, capsys.readouterr().err
    draft = json.loads((isolated / "pair" / "concept.json").read_text())
    assert draft["metadata"]["parents"] == [f"acme/dog@{digests[0]}", f"acme/cat@{digests[1]}"]
    assert draft["metadata"]["class_word"] == "dog and cat"
    manifest, _ = push(isolated / "pair", version="1.0.0")
    assert manifest.metadata.parents == tuple(draft["metadata"]["parents"])
    for bad, message in (
        (["--refine", f"acme/dog@1={dogs}"], "two concepts or more"),
        (["--refine", "acme/dog@1", "--refine", f"acme/cat@1={cats}"], "REF=IMAGES"),
        (
            [str(dogs), "--refine", f"acme/dog@1={dogs}", "--refine", f"acme/cat@1={cats}"],
            "not both",
        ),
        ([str(dogs)], "--class-word is missing"),
    ):
        assert main([*args, *bad]) == 1
        assert message in capsys.readouterr().err


def test_captions_pair_each_image_with_its_own_prompt(subject: np.ndarray) -> None:
    pipe = make_tiny_pipeline(seed=0)
    plain = find_neurons(pipe, subject, CONFIG)
    # The class prompt as every caption is the same search as no captions at all.
    same = find_neurons(pipe, subject, CONFIG, captions=[CONFIG.class_prompt] * len(subject))
    assert all(np.array_equal(plain[n], same[n]) for n in plain)
    captions = [f"a dog {where} on a beach" for where in ("left", "right", "up", "down")]
    captioned = find_neurons(pipe, subject, CONFIG, captions=captions)
    assert any(not np.array_equal(plain[n], captioned[n]) for n in plain)
    with pytest.raises(ConesregError, match="3 captions for 4 images"):
        find_neurons(pipe, subject, CONFIG, captions=captions[:3])
    with pytest.raises(ConesregError, match="does not name the class word 'dog'"):
        find_neurons(pipe, subject, CONFIG, captions=[*captions[:3], "a cat on a beach"])


def test_cli_reads_captions_from_metadata_jsonl(
    isolated: Path, tiny_pipeline_dir: Path, subject: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    from conesreg.artifact._mask import decode_mask
    from conesreg.cli import main

    folder = _save_images(isolated / "dogs", subject)
    assert main(_find_args(folder, isolated / "plain", tiny_pipeline_dir)) == 0
    meta = folder / "metadata.jsonl"
    meta.write_text(
        "".join(
            json.dumps({"file_name": f"{i}.png", "text": f"a photo of a dog number {i}"}) + "\n"
            for i in range(len(subject))
        )
    )
    assert main(_find_args(folder, isolated / "captioned", tiny_pipeline_dir)) == 0, (
        capsys.readouterr().err
    )
    plain = decode_mask((isolated / "plain" / "mask.safetensors").read_bytes())
    captioned = decode_mask((isolated / "captioned" / "mask.safetensors").read_bytes())
    assert any(not np.array_equal(plain[n], captioned[n]) for n in plain)
    capsys.readouterr()
    for bad, message in (
        ('{"file_name": "0.png"}\n', "is not a JSON object with file_name and text"),
        ('{"file_name": "0.png", "text": "a photo of a dog"}\n', "has no caption in"),
        (meta.read_text().replace("dog number 2", "cat"), "does not name the class word"),
    ):
        meta.write_text(bad)
        out = isolated / "never"
        assert main(_find_args(folder, out, tiny_pipeline_dir)) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not out.exists()
