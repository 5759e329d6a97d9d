"""Value repair and execution-guided decoding of generated queries, configured once.

:class:`Refiner` holds what both need across calls: one :class:`~mlx_text2sql.repair.Repairer`
(each database's cells read once) and one :class:`~mlx_text2sql.guided.ExecutionGuide` per
sampling setting (its call counter gives every call its own reproducible sampling stream).
Both work against a question's database and never consult a gold query; questions without a
database are left as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

from ..guided import Choice, ExecutionGuide, Item


@dataclass(frozen=True)
class GuideSettings:
    """Execution-guided decoding: ``samples`` replies sampled at ``temp`` / ``top_p`` for each
    query that fails; ``seed`` starts the sampling stream; ``max_tokens`` and ``batch_size``
    as for greedy decoding; ``timeout_s`` bounds each check on the database."""

    samples: int
    temp: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    max_tokens: int = 160
    batch_size: int = 16
    timeout_s: float = 5.0


class Refiner:
    """Value repair (``fix_values``) and execution-guided decoding over one generator."""

    def __init__(self, gen) -> None:
        self.gen = gen
        self._repairer = None
        self._guides: dict[tuple, ExecutionGuide] = {}

    @property
    def repairer(self):
        """The shared :class:`~mlx_text2sql.repair.Repairer` (created on first use)."""
        if self._repairer is None:
            from ..repair import Repairer

            self._repairer = Repairer()
        return self._repairer

    def repair(self, sql: str | None, db: str | os.PathLike | None, question: str = ""):
        """``(sql, fixes)``: ``sql`` with miscopied values replaced by the database's cells
        (:func:`mlx_text2sql.repair.fix_values`); unchanged without SQL or database."""
        if not sql or db is None:
            return sql, []
        return self.repairer.fix(sql, db, question)

    def guide(self, settings: GuideSettings, fix_values: bool = False) -> ExecutionGuide:
        """The execution guide for ``settings`` (one per setting, kept across calls)."""
        key = (settings, fix_values)
        if key not in self._guides:
            self._guides[key] = ExecutionGuide(
                self.gen, samples=settings.samples, temp=settings.temp, top_p=settings.top_p,
                seed=settings.seed, max_tokens=settings.max_tokens, batch_size=settings.batch_size,
                timeout_s=settings.timeout_s, repairer=self.repairer if fix_values else None)
        return self._guides[key]

    def refine(self, settings: GuideSettings, items: Sequence[Item], *, fix_values: bool = False,
               progress: Callable[[int], None] | None = None,
               announce: Callable[[int], None] | None = None) -> list[Choice]:
        """One :class:`~mlx_text2sql.guided.Choice` per item: queries that fail on their
        database (an error, or no rows) replaced by the result most sampled replies agree on;
        one batched sampling call for all of them. ``announce(n)``: the number of replies
        about to be sampled; ``progress(k)``: as they finish."""
        return self.guide(settings, fix_values).refine(items, progress=progress, announce=announce)

    def close(self) -> None:
        """Close the databases value repair opened."""
        if self._repairer is not None:
            self._repairer.close()
