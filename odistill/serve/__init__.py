"""The teacher server (``odistill serve-teacher``): a local teacher behind HTTP, for
:class:`odistill.core.remote.RemoteTeacher` clients.

:func:`create_app` builds the ASGI app (Starlette) around a :class:`ScoringEngine`; :func:`serve` runs it
with uvicorn. Both need the ``serve`` extra (``pip install "odistill[serve]"``); the client does not.
"""

from __future__ import annotations

from .app import BadRequest, ScoringEngine, create_app, parse_score_request
from .server import serve

__all__ = ["create_app", "ScoringEngine", "BadRequest", "parse_score_request", "serve"]
