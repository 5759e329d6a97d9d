"""A JSONL split -> a :class:`TokenizedSet`: every record tokenized by an :class:`.Encoder`,
with counts of what was trimmed, skipped or retokenized."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...jsonl import iter_jsonl
from .encode import Encoder, Sample


@dataclass
class DataStats:
    records: int = 0
    used: int = 0
    trimmed: int = 0            # schema shortened to fit max_seq_length
    too_long: list[str] = field(default_factory=list)  # file:line of skipped examples
    no_boundary: int = 0        # text records without a findable answer: trained on every token
    retokenized: int = 0        # boundary merge: rebuilt as prompt tokens + answer tokens
    tokens: int = 0
    answer_tokens: int = 0

    def describe(self, name: str) -> str:
        parts = [f"{name}: {self.used} examples, {self.tokens:,} tokens ({self.answer_tokens:,} trained on)"]
        if self.trimmed:
            parts.append(f"{self.trimmed} with a trimmed schema")
        if self.too_long:
            parts.append(f"{len(self.too_long)} skipped as too long even with a trimmed schema "
                         f"(first: {self.too_long[0]})")
        if self.no_boundary:
            parts.append(f"{self.no_boundary} text records without 'sql' trained on every token")
        return "; ".join(parts)


@dataclass
class TokenizedSet:
    samples: list[Sample]
    stats: DataStats
    path: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s.tokens) for s in self.samples], dtype=np.int64)


def load_split(path: str | Path, encoder: Encoder) -> TokenizedSet:
    """Tokenize every record of a JSONL file; malformed lines raise InputError (file:line)."""
    path = Path(path)
    stats = DataStats()
    samples = []
    for lineno, rec in iter_jsonl(path):
        stats.records += 1
        where = f"{path}:{lineno}"
        sample, status = encoder.encode_record(rec, where)
        if sample is None:
            stats.too_long.append(where)
            continue
        schema = rec.get("schema")
        if isinstance(schema, str) and schema:
            sample.group = schema
        if status == "trimmed":
            stats.trimmed += 1
        elif status == "no_boundary":
            stats.no_boundary += 1
        elif status == "retokenized":
            stats.retokenized += 1
        samples.append(sample)
        stats.tokens += len(sample.tokens)
        start = 1 if encoder.train_on_prompt else sample.prompt_len
        stats.answer_tokens += len(sample.tokens) - start
    stats.used = len(samples)
    return TokenizedSet(samples, stats, str(path))
