"""``conesreg find`` as a library: from subject images on disk to a draft directory.

Two steps, so that everything a user can get wrong fails before the base model loads (seconds
to minutes): :func:`plan_find` reads and checks the name, the images, their captions, the
concepts to refine and the settings with their defaults; :func:`run_find` loads the base model,
searches with a checkpoint in the output folder (resumable) and writes the draft that
:func:`conesreg.push` publishes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._concept import Concept, load_concepts
from ._find import (
    REFINE_DEFAULTS,
    SEARCH_DEFAULTS,
    FindConfig,
    find_neurons,
    refine_neurons,
    union_masks,
    write_draft,
)
from ._find_inputs import (
    DEFAULT_PROMPT,
    check_captions,
    check_find_options,
    image_files,
    load_images,
    read_captions,
)
from ._find_presets import preset_for
from ._session import Session
from .artifact import Manifest, parse_ref
from .artifact._build import with_metadata
from .artifact._manifest import Binding, ConceptMetadata
from .errors import ConesregError

#: The search state, kept in the output folder at the end of every round until the draft is
#: written: ``run_find(..., resume=True)`` continues from it.
CHECKPOINT_FILE = ".find-checkpoint.pt"


@dataclass(frozen=True)
class SubjectFiles:
    """A subject's image files and their captions (None: the class prompt for every image)."""

    files: list[Path]
    captions: list[str] | None


@dataclass(frozen=True)
class FindPlan:
    """A search with every input read and checked, ready for :func:`run_find`.

    Either ``subject`` is set (a new concept) or ``parents`` holds two concepts or more, each
    with its subject's images (a refinement: the composite records them as its parents).
    """

    name: str
    namespace: str
    config: FindConfig
    subject: SubjectFiles | None
    parents: list[tuple[Concept, SubjectFiles]]
    # What find_config was given: run_find makes the config again with the base model's
    # preset once the model is loaded (``config`` above is checked without one).
    settings: dict[str, Any] = field(default_factory=dict)
    #: Description, tags and license to write into the draft (``find --description`` ...).
    metadata: dict[str, Any] = field(default_factory=dict)

    def config_for(self, preset: str | None) -> FindConfig:
        """The search's settings with ``preset``'s defaults filled in."""
        return find_config(**self.settings, preset=preset)


def find_config(
    *,
    class_word: str,
    refine: bool = False,
    prompt: str = DEFAULT_PROMPT,
    steps: int | None = None,
    rounds: int | None = None,
    sparsity: float | None = None,
    tau: float | None = None,
    preset: str | None = None,
    **options: Any,
) -> FindConfig:
    """The settings of a search: the options given, then the base model's preset, then the
    defaults of a search or of a refinement.

    A refinement runs a few joint steps on top of its parents' union, so its defaults are
    smaller (:data:`conesreg._find.REFINE_DEFAULTS` against ``SEARCH_DEFAULTS``) and take no
    preset's steps, rounds or budget. Without ``sparsity`` or ``tau`` the budget is the
    preset's, else the default sparsity. Options that are None take their default.

    Args:
        class_word: the subject's class, e.g. ``"star"``.
        refine: take a refinement's defaults.
        prompt: the class prompt template (``{class_word}`` is filled in).
        steps, rounds, sparsity, tau: as for :class:`FindConfig`; None takes the default.
        preset: a key of :data:`conesreg._find_presets.PRESETS` (see
            :func:`~conesreg._find_presets.preset_for`), or None for the plain defaults.
        options: any other :class:`FindConfig` field (``batch_size``, ``lam``, ``preserve``...).

    Returns:
        The checked settings.

    Raises:
        ConesregError: the settings do not go together (see :class:`FindConfig`).

    Example:
        >>> find_config(class_word="star").steps
        100
        >>> find_config(class_word="star", refine=True).sparsity
        0.005
        >>> find_config(class_word="star", preset="conesreg-mini").binding
        'token'
    """
    from ._find_presets import PRESETS

    defaults: dict[str, Any] = dict(REFINE_DEFAULTS if refine else SEARCH_DEFAULTS)
    if preset is not None:
        chosen = dict(PRESETS[preset])
        if refine:
            for key in REFINE_DEFAULTS:
                chosen.pop(key, None)
            chosen.pop("context_words", None)  # a refine's captions are its parents' own
        defaults.update(chosen)
    given = {k: v for k, v in options.items() if v is not None and v != ()}
    settings = {k: v for k, v in defaults.items() if k not in ("steps", "rounds", "sparsity")}
    settings.update(given)
    if "bands" not in given and "batch_size" in settings:
        # A preset's bands split its batch; a smaller batch given by hand takes fewer.
        settings["bands"] = min(settings.get("bands", 1), settings["batch_size"])
    return FindConfig(
        class_prompt=prompt.format(class_word=class_word),
        class_word=class_word,
        steps=steps or defaults["steps"],
        rounds=rounds or defaults["rounds"],
        sparsity=defaults["sparsity"] if sparsity is None and tau is None else sparsity,
        tau=tau,
        preset=preset,
        **settings,
    )


