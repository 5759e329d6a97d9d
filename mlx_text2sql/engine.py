"""The batched generation engine, kept at this import path: it lives in
:mod:`mlx_text2sql.inference.engine` (see its docstring for how it works)."""

from .inference.engine import (DECODE_ATTENTION_MAX_QUERIES, Messages, PrefixStore, Prompt,
                               Result, SQLGenerator, Stats, StreamCallback, decode_attention,
                               host_attention, host_swiglu)
from .inference.engine.cache import _Batch, _LayerCache, _lcp, _Prefix
from .inference.engine.kernels import (_HOST_MATH, _PLAIN_HEAD_MODULES, _HostMath, _backbone_and_head,
                                       _install_decode_attention, _supports_batching)
from .inference.engine.plan import _split_by_length
from .inference.engine.rows import _Active, _Lookup, _Row

__all__ = [
    "SQLGenerator", "Result", "Stats", "PrefixStore", "Messages", "Prompt", "StreamCallback",
    "decode_attention", "host_attention", "host_swiglu", "DECODE_ATTENTION_MAX_QUERIES",
]
