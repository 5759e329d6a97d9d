"""The public API (mlx_text2sql.api) on tiny models: load once, ask over schema text and over a
SQLite file, batched asking in input order equal to one-by-one asking, failures as values,
invalid input raised before any model work, timings, execution alone, raw completions."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from mlx_text2sql.api import NO_SQL, Answer, AskOptions, Question, Text2SQL, execute_sql
from mlx_text2sql.errors import ConfigError, InputError
from mlx_text2sql.prompts import build_messages

sys.path.insert(0, str(Path(__file__).parent))
from tinymodels import make_programmed_model  # noqa: E402
from test_generate import db  # noqa: E402,F401  (singer: Art Long 31, Mike 40, Butler 25, Zed 52; concert)

REPLY = "SELECT name FROM singer WHERE age > 30"
SCHEMA = "CREATE TABLE singer (name TEXT, age INT)"


@pytest.fixture(scope="module")
def t2s(tmp_path_factory):
    """Loaded once for the module: a model whose greedy reply is always REPLY."""
    model = make_programmed_model(tmp_path_factory.mktemp("api_m"), REPLY, "chatml")
    lines = []
    obj = Text2SQL.load(str(model), log=lines.append)
    assert len(lines) == 1 and lines[0].startswith(f"loaded {model}")
    return obj


@pytest.fixture
def calls():
    """The batched engine's generate calls: how many prompts each call decoded."""
    from unittest import mock

    from mlx_text2sql.engine import SQLGenerator

    with mock.patch.object(SQLGenerator, "generate", autospec=True, side_effect=SQLGenerator.generate) as spy:
        yield lambda: [len(c.args[1]) for c in spy.call_args_list]


def test_ask_over_schema_text(t2s):
    a = t2s.ask("who is older than 30?", schema=SCHEMA)
    assert isinstance(a, Answer)
    assert (a.sql, a.sql_greedy, a.reply.strip()) == (REPLY, REPLY, REPLY)
    assert a.messages == build_messages("who is older than 30?", SCHEMA)
    # schema text only: the query runs on an empty database built from it
    assert (a.columns, a.rows, a.truncated, a.error_kind, a.error) == (["name"], [], False, None, None)
    assert a.db is None and a.finish_reason == "stop" and a.n_tokens > 0 and a.n_prompt_tokens > 0
    t = a.timings
    assert t.decode_s > 0 and t.prompt_s >= 0 and t.execute_s > 0 and t.queue_s == 0
    assert t.total_s >= t.decode_s and t.total_s >= t.prompt_s
    json.dumps(a.to_dict())  # JSON-friendly
    assert "execution" not in a.to_dict() and a.to_dict()["timings"]["decode_s"] == t.decode_s


def test_ask_over_a_sqlite_file(t2s, db):
    from mlx_text2sql.schema_db import schema_from_db

    a = t2s.ask("who is older than 30?", db=db)
    assert a.sql == REPLY and a.db == str(db)
    assert a.rows == [["Art Long"], ["Mike"], ["Zed"]] and a.columns == ["name"] and not a.truncated
    assert a.messages == build_messages("who is older than 30?", schema_from_db(db, None, 3))
    assert t2s.messages("who is older than 30?", db=db) == a.messages
    short = t2s.ask("who is older than 30?", db=db, options=AskOptions(max_rows=2, sample_rows=1))
    assert short.rows == [["Art Long"], ["Mike"]] and short.truncated
    assert "1 example rows" in short.messages[-1]["content"]
    off = t2s.ask("who is older than 30?", db=db, options=AskOptions(execute=False))
    assert off.sql == REPLY and off.rows is None and off.columns is None and off.error_kind is None


def test_ask_many_keeps_input_order_and_equals_single_asks(tiny_llama, db, calls):
    """A random model gives each question its own reply: the batch returns them in input
    order, each the reply asking alone gives, from one engine call."""
    model = Text2SQL.load(str(tiny_llama))
    questions = ["how many singers?", "who is the oldest?", "list every country", "names of singers from peru",
                 "average age?"]
    opts = AskOptions(max_tokens=10, batch_size=2, execute=False)
    items = [Question(q, db=db, key=f"k{i}") if i % 2 else Question(q, schema=SCHEMA, key=f"k{i}")
             for i, q in enumerate(questions)]
    answers = model.ask_many(items, options=opts)
    assert calls() == [5]  # one batched call for every question
    assert [a.key for a in answers] == [f"k{i}" for i in range(5)]
    assert [a.question for a in answers] == questions
    singles = [model.ask(q.question, db=q.db, schema=q.schema, options=opts) for q in items]
    assert [a.reply for a in answers] == [s.reply for s in singles]
    assert [a.messages for a in answers] == [s.messages for s in singles]
    assert len({a.reply for a in answers}) > 1  # the replies differ, so the order is tested
    # strings are asked over the call's database
    plain = model.ask_many(questions[:2], db=db, options=opts)
    assert [a.reply for a in plain] == [model.ask(q, db=db, options=opts).reply for q in questions[:2]]


