"""One batched pass from questions to answers: prompts, generation, refinement, execution.

:class:`Predictor` is what :class:`mlx_text2sql.api.Text2SQL` runs. :meth:`Predictor.prepare`
builds and checks every prompt first (bad input raises before any model work); then
:meth:`Predictor.run` decodes all prompts in one call of the batched engine (prompts over one
schema share its computed prefix), value-repairs the queries against their databases
(``fix_values``), re-asks the model for those that fail there (``exec_guided``: one sampling
call for all of them), and runs the final queries read-only (``execute``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import ConfigError, InputError
from ..name_repair import NameFix
from .answers import NO_SQL, Answer, AskOptions, Question, QueryResult, Timings, run_query
from .questions import PromptBuilder
from .refine import Refiner

Progress = Callable[[int], None]


@dataclass
class Prepared:
    """A question with its prompt, where its query runs, and the time the prompt took."""

    question: Question
    messages: list[dict]
    db: str | os.PathLike | None  # as the caller gave it (errors name it that way)
    schema: str | None
    prompt_s: float


def _question(item: Question | str, db, schema) -> Question:
    if isinstance(item, str):
        return Question(item, db=db, schema=schema)
    if not isinstance(item, Question):
        raise InputError(f"expected a question string or a Question, got {type(item).__name__}")
    if item.db is None and item.schema is None:  # the call's database or schema
        return Question(item.question, db=db, schema=schema, tables=item.tables, key=item.key,
                        messages=item.messages, case_insensitive=item.case_insensitive,
                        double_quoted_strings=item.double_quoted_strings)
    return item


def check_messages(messages, where: str) -> list[dict]:
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                       and isinstance(m.get("content"), str) for m in messages)):
        raise InputError("messages must be a non-empty list of {'role': str, 'content': str} dicts", where)
    return messages


class Predictor:
    """Questions to :class:`~mlx_text2sql.inference.answers.Answer` objects with one generator
    (an :class:`~mlx_text2sql.engine.SQLGenerator` or anything with its ``generate``)."""

    def __init__(self, gen, builder: PromptBuilder, refiner: Refiner | None = None):
        self.gen = gen
        self.builder = builder
        self.refiner = refiner or Refiner(gen)
        self._constraints: dict = {}

    # ----------------------------------------------------------------- prompts

    def prepare(self, questions: Sequence[Question | str], *, db=None, schema=None,
                options: AskOptions) -> list[Prepared]:
        """Every question's prompt, built and checked before the model runs; raises
        InputError / ConfigError naming the question (by position) that is wrong."""
        options.check()
        if db is not None and schema is not None:
            raise ConfigError("give a database or a schema, not both")
        out = []
        for i, item in enumerate(questions):
            q = _question(item, db, schema)
            where = f"question {i}" if len(questions) > 1 else None
            out.append(self._prepare_one(q, options, where))
        if not out:
            raise InputError("no questions to ask")
        return out

    def _prepare_one(self, q: Question, options: AskOptions, where: str | None) -> Prepared:
        t = time.perf_counter()
        at = f"{where}: " if where else ""
        if not isinstance(q.question, str):
            raise InputError(f"{at}the question must be a string")
        if q.db is not None and q.schema is not None and q.messages is None:
            raise ConfigError(f"{at}give a database or a schema, not both")
        if q.messages is not None:
            messages = check_messages(q.messages, where or "messages")
        else:
            try:
                messages = self.builder.messages(
                    q.question, db=q.db, schema=q.schema, tables=q.tables,
                    sample_rows=options.sample_rows, value_hints=options.value_hints,
                    select_schema=options.select_schema)
            except InputError as e:
                raise InputError(e.reason if e.path else at + e.reason, e.path, e.line) from None
        return Prepared(q, messages, q.db, q.schema, time.perf_counter() - t)

    # ----------------------------------------------------------------- answers

    def run(self, prepared: Sequence[Prepared], options: AskOptions, *, progress: Progress | None = None,
            stream_callback: Callable[[int, str], None] | None = None,
            guided_progress: Progress | None = None, guided_announce: Progress | None = None,
            t0: float | None = None, cancelled: Callable[[int], bool] | None = None) -> list[Answer]:
        """Answers in input order: one batched greedy call, then refinement and execution.
        A question whose ``cancelled(i)`` turns true stops decoding at once; its answer has
        ``finish_reason`` "cancelled", no SQL, and is neither refined nor executed."""
        t0 = time.perf_counter() if t0 is None else t0
        extra = {"constraints": [self.constraint(p) for p in prepared]} if options.constrain_names else {}
        results = self.gen.generate(
            [p.messages for p in prepared], max_tokens=options.max_tokens, temp=options.temp,
            top_p=options.top_p, seed=options.seed, batch_size=options.batch_size,
            stream_callback=stream_callback, progress=progress, cancelled=cancelled, **extra)
        live = [i for i, r in enumerate(results) if r.finish_reason != "cancelled"]
        live_set = set(live)
        answers: list = [None if i in live_set else self._answer(p, r, None, None, [], None, 0.0, options)
                         for i, (p, r) in enumerate(zip(prepared, results))]
        rest = self._finish([prepared[i] for i in live], [results[i] for i in live], options,
                            guided_progress, guided_announce)
        for i, a in zip(live, rest):
            answers[i] = a
        total = time.perf_counter() - t0
        for a in answers:
            a.timings.total_s = total
        return answers

    def constraint(self, p: Prepared):
        """The :class:`~mlx_text2sql.sql.constrain.NameConstraint` of a question's database
        (with its declared foreign keys, as name repair reads them) or schema text (one per
        database or schema, kept across calls); None when it has no tables to read."""
        from ..sql.constrain import NameConstraint, schema_names

        key = ("db", os.path.abspath(p.db)) if p.db is not None else ("schema", p.schema)
        if key not in self._constraints:
            names, keys = self.refiner.repairer.names(p.db) if p.db is not None else (schema_names(schema=p.schema), [])
            self._constraints[key] = NameConstraint(names, keys=keys) if names else None
        return self._constraints[key]

    def _finish(self, prepared, results, options: AskOptions, guided_progress, guided_announce) -> list[Answer]:
        """Value repair, execution-guided decoding and execution of the greedy replies."""
        greedy = [r.sql or None for r in results]
        fixed = [self.refiner.repair(s, p.db, p.question.question, values=options.fix_values,
                                     names=options.fix_names) for s, p in zip(greedy, prepared)]
        sqls = [s for s, _ in fixed]
        choices, guided_s = self._guide(prepared, sqls, options, guided_progress, guided_announce)
        answers = []
        for i, (p, r) in enumerate(zip(prepared, results)):
            choice = choices[i] if choices else None
            sql = (choice.sql or None) if choice is not None else sqls[i]
            answers.append(self._answer(p, r, sql, greedy[i], fixed[i][1], choice, guided_s[i], options))
        return answers

    def _guide(self, prepared, sqls, options: AskOptions, progress, announce):
        """Execution-guided decoding of every query (when on); its time shared among the
        questions it sampled for (or all, when none failed)."""
        if not options.guided_samples:
            return None, [0.0] * len(prepared)
        from ..guided import Item

        items = [Item(p.messages, sql or "", str(p.db) if p.db is not None else None, p.question.question,
                      case_insensitive=p.question.case_insensitive,
                      double_quoted_strings=p.question.double_quoted_strings,
                      constraint=self.constraint(p) if options.constrained_retry else None)
                 for p, sql in zip(prepared, sqls)]
        t = time.perf_counter()
        choices = self.refiner.refine(options, items, progress=progress, announce=announce)
        spent = time.perf_counter() - t
        retried = [c.reason is not None or c.samples > 0 for c in choices]
        share = [1] * len(choices) if not any(retried) else retried
        n = sum(share)
        return choices, [spent / n if s else 0.0 for s in share]

    def _answer(self, p: Prepared, r, sql, greedy, fixes, choice, guided_s, options: AskOptions) -> Answer:
        q = p.question
        run = QueryResult()
        if sql is None:
            run = QueryResult(error_kind=NO_SQL, error="the model's reply holds no SQL query")
        elif options.execute:
            run = run_query(p.db, sql, schema=p.schema if p.db is None else None,
                            max_rows=options.max_rows, timeout_s=options.timeout_s)
        guided = choice.as_json() if choice is not None and (choice.reason is not None or choice.samples) else None
        return Answer(
            question=q.question, sql=sql, reply=r.text, sql_greedy=greedy, columns=run.columns,
            rows=run.rows, truncated=run.truncated, error_kind=run.error_kind, error=run.error,
            timings=Timings(prompt_s=p.prompt_s, decode_s=r.seconds, guided_s=guided_s,
                            execute_s=run.execute_s),
            messages=p.messages, db=str(p.db) if p.db is not None else None, key=q.key,
            n_prompt_tokens=r.n_prompt_tokens, n_tokens=r.n_tokens, finish_reason=r.finish_reason,
            value_fixes=[{"table": f.table, "column": f.column, "old": f.old, "new": f.new,
                          "ratio": f.ratio} for f in fixes if not isinstance(f, NameFix)],
            name_fixes=[{"kind": f.kind, "table": f.table, "old": f.old, "new": f.new, "score": f.score}
                        for f in fixes if isinstance(f, NameFix)],
            guided=guided, execution=run.result)

    def close(self) -> None:
        """Close the databases value repair and value hints opened."""
        self.refiner.close()
        self.builder.close()
