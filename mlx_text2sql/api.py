"""The public Python API: load a model (+ adapter) once, ask questions about a database.

    from mlx_text2sql.api import Text2SQL, AskOptions

    t2s = Text2SQL.load(adapter_path="adapters")          # base model from adapter_config.json
    answer = t2s.ask("Who plays for Serbia?", db="data/sample.sqlite")
    print(answer.sql, answer.columns, answer.rows, answer.error_kind)

    answers = t2s.ask_many(["How many players?", "Which team is from Ohio?"], db="data/sample.sqlite",
                           options=AskOptions(fix_values=True, exec_guided=8))

A question is asked over CREATE TABLE text (``schema=``) or a SQLite file (``db=``: its tables,
keys and sample rows are read, the tables the question is about picked, value hints added when
the adapter was trained with them), exactly as the model was trained. Invalid input (an empty
question, a missing database, schema text that does not parse, a bad option) raises a typed
error (:class:`~mlx_text2sql.errors.InputError`, :class:`~mlx_text2sql.errors.ConfigError`)
before any model work; a query that fails is not an exception but an answer whose
``error_kind`` / ``error`` say why. The ``generate`` and ``evaluate`` commands run on this API.

Not re-entrant: call one object from one thread at a time (a server collects concurrent
requests and calls :meth:`Text2SQL.ask_many` or :meth:`Text2SQL.complete` once per batch).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

from .errors import InputError
from .inference.answers import (NO_SQL, Answer, AskOptions, Completion, Question, QueryResult, Timings,
                                execute_sql)
from .inference.predictor import Predictor
from .inference.questions import PromptBuilder, PromptSettings

__all__ = ["Answer", "AskOptions", "Completion", "NO_SQL", "Question", "QueryResult", "Text2SQL",
           "Timings", "execute_sql"]

Progress = Callable[[int], None]
StreamCallback = Callable[[int, str], None]


class Text2SQL:
    """A loaded model (+ adapter) that answers questions about schemas and databases.

    Build it with :meth:`load`. ``loaded`` is the
    :class:`~mlx_text2sql.models.load.LoadedModel`, ``generator`` the batched engine
    (:class:`~mlx_text2sql.engine.SQLGenerator`), ``prompts`` the
    :class:`~mlx_text2sql.inference.questions.PromptBuilder` holding the trained prompt settings.
    """

    def __init__(self, loaded, generator, prompts: PromptBuilder, *, adapter_path=None):
        self.loaded = loaded
        self.generator = generator
        self.prompts = prompts
        self._adapter_path = None if adapter_path is None else str(adapter_path)
        self._predictor = Predictor(generator, prompts)

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, adapter_path: str | os.PathLike | None = None, *,
             dtype: str | None = None, merge_adapter: bool = True, dequantize: bool | None = None,
             chat_template: str | None = None, prompts: PromptBuilder | None = None,
             log: Callable[[str], None] | None = None, **engine_options) -> "Text2SQL":
        """Load model + adapter once.

        model:         a model spec (``smollm2-135m``, a folder, a ``.gguf`` file, a Hub id);
                       None: the adapter's base model, else the built-in smollm2-135m.
        adapter_path:  an adapter folder written by ``train``.
        dtype, dequantize: weights (default on MLX's CPU backend: dense float32, the fast
                       choice there; elsewhere as trained / stored).
        merge_adapter: fold a dense base's adapter into its weights (same numbers, fewer operations).
        chat_template: override the chat template (a registry name).
        prompts:       a :class:`PromptBuilder` to use (default: one with the settings the
                       adapter or fused model was trained with).
        log:           receives one line saying what was loaded.
        engine_options: keywords of :class:`~mlx_text2sql.engine.SQLGenerator` (e.g.
                       ``prefix_cache_mb``, ``draft_tokens``).
        Raises ModelError / AdapterError naming what cannot be loaded.
        """
        from .engine import SQLGenerator
        from .models.adapters import load_for_inference

        if prompts is None:  # reads the adapter config: a bad adapter folder fails before loading
            prompts = PromptBuilder(PromptSettings.trained(model, adapter_path))
        loaded = load_for_inference(model, adapter_path, dtype=dtype, dequantize=dequantize,
                                    chat_template=chat_template, merge_adapter=merge_adapter, log=log)
        return cls(loaded, SQLGenerator(loaded, **engine_options), prompts, adapter_path=adapter_path)

    # ----------------------------------------------------------------- properties

    @property
    def model_name(self) -> str:
        """The model spec that was loaded (the adapter's base when none was given)."""
        return self.loaded.spec

    @property
    def adapter_path(self) -> str | None:
        return self._adapter_path

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def repairer(self):
        """The value repairer answers use (:class:`~mlx_text2sql.repair.Repairer`: each
        database's cells read once), for callers that repair queries of their own."""
        return self._predictor.refiner.repairer

    def prompt_text(self, messages: list[dict]) -> str:
        """The chat template's rendering of ``messages`` with the generation prompt, as the
        model sees it."""
        return self.generator.prompt_text(messages)

    # ----------------------------------------------------------------- asking

    def messages(self, question: str, *, db: str | os.PathLike | None = None, schema: str | None = None,
                 tables: list[str] | None = None, options: AskOptions | None = None) -> list[dict]:
        """The exact chat prompt :meth:`ask` sends for ``question`` (no model work)."""
        [p] = self._predictor.prepare([Question(question, db=db, schema=schema, tables=tables)],
                                      options=options or AskOptions())
        return p.messages

    def ask(self, question: str, *, db: str | os.PathLike | None = None, schema: str | None = None,
            tables: list[str] | None = None, options: AskOptions | None = None,
            messages: list[dict] | None = None, stream_callback: Callable[[str], None] | None = None) -> Answer:
        """Answer one question over ``db`` (a SQLite file) or ``schema`` (CREATE TABLE text).

        tables:   with ``db``, the tables to show ([] = all; None: the ones the question is about).
        messages: a prompt built already, sent as is (``db`` / ``schema`` say where it runs).
        stream_callback(piece): called with each new piece of the reply as it is generated.
        """
        stream = None if stream_callback is None else (lambda _i, piece: stream_callback(piece))
        q = Question(question, db=db, schema=schema, tables=tables, messages=messages)
        return self.ask_many([q], options=options, stream_callback=stream)[0]

    def ask_many(self, questions: Sequence[Question | str], *, db: str | os.PathLike | None = None,
                 schema: str | None = None, options: AskOptions | None = None,
                 progress: Progress | None = None, stream_callback: StreamCallback | None = None,
                 guided_progress: Progress | None = None,
                 guided_announce: Progress | None = None,
                 cancelled: Callable[[int], bool] | None = None) -> list[Answer]:
        """Answer many questions, in input order (each answer echoes its question's ``key``).

        All prompts are decoded together in the batched engine (one call; prompts over one
        schema share its computed prefix); value repair and execution-guided decoding (one
        sampling call for every failing query) follow, then read-only execution.
        questions: strings (asked over ``db`` / ``schema``) or :class:`Question` objects with
                   their own database or schema.
        progress(n): greedy replies finished since the last call; stream_callback(i, piece):
                   new reply text of question ``i``; guided_announce(n) / guided_progress(k):
                   the replies execution-guided decoding is about to sample / has sampled;
        cancelled(i): true once question ``i``'s answer is no longer wanted: its decoding
                   stops at once (``finish_reason`` "cancelled", no SQL, nothing executed).
        Raises InputError / ConfigError before any model work when an input is invalid.
        """
        t0 = time.perf_counter()
        if isinstance(questions, (str, Question)):
            raise InputError("ask_many takes a list of questions (use ask for one)")
        options = options or AskOptions()
        prepared = self._predictor.prepare(list(questions), db=db, schema=schema, options=options)
        return self._predictor.run(prepared, options, progress=progress, stream_callback=stream_callback,
                                   guided_progress=guided_progress, guided_announce=guided_announce, t0=t0,
                                   cancelled=cancelled)

    def complete(self, messages_list: Sequence[list[dict]], *, max_tokens: int = 256, temp: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stream_callback: StreamCallback | None = None,
                 stop: Sequence[str] | None = None, batch_size: int = 16,
                 cancelled: Callable[[int], bool] | None = None) -> list[Completion]:
        """Raw chat completions through the same batched engine, in input order (one
        :class:`Completion` per message list; no SQL extraction or execution).
        stop: stop strings (default: the chat template's); cancelled(i): true once completion
        ``i`` is no longer wanted (it stops at once, ``finish_reason`` "cancelled")."""
        from .errors import ConfigError
        from .inference.predictor import check_messages

        problems = AskOptions(max_tokens=max_tokens, temp=temp, top_p=top_p, batch_size=batch_size).problems()
        if problems:
            raise ConfigError(problems)
        if isinstance(messages_list, (str, dict)) or not messages_list:
            raise InputError("complete takes a non-empty list of message lists")
        prompts = [check_messages(m, f"messages {i}") for i, m in enumerate(messages_list)]
        results = self.generator.generate(prompts, max_tokens=max_tokens, temp=temp, top_p=top_p, seed=seed,
                                          batch_size=batch_size, stream_callback=stream_callback, stop=stop,
                                          cancelled=cancelled)
        return [Completion(text=r.text, finish_reason=r.finish_reason, n_prompt_tokens=r.n_prompt_tokens,
                           n_tokens=r.n_tokens, n_cached_tokens=r.n_cached_tokens, decode_s=r.seconds)
                for r in results]

    def close(self) -> None:
        """Close the databases opened for value hints and value repair."""
        self._predictor.close()
