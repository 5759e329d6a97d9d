"""The one place where a schema and a question become a prompt, and a reply becomes SQL.

Converters, the trainer, ``generate`` and ``evaluate`` all call :func:`build_messages`, so the
prompt a model is trained on is exactly the prompt it is asked with.

Also here: the chat-template registry (for models whose tokenizer has no template, and for the
``{"text": ...}`` records some recipes train on), each template's EOS and stop strings, and
:func:`extract_sql`, which pulls one SQL statement out of a model reply.

Pure Python (jinja2 comes with transformers); no MLX import.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import ConfigError
from .example import Example, Table

SYSTEM_PROMPT = (
    "You translate questions into SQLite queries. "
    "Answer with one SQL query over the given schema and nothing else."
)

DEFAULT_SAMPLE_ROWS = 3


# --------------------------------------------------------------------------- schema rendering

def quote_ident(name: str) -> str:
    """Quote an identifier for SQLite: always double quotes, inner quotes doubled."""
    return '"' + str(name).replace('"', '""') + '"'


def _cell(value: Any, width: int = 40) -> str:
    text = "NULL" if value is None else str(value)
    text = text.replace("\n", " ").replace("|", "/")
    return text if len(text) <= width else text[: width - 3] + "..."


def render_table(table: Table, sample_rows: int = DEFAULT_SAMPLE_ROWS) -> str:
    """CREATE TABLE text (with types, primary and foreign keys), then sample rows as a comment.

    The comment form follows the "CREATE TABLE + SELECT 3 rows" prompt that works best for
    execution accuracy in Rajkumar et al. (2022) and keeps the schema valid SQL.
    """
    if table.create_sql:
        text = table.create_sql.strip().rstrip(";")
    else:
        lines = [f"  {quote_ident(c.name)} {c.type.upper()}" for c in table.columns]
        if table.primary_key:
            lines.append("  PRIMARY KEY (" + ", ".join(quote_ident(c) for c in table.primary_key) + ")")
        for col, ref_table, ref_col in table.foreign_keys:
            lines.append(
                f"  FOREIGN KEY ({quote_ident(col)}) REFERENCES {quote_ident(ref_table)}({quote_ident(ref_col)})"
            )
        text = f"CREATE TABLE {quote_ident(table.name)} (\n" + ",\n".join(lines) + "\n)"
    text += ";"
    rows = table.rows[:sample_rows] if sample_rows > 0 else []
    if rows and table.columns:
        header = " | ".join(_cell(c.name) for c in table.columns)
        body = "\n".join(" | ".join(_cell(v) for v in row) for row in rows)
        text += f"\n/* {len(rows)} example rows from {quote_ident(table.name)}:\n{header}\n{body}\n*/"
    return text


def render_schema(tables: Iterable[Table], sample_rows: int = DEFAULT_SAMPLE_ROWS) -> str:
    return "\n\n".join(render_table(t, sample_rows) for t in tables)


def user_message(question: str, schema: str, hints: str | None = None) -> str:
    """The user turn: schema, question, and (when given) the value hints line of
    :mod:`mlx_text2sql.hints`. Hints come after the question so that every question on one
    schema shares the same prompt prefix (what prefix caching in training and generation uses)."""
    text = f"Schema:\n{schema.strip()}\n\nQuestion: {question.strip()}"
    if hints:
        text += f"\nValues: {hints.strip()}"
    return text


def build_messages(question: str, schema: str, sql: str | None = None,
                   system: str | None = SYSTEM_PROMPT, hints: str | None = None) -> list[dict[str, str]]:
    """Chat messages for one example; the assistant turn is included when ``sql`` is given."""
    msgs = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": user_message(question, schema, hints)})
    if sql is not None:
        msgs.append({"role": "assistant", "content": sql.strip()})
    return msgs


def example_messages(ex: Example, sample_rows: int = DEFAULT_SAMPLE_ROWS,
                     with_answer: bool = True) -> list[dict[str, str]]:
    schema = render_schema(ex.tables, sample_rows)
    return build_messages(ex.question, schema, ex.sql if with_answer else None)


def record_messages(record: dict, with_answer: bool = False) -> list[dict[str, str]]:
    """Prompt messages for a JSONL record written by ``convert`` (any of its output forms).

    Uses the record's own ``messages`` when present (dropping the assistant turn unless
    ``with_answer``); otherwise rebuilds them from ``question`` + ``schema``.
    """
    if "messages" in record:
        msgs = [dict(m) for m in record["messages"]]
        if not with_answer and msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        return msgs
    if "question" in record and "schema" in record:
        return build_messages(record["question"], record["schema"],
                              record.get("sql") if with_answer else None, hints=record.get("hints"))
    raise KeyError("record has neither 'messages' nor 'question' + 'schema'")


# --------------------------------------------------------------------------- chat templates

@dataclass(frozen=True)
class ChatTemplate:
    """A chat format for models whose tokenizer carries none.

    ``jinja`` is a Hugging Face style template (it can be set as ``tokenizer.chat_template``);
    ``eos`` ends the assistant turn and is what the model must learn to emit so generation
    stops; ``stop`` lists extra strings that end a reply.
    """

    name: str
    jinja: str
    eos: str
    stop: tuple[str, ...]
    bos: str = ""


_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# TinyLlama-1.1B-Chat's (Zephyr) format.
_ZEPHYR = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Mistral-Instruct: no system role; the system text is put before the first user message.
_MISTRAL = (
    "{{ bos_token }}{% set sys = namespace(text='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set sys.text = m['content'] + '\n\n' %}"
    "{% elif m['role'] == 'user' %}[INST] {{ sys.text }}{{ m['content'] }} [/INST]{% set sys.text = '' %}"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
_LLAMA2 = (
    "{{ bos_token }}{% set sys = namespace(text='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set sys.text = '<<SYS>>\n' + m['content'] + '\n<</SYS>>\n\n' %}"
    "{% elif m['role'] == 'user' %}[INST] {{ sys.text }}{{ m['content'] }} [/INST]{% set sys.text = '' %}"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)
# For base models: plain text sections, the answer after "SQL:".
_PLAIN = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}SQL: {{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}SQL: {% endif %}"
)

CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate("chatml", _CHATML, "<|im_end|>", ("<|im_end|>", "<|im_start|>")),
    "zephyr": ChatTemplate("zephyr", _ZEPHYR, "</s>", ("</s>", "<|user|>", "<|system|>")),
    "mistral": ChatTemplate("mistral", _MISTRAL, "</s>", ("</s>", "[INST]"), bos="<s>"),
    "llama2": ChatTemplate("llama2", _LLAMA2, "</s>", ("</s>", "[INST]"), bos="<s>"),
    "plain": ChatTemplate("plain", _PLAIN, "</s>", ("</s>", "\n\nQuestion:", "\n\nSchema:")),
}
# Names users may type for the same formats.
TEMPLATE_ALIASES = {"tinyllama": "zephyr", "inst": "mistral", "llama-2": "llama2", "smollm2": "chatml",
                    "qwen": "chatml", "none": "plain"}
# Which registry template a model family uses when its tokenizer carries none.
MODEL_TYPE_TEMPLATES = {"llama": "zephyr", "mistral": "mistral", "qwen2": "chatml", "phi3": "chatml"}


def get_template(name: str) -> ChatTemplate:
    key = TEMPLATE_ALIASES.get(name.lower(), name.lower())
    if key not in CHAT_TEMPLATES:
        raise ConfigError(
            f"unknown chat template {name!r}; choose one of {', '.join(sorted(CHAT_TEMPLATES))}"
        )
    return CHAT_TEMPLATES[key]


@functools.lru_cache(maxsize=16)
def _compiled(source: str):
    """A compiled jinja template, kept: compiling costs far more than rendering, and convert
    renders every record, some twice."""
    import jinja2

    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True)
    return env.from_string(source)


def render_chat(template: ChatTemplate | str, messages: list[dict], add_generation_prompt: bool = False,
                eos_token: str | None = None, bos_token: str | None = None) -> str:
    """Render messages with a registry template (no tokenizer needed)."""
    tpl = get_template(template) if isinstance(template, str) else template
    return _compiled(tpl.jinja).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        eos_token=tpl.eos if eos_token is None else eos_token,
        bos_token=tpl.bos if bos_token is None else bos_token,
    )


# --------------------------------------------------------------------------- SQL extraction

_FENCE = re.compile(r"```(?:sql|sqlite|SQL)?\s*\n?(.*?)(?:```|$)", re.S)
# A query starts at SELECT, or at WITH only when a CTE follows ("WITH name AS (" or
# "WITH RECURSIVE name(cols) AS ("), so prose such as "a table with a column" is not SQL.
_START = re.compile(r"\bSELECT\b|\bWITH\s+(?:RECURSIVE\s+)?[\w\"`\[\]]+\s*(?:\([^)]*\))?\s*AS\s*\(", re.I)


def _cut_statement(text: str) -> str:
    """Text up to the first ';' outside quotes and comments, or the first blank line outside them."""
    from .sql.lexer import PLAIN, PUNCT, scan

    for tok in scan(text):
        if tok.kind == PUNCT:  # the only punctuation scan() returns is ';'
            return text[:tok.start]
        if tok.kind == PLAIN and "\n\n" in tok.text:
            return text[:tok.start + tok.text.index("\n\n")]
    return text


def extract_sql(reply: str, stop: Iterable[str] = ()) -> str:
    """One SQL statement from a model reply: handles code fences, leading prose ("Here is the
    query: ..."), an ``SQL:`` prefix, trailing explanation and stop strings. Returns "" when
    the reply holds no SELECT/WITH statement."""
    text = reply
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    fence = _FENCE.search(text)
    if fence:
        text = fence.group(1)
    m = _START.search(text)
    if not m:
        return ""
    text = _cut_statement(text[m.start():])
    return text.strip()
