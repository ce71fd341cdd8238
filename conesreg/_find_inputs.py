"""What a search for concept neurons takes: subject images, their captions, its options.

Read and checked here, before any model loads, so that a typo fails in a blink and the Python
API reads a Hugging Face image folder (images and a ``metadata.jsonl`` of captions) exactly as
``conesreg find`` does. numpy and Pillow are imported only to load the images.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .artifact import constants as artifact_constants
from .errors import ConesregError

if TYPE_CHECKING:
    import numpy as np

#: The captions file of a Hugging Face ImageFolder: one ``{"file_name", "text"}`` per line.
CAPTIONS_FILE = "metadata.jsonl"
#: The class prompt of a search, ``{class_word}`` filled in.
DEFAULT_PROMPT = "a photo of a {class_word}"


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """The image files ``paths`` name: files as given, folders' images in name order.

    A folder contributes the files whose suffix is an image's
    (:data:`conesreg.artifact.constants.IMAGE_SUFFIXES`); other files in it, such as its
    ``metadata.jsonl``, are skipped.

    Args:
        paths: image files and folders of them.

    Returns:
        The files, in the order given (each folder's sorted by name).

    Raises:
        ConesregError: a path does not exist, or no image is found at all.

    Example:
        >>> image_files(["subject/"])  # doctest: +SKIP
        [PosixPath('subject/1.png'), PosixPath('subject/2.png')]
    """
    suffixes = artifact_constants.IMAGE_SUFFIXES
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes)
        elif p.is_file():
            files.append(p)
        else:
            raise ConesregError(f"{p} does not exist", hint="pass image files or folders")
    if not files:
        raise ConesregError("no images found", hint="pass PNG or JPEG files, or folders of them")
    return files


def read_captions(files: Sequence[Path]) -> list[str] | None:
    """Per-image captions from a ``metadata.jsonl`` beside the images.

    The Hugging Face ImageFolder layout: one ``{"file_name": "1.png", "text": "a photo of a
    star on a beach"}`` per line, ``file_name`` relative to the folder. Blank lines are skipped.

    Args:
        files: the images, as :func:`image_files` returns them.

    Returns:
        One caption per file, in order; None if no folder of theirs has a ``metadata.jsonl``.

    Raises:
        ConesregError: a line is not a JSON object with ``file_name`` and ``text``, or, with
            captions, an image has none (every image needs one).

    Example:
        >>> read_captions(image_files(["subject/"]))  # doctest: +SKIP
        ['a photo of a star on a beach', 'a photo of a star in the snow']
    """
    tables: dict[Path, dict[str, str]] = {}
    for folder in dict.fromkeys(f.parent for f in files):
        meta = folder / CAPTIONS_FILE
        if not meta.is_file():
            continue
        table = tables.setdefault(folder, {})
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                table[str(row["file_name"])] = str(row["text"])
            except (ValueError, KeyError, TypeError):
                raise ConesregError(
                    f"{meta} line {n} is not a JSON object with file_name and text",
                    hint='write lines like {"file_name": "1.png", "text": "a photo of a dog"}',
                ) from None
    if not tables:
        return None
    missing = [f for f in files if f.name not in tables.get(f.parent, {})]
    if missing:
        raise ConesregError(
            f"{missing[0]} has no caption in {missing[0].parent / CAPTIONS_FILE}",
            hint="caption every image, or remove metadata.jsonl to use the class prompt",
        )
    return [tables[f.parent][f.name] for f in files]


def check_captions(captions: Sequence[str], n_images: int, class_word: str) -> list[str]:
    """``captions`` as a list, after checking that there is one per image and each names the
    class word (the mask binds the subject to that word, so a caption without it teaches
    nothing about it).

    Raises:
        ConesregError: the count differs from ``n_images``, or a caption lacks the class word.

    Example:
        >>> check_captions(["a star on a beach"], 1, "star")
        ['a star on a beach']
    """
    captions = list(captions)
    if len(captions) != n_images:
        raise ConesregError(
            f"{len(captions)} captions for {n_images} images",
            hint="give one caption per image, or none",
        )
    word = re.compile(rf"\b{re.escape(class_word)}\b", re.IGNORECASE)
    for c in captions:
        if not word.search(c):
            raise ConesregError(
                f"the caption {c!r} does not name the class word {class_word!r}",
                hint=f"mention it in every caption, e.g. 'a photo of a {class_word} on a beach'",
            )
    return captions


def load_images(files: Sequence[Path], *, size: int) -> np.ndarray:
    """Read ``files`` as RGB and resize each to ``size`` x ``size`` (bilinear).

    Args:
        files: image files Pillow reads (PNG, JPEG, WebP).
        size: the model's resolution in pixels (``unet.config.sample_size *
            pipe.vae_scale_factor``).

    Returns:
        uint8 ``(N, size, size, 3)``, as :func:`conesreg.find_neurons` takes them.

    Raises:
        ConesregError: a file is not an image Pillow can read.

    Example:
        >>> load_images([Path("star.png")], size=512).shape  # doctest: +SKIP
        (1, 512, 512, 3)
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
        except (UnidentifiedImageError, OSError) as e:
            raise ConesregError(
                f"cannot read image {f}: {e}", hint="pass PNG or JPEG files"
            ) from None
    return np.stack(out)


def load_subject_images(
    paths: str | Path | Iterable[str | Path], *, size: int, class_word: str | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """A subject's images and, from a ``metadata.jsonl`` beside them, their captions.

    Captions that name the class word and the rest of the scene make the concept hold in
    other prompts than the class prompt (see :func:`conesreg.find_neurons`).

    Args:
        paths: an image folder (the Hugging Face ImageFolder layout), an image file, or
            several of either.
        size: the model's resolution in pixels; every image is resized to it.
        class_word: if given, every caption must name it (checked here, before any search).

    Returns:
        ``(images, captions)``: uint8 ``(N, size, size, 3)`` and one caption per image, or
        None if there is no ``metadata.jsonl``.

    Raises:
        ConesregError: a path does not exist, there are no images, a file is no image, the
            ``metadata.jsonl`` is malformed or misses an image, or a caption lacks the class
            word.

    Example:
        >>> images, captions = load_subject_images("stars/", size=512, class_word="star")
        ... # doctest: +SKIP
        >>> mask = find_neurons(pipe, images, config, captions=captions)  # doctest: +SKIP
    """
    files = image_files([paths] if isinstance(paths, str | Path) else paths)
    captions = read_captions(files)
    if captions is not None and class_word is not None:
        check_captions(captions, len(files), class_word)
    return load_images(files, size=size), captions


def check_find_options(
    *,
    images: Sequence[object],
    refine: Sequence[object],
    class_word: str | None,
    sparsity: float | None,
    tau: float | None,
) -> None:
    """Check that a search's options go together (before anything is read or loaded).

    A search takes subject images and a class word; a refinement takes two concepts or more
    (each with its subject's images) instead, and its class word defaults to theirs. The
    budget is a sparsity or a score threshold, not both (neither: the default sparsity).

    Args:
        images: the subject's image paths (only their presence counts).
        refine: the concepts to refine with their images (only their number counts).
        class_word: the subject's class word, or None.
        sparsity: the share of candidates to switch off, or None.
        tau: the score threshold, or None.

    Raises:
        ConesregError: the combination is not one of those above.

    Example:
        >>> check_find_options(images=["stars/"], refine=[], class_word="star",
        ...                    sparsity=None, tau=None)
    """
    if sparsity is not None and tau is not None:
        raise ConesregError("give --sparsity or --tau, not both", hint="drop one of them")
    if refine and images:
        raise ConesregError(
            "give IMAGES or --refine, not both",
            hint="with --refine, name each parent's images as REF=IMAGES",
        )
    if not refine and not images:
        raise ConesregError("no subject images given", hint="pass image files or folders")
    if len(refine) == 1:
        raise ConesregError("--refine needs two concepts or more", hint="repeat --refine")
    if not refine and class_word is None:
        raise ConesregError("--class-word is missing", hint="e.g. --class-word star")
