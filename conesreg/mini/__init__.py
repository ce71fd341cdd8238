"""The bundled mini model: a synthetic world, a tiny Stable Diffusion trained on it, a judge."""
