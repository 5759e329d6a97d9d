"""Execution-guided decoding: a greedy query that fails on the database is replaced by the
answer most sampled alternatives agree on.

A Text2SQL model's greedy query sometimes cannot be right, and the database says so before any
gold query is consulted: it raises an error or returns no rows (questions are asked about rows
that exist). For such a query (and only such a query) the model is asked again: ``n`` replies
are sampled for the same prompt (prefix-cached, so the prompt is computed once), each is
value-repaired when a :class:`~mlx_text2sql.repair.Repairer` is given, run, and the usable ones
(those that return rows) vote with their results; the largest group wins, ties going to the group
whose first member was sampled first, and that member's SQL is the answer. When no sample is
usable the greedy query stays. This is the execution-guided decoding of Wang et al. (2018,
"Robust Text-to-SQL Generation with Execution-Guided Decoding") with self-consistency voting
over execution results in place of beam search; it needs the database, never the gold query.

It assumes the right answer has rows. That holds for WikiSQL-like lookups (4 of 843 held-out
gold answers are empty; +3.1 points there) and not for Spider-like data, where questions about
empty sets are common (11 of a 200-question dev sample; it lost 5 right answers and gained 1
with a WikiSQL adapter).

**Voting on every question** (``mode="vote"``, ``evaluate --vote N``): self-consistency
(Wang et al., 2023) over execution results for every question, not only failing ones, for data
where the empty set is a common right answer (Spider). The greedy query and ``n`` sampled
replies each run on the database; a query that raises an error has no vote; an empty result is
an answer like any other and votes with the other empty results; the largest group wins. Ties
go to the group holding the greedy query, then to a group with rows, then to the group sampled
first; the greedy query stays when nothing runs.

**A constrained retry** (``mode="constrained"``, ``evaluate --constrained-retry``): a query
that raises an error on its database (after repair) is decoded once more, greedily, under the
database's name constraint (:mod:`mlx_text2sql.sql.constrain`), repaired, and replaces the
first when it runs (an empty result included). Unconstrained decoding with name repair keeps
what it gets right (repair maps ``album_title`` to ``title``, where a constraint that follows
the model's ``album_`` would write ``album_id``), and the queries repair cannot mend get the
model's choice among the names that exist.

Used by ``evaluate --exec-guided N`` / ``--vote N`` / ``--constrained-retry`` (which report
the accuracy with and without it) and ``generate --db ... --exec-guided N``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from .sqlexec import try_execute

REASONS = ("error", "empty")
MODES = ("failed", "vote", "constrained")
EMPTY = ("empty",)  # the signature every empty result shares when voting

# A result of only NULLs (an aggregate over no rows, empty cells) is NOT treated as a failure:
# on WikiSQL validation questions most such greedy queries were right (the gold query returns
# NULL too), and replacing them lost more than it gained.


@dataclass
class Item:
    """One query to check: the prompt it came from, its SQL (after value repair, if any), and
    where to run it. ``case_insensitive`` runs it the way evaluation compares WikiSQL (text
    compared without case)."""

    messages: Any
    sql: str
    db_path: str | os.PathLike | None
    question: str = ""
    case_insensitive: bool = False
    double_quoted_strings: bool | None = None  # None: the executor's default (fallback off)
    constraint: Any = None  # the database's NameConstraint (mode "constrained")


@dataclass
class Choice:
    """The guide's answer for one :class:`Item`.

    reason:     why the greedy query was retried ("error", "empty"), None when it was
                usable (or could not be checked: no database).
    sql:        the query to use (the item's own when nothing better was found).
    changed:    whether ``sql`` is a sampled query rather than the item's.
    samples:    replies sampled; ``usable``: how many of them ran and returned rows (when
                voting: how many candidates ran, the greedy query included);
    votes:      how many usable candidates returned the chosen result.
    candidates: the sampled queries (after repair), in sampling order.
    """

    reason: str | None
    sql: str
    changed: bool = False
    samples: int = 0
    usable: int = 0
    votes: int = 0
    candidates: list[str] = field(default_factory=list)
    mode: str = "failed"

    def as_json(self) -> dict:
        out = {"reason": self.reason, "changed": self.changed, "samples": self.samples,
               "usable": self.usable, "votes": self.votes}
        if self.mode != "failed":
            out["mode"] = self.mode
        return out


def _run(sql: str, db_path, case_insensitive: bool, timeout_s: float, dqs: bool | None = None):
    if case_insensitive:
        from .metrics import case_insensitive_sql

        sql = case_insensitive_sql(sql)
    return try_execute(db_path, sql, timeout_s=timeout_s, max_rows=50_000, double_quoted_strings=dqs)


def verdict(sql: str, db_path, *, case_insensitive: bool = False, timeout_s: float = 5.0,
            double_quoted_strings: bool | None = None) -> tuple[str | None, tuple | None]:
    """(reason, signature): why ``sql`` cannot be the answer on ``db_path`` ("error", "empty")
    or None, and for a usable query a hashable signature of its result (rows as a
    sorted multiset of case-folded cells) for voting."""
    if not sql or not sql.strip():
        return "error", None
    outcome = _run(sql, db_path, case_insensitive, timeout_s, double_quoted_strings)
    if not outcome.ok:
        return "error", None
    rows = outcome.result.rows
    if not rows:
        return "empty", None
    return None, _signature(rows)


def _cell(v: Any) -> tuple:
    if v is None:
        return (0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (1, round(float(v), 6))
    if isinstance(v, bytes):
        return (3, v.hex())
    return (2, str(v).casefold().strip())


def _signature(rows: Sequence[Sequence[Any]]) -> tuple:
    return tuple(sorted(tuple(_cell(v) for v in row) for row in rows))


class ExecutionGuide:
    """Checks greedy queries on their databases and re-asks the model (see the module docstring).

    gen:      a :class:`~mlx_text2sql.engine.SQLGenerator`.
    samples:  replies sampled per query re-asked.
    mode:     "failed" (re-ask only for queries that fail: error or no rows), "vote"
              (re-ask for every question and vote, empty results included) or "constrained"
              (decode a query that raises an error once more, greedily, under its item's
              name constraint; ``samples``, ``temp`` and ``top_p`` unused).
    temp, top_p, seed, max_tokens, batch_size: the sampling settings.
    repairer: optional :class:`~mlx_text2sql.repair.Repairer` applied to every sample.
    """

    def __init__(self, gen, *, samples: int = 8, temp: float = 0.7, top_p: float = 0.95,
                 seed: int = 0, max_tokens: int = 160, batch_size: int = 16,
                 timeout_s: float = 5.0, repairer=None, mode: str = "failed"):
        if samples < 1:
            raise ValueError("samples must be at least 1")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if temp <= 0 and mode != "constrained":
            raise ValueError("execution-guided decoding samples: temp must be above 0")
        self.gen = gen
        self.samples = samples
        self.temp = temp
        self.top_p = top_p
        self.seed = seed
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.repairer = repairer
        self.mode = mode
        self.calls = 0

    def refine(self, items: Sequence[Item], progress=None, announce=None) -> list[Choice]:
        """One :class:`Choice` per item, in order. ``announce(n)`` is called with the number of
        replies about to be sampled (if any), ``progress(k)`` as they finish (for a bar)."""
        choices: list[Choice] = []
        retry: list[int] = []
        greedy_votes: dict[int, tuple | None] = {}  # vote mode: the greedy query's signature
        for i, it in enumerate(items):
            if it.db_path is None or not os.path.isfile(it.db_path):
                choices.append(Choice(reason=None, sql=it.sql))
                continue
            reason, sig = verdict(it.sql, it.db_path, case_insensitive=it.case_insensitive,
                                  timeout_s=self.timeout_s, double_quoted_strings=it.double_quoted_strings)
            choices.append(Choice(reason=reason, sql=it.sql))
            greedy_votes[i] = _vote_of(reason, sig, empty_votes=True)
            if self.mode == "constrained":
                if reason == "error" and it.constraint is not None:
                    retry.append(i)
            elif reason is not None or self.mode == "vote":
                retry.append(i)
        if not retry:
            return choices
        if self.mode == "constrained":
            return self._retry_constrained(items, choices, retry, progress, announce)
        prompts = [items[i].messages for i in retry for _ in range(self.samples)]
        if announce is not None:
            announce(len(prompts))
        # A different stream for every call, reproducible for the same inputs.
        got = self.gen.generate(prompts, max_tokens=self.max_tokens, temp=self.temp, top_p=self.top_p,
                                seed=self.seed + 7919 * self.calls, batch_size=self.batch_size,
                                progress=progress)
        self.calls += 1
        for k, i in enumerate(retry):
            it = items[i]
            sqls = [o.sql for o in got[k * self.samples:(k + 1) * self.samples]]
            if self.repairer is not None:
                sqls = [self.repairer.fix(s, it.db_path, it.question)[0] for s in sqls]
            c = choices[i]
            c.samples, c.candidates, c.mode = len(sqls), sqls, self.mode
            if self.mode == "vote":
                self._vote(it, c, sqls, greedy_votes[i])
            else:
                self._replace_failed(it, c, sqls)
        return choices

    def _retry_constrained(self, items, choices, retry, progress, announce) -> list[Choice]:
        """Greedy constrained decoding of the retried items, one batched call; a repaired
        reply that runs replaces the item's query."""
        if announce is not None:
            announce(len(retry))
        got = self.gen.generate([items[i].messages for i in retry], max_tokens=self.max_tokens, temp=0.0,
                                batch_size=self.batch_size, progress=progress,
                                constraints=[items[i].constraint for i in retry])
        self.calls += 1
        for i, out in zip(retry, got):
            it, c = items[i], choices[i]
            sql = out.sql
            if self.repairer is not None:
                sql = self.repairer.fix(sql, it.db_path, it.question)[0]
            c.samples, c.candidates, c.mode = 1, [sql], self.mode
            reason, _ = verdict(sql, it.db_path, case_insensitive=it.case_insensitive,
                                timeout_s=self.timeout_s, double_quoted_strings=it.double_quoted_strings)
            if reason != "error":
                c.usable = c.votes = 1
                c.sql = sql
                c.changed = sql != it.sql
        return choices

    def _groups(self, it: Item, sqls: Sequence[str], empty_votes: bool, first: int = 0,
                groups: dict[tuple, list[int]] | None = None) -> dict[tuple, list[int]]:
        """Result signature -> indexes (from ``first``) of the queries that returned it; a
        query without a vote (an error; an empty result unless ``empty_votes``) is in none."""
        groups = {} if groups is None else groups
        for j, sql in enumerate(sqls, start=first):
            reason, sig = verdict(sql, it.db_path, case_insensitive=it.case_insensitive,
                                  timeout_s=self.timeout_s, double_quoted_strings=it.double_quoted_strings)
            vote = _vote_of(reason, sig, empty_votes)
            if vote is not None:
                groups.setdefault(vote, []).append(j)
        return groups

    def _replace_failed(self, it: Item, c: Choice, sqls: list[str]) -> None:
        groups = self._groups(it, sqls, empty_votes=False)
        c.usable = sum(len(g) for g in groups.values())
        if groups:
            best = max(groups.values(), key=lambda g: (len(g), -g[0]))
            c.votes = len(best)
            c.sql = sqls[best[0]]
            c.changed = c.sql != it.sql

    def _vote(self, it: Item, c: Choice, sqls: list[str], greedy_vote: tuple | None) -> None:
        candidates = [it.sql] + sqls  # index 0: the greedy query, already run by refine()
        groups = {greedy_vote: [0]} if greedy_vote is not None else {}
        groups = self._groups(it, sqls, empty_votes=True, first=1, groups=groups)
        c.usable = sum(len(g) for g in groups.values())
        if not groups:
            return
        sig, best = max(groups.items(), key=lambda kv: (len(kv[1]), kv[1][0] == 0, kv[0] != EMPTY,
                                                         -kv[1][0]))
        c.votes = len(best)
        c.sql = candidates[best[0]]
        c.changed = c.sql != it.sql


def _vote_of(reason: str | None, sig: tuple | None, empty_votes: bool) -> tuple | None:
    """What a query's :func:`verdict` votes for: its result's signature, :data:`EMPTY` for an
    empty result when empty results vote, else None (no vote)."""
    if reason is None:
        return sig
    return EMPTY if reason == "empty" and empty_votes else None
