"""Value repair and execution-guided decoding of generated queries, configured once.

:class:`Refiner` holds what both need across calls: one :class:`~mlx_text2sql.repair.Repairer`
(each database's cells read once) and one :class:`~mlx_text2sql.guided.ExecutionGuide` per
sampling setting (its call counter gives every call its own reproducible sampling stream).
Both work against a question's database and never consult a gold query; questions without a
database are left as they are.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

from ..guided import Choice, ExecutionGuide, Item
from .answers import AskOptions


class Refiner:
    """Value and name repair (``fix_values``, ``fix_names``) and execution-guided decoding
    over one generator."""

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

    def repair(self, sql: str | None, db: str | os.PathLike | None, question: str = "", *,
               values: bool = True, names: bool = False):
        """``(sql, fixes)``: ``sql`` with unknown names replaced by the database's (``names``,
        :mod:`mlx_text2sql.name_repair`) and miscopied values by its cells (``values``,
        :func:`mlx_text2sql.repair.fix_values`); unchanged without SQL or database."""
        if not sql or db is None or not (values or names):
            return sql, []
        return self.repairer.fix(sql, db, question, values=values, names=names)

    def guide(self, options: AskOptions) -> ExecutionGuide:
        """The execution guide for the options' sampling settings (``exec_guided`` samples at
        ``guided_temp`` / ``guided_top_p``, the sampling stream starting at ``seed``,
        ``max_tokens`` and ``batch_size`` as for greedy decoding, ``timeout_s`` per check;
        samples repaired with ``fix_values`` / ``fix_names``): one per setting, kept across calls."""
        key = (options.guided_samples, options.guided_mode, options.guided_temp, options.guided_top_p, options.seed or 0,
               options.max_tokens, options.batch_size, options.timeout_s, options.fix_values, options.fix_names)
        if key not in self._guides:
            self._guides[key] = ExecutionGuide(
                self.gen, samples=options.guided_samples, mode=options.guided_mode,
                temp=options.guided_temp, top_p=options.guided_top_p,
                seed=options.seed or 0, max_tokens=options.max_tokens, batch_size=options.batch_size,
                timeout_s=options.timeout_s,
                repairer=(self.repairer.configured(values=options.fix_values, names=options.fix_names)
                          if options.fix_values or options.fix_names else None))
        return self._guides[key]

    def refine(self, options: AskOptions, items: Sequence[Item], *,
               progress: Callable[[int], None] | None = None,
               announce: Callable[[int], None] | None = None) -> list[Choice]:
        """One :class:`~mlx_text2sql.guided.Choice` per item: queries that fail on their
        database (an error, or no rows) replaced by the result most sampled replies agree on;
        one batched sampling call for all of them. ``announce(n)``: the number of replies
        about to be sampled; ``progress(k)``: as they finish."""
        return self.guide(options).refine(items, progress=progress, announce=announce)

    def close(self) -> None:
        """Close the databases value repair opened."""
        if self._repairer is not None:
            self._repairer.close()
