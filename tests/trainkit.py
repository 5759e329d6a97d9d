"""Small Text2SQL training sets in the record forms ``convert`` writes, for trainer tests.

The task is learnable by a tiny random model in a few dozen steps: one table per example, a
question that names a column and a value, and SQL that selects that column with that filter.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mlx_text2sql.example import Column, Table
from mlx_text2sql.prompts import build_messages, render_chat, render_schema

_TABLES = [
    ("singer", ["name", "age", "country"]),
    ("team", ["city", "points", "coach"]),
    ("school", ["name", "founded", "state"]),
    ("player", ["name", "position", "team"]),
]
_VALUES = ["Art Long", "Butler", "Guard", "Kansas", "Mike", "United States", "Forward", "Ohio"]


def toy_examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name, cols = _TABLES[rng.randrange(len(_TABLES))]
        sel, where = rng.sample(cols, 2)
        value = rng.choice(_VALUES)
        table = Table(name=name, columns=[Column(c, "TEXT") for c in cols],
                      rows=[[rng.choice(_VALUES) for _ in cols] for _ in range(2)])
        schema = render_schema([table], sample_rows=2)
        question = f"What is the {sel} when the {where} is {value}?"
        sql = f"SELECT \"{sel}\" FROM \"{name}\" WHERE \"{where}\" = '{value}'"
        out.append({"question": question, "schema": schema, "sql": sql, "source": "toy",
                    "id": f"toy-{seed}-{i}", "db_path": None, "table": name, "db_id": None, "meta": {}})
    return out


def as_messages(rec: dict) -> dict:
    return {"messages": build_messages(rec["question"], rec["schema"], rec["sql"]), **rec}


def as_text(rec: dict, template: str = "chatml") -> dict:
    return {"text": render_chat(template, build_messages(rec["question"], rec["schema"], rec["sql"])), **rec}


def as_prompt_completion(rec: dict, template: str | None = "chatml") -> dict:
    msgs = build_messages(rec["question"], rec["schema"], rec["sql"])
    if template is None:
        return {"prompt": msgs[1]["content"], "completion": rec["sql"], **rec}
    prompt = render_chat(template, msgs[:-1], add_generation_prompt=True)
    full = render_chat(template, msgs)
    return {"prompt": prompt, "completion": full[len(prompt):], **rec}


def write_dataset(folder, n_train: int = 48, n_valid: int = 12, form=as_messages, seed: int = 0) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("valid", n_valid, seed + 1000)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for rec in toy_examples(n, s):
                f.write(json.dumps(form(rec)) + "\n")
    return folder
