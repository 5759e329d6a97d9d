"""From a question to SQL and rows: the library under :mod:`mlx_text2sql.api` and the commands.

- :mod:`.questions`: the chat prompt for a question over CREATE TABLE text or a SQLite file
  (schema read once per database, table selection, value hints), with the prompt settings
  the model was trained with;
- :mod:`.records`: prompts for JSONL records (``generate --input``);
- :mod:`.refine`: value repair and execution-guided decoding of generated queries;
- :mod:`.predictor`: one batched pass from questions to answers (generation, refinement,
  read-only execution, timings), which :class:`mlx_text2sql.api.Text2SQL` exposes;
- :mod:`.engine`: the batched generation engine under all of them (:class:`~.engine.SQLGenerator`:
  shared-prefix KV cache, continuous batching, prompt-lookup drafts), also importable as
  :mod:`mlx_text2sql.engine`.
"""
