"""The REST API, ``/v1``: what conesreg clients use (docs/server.md is its contract).

:mod:`.routes` parses requests and calls :mod:`registry_server.core`; :mod:`.errors` turns the
domain errors these raise into the API's statuses and messages, adding hints that name ``/v1``
routes (which Hub clients never see).
"""