def test_failures_come_back_as_values(t2s, tmp_path):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE band (name TEXT)")
    con.commit()
    con.close()
    a = t2s.ask("who?", db=other)
    assert a.sql == REPLY and a.rows is None
    assert a.error_kind == "error" and "no such table" in a.error
    chatty = Text2SQL.load(str(make_programmed_model(tmp_path / "chatty", "Sorry, no idea", "chatml")))
    b = chatty.ask("who?", schema=SCHEMA)
    assert b.sql is None and b.sql_greedy is None and b.error_kind == NO_SQL and "Sorry" in b.reply


@pytest.mark.parametrize("kwargs,error,text", [
    ({"question": "  ", "schema": SCHEMA}, InputError, "the question is empty"),
    ({"question": "q", "db": "{tmp}/missing.sqlite"}, InputError, "database not found"),
    ({"question": "q", "schema": "CREATE TABLE singer (name TEXT"}, InputError, "does not parse"),
    ({"question": "q", "schema": "SELECT 1"}, InputError, "is not a CREATE TABLE statement"),
    ({"question": "q", "schema": SCHEMA, "db": "{db}"}, ConfigError, "not both"),
    ({"question": "q"}, ConfigError, "no schema"),
    ({"question": "q", "db": "{db}", "tables": ["albums"]}, InputError, "no table 'albums'"),
    ({"question": "q", "schema": SCHEMA, "options": AskOptions(max_tokens=0, top_p=2)}, ConfigError,
     "max_tokens must be at least 1"),
])
def test_invalid_input_raises_before_model_work(t2s, db, tmp_path, calls, kwargs, error, text):
    kwargs = {k: v.replace("{tmp}", str(tmp_path)).replace("{db}", str(db)) if isinstance(v, str) else v
              for k, v in kwargs.items()}
    question = kwargs.pop("question")
    with pytest.raises(error) as e:
        t2s.ask(question, **kwargs)
    assert text in str(e.value)
    # in a batch, the bad question fails the call before the good ones are generated
    with pytest.raises(error):
        t2s.ask_many([Question("fine", schema=SCHEMA), Question(question, **{k: v for k, v in kwargs.items()
                                                                             if k != "options"})],
                     options=kwargs.get("options"))
    assert calls() == []


def test_bad_options_are_all_named(t2s):
    with pytest.raises(ConfigError) as e:
        t2s.ask("q", schema=SCHEMA, options=AskOptions(max_tokens=0, top_p=2, exec_guided=2, guided_temp=0))
    assert {"max_tokens must be at least 1", "top_p must be in (0, 1]",
            "guided_temp must be above 0 (the alternatives are sampled)"} <= set(e.value.problems)
    with pytest.raises(InputError, match="question 1: the question is empty"):
        t2s.ask_many(["fine", " "], schema=SCHEMA)
    with pytest.raises(InputError, match="ask_many takes a list"):
        t2s.ask_many("one question", schema=SCHEMA)


