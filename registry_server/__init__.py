"""conesreg's self-hosted registry server (FastAPI). Not built yet: see the server issue.

It will share only the artifact layer (manifest schema, mask codec) with the client.
"""
