"""Test support for conesreg, its tests and benchmarks (and for code built on conesreg).

- a tiny, randomly initialised Stable Diffusion pipeline built in code (no download):
  :func:`make_tiny_pipeline` and its parts' configs;
- draft directories with real masks, as ``conesreg find`` writes them: :func:`make_draft` (small
  stand-in targets), :func:`make_tiny_draft` (for the tiny pipeline), and the manifest a push of
  one would publish, :func:`make_manifest`;
- a client-side push to a ``registry_server`` over HTTP, as conesreg clients do it:
  :func:`push_draft` (:func:`upload_blobs`, then :func:`put_manifest`), :func:`publish_table`
  for many concepts at once, and :func:`auth` for a bearer token's header. The server side
  (a server in-process or as a subprocess) is :mod:`registry_server.testing`.

:mod:`conesreg.testing.fuzz` holds the hypothesis strategies and properties of the artifact
layer's fuzz campaign; it needs ``hypothesis`` (the ``test`` extra), so it is not imported here.

Importing this package loads neither torch nor diffusers: the functions that need them import
them when called.

Example:
    >>> from conesreg.testing import make_draft, make_tiny_pipeline
    >>> draft = make_draft(tmp_path / "dog", name="dog", namespace="acme")  # doctest: +SKIP
    >>> pipe = make_tiny_pipeline(seed=0)  # doctest: +SKIP
"""

from ._drafts import make_draft, make_manifest, make_tiny_draft
from ._http_push import ConceptRow, auth, publish_table, push_draft, put_manifest, upload_blobs
from ._pipeline import (
    SD15_UNET_CONFIG,
    TINY_WORDS,
    make_sd15_shaped_pipeline,
    make_tiny_pipeline,
    make_tiny_tokenizer,
    tiny_text_encoder_config,
    tiny_unet_config,
    tiny_vae_config,
)

__all__ = [
    "SD15_UNET_CONFIG",
    "TINY_WORDS",
    "ConceptRow",
    "auth",
    "make_draft",
    "make_manifest",
    "make_sd15_shaped_pipeline",
    "make_tiny_draft",
    "make_tiny_pipeline",
    "make_tiny_tokenizer",
    "publish_table",
    "push_draft",
    "put_manifest",
    "tiny_text_encoder_config",
    "tiny_unet_config",
    "tiny_vae_config",
    "upload_blobs",
]
