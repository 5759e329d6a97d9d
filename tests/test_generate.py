"""The generate command end to end on tiny models (ChatML, Zephyr and [INST] templates): SQL
alone on stdout, --db schema reading (the training prompt), --execute, batch and stdin modes,
streaming, and clear errors without tracebacks."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from mlx_text2sql import generate
from mlx_text2sql.prompts import SYSTEM_PROMPT, build_messages, render_chat

sys.path.insert(0, str(Path(__file__).parent))
from tinymodels import make_programmed_model  # noqa: E402

REPLY = "SELECT name FROM singer WHERE age > 30"
SCHEMA = "CREATE TABLE singer (name TEXT, age INT)"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    return make_programmed_model(tmp_path_factory.mktemp("g_chatml"), REPLY, "chatml")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("g_db") / "music.sqlite"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE singer (name TEXT, age INTEGER, country TEXT)')
    con.executemany("INSERT INTO singer VALUES (?, ?, ?)",
                    [("Art Long", 31, "France"), ("Mike", 40, "Ohio"), ("Butler", 25, "Kansas"),
                     ("Zed", 52, "Peru")])
    con.execute('CREATE TABLE "concert" ("id" INTEGER PRIMARY KEY, "singer" TEXT REFERENCES singer(name), "year" REAL)')
    con.commit()
    con.close()
    return path


def run(argv, capsys):
    code = generate.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("template,arch", [("chatml", "llama"), ("zephyr", "llama"), ("mistral", "mistral")])
def test_prints_the_sql_alone_for_each_template(tmp_path, capsys, template, arch):
    model = make_programmed_model(tmp_path / template, REPLY, template, arch)
    code, out, err = run(["--model", str(model), "--schema", SCHEMA, "--question", "who is older than 30?"], capsys)
    assert code == 0, err
    assert out == REPLY + "\n"
    assert "Traceback" not in err


def test_db_schema_is_read_from_the_database_with_sample_rows(chatml, db, capsys):
    code, out, err = run(["--model", str(chatml), "--db", str(db), "--question", "q?", "--show-prompt",
                          "--sample-rows", "2"], capsys)
    assert code == 0 and out == REPLY + "\n"
    assert 'CREATE TABLE "singer" (\n  "name" TEXT,\n  "age" INTEGER,\n  "country" TEXT\n);' in err
    assert "/* 2 example rows from \"singer\":\nname | age | country\nArt Long | 31 | France\nMike | 40 | Ohio\n*/" in err
    assert 'PRIMARY KEY ("id")' in err and 'FOREIGN KEY ("singer") REFERENCES "singer"("name")' in err
    # --tables keeps only the tables named (case-insensitively, as SQLite does)
    code, out, err = run(["--model", str(chatml), "--db", str(db), "--tables", "SINGER", "-q", "q?",
                          "--show-prompt"], capsys)
    assert code == 0 and "concert" not in err and "Butler | 25 | Kansas" in err


def test_execute_prints_the_result_table(chatml, db, capsys):
    code, out, err = run(["--model", str(chatml), "--db", str(db), "-q", "who is over 30?", "--execute"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == REPLY
    assert [line.strip() for line in lines[3:6]] == ["Art Long", "Mike", "Zed"]
    assert "3 rows" in out


def test_sql_that_fails_is_a_clear_error(tmp_path, chatml, capsys):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE band (name TEXT)")
    con.commit()
    con.close()
    code, out, err = run(["--model", str(chatml), "--db", str(other), "-q", "q", "--execute"], capsys)
    assert code != 0
    assert out.splitlines()[0] == REPLY  # the SQL is still shown
    assert "no such table" in err and "Traceback" not in err


def test_the_prompt_from_a_database_is_the_training_prompt():
    """Every bundled converted record's schema is what --db renders from data/sample.sqlite."""
    from mlx_text2sql.schema_db import schema_from_db

    records = [json.loads(line) for line in (ROOT / "data" / "test.jsonl").read_text().splitlines()]
    assert records
    for rec in records:
        db_path = ROOT / "data" / rec["db_path"]
        assert schema_from_db(db_path, [rec["table"]], 3) == rec["schema"]
        assert build_messages(rec["question"], schema_from_db(db_path, [rec["table"]])) == rec["messages"][:-1]