def plan_find(
    *,
    name: str,
    images: Sequence[str | Path] = (),
    refine: Sequence[tuple[str, str | Path]] = (),
    class_word: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    steps: int | None = None,
    rounds: int | None = None,
    sparsity: float | None = None,
    tau: float | None = None,
    session: Session | None = None,
    metadata: Mapping[str, Any] | None = None,
    **options: Any,
) -> FindPlan:
    """Read and check everything a search needs except the model.

    Captions come from a ``metadata.jsonl`` beside the images (see
    :func:`conesreg.load_subject_images`); the concepts to refine are installed as
    :func:`conesreg.load_concepts` does.

    Args:
        name: ``[NAMESPACE/]NAME`` of the concept to write (the configured default namespace
            if none is given).
        images: the subject's image files or folders (a new concept).
        refine: ``(REF, IMAGES)`` per concept to refine jointly, two or more, instead of
            ``images``: each concept with its subject's image file or folder.
        class_word: the subject's class; required with ``images``, and with ``refine`` the
            parents' class words joined by "and" by default.
        prompt, steps, rounds, sparsity, tau, options: as for :func:`find_config`.
        session: the configuration and cache to use (default: the user's).

    Returns:
        The plan, for :func:`run_find`.

    Raises:
        ConesregError: the name carries a version or registry, the options do not go together,
            an image or caption is missing or malformed, or a caption lacks its class word.
        and everything :func:`conesreg.load_concepts` raises.

    Example:
        >>> plan = plan_find(name="acme/star", images=["stars/"], class_word="star")
        ... # doctest: +SKIP
        >>> run_find(plan, "drafts/star")  # doctest: +SKIP
    """
    s = session or Session()
    r = parse_ref(name, default_namespace=s.config.default_namespace)
    if r.spec or r.registry:
        raise ConesregError(f"--name takes NAMESPACE/NAME, not {name!r}", hint="e.g. acme/star")
    check_find_options(
        images=images, refine=refine, class_word=class_word, sparsity=sparsity, tau=tau
    )
    files = image_files(images) if images else []
    parent_files = [image_files((path,)) for _, path in refine]
    captions = read_captions(files)
    parent_captions = [read_captions(f) for f in parent_files]
    concepts = load_concepts([ref for ref, _ in refine], session=s) if refine else []
    bound = [c.label for c in concepts if c.manifest.binding.mode == "token"]
    if bound:
        raise ConesregError(
            f"{bound[0]} is token-bound: --refine makes one mask for global concepts",
            hint="apply them together (generate -c A -c B), or `conesreg compose` them",
        )
    if concepts:
        options["binding"] = "global"  # the parents' own binding
    if concepts and class_word is None:
        class_word = " and ".join(c.manifest.metadata.class_word for c in concepts)
    assert class_word is not None  # check_find_options: required without parents
    if captions is not None:
        check_captions(captions, len(files), class_word)
    for c, caps, f in zip(concepts, parent_captions, parent_files, strict=True):
        if caps is not None:
            check_captions(caps, len(f), c.manifest.metadata.class_word)
    settings = {
        "class_word": class_word,
        "refine": bool(refine),
        "prompt": prompt,
        "steps": steps,
        "rounds": rounds,
        "sparsity": sparsity,
        "tau": tau,
        **options,
    }
    config = find_config(**settings)
    if metadata:
        # Checked now, not after the search: a bad tag must not cost the run.
        with_metadata(ConceptMetadata(class_word=config.class_word), Binding(), metadata)
    return FindPlan(
        name=r.name,
        namespace=r.namespace,
        config=config,
        settings=settings,
        metadata=dict(metadata or {}),
        subject=None if concepts else SubjectFiles(files, captions),
        parents=[
            (c, SubjectFiles(f, caps))
            for c, f, caps in zip(concepts, parent_files, parent_captions, strict=True)
        ],
    )


