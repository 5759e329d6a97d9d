"""The record forms a training file may hold, checked field by field before any tokenizing.

Each check raises :class:`~mlx_text2sql.errors.InputError` naming the file and line (``where``
is ``path:line``) and what the record needs instead.
"""

from __future__ import annotations

from ...errors import InputError
from ...prompts import SYSTEM_PROMPT, build_messages, user_message

MESSAGES, PROMPT_COMPLETION, TEXT = "messages", "prompt_completion", "text"


def split_where(where: str) -> tuple[str | None, int | None]:
    """``path:line`` as (path, line) for an InputError; (where, None) when it has no line."""
    path, _, line = where.rpartition(":")
    if path and line.isdigit():
        return path, int(line)
    return where or None, None


def record_form(rec: dict, where: str) -> str:
    """Which form ``rec`` has: :data:`MESSAGES` (``messages``, or ``question`` + ``schema``
    without ``text``/``prompt``), :data:`PROMPT_COMPLETION` or :data:`TEXT`, in that order."""
    if "messages" in rec or ("question" in rec and "schema" in rec and "text" not in rec
                             and "prompt" not in rec):
        return MESSAGES
    if "prompt" in rec and "completion" in rec:
        return PROMPT_COMPLETION
    if "text" in rec:
        return TEXT
    raise InputError("record has none of 'messages', 'question'+'schema', 'prompt'+'completion', 'text'",
                     *split_where(where))


def record_messages(rec: dict, where: str) -> list[dict]:
    """The chat messages of a :data:`MESSAGES` record (copies), ending with the assistant turn;
    a question + schema + sql record gets the messages ``convert`` would have written."""
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise InputError("'messages' must be a list of {role, content} strings", *split_where(where))
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            raise InputError("the last message must be a non-empty assistant turn (the SQL to learn)",
                             *split_where(where))
        if len(msgs) < 2:
            raise InputError("'messages' needs a prompt turn before the assistant turn", *split_where(where))
        return [dict(m) for m in msgs]
    q, schema, sql = rec.get("question"), rec.get("schema"), rec.get("sql")
    if not all(isinstance(x, str) for x in (q, schema, sql)) or not sql.strip():
        raise InputError("a question+schema record needs string 'question', 'schema' and non-empty 'sql'",
                         *split_where(where))
    return build_messages(q, schema, sql)


def prompt_completion(rec: dict, where: str) -> tuple[str, str]:
    """The ``prompt`` and ``completion`` strings of a :data:`PROMPT_COMPLETION` record."""
    prompt, completion = rec["prompt"], rec["completion"]
    if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
        raise InputError("'prompt' and 'completion' must be strings, the completion non-empty",
                         *split_where(where))
    return prompt, completion


def completion_messages(rec: dict, prompt: str, completion: str) -> list[dict]:
    """A plain prompt (not in the chat template) as the user turn and the completion as the
    answer. A prompt ``convert`` built from the record's question + schema gets the system
    prompt generation uses."""
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if isinstance(rec.get("question"), str) and isinstance(rec.get("schema"), str) \
            and prompt == user_message(rec["question"], rec["schema"]):
        msgs.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    return msgs


def record_text(rec: dict, where: str) -> tuple[str, int]:
    """The ``text`` of a :data:`TEXT` record and where its answer starts: the last occurrence
    of the record's ``sql`` in it, or -1 when it has no ``sql`` (or the SQL is not there)."""
    text = rec["text"]
    if not isinstance(text, str) or not text.strip():
        raise InputError("'text' must be a non-empty string", *split_where(where))
    sql = rec.get("sql")
    pos = text.rfind(sql.strip()) if isinstance(sql, str) and sql.strip() else -1
    return text, pos
