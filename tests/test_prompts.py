"""The prompt module: SQL extraction (one case a line), chat templates, schema rendering."""

import pytest

from mlx_text2sql.errors import ConfigError
from mlx_text2sql.example import Column, Table
from mlx_text2sql.prompts import (CHAT_TEMPLATES, build_messages, extract_sql, get_template,
                                  record_messages, render_chat, render_schema)


@pytest.mark.parametrize("reply, sql", [
    ('SELECT "a" FROM "t"', 'SELECT "a" FROM "t"'),
    ("SELECT a FROM t;", "SELECT a FROM t"),
    ("SELECT a FROM t; DROP TABLE t", "SELECT a FROM t"),
    ("```sql\nSELECT a FROM t\n```\nThis returns a.", "SELECT a FROM t"),
    ("```\nselect a from t\n```", "select a from t"),
    ("Here is the query: SELECT a FROM t WHERE b = 'x;y'", "SELECT a FROM t WHERE b = 'x;y'"),
    ("SQL: SELECT COUNT(*) FROM t\n\nExplanation: counts rows", "SELECT COUNT(*) FROM t"),
    ("SELECT a FROM t<|im_end|>garbage", "SELECT a FROM t"),
    ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT * FROM x"),
    ("with recursive c(n) as (select 1) select n from c", "with recursive c(n) as (select 1) select n from c"),
    ("The table has a column named age with a value of 3.", ""),
    ("It contains a table named t with a column named a. SELECT a FROM t", "SELECT a FROM t"),
    ("The answer is 42.", ""),
    ("", ""),
    ("SELECT a FROM t WHERE b = 'it''s'", "SELECT a FROM t WHERE b = 'it''s'"),
])
def test_extract_sql(reply, sql):
    assert extract_sql(reply, stop=["<|im_end|>"]) == sql


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_generation_prompt_is_a_prefix_of_the_full_conversation(name):
    """Training splits prompt / answer at the generation prompt: it must be an exact prefix, and
    the answer must be followed by the template's EOS (what the model learns to stop on)."""
    msgs = build_messages("how many?", 'CREATE TABLE "t" ("a" TEXT);', "SELECT COUNT(*) FROM t")
    prompt = render_chat(name, msgs[:-1], add_generation_prompt=True)
    full = render_chat(name, msgs)
    assert full.startswith(prompt)
    answer = full[len(prompt):]
    assert answer.lstrip().startswith("SELECT COUNT(*) FROM t")
    assert answer.rstrip().endswith(get_template(name).eos)


def test_template_aliases_and_unknown_names():
    assert get_template("tinyllama").name == "zephyr"
    assert get_template("INST").name == "mistral"
    with pytest.raises(ConfigError, match="unknown chat template 'nope'"):
        get_template("nope")


def test_mistral_template_folds_the_system_text_into_the_first_user_turn():
    text = render_chat("mistral", build_messages("q?", "CREATE TABLE t (a)"), add_generation_prompt=True)
    assert text.startswith("<s>[INST] You translate") and text.endswith(" [/INST]")
    assert "system" not in text


def test_schema_rendering_quotes_names_and_shows_sample_rows():
    t = Table("my table", [Column("No.", "real"), Column('say "hi"', "text")],
              primary_key=["No."], rows=[[1, "a|b"], [2, None], [3, "x"], [4, "y"]])
    text = render_schema([t], sample_rows=3)
    assert text.startswith('CREATE TABLE "my table" (\n  "No." REAL,\n  "say ""hi""" TEXT,\n  PRIMARY KEY ("No.")\n);\n/* 3 example rows')
    assert "/* 3 example rows" in text and "1 | a/b" in text and "2 | NULL" in text and "4 | y" not in text
    assert "example rows" not in render_schema([t], sample_rows=0)


def test_record_messages_drops_the_answer_and_rebuilds_from_fields():
    msgs = build_messages("q?", "CREATE TABLE t (a)", "SELECT a FROM t")
    assert record_messages({"messages": msgs}) == msgs[:-1]
    assert record_messages({"messages": msgs}, with_answer=True) == msgs
    assert record_messages({"question": "q?", "schema": "CREATE TABLE t (a)"}) == msgs[:-1]
    with pytest.raises(KeyError):
        record_messages({"text": "x"})
