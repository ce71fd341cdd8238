"""The Hugging Face Hub-compatible API, so that ``huggingface_hub`` reads concepts and writes Hub
repos here: :mod:`.reads` and :mod:`.writes` (the routes), :mod:`.repos` (Hub repos, commits and
refs over :mod:`registry_server.core`), :mod:`.ndjson` (commit bodies in bounded memory),
:mod:`.errors` (the Hub's error headers, in one place)."""
