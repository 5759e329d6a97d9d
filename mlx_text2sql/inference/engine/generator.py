"""The engine's entry point: :class:`SQLGenerator` (prompts in, :class:`Result` per prompt out).

It renders and encodes prompts, plans the call (:mod:`.plan`), turns the engine's kernels on
for its duration (:mod:`.kernels`), and runs one of the decoding loops (:mod:`.decode`), which
prefill through :mod:`.prefill` into the caches of :mod:`.cache`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import mlx.core as mx

from ...prompts import extract_sql
from . import kernels
from .cache import PrefixStore
from .decode import decode, decode_speculative
from .kernels import _backbone_and_head, _install_decode_attention, _supports_batching
from .plan import common_prefix, plan_groups
from .prefill import compute_prefix
from .rows import StreamCallback, _Row

Messages = list  # list[dict[str, str]]
Prompt = Union[Messages, str, Sequence[int]]

__all__ = ["SQLGenerator", "Result", "Stats", "Messages", "Prompt", "StreamCallback"]


@dataclass
class Result:
    """One prompt's outcome.

    text:            the reply, cut before the EOS token / first stop string.
    sql:             ``prompts.extract_sql(text)``; "" when the reply holds no query.
    n_prompt_tokens: prompt length in tokens.
    n_tokens:        tokens generated (the EOS token included when one was emitted).
    seconds:         wall time from when the prompt entered the batch (its prefill began) to
                     its last token: its latency, not counting time queued behind others.
    finish_reason:   "stop" (EOS or a stop string) or "length" (hit ``max_tokens``).
    tokens:          the generated token ids (EOS included).
    n_cached_tokens: prompt tokens covered by a shared prefix (computed once for every prompt
                     that shares it, or found in the store from an earlier call).
    """

    text: str
    sql: str
    n_prompt_tokens: int
    n_tokens: int
    seconds: float
    finish_reason: str = "stop"
    n_cached_tokens: int = 0
    tokens: list[int] = field(default_factory=list)


@dataclass
class Stats:
    """Where the time of :meth:`SQLGenerator.generate` calls went (cumulative)."""

    prompts: int = 0
    prompt_tokens: int = 0
    computed_prompt_tokens: int = 0  # prompt tokens run through the model (the rest came cached)
    prefill_seconds: float = 0.0
    decode_steps: int = 0
    decode_row_steps: int = 0  # sum over steps of the rows in the batch
    decode_seconds: float = 0.0
    generated_tokens: int = 0
    drafted_tokens: int = 0  # prompt-lookup guesses fed to the model
    accepted_tokens: int = 0  # guesses that were right (tokens gained without a step)
    constrained_tokens: int = 0  # tokens a name constraint chose over the model's first choice
    constraints_dropped: int = 0  # rows whose constraint allowed none of the likely tokens

    def summary(self) -> str:
        rows = self.decode_row_steps / max(1, self.decode_steps)
        return (f"{self.prompts} prompts; prefill {self.prefill_seconds:.1f} s for "
                f"{self.computed_prompt_tokens}/{self.prompt_tokens} prompt tokens computed; "
                f"decode {self.decode_seconds:.1f} s for {self.decode_steps} steps "
                f"({rows:.1f} rows/step, {1000 * self.decode_seconds / max(1, self.decode_steps):.0f} ms/step), "
                f"{self.generated_tokens} tokens"
                + (f"; drafts: {self.accepted_tokens}/{self.drafted_tokens} accepted" if self.drafted_tokens else "")
                + (f"; names constrained: {self.constrained_tokens} tokens changed, "
                   f"{self.constraints_dropped} rows released" if self.constrained_tokens or self.constraints_dropped else ""))


class SQLGenerator:
    """Batched generation for a :class:`~mlx_text2sql.models.load.LoadedModel`.

    ``prefix_cache_mb`` bounds the shared-prefix store kept between calls (0: prefixes are
    shared within a call only);
    ``block_tokens`` is the longest prompt remainder prefilled as a padded batch block (longer
    ones are prefilled one prompt at a time); ``min_shared`` is the fewest tokens beyond the
    prefix common to all prompts that make a group worth caching separately;
    ``call_overhead_tokens`` is what one model call costs beyond its tokens (reading every
    weight once), in tokens of prefill: it decides how finely remainders of different lengths
    are split into separately prefilled blocks; ``draft_tokens`` is how many prompt-lookup
    guesses greedy decoding verifies per row and step (0: one token per step, the next step
    queued while the host reads the last), and ``draft_budget`` caps the tokens a step feeds
    (rows x (1 + guesses)): on a memory-bound CPU extra tokens per row are nearly free for a
    few rows, but once the batch is large a step's cost grows with the tokens it feeds;
    ``host_math`` computes attention softmaxes and SwiGLU activations with NumPy
    (:func:`host_attention`, :func:`host_swiglu`): None (default) turns it on for MLX's CPU
    backend, where it makes generation faster, unless ``MLX_TEXT2SQL_NO_HOST_MATH=1``;
    ``constraint_top_k`` is how many of the model's most likely tokens a name constraint
    (``generate(constraints=...)``) looks through for one it allows before it lets the row
    decode freely.
    """

    def __init__(self, loaded, *, prefix_cache_mb: float = 512, block_tokens: int = 64,
                 min_shared: int = 16, prefill_step: int = 512, call_overhead_tokens: float = 12,
                 draft_tokens: int = 4, draft_budget: int = 16, host_math: bool | None = None,
                 constraint_top_k: int = 64):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos_ids = set(int(t) for t in loaded.eos_token_ids)
        self.stop = [s for s in (loaded.stop or []) if s]
        self.store = PrefixStore(int(prefix_cache_mb * 2**20))
        self.block_tokens = max(1, block_tokens)
        self.min_shared = min_shared
        self.prefill_step = prefill_step
        self.call_overhead_tokens = call_overhead_tokens
        self.draft_tokens = max(0, draft_tokens)
        self.draft_budget = max(1, draft_budget)
        self.batched = _supports_batching(self.model)
        self.fast_attention = self.batched and _install_decode_attention(self.model)
        # None: on when the default device is the CPU, unless MLX_TEXT2SQL_NO_HOST_MATH=1.
        self.host_math = host_math
        self._split = _backbone_and_head(self.model)
        self.n_layers = len(self.model.layers)
        self.stats = Stats()
        self.constraint_top_k = max(1, constraint_top_k)
        self._pieces: list[str] | None = None

    def token_pieces(self) -> list[str]:
        """Each token id's text as it reads inside a reply (its leading space included):
        ``decode([a, id])`` less ``decode([a])``, which keeps the word boundary a lone
        ``decode([id])`` drops for SentencePiece vocabularies. Built once; ids the tokenizer
        does not have (a model's padded vocabulary) have no piece."""
        if self._pieces is None:
            hf = getattr(self.tokenizer, "_tokenizer", self.tokenizer)
            base = list(hf.encode("a", add_special_tokens=False))
            head = hf.decode(base)
            texts = hf.batch_decode([base + [i] for i in range(len(hf))])
            self._pieces = [t[len(head):] if t.startswith(head) else t for t in texts]
        return self._pieces

    def uses_host_math(self) -> bool:
        """Whether this generator's attention softmax and SwiGLU run on NumPy
        (:func:`host_attention`): ``host_math`` if given, else on MLX's CPU backend unless
        the environment sets ``MLX_TEXT2SQL_NO_HOST_MATH=1``. Needs the engine's attention
        wrapper (batched llama-like models)."""
        if not self.fast_attention:
            return False
        if self.host_math is not None:
            return bool(self.host_math)
        if os.environ.get("MLX_TEXT2SQL_NO_HOST_MATH", "").strip() not in ("", "0"):
            return False
        return mx.default_device() == mx.cpu

    # ----------------------------------------------------------------- prompts

    def prompt_text(self, messages: Messages) -> str:
        """The chat template's rendering of ``messages`` with the generation prompt appended."""
        return self.loaded.apply_chat_template(list(messages), add_generation_prompt=True)

    def prompt_tokens(self, prompt: Prompt) -> list[int]:
        """Token ids for a prompt: chat messages are rendered with the model's chat template
        (generation prompt appended); text is encoded as training encodes prompts
        (``tuner.data.Encoder.encode_prompt``, mlx_lm's rule): the tokenizer adds its special
        tokens (BOS) unless the text already starts with the BOS. A list of ints is taken as
        token ids."""
        if isinstance(prompt, str):
            text = prompt
        else:
            prompt = list(prompt)
            if prompt and not isinstance(prompt[0], dict):
                return [int(t) for t in prompt]
            text = self.prompt_text(prompt)
        bos = getattr(getattr(self.tokenizer, "_tokenizer", self.tokenizer), "bos_token", None)
        add = bos is None or not text.startswith(bos)
        return list(self.tokenizer.encode(text, add_special_tokens=add))

    # ----------------------------------------------------------------- public entry

    def generate(self, prompts: Sequence[Prompt], *, max_tokens: int = 128, temp: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, batch_size: int = 8,
                 stream_callback: StreamCallback | None = None, stop: Sequence[str] | None = None,
                 progress: Callable[[int], None] | None = None,
                 cancelled: Callable[[int], bool] | None = None,
                 constraints: Sequence | None = None) -> list[Result]:
        """Generate one reply per prompt, in input order.

        prompts:   chat message lists (rendered with the model's template), raw strings or
                   token-id lists.
        temp, top_p: sampling (temp 0 = greedy), through ``mlx_lm.sample_utils.make_sampler``.
        seed:      seeds MLX's generator first, so a run is reproducible (for the same
                   prompts and batch size).
        stream_callback(i, piece): called with each new piece of prompt ``i``'s reply text;
                   text that could begin a stop string is held back until decided.
        stop:      stop strings (default: the model's template stop strings).
        progress(n): called with the number of prompts finished since the last call.
        cancelled(i): true once prompt ``i``'s reply is no longer wanted (its client left);
                   checked before its prefill and after every token, the row then ends at
                   once with ``finish_reason`` "cancelled" and frees its place in the batch.
        constraints: one :class:`~mlx_text2sql.sql.constrain.NameConstraint` (or None) per
                   prompt: greedy decoding then takes, at each step, the most likely token
                   that keeps the reply a query over that database's names
                   (schema-constrained decoding; greedy only).
        """
        from mlx_lm.sample_utils import make_sampler

        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if seed is not None:
            mx.random.seed(seed)
        if constraints is not None:
            constraints = list(constraints)
            if len(constraints) != len(prompts):
                raise ValueError(f"{len(constraints)} constraints for {len(prompts)} prompts")
            if temp != 0 and any(c is not None for c in constraints):
                raise ValueError("name constraints need greedy decoding (temp 0)")
        sampler = make_sampler(temp=temp, top_p=top_p if 0 < top_p < 1 else 0.0)
        stops = self.stop if stop is None else [s for s in stop if s]
        rows = self._rows(prompts, stops, max_tokens, stream_callback, cancelled)
        constrained = constraints is not None and any(c is not None for c in constraints)
        if constrained:
            for row, c in zip(rows, constraints):
                if c is not None:
                    row.constraint, row.cstate = c, c.start()
        results: list[Result | None] = [None] * len(rows)

        def finished(row: _Row) -> None:
            results[row.index] = self._result(row, row.t_start, stops)
            if progress:
                progress(1)

        if not self.batched:
            for row in rows:
                row.t_start = row.t_end = time.perf_counter()
                if row.gone():
                    row.finish_reason = "cancelled"
                else:
                    self._generate_unbatched(row, sampler)
                finished(row)
            return results  # type: ignore[return-value]

        self._generate_batched(rows, sampler, batch_size,
                               temp == 0 and (self.draft_tokens > 0 or constrained), finished)
        self.stats.prompts += len(rows)
        self.stats.prompt_tokens += sum(len(row.prompt) for row in rows)
        return results  # type: ignore[return-value]

    def _rows(self, prompts: Sequence[Prompt], stops: list[str], max_tokens: int,
              callback: StreamCallback | None, cancelled: Callable[[int], bool] | None = None) -> list[_Row]:
        """One decoding row per prompt, its tokens encoded (an empty prompt is an error)."""
        token_lists = [self.prompt_tokens(p) for p in prompts]
        for i, toks in enumerate(token_lists):
            if not toks:
                raise ValueError(f"prompt {i} is empty")
        return [_Row(i, toks, self.tokenizer.detokenizer, self.eos_ids, stops, max_tokens, callback, cancelled)
                for i, toks in enumerate(token_lists)]

    def _generate_batched(self, rows: list[_Row], sampler, batch_size: int, speculative: bool,
                          finished: Callable[[_Row], None]) -> None:
        """Plan the shared prefixes, then decode every row with the engine's kernels on."""
        token_lists = [row.prompt for row in rows]
        order, group_prefix = plan_groups(token_lists, self.min_shared)
        for row in rows:
            row.group_prefix = group_prefix[row.index]
        host = kernels._HOST_MATH.active
        kernels._HOST_MATH.active = self.uses_host_math()
        try:
            if len(token_lists) > 1:
                # The part every prompt shares (chat header + system text) is computed once.
                common = common_prefix(token_lists, order)
                if common >= self.min_shared:
                    compute_prefix(self, token_lists[order[0]][:common])
            queue = deque(rows[i] for i in order)
            if speculative:
                decode_speculative(self, queue, batch_size, finished)
            else:
                decode(self, queue, sampler, batch_size, finished)
        finally:
            kernels._HOST_MATH.active = host
            if self.store.max_bytes <= 0:
                self.store.clear()  # reuse within a call only

    @staticmethod
    def _result(row: _Row, t0: float, stops: list[str]) -> Result:
        return Result(text=row.text, sql=extract_sql(row.text, stops), n_prompt_tokens=len(row.prompt),
                      n_tokens=len(row.generated), seconds=max(0.0, row.t_end - t0),
                      finish_reason=row.finish_reason or "length", n_cached_tokens=row.cached,
                      tokens=list(row.generated))

    # ----------------------------------------------------------------- fallback

    def _generate_unbatched(self, row: _Row, sampler) -> None:
        """One prompt through mlx_lm's ``generate_step`` (models with non-standard caches)."""
        from mlx_lm.generate import generate_step

        processors = [self._constraint_processor(row)] if row.constraint is not None else None
        for tok, _ in generate_step(mx.array(row.prompt), self.model, max_tokens=row.max_tokens,
                                    sampler=sampler, logits_processors=processors):
            if row.add(int(tok)):
                break
        row.t_end = time.perf_counter()
        row.finish_reason = row.finish_reason or "length"

    def _constraint_processor(self, row: _Row):
        """A logits processor for mlx_lm's ``generate_step`` that leaves only the token the
        row's constraint chooses (:func:`.decode.constrain`, which advances the row's state:
        decoding is greedy, so that token is the one generated)."""
        from .decode import constrain

        def process(tokens: mx.array, logits: mx.array) -> mx.array:
            if row.constraint is None:
                return logits
            choice = constrain(self, row, int(mx.argmax(logits[0]).item()), logits[0])
            if row.constraint is None:  # dropped: the model's own choice
                return logits
            mask = mx.full(logits.shape, -float("inf"), dtype=logits.dtype)
            return mx.where(mx.arange(logits.shape[-1]) == choice, logits, mask)

        return process
