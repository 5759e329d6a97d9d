"""mlx-text2sql: turn a small open LLM into a Text-to-SQL model with MLX.

Pipeline: convert -> train -> fuse -> generate -> evaluate. Each stage is a module with a
``main()`` runnable as ``python -m mlx_text2sql.<stage>`` and through ``mlx-text2sql <stage>``.
"""

__version__ = "0.1.0"

# Load OpenBLAS before anything imports MLX (Linux only; see mlx_text2sql.blas).
from .blas import ensure_fast_blas as _ensure_fast_blas  # noqa: E402

_ensure_fast_blas(quiet=True)