def test_stream_goes_to_stderr_and_stdout_keeps_only_the_sql(chatml, capsys):
    code, out, err = run(["--model", str(chatml), "--schema", SCHEMA, "-q", "q", "--stream"], capsys)
    assert code == 0 and out == REPLY + "\n"
    assert REPLY in err


def test_no_sql_in_the_reply_prints_nothing_and_exits_1(tmp_path, capsys):
    model = make_programmed_model(tmp_path / "chatty", "Sorry, no idea", "chatml")
    code, out, err = run(["--model", str(model), "--schema", SCHEMA, "-q", "q"], capsys)
    assert code == 1 and out.strip() == ""
    assert "no SQL query in the model's reply" in err and "Sorry, no idea" in err


def test_questions_from_stdin_are_batched(chatml, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question\n\nsecond question\nthird\n"))
    code, out, err = run(["--model", str(chatml), "--schema", SCHEMA, "--batch-size", "2"], capsys)
    assert code == 0 and out.splitlines() == [REPLY] * 3


def test_interactive_loop(chatml, capsys, monkeypatch):
    class TTY(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", TTY())
    answers = iter(["how many?", "who?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    code, out, err = run(["--model", str(chatml), "--schema", SCHEMA], capsys)
    assert code == 0 and out.splitlines() == [REPLY, REPLY]


def test_batch_mode_reads_every_record_form(tmp_path, chatml, db, capsys):
    (tmp_path / "dbs").mkdir()
    local = tmp_path / "dbs" / "m.sqlite"
    local.write_bytes(db.read_bytes())
    records = [
        {"id": "a", "question": "q1", "schema": SCHEMA},
        {"id": "b", "question": "q2", "db_path": "dbs/m.sqlite", "table": "singer"},  # relative to the JSONL
        {"id": "c", "messages": build_messages("q3", SCHEMA, "SELECT 1"), "db_path": "dbs/m.sqlite"},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in records))
    out_path = tmp_path / "out.jsonl"
    code, out, err = run(["--model", str(chatml), "--input", str(inp), "--output", str(out_path),
                          "--execute", "--quiet"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert all(r["prediction"] == REPLY and r["finish_reason"] == "stop" for r in rows)
    # 'a' has only a schema: the query runs on an empty database built from it
    assert rows[0]["execution"]["rows"] == []
    assert rows[1]["execution"]["rows"] == [["Art Long"], ["Mike"], ["Zed"]]
    assert rows[2]["messages"][-1]["content"] == "SELECT 1"  # the record itself is kept


def test_batch_mode_without_output_writes_jsonl_to_stdout(tmp_path, chatml, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": "q", "schema": SCHEMA}) + "\n")
    code, out, err = run(["--model", str(chatml), "--input", str(inp)], capsys)
    assert code == 0 and json.loads(out)["prediction"] == REPLY


def test_batch_mode_input_errors_name_file_and_line(tmp_path, chatml, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": "q", "schema": SCHEMA}) + "\n" + json.dumps({"question": "no schema"}) + "\n")
    code, out, err = run(["--model", str(chatml), "--input", str(inp)], capsys)
    assert code == 2 and f"{inp}:2:" in err and "no 'schema'" in err and "Traceback" not in err
    inp.write_text(json.dumps({"question": "q", "db_path": "missing.sqlite"}) + "\n")
    code, out, err = run(["--model", str(chatml), "--input", str(inp)], capsys)
    assert code == 2 and f"{inp}:1:" in err and "database not found" in err


@pytest.mark.parametrize("schema,expected", [
    ("CREATE TABL singer (name TEXT)", "is not a CREATE TABLE statement"),
    ("CREATE TABLE singer (name TEXT", "does not parse at line 1"),
    ("SELECT * FROM singer", "is not a CREATE TABLE statement"),
    ("CREATE TABLE a (x INT); DROP TABLE a", "statement 2 ('DROP TABLE a') is not a CREATE TABLE"),
    ("   ", "the schema is empty"),
])
def test_a_schema_that_does_not_parse_is_named(chatml, capsys, schema, expected):
    code, out, err = run(["--model", str(chatml), "--schema", schema, "-q", "q"], capsys)
    assert code == 2 and out == ""
    assert expected in err and "--schema" in err and "Traceback" not in err


def test_schema_file(tmp_path, chatml, capsys):
    f = tmp_path / "schema.sql"
    f.write_text(SCHEMA + ";\n/* a comment */\n")
    code, out, err = run(["--model", str(chatml), "--schema-file", str(f), "-q", "q"], capsys)
    assert code == 0 and out == REPLY + "\n"
    code, out, err = run(["--model", str(chatml), "--schema-file", str(tmp_path / "nope.sql"), "-q", "q"], capsys)
    assert code == 2 and "schema file not found" in err


def test_database_errors(tmp_path, chatml, db, capsys):
    code, _, err = run(["--model", str(chatml), "--db", str(tmp_path / "missing.sqlite"), "-q", "q"], capsys)
    assert code == 2 and "database not found" in err and "missing.sqlite" in err
    notdb = tmp_path / "notes.txt"
    notdb.write_text("hello")
    code, _, err = run(["--model", str(chatml), "--db", str(notdb), "-q", "q"], capsys)
    assert code == 2 and "not a SQLite database" in err
    code, _, err = run(["--model", str(chatml), "--db", str(db), "--tables", "singer,albums", "-q", "q"], capsys)
    assert code == 2 and "no table 'albums'" in err and "singer, concert" in err


@pytest.mark.parametrize("argv,expected", [
    (["--schema", SCHEMA, "--db", "x.sqlite", "-q", "q"], "give one schema source"),
    (["--schema", SCHEMA, "-q", "q", "--execute"], "--execute needs --db"),
    (["--schema", SCHEMA, "-q", "q", "--max-tokens", "0", "--top-p", "0"], "--max-tokens must be at least 1"),
    (["--schema", SCHEMA, "-q", "q", "--adapter-path", "/nonexistent/adapter"], "no such folder"),
    (["-q", "q"], "no schema"),
    (["--schema", SCHEMA, "-q", "q", "--constrain-names", "--temp", "0.7"],
     "--constrain-names needs greedy decoding (temp 0)"),
])
def test_settings_errors(chatml, capsys, argv, expected):
    code, out, err = run(["--model", str(chatml), *argv], capsys)
    assert code == 2 and expected in err and "Traceback" not in err


def test_model_not_found(capsys):
    code, _, err = run(["--model", "/no/such/model", "--schema", SCHEMA, "-q", "q"], capsys)
    assert code == 2 and "not found" in err


def _adapter(model_dir, out_dir, nonzero: bool, prompt: dict | None = None):
    from mlx_text2sql.models import load_model
    from mlx_text2sql.tuner.lora import apply_lora, save_adapter

    lm = load_model(str(model_dir))
    apply_lora(lm.model, rank=4, alpha=8.0, targets=["q_proj", "v_proj"])
    if nonzero:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        mx.random.seed(1)
        lm.model.update_modules({})
        updates = [(k, mx.random.normal(v.shape) * 0.5) for k, v in tree_flatten(lm.model.trainable_parameters())]
        lm.model.load_weights(updates, strict=False)
    save_adapter(lm.model, out_dir, {"base_model": str(model_dir), "prompt": prompt})
    return out_dir


def test_adapter_base_model_comes_from_its_config(tmp_path, chatml, capsys):
    adapter = _adapter(chatml, tmp_path / "adapter", nonzero=False, prompt={"sample_rows": 1})
    code, out, err = run(["--adapter-path", str(adapter), "--schema", SCHEMA, "-q", "q"], capsys)
    assert code == 0 and out == REPLY + "\n"
    assert f"loaded {chatml} + adapter {adapter}" in err


def test_adapter_prompt_settings_are_used_for_db_schemas(tmp_path, chatml, db, capsys):
    adapter = _adapter(chatml, tmp_path / "adapter1", nonzero=False,
                       prompt={"sample_rows": 1, "system_prompt": "Write SQLite."})
    code, out, err = run(["--adapter-path", str(adapter), "--db", str(db), "-q", "q", "--show-prompt"], capsys)
    assert code == 0
    assert "/* 1 example rows from \"singer\"" in err and "Write SQLite." in err and SYSTEM_PROMPT not in err


def test_adapter_for_another_model_names_the_mismatch(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).parent))
    from tinymodels import make_tiny_model

    small = make_tiny_model(tmp_path / "small", "llama", "chatml", hidden=32, intermediate=64)
    big = make_tiny_model(tmp_path / "big", "llama", "chatml")
    adapter = _adapter(small, tmp_path / "adapter", nonzero=True)
    code, out, err = run(["--model", str(big), "--adapter-path", str(adapter), "--schema", SCHEMA, "-q", "q"], capsys)
    assert code == 2 and out == ""
    assert "does not fit" in err and "q_proj" in err and "shape" in err and "Traceback" not in err


def test_adapter_changes_the_output_like_the_engine_says(tmp_path, tiny_llama, capsys):
    """Through the CLI, an adapter gives the replies the engine gives on load_with_adapter."""
    from mlx_text2sql.engine import SQLGenerator
    from mlx_text2sql.tuner.lora import load_with_adapter

    adapter = _adapter(tiny_llama, tmp_path / "adapter", nonzero=True)
    msgs = build_messages("how many?", SCHEMA)
    with_adapter = SQLGenerator(load_with_adapter(adapter)).generate([msgs], max_tokens=12)[0]
    from mlx_text2sql.models import load_model

    base = SQLGenerator(load_model(str(tiny_llama))).generate([msgs], max_tokens=12)[0]
    assert with_adapter.tokens != base.tokens
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": "how many?", "schema": SCHEMA}) + "\n")
    code, out, err = run(["--adapter-path", str(adapter), "--input", str(inp), "--max-tokens", "12"], capsys)
    assert code == 0 and json.loads(out)["reply"] == with_adapter.text


def test_a_merged_adapter_computes_what_the_separate_one_does(tmp_path, tiny_llama, capsys):
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_text2sql.engine import SQLGenerator
    from mlx_text2sql.tuner.lora import load_with_adapter, lora_layers

    adapter = _adapter(tiny_llama, tmp_path / "adapter", nonzero=True)
    sep = load_with_adapter(adapter)
    merged = load_with_adapter(adapter, merge=True)
    assert merged.adapter_merged and not sep.adapter_merged
    assert lora_layers(sep.model) and not lora_layers(merged.model)
    assert all(type(m) is nn.Linear for _, m in merged.model.layers[0].self_attn.children().items()
               if isinstance(m, nn.Module) and hasattr(m, "weight"))
    toks = mx.array([[1, 5, 9, 14, 3, 7, 22, 8]])
    a, b = sep.model(toks), merged.model(toks)
    assert mx.allclose(a, b, atol=1e-4, rtol=1e-4).item()
    msgs = build_messages("how many?", SCHEMA)
    assert (SQLGenerator(sep).generate([msgs], max_tokens=12)[0].tokens
            == SQLGenerator(merged).generate([msgs], max_tokens=12)[0].tokens)
    # generate merges by default; --no-merge-adapter keeps the layers, with the same reply
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": "how many?", "schema": SCHEMA}) + "\n")
    replies = []
    for extra in ([], ["--no-merge-adapter"]):
        code, out, err = run(["--adapter-path", str(adapter), "--input", str(inp), "--max-tokens", "12", *extra], capsys)
        assert code == 0, err
        replies.append(json.loads(out)["reply"])
    assert replies[0] == replies[1]


def test_cli_dispatcher_runs_generate(chatml, capsys):
    from mlx_text2sql import cli

    assert cli.main(["generate", "--model", str(chatml), "--schema", SCHEMA, "-q", "q"]) == 0
    assert capsys.readouterr().out == REPLY + "\n"


def test_help_lists_the_modes(capsys):
    with pytest.raises(SystemExit) as e:
        generate.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--db" in text and "--input" in text and "--stream" in text and "examples:" in text


def test_render_chat_agrees_with_the_tokenizer_template(chatml):
    """The prompt --show-prompt prints is the registry template's rendering (sanity)."""
    from mlx_text2sql.engine import SQLGenerator
    from mlx_text2sql.models import load_model

    gen = SQLGenerator(load_model(str(chatml)))
    msgs = build_messages("q", SCHEMA)
    assert gen.prompt_text(msgs) == render_chat("chatml", msgs, add_generation_prompt=True)


# --------------------------------------------------------------------------- table choice

@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Several unlinked tables (as a WikiSQL database) and one foreign-key-linked pair."""
    path = tmp_path_factory.mktemp("g_coll") / "many.sqlite"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "t_airports" ("City" TEXT, "Airport" TEXT, "Rank" INTEGER)')
    con.executemany('INSERT INTO t_airports VALUES (?, ?, ?)', [("San Solano", "Kestrel", 1), ("Oakham", "Vale", 2)])
    con.execute('CREATE TABLE "t_players" ("Player" TEXT, "Nationality" TEXT)')
    con.executemany('INSERT INTO t_players VALUES (?, ?)', [("Derek Olsen", "Canada"), ("Milos Petrak", "Serbia")])
    con.execute('CREATE TABLE "t_albums" ("Album" TEXT, "Year" INTEGER)')
    con.execute('CREATE TABLE "author" ("id" INTEGER PRIMARY KEY, "name" TEXT)')
    con.execute('CREATE TABLE "book" ("title" TEXT, "author_id" INTEGER REFERENCES author(id))')
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize("question,expected", [
    ("How many players are from Canada?", ["t_players"]),  # column name + a cell value
    ("which airport in san solano ranks below 3?", ["t_airports"]),
    ("which books did each author write?", ["author", "book"]),  # linked by a foreign key: kept together
    ("what is the weather like?", ["t_airports", "t_players", "t_albums", "author", "book"]),  # nothing matches
])
def test_select_tables(collection, question, expected):
    from mlx_text2sql.schema_db import select_tables

    chosen, why = select_tables(collection, question)
    assert chosen == expected and why


def test_db_prompt_shows_the_tables_the_question_is_about(chatml, collection, capsys):
    code, out, err = run(["--model", str(chatml), "--db", str(collection), "-q", "How many players are from Canada?",
                          "--show-prompt"], capsys)
    assert code == 0
    assert 'CREATE TABLE "t_players"' in err and 'CREATE TABLE "t_airports"' not in err
    assert "asking over t_players of 5 tables" in err
    code, out, err = run(["--model", str(chatml), "--db", str(collection), "--tables", "all",
                          "-q", "How many players are from Canada?", "--show-prompt"], capsys)
    assert code == 0 and 'CREATE TABLE "t_airports"' in err and 'CREATE TABLE "book"' in err


def test_constrain_names_writes_only_the_database_s_names(tmp_path, chatml, capsys):
    """REPLY names singer.age; over a database whose singer table has no age column the
    constrained query writes another name there."""
    import sqlite3

    path = tmp_path / "no_age.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE singer (name TEXT, years INTEGER)")
    con.commit()
    con.close()
    code, out, err = run(["--model", str(chatml), "--db", str(path), "-q", "who is older than 30?",
                          "--max-tokens", "24"], capsys)
    assert code == 0 and out.strip() == REPLY
    code, out, err = run(["--model", str(chatml), "--db", str(path), "-q", "who is older than 30?",
                          "--max-tokens", "24", "--constrain-names"], capsys)
    assert code == 0 and out.startswith("SELECT name FROM singer WHERE ") and "age" not in out.lower().split()