def test_value_repair_and_execution_guided_decoding(t2s, db, monkeypatch):
    from mlx_text2sql.engine import Result, SQLGenerator

    greedy = "SELECT name FROM singer WHERE country = 'Frence'"  # a miscopied value: no rows
    empty = "SELECT name FROM singer WHERE age > 100"
    good = "SELECT name FROM singer WHERE age > 50"

    def replies(self, prompts, **kw):
        out = []
        for p in prompts:
            q = p[-1]["content"].rsplit("Question: ", 1)[-1].split("\n")[0]
            sql = (greedy if q.startswith("from") else empty) if kw["temp"] == 0 else good
            out.append(Result(text=sql, sql=sql, n_prompt_tokens=3, n_tokens=9, seconds=0.25))
        return out

    monkeypatch.setattr(SQLGenerator, "generate", replies)
    a, b = t2s.ask_many(["from where?", "who is over 100?"], db=db,
                        options=AskOptions(fix_values=True, exec_guided=3))
    assert a.sql_greedy == greedy and a.sql == greedy.replace("Frence", "France")
    assert a.value_fixes == [{"table": "singer", "column": "country", "old": "Frence", "new": "France",
                              "ratio": pytest.approx(0.833, abs=0.01)}]
    assert a.guided is None and a.rows == [["Art Long"]]
    assert b.sql_greedy == empty and b.sql == good and b.rows == [["Zed"]]
    assert b.guided == {"reason": "empty", "changed": True, "samples": 3, "usable": 3, "votes": 3}
    assert b.timings.guided_s > 0 and a.timings.guided_s == 0 and a.timings.decode_s == 0.25


def test_execute_sql(db, tmp_path):
    r = execute_sql(db, "SELECT name, age FROM singer ORDER BY age", max_rows=2)
    assert r.columns == ["name", "age"] and r.rows == [["Butler", 25], ["Art Long", 31]] and r.truncated
    assert r.error_kind is None and r.execute_s > 0
    bad = execute_sql(db, "SELECT FROM WHERE")
    assert bad.error_kind == "syntax" and bad.rows is None and "syntax" in bad.error
    write = execute_sql(db, "DELETE FROM singer")
    assert write.error_kind == "refused"
    assert execute_sql(None, "SELECT name FROM singer", schema=SCHEMA).rows == []
    with pytest.raises(InputError, match="database not found"):
        execute_sql(tmp_path / "missing.sqlite", "SELECT 1")
    with pytest.raises(ConfigError, match="the query is empty"):
        execute_sql(db, " ")


def test_complete_is_the_engines_reply(t2s, calls):
    msgs = [build_messages("q1", SCHEMA), [{"role": "user", "content": "hello"}]]
    out = t2s.complete(msgs, max_tokens=20)
    assert calls() == [2] and len(out) == 2
    assert out[0].text.strip() == REPLY and out[0].finish_reason == "stop" and out[0].n_tokens > 0
    assert out[0].text == t2s.generator.generate([msgs[0]], max_tokens=20)[0].text
    pieces = []
    t2s.complete([msgs[0]], max_tokens=20, stream_callback=lambda i, p: pieces.append((i, p)))
    assert "".join(p for _, p in pieces) == out[0].text and {i for i, _ in pieces} == {0}
    with pytest.raises(InputError):
        t2s.complete([[{"role": "user"}]])
    with pytest.raises(ConfigError):
        t2s.complete(msgs, max_tokens=0)


def test_prebuilt_messages_are_sent_as_is(t2s, db):
    msgs = build_messages("anything", SCHEMA)
    a = t2s.ask("anything", messages=msgs, db=db)
    assert a.messages == msgs and a.rows == [["Art Long"], ["Mike"], ["Zed"]]
    streamed = []
    t2s.ask("q", schema=SCHEMA, stream_callback=streamed.append)
    assert "".join(streamed).strip() == REPLY


def test_prompt_settings_come_from_the_adapter(tmp_path, db):
    from test_generate import _adapter

    model = make_programmed_model(tmp_path / "m", REPLY, "chatml")
    adapter = _adapter(model, tmp_path / "ad", nonzero=False,
                       prompt={"sample_rows": 1, "system_prompt": "Write SQLite.", "value_hints": True})
    t2s = Text2SQL.load(adapter_path=adapter)  # base model from the adapter's config
    assert t2s.model_name == str(model) and t2s.adapter_path == str(adapter)
    msgs = t2s.messages("which singer is from Peru?", db=db)
    assert msgs[0] == {"role": "system", "content": "Write SQLite."}
    assert "/* 1 example rows" in msgs[1]["content"]
    # two tables shown: the hint names its table
    assert msgs[1]["content"].endswith("Question: which singer is from Peru?\nValues: \"singer\".\"country\" = 'Peru'")
    plain = t2s.messages("which singer is from Peru?", db=db, options=AskOptions(value_hints=False, sample_rows=2))
    assert "Values:" not in plain[1]["content"] and "/* 2 example rows" in plain[1]["content"]
    assert t2s.ask("which singer is from Peru?", db=db).rows == [["Art Long"], ["Mike"], ["Zed"]]


