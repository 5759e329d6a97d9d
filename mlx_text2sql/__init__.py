"""mlx-text2sql: turn a small open LLM into a Text-to-SQL model with MLX.

Pipeline: convert -> train -> fuse -> generate -> evaluate. Each stage is a module with a
``main()`` runnable as ``python -m mlx_text2sql.<stage>`` and through ``mlx-text2sql <stage>``.
"""

__version__ = "0.1.0"
