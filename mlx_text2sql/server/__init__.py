"""The HTTP server behind ``mlx-text2sql serve``: a FastAPI app over one loaded model.

- :mod:`.app`       ``create_app``: the routers, the worker's lifetime, the outer guards
- :mod:`.routes`    the routes: ``pages`` (web page, ``/health``), ``sql`` (``/v1/sql``,
                    ``/v1/execute``, ``/v1/databases``), ``openai`` (OpenAI-compatible
                    ``/v1/models`` and ``/v1/chat/completions``)
- :mod:`.context`   what handlers share, as dependencies: the server's state, API key, limits
- :mod:`.schemas`   pydantic request and response models
- :mod:`.batcher`   one worker thread that decodes concurrent requests together
- :mod:`.limits`    limits, API key check, body size guard
- :mod:`.databases` the databases clients may name, and their schema summaries
- :mod:`.errors`    every error as ``{"error": {"type", "message"}}`` with its HTTP status
- ``static/``       the page (HTML, CSS, JS; no build step, nothing fetched from elsewhere)
"""

from .app import create_app
from .databases import Database, DatabaseRegistry
from .limits import Limits

__all__ = ["create_app", "Database", "DatabaseRegistry", "Limits"]