def test_a_changed_database_is_read_again(t2s, tmp_path):
    path = tmp_path / "live.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE singer (name TEXT, age INTEGER)")
    con.execute("INSERT INTO singer VALUES ('Ann', 33)")
    con.commit()
    first = t2s.messages("q", db=path)[-1]["content"]
    con.execute("INSERT INTO singer VALUES ('Bo', 44)")
    con.commit()
    con.close()
    again = t2s.messages("q", db=path)[-1]["content"]
    assert "Bo | 44" not in first and "Bo | 44" in again
    assert t2s.ask("q", db=path).rows == [["Ann"], ["Bo"]]


def test_table_choice_for_a_database_of_many_tables(t2s, tmp_path):
    from mlx_text2sql.inference.questions import PromptBuilder

    path = tmp_path / "many.sqlite"
    con = sqlite3.connect(path)
    for name, cols in [("t_airports", '"City" TEXT, "Airport" TEXT'), ("t_players", '"Player" TEXT, "Nationality" TEXT'),
                       ("t_albums", '"Album" TEXT'), ("t_cars", '"Make" TEXT')]:
        con.execute(f'CREATE TABLE "{name}" ({cols})')
    con.execute("INSERT INTO t_players VALUES ('Milos Petrak', 'Serbia')")
    con.commit()
    con.close()
    seen = []
    builder = PromptBuilder(on_tables=lambda p, why: seen.append((p, why)))
    msgs = builder.messages("Which players are from Serbia?", db=path)
    assert 'CREATE TABLE "t_players"' in msgs[-1]["content"] and "t_airports" not in msgs[-1]["content"]
    builder.messages("Which players are from Serbia?", db=path)
    assert len(seen) == 1 and seen[0][0] == path and "t_players" in seen[0][1]  # announced once
    every = t2s.messages("Which players are from Serbia?", db=path, options=AskOptions(select_schema=False))
    assert all(f'"{t}"' in every[-1]["content"] for t in ("t_airports", "t_players", "t_albums", "t_cars"))
    named = t2s.messages("Which players are from Serbia?", db=path, tables=["t_cars"])
    assert 'CREATE TABLE "t_cars"' in named[-1]["content"] and "t_players" not in named[-1]["content"]


def test_the_api_imports_no_mlx_until_a_model_loads(db):
    """Options, answers, prompts and execution are pure Python: a server can check input and
    run queries before (or without) loading MLX."""
    import subprocess

    code = ("import sys; from mlx_text2sql.api import AskOptions, execute_sql, Text2SQL; "
            "from mlx_text2sql.inference.questions import PromptBuilder; "
            f"PromptBuilder().messages('q', db={str(db)!r}); AskOptions().check(); "
            f"assert execute_sql({str(db)!r}, 'SELECT 1').rows == [[1]]; "
            "assert 'mlx.core' not in sys.modules and 'mlx_lm' not in sys.modules, 'MLX imported'")
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------- constrained names

def test_constrained_decoding_keeps_a_query_whose_names_exist(t2s, db):
    free = t2s.ask("who is older than 30?", db=db)
    bound = t2s.ask("who is older than 30?", db=db, options=AskOptions(constrain_names=True))
    assert bound.sql == free.sql == REPLY and bound.rows == free.rows


def test_constrained_decoding_never_writes_a_name_the_schema_lacks(t2s):
    """The model's reply names ``age``; over a schema without it the constrained reply takes
    another token there, and neither that schema text nor any other question is affected."""
    schema = "CREATE TABLE singer (name TEXT, years INT)"
    free = t2s.ask("who is older than 30?", schema=schema)
    assert free.sql == REPLY and free.error_kind == "error"  # no such column: age
    got = t2s.ask_many([Question("who is older than 30?", schema=schema), Question("who?", schema=SCHEMA)],
                       options=AskOptions(constrain_names=True, max_tokens=24))
    assert got[0].reply.startswith("SELECT name FROM singer WHERE ") and got[0].reply != free.reply
    words = got[0].reply.lower().replace("(", " ").replace(")", " ").split()
    assert "age" not in words
    assert got[1].sql == REPLY  # its schema has age


def test_constrained_decoding_is_greedy_only():
    assert AskOptions(constrain_names=True, temp=0.5).problems() == ["constrain_names needs greedy decoding (temp 0)"]
