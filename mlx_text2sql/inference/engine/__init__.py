"""Batched SQL generation with a shared-prefix KV cache and prompt-lookup drafts.

:class:`SQLGenerator` turns many chat prompts into replies at once. Text2SQL prompts are long
(system text + schema + sample rows) and replies short, many questions ask about the same
schema, and the SQL copies names and values from the prompt. So:

1. **Shared prefixes are computed once.** Prompts are sorted by their tokens, so prompts over the
   same schema sit next to each other; the longest prefix a group shares (system + schema) is
   run through the model once and its keys/values reused by every question of the group. An
   LRU store keeps these prefix caches across calls, so interactive use over one schema only
   pays for each new question (a stored prefix is reused up to the longest common part).
2. **Decoding is batched, continuously.** Rows are decoded together; each keeps its own RoPE
   positions, and an attention mask hides the other rows' padding and holes, so a row's tokens
   do not depend on which rows share its batch. Finished rows leave at once, and queued
   prompts are prefilled into the freed rows (when a quarter of the batch is free).
3. **Prompt remainders (the questions) are prefilled in padded blocks**, rows of similar
   length together; long remainders (a schema nobody else shares) one prompt at a time.
4. **Greedy decoding verifies guesses.** Each step feeds every row its next token plus up to
   ``draft_tokens`` tokens guessed by looking the reply's last tokens up in the prompt
   (:class:`.rows._Lookup`), and keeps the guesses the model agrees with: several tokens per step
   for the price of one on a memory-bound CPU, with greedy decoding's exact output.
5. **Decode attention reads each cached key once per key/value head** (:func:`.kernels.decode_attention`):
   with many rows over a long cached schema, attention is a large part of a CPU decode step,
   and MLX's generic ``scaled_dot_product_attention`` is slower there. Prefill blocks run the backbone over
   all their columns and project only the last one onto the vocabulary; greedy steps take the
   argmax of the logits without normalising them.
6. **Names can be constrained.** ``generate(constraints=[...])`` gives prompts a
   :class:`~mlx_text2sql.sql.constrain.NameConstraint`: greedy decoding then takes, at each
   step, the most likely of the ``constraint_top_k`` best tokens that keeps the reply a query
   over that database's names (:func:`.decode.constrain`); drafts are kept only where they equal
   that choice, so a constrained step still yields several tokens.
7. **On MLX's CPU backend, exponentials are computed by NumPy** (:func:`host_attention`,
   :func:`host_swiglu`): MLX's CPU ``exp`` is scalar, many times slower than NumPy's vectorised
   one, and the attention softmaxes and SwiGLU sigmoids are a large part of a prefill. The
   matrix products stay in MLX; each layer syncs with the host twice. Only while this engine
   generates: mlx_lm's own calls in the same process are untouched.

Greedy decoding gives the tokens of unbatched greedy decoding (``batch_size=1``, or a plain
``mlx_lm.generate`` loop) up to float rounding between matrix-product shapes; tests check the
tokens are identical on small models, and ``benchmarks/generate_throughput.py`` on the real one.

Only models whose cache is a plain ``KVCache`` per layer (llama, mistral, qwen2, phi3, ...)
take the batched path; others (sliding-window or recurrent layers) are generated one prompt at
a time through mlx_lm's own ``generate_step``, with the same stopping rules.

Where each part lives:

- :mod:`.generator`: :class:`SQLGenerator`, :class:`Result`, :class:`Stats`; rendering and
  encoding prompts, one call from prompts to results;
- :mod:`.plan`: grouping prompts by shared prefix, cutting remainders into prefill blocks;
- :mod:`.prefill`: prompts into the cache from the longest stored prefix;
- :mod:`.decode`: the continuous-batching and draft-verifying decoding loops;
- :mod:`.rows`: per-prompt decoding state (stop strings, streaming, drafts) and the active batch;
- :mod:`.cache`: the batch KV cache mlx_lm's layers write into, and :class:`PrefixStore`;
- :mod:`.kernels`: attention and SwiGLU kernels and the hooks into mlx_lm's model modules.
"""

from .cache import PrefixStore
from .generator import Messages, Prompt, Result, SQLGenerator, Stats, StreamCallback
from .kernels import DECODE_ATTENTION_MAX_QUERIES, decode_attention, host_attention, host_swiglu

__all__ = [
    "SQLGenerator", "Result", "Stats", "PrefixStore", "Messages", "Prompt", "StreamCallback",
    "decode_attention", "host_attention", "host_swiglu", "DECODE_ATTENTION_MAX_QUERIES",
]