def run_find(
    plan: FindPlan,
    output: str | Path,
    *,
    base: str | Path | None = None,
    device: str = "auto",
    resume: bool = False,
    on_step: Callable[[int, float, float], None] | None = None,
    session: Session | None = None,
) -> dict[str, np.ndarray]:
    """Search as ``plan`` says and write the draft directory ``output``.

    The search state is saved to ``output/.find-checkpoint.pt`` at the end of every round and
    removed once the draft is written; a resumed search equals an uninterrupted one.

    Args:
        plan: from :func:`plan_find`.
        output: the draft directory to write (created if missing).
        base: a diffusers folder or Hub id (default: the configured base model).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        resume: continue from the checkpoint in ``output``; otherwise it is discarded.
        on_step: called as ``on_step(step, loss, sparsity)`` after every step.
        session: the configuration and cache to use (default: the user's).

    Returns:
        The mask: sorted flat indices of the switched-off scalars per candidate parameter.

    Raises:
        ConesregError: the checkpoint holds a search with other settings, or an image cannot
            be read.
        and everything :func:`conesreg.load_pipeline` and :func:`conesreg.apply` raise.

    Example:
        >>> mask = run_find(plan, "drafts/star", device="cuda")  # doctest: +SKIP
    """
    from ._compose import apply, load_pipeline
    from .mini.model import MODEL_ID

    s = session or Session()
    concepts = [c for c, _ in plan.parents]
    pipe = load_pipeline(base, device=device, session=s)
    config = plan.config_for(preset_for(pipe.unet.config))
    if concepts:
        apply(pipe, concepts).restore()  # every check of composing (base model, shapes, ranges)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = output / CHECKPOINT_FILE
    if not resume:
        checkpoint.unlink(missing_ok=True)
    stimulation = None  # a refine's subjects are its parents': nothing of its own
    if plan.subject is None:
        subjects = [
            (load_images(sub.files, size=size), sub.captions or _class_prompt(c.manifest))
            for c, sub in plan.parents
        ]
        union = union_masks(c.indices for c in concepts)
        mask = refine_neurons(
            pipe,
            subjects,
            union,
            config,
            on_step=on_step,
            checkpoint=checkpoint,
        )
    else:
        images = load_images(plan.subject.files, size=size)
        stimulation = (images, plan.subject.captions or [config.class_prompt] * len(images))
        mask = find_neurons(
            pipe,
            images,
            config,
            captions=plan.subject.captions,
            on_step=on_step,
            checkpoint=checkpoint,
        )
    write_draft(
        output,
        pipe,
        mask,
        config,
        name=plan.name,
        namespace=plan.namespace,
        base_id=str(base or s.config.base_model() or MODEL_ID),
        parents=[c.pinned for c in concepts],
        stimulation=stimulation,
        metadata=plan.metadata,
    )
    checkpoint.unlink(missing_ok=True)
    return mask


def _class_prompt(manifest: Manifest) -> str:
    meta = manifest.metadata
    return meta.prompt_template.format(class_word=meta.class_word)
