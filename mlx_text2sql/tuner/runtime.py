"""How the step uses the machine: CPU streams, OpenBLAS threads, MLX's buffer cache and
gradient checkpointing.

MLX's elementwise CPU kernels are single-threaded, so one stream leaves cores idle outside
matrix products; k streams each take 1/k of a batch, with BLAS set to one thread each so the
streams do not fight over the cores.
"""

from __future__ import annotations

import contextlib
import os

import mlx.core as mx


def auto_streams(per_process_batch: int) -> int:
    """Streams to split a micro-batch over: one per core (at most 4) where MLX runs on the
    CPU, one on a GPU (whose own kernels are parallel)."""
    if mx.default_device().type != mx.DeviceType.cpu:
        return 1
    return max(1, min(4, os.cpu_count() or 1, per_process_batch))


_STREAMS: list = []


def cpu_streams(n: int) -> list:
    """``n`` streams on the default device, created once per process and reused (each stream
    owns a thread)."""
    while len(_STREAMS) < n:
        _STREAMS.append(mx.new_stream(mx.default_device()))
    return _STREAMS[:n]


def _openblas():
    import ctypes

    try:
        lib = ctypes.CDLL(None)  # OpenBLAS loaded RTLD_GLOBAL (mlx_text2sql.blas) or preloaded
        return lib if hasattr(lib, "openblas_set_num_threads") else None
    except OSError:
        return None


def openblas_threads() -> int | None:
    lib = _openblas()
    return int(lib.openblas_get_num_threads()) if lib is not None else None


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Run the block with OpenBLAS using ``n`` threads (no-op without OpenBLAS or for None)."""
    lib = _openblas()
    if lib is None or n is None:
        yield
        return
    before = int(lib.openblas_get_num_threads())
    lib.openblas_set_num_threads(int(n))
    try:
        yield
    finally:
        lib.openblas_set_num_threads(before)


# MLX keeps freed buffers for reuse. Text2SQL batches change shape at every step (prompt lengths
# vary), so on a CPU the cache kept growing until the process ran out of memory (a Spider run
# at 1,024 tokens passed 20 GB by step 30 with a 7 GB working set); capped, it is reused the same.
BUFFER_CACHE_BYTES = 2 << 30


def cap_buffer_cache(limit: int = BUFFER_CACHE_BYTES) -> None:
    """Cap MLX's buffer cache on the CPU backend (GPUs keep MLX's own limit)."""
    if mx.default_device() == mx.cpu:
        mx.set_cache_limit(limit)


@contextlib.contextmanager
def grad_checkpointing(model, enabled: bool):
    """Recompute each block's activations in the backward pass instead of storing them.

    mx.checkpoint wraps the block type's __call__ (MLX modules are called through their type);
    the original is restored when training ends.
    """
    if not enabled:
        yield
        return
    block_type = type(model.layers[0])
    original = block_type.__call__

    def checkpointed(block, *args, **kwargs):
        def inner(params, *args, **kwargs):
            block.update(params)
            return original(block, *args, **kwargs)

        return mx.checkpoint(inner)(block.trainable_parameters(), *args, **kwargs)

    block_type.__call__ = checkpointed
    try:
        yield
    finally:
        block_type.__call__ = original
