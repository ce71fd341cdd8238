"""The browse pages: server-rendered HTML (:mod:`.pages`, Jinja2 templates in ``templates/``) over
the same queries as the API."""
