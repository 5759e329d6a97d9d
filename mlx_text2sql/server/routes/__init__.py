"""The server's routes, one router per concern: :mod:`.pages` (the page, static files,
``/health``), :mod:`.sql` (``/v1/databases``, ``/v1/sql``, ``/v1/execute``) and :mod:`.openai`
(``/v1/models``, ``/v1/chat/completions``). Handlers get the app's
:class:`~mlx_text2sql.server.context.ServerContext` as a dependency."""
