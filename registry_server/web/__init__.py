"""What every HTTP family shares: the error body and the app's error handlers, the request
context (database session, caller) and path parameters, and byte transfer (ETags, ranges,
request bodies). The families themselves are :mod:`registry_server.api`,
:mod:`registry_server.hub` and :mod:`registry_server.browse`."""
