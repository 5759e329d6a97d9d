"""Spider converter: schema with types, keys and sample rows, hardness levels, missing
databases, and the published hardness rules table-driven."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sqlitefiles import spider_folder

from mlx_text2sql.convert import main
from mlx_text2sql.errors import ConfigError, InputError
from mlx_text2sql.sources import SourceOptions
from mlx_text2sql.sources.common import Problems, tables_from_database
from mlx_text2sql.sources.spider import hardness, read_hf, squash_whitespace

FIX = Path(__file__).parent / "fixtures" / "convert" / "spider"


@pytest.fixture()
def spider_dir(tmp_path):
    """The fixture folder with its database built from bookshop.sql (no_file_db has none)."""
    src = tmp_path / "spider"
    spider_folder(FIX, src, "bookshop", ("dev.json", "tables.json"))
    (src / "database" / "no_file_db").mkdir()
    (src / "database" / "no_file_db" / "no_file_db.sqlite").write_bytes(b"")  # as wta_1 ships
    return src


def convert(src, out, *args):
    assert main(["spider", str(src), "--out", str(out), "--no-progress",
                 "--valid-fraction", "0", "--test-fraction", "0", *args]) == 0
    return [json.loads(line) for line in open(out / "train.jsonl", encoding="utf-8")]


SCHEMA = '''CREATE TABLE "author" (
  "author_id" INTEGER,
  "name" VARCHAR(40),
  "country" TEXT,
  PRIMARY KEY ("author_id")
);
/* 3 example rows from "author":
author_id | name | country
1 | Ada Brennan | UK
2 | Tomas Reyes | Canada
3 | Mei Lin | UK
*/

CREATE TABLE "book" (
  "book_id" INTEGER,
  "title" TEXT,
  "author_id" INTEGER,
  "year" INT,
  "price" REAL,
  PRIMARY KEY ("book_id"),
  FOREIGN KEY ("author_id") REFERENCES "author"("author_id")
);
/* 3 example rows from "book":
book_id | title | author_id | year | price
1 | Salt Roads | 1 | 1987 | 12.5
2 | The Glass Orchard | 2 | 2004 | 18.0
3 | Night Ferry | 1 | 2011 | 9.99
*/

CREATE TABLE "sale" (
  "sale_id" INTEGER,
  "book_id" INTEGER,
  "store" TEXT,
  "quantity" INTEGER,
  PRIMARY KEY ("sale_id"),
  FOREIGN KEY ("book_id") REFERENCES "book"("book_id")
);
/* 3 example rows from "sale":
sale_id | book_id | store | quantity
1 | 1 | Leeds | 4
2 | 2 | Toronto | 7
3 | 2 | Leeds | 2
*/'''


def test_golden_record(spider_dir, tmp_path):
    recs = {r["id"]: r for r in convert(spider_dir, tmp_path / "out")}
    rec = recs["dev-2"]
    q = "Give the title and author name of the most expensive book."
    sql = ("SELECT T2.title , T1.name FROM author AS T1 JOIN book AS T2 ON T1.author_id = "
           "T2.author_id ORDER BY T2.price DESC LIMIT 1")
    assert rec["messages"][1]["content"] == f"Schema:\n{SCHEMA}\n\nQuestion: {q}"
    assert rec["messages"][2] == {"role": "assistant", "content": sql}
    assert {k: v for k, v in rec.items() if k != "messages"} == {
        "question": q, "schema": SCHEMA, "sql": sql, "source": "spider", "id": "dev-2",
        "db_path": "../spider/database/bookshop/bookshop.sqlite", "table": None,
        "db_id": "bookshop",
        "meta": {"split": "dev", "has_rows": True, "hardness": "hard", "gold_empty": False},
    }


def test_hardness_levels_and_missing_database(spider_dir, tmp_path):
    out = tmp_path / "out"
    recs = {r["id"]: r for r in convert(spider_dir, out)}
    assert {rid: r["meta"].get("hardness") for rid, r in recs.items()} == {
        "dev-0": "easy", "dev-1": "medium", "dev-2": "hard", "dev-3": "extra",
        "dev-4": "medium", "dev-5": "hard", "dev-6": "easy"}
    thing = recs["dev-6"]
    assert thing["db_path"] is None and thing["meta"]["has_rows"] is False
    # SQLite's bookkeeping table is not part of the schema shown to the model
    assert "sqlite_sequence" not in thing["schema"] and '"thing"' in thing["schema"]
    # types fall back to tables.json's when there is no database to read
    assert '"id" NUMERIC' in thing["schema"] and "example rows" not in thing["schema"]
    report = json.loads((out / "convert_report.json").read_text())
    assert any("no_file_db" in n for n in report["notes"])
    for r in recs.values():  # every gold query with a database runs on it
        if r["db_path"]:
            con = sqlite3.connect(out / r["db_path"])
            assert con.execute(r["sql"]).fetchall()


def test_sample_rows_flag(spider_dir, tmp_path):
    recs = convert(spider_dir, tmp_path / "out", "--sample-rows", "0")
    assert all("example rows" not in r["schema"] for r in recs)
    recs = convert(spider_dir, tmp_path / "out1", "--sample-rows", "1")
    assert "/* 1 example rows from \"book\":" in recs[0]["schema"]


def test_unknown_database_is_reported_with_its_line(spider_dir, tmp_path):
    data = json.loads((spider_dir / "dev.json").read_text())
    data.append({"db_id": "nowhere", "query": "SELECT 1", "question": "?"})
    (spider_dir / "dev.json").write_text(json.dumps(data, indent=1))
    out = tmp_path / "out"
    convert(spider_dir, out)
    report = json.loads((out / "convert_report.json").read_text())
    assert report["skipped"] == 1
    assert "dev.json:" in report["skipped_records"][0]
    assert "database 'nowhere' is not in" in report["skipped_records"][0]


def test_hf_records_need_tables(tmp_path, spider_dir):
    opts = SourceOptions(out_dir=str(tmp_path), progress=False)
    with pytest.raises(ConfigError, match="--tables"):
        read_hf({"train": []}, opts, Problems())
    opts.tables = str(spider_dir / "tables.json")
    opts.databases = str(spider_dir / "database")
    res = read_hf({"validation": [{"db_id": "bookshop", "query": "SELECT count(*) FROM book",
                                   "question": "How many books?"}]}, opts, Problems())
    ex = res.splits["validation"][0]
    assert ex.db_id == "bookshop" and ex.db_path.endswith("bookshop.sqlite")
    assert "hardness" not in ex.meta  # no parsed sql field in the Hub's copy


def test_bad_tables_entry_names_the_file(tmp_path, spider_dir):
    tables = json.loads((spider_dir / "tables.json").read_text())
    tables[0]["foreign_keys"] = [[6, 99]]
    (spider_dir / "tables.json").write_text(json.dumps(tables, indent=1))
    with pytest.raises(InputError, match=r"tables\.json:2: .*key column index 99 is out of range"):
        main_strict(spider_dir, tmp_path / "out")


def main_strict(src, out):
    from mlx_text2sql.convert import _main

    _main(["spider", str(src), "--out", str(out), "--no-progress", "--strict"])


def test_tables_from_database_reads_keys_types_and_rows(spider_dir):
    db = spider_dir / "database" / "bookshop" / "bookshop.sqlite"
    author, book, sale = tables_from_database(db, sample_rows=2)
    assert [c.type for c in book.columns] == ["INTEGER", "TEXT", "INTEGER", "INT", "REAL"]
    assert book.primary_key == ["book_id"] and book.foreign_keys == [("author_id", "author", "author_id")]
    assert sale.foreign_keys == [("book_id", "book", "book_id")]
    assert author.rows == [[1, "Ada Brennan", "UK"], [2, "Tomas Reyes", "Canada"]]
    assert [t.name for t in tables_from_database(db, 0, names=["SALE"])] == ["sale"]


def test_a_key_that_names_no_column_refers_to_the_primary_key(tmp_path):
    db = tmp_path / "k.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE person (pid INTEGER PRIMARY KEY, name TEXT);"
                      "CREATE TABLE pet (id INTEGER PRIMARY KEY, owner INTEGER REFERENCES person);"
                      "CREATE TABLE tag (a INT, b INT, PRIMARY KEY (a, b));"
                      "CREATE TABLE note (tag_a INT REFERENCES tag);")
    con.close()
    person, pet, tag, note = tables_from_database(db, sample_rows=0)
    assert pet.foreign_keys == [("owner", "person", "pid")]   # SQLite's meaning: person's key
    assert note.foreign_keys == [("tag_a", "tag", "tag_a")]   # no single key: the column's name, as before


def test_squash_whitespace_keeps_quoted_text():
    assert squash_whitespace("SELECT  a ,  b FROM t WHERE x  =  'two  spaces'") == \
        "SELECT a , b FROM t WHERE x = 'two  spaces'"


# --------------------------------------------------------------------------- hardness rules

def _sql(select=((0, 1),), tables=1, where=(), group=(), having=(), order=(), limit=None, **setops):
    """A parsed Spider query: select items (agg, col), conditions as cond units."""
    return {
        "select": [False, [[agg, [0, [0, col, False], None]] for agg, col in select]],
        "from": {"table_units": [["table_unit", i] for i in range(tables)], "conds": []},
        "where": list(where), "groupBy": [[0, c, False] for c in group], "having": list(having),
        "orderBy": (["asc", [[0, [0, c, False], None] for c in order]] if order else []),
        "limit": limit, "intersect": setops.get("intersect"), "union": setops.get("union"),
        "except": setops.get("except"),
    }


def _cond(col=1, op=2, val=1.0, neg=False):
    return [neg, op, [0, [0, col, False], None], val, None]


@pytest.mark.parametrize("sql, level", [
    (_sql(), "easy"),
    (_sql(where=[_cond()]), "easy"),
    (_sql(select=((0, 1), (0, 2))), "medium"),
    (_sql(where=[_cond()], order=[1]), "medium"),
    (_sql(where=[_cond(), "and", _cond(2)]), "medium"),
    (_sql(tables=2, order=[1], limit=1), "hard"),
    (_sql(where=[_cond(val=_sql())]), "hard"),
    (_sql(intersect=_sql()), "hard"),
    (_sql(where=[_cond(val=_sql())], order=[1]), "extra"),
    (_sql(where=[_cond(), "or", _cond(op=9)], group=[1], order=[1]), "extra"),
    (_sql(select=((3, 1), (1, 2)), where=[_cond()], group=[1, 2]), "hard"),
    # published quirk: the aggregate counter reads a WHERE condition's NOT flag as an
    # aggregate, so NOT turns this medium query into an extra one
    (_sql(select=((3, 1),), where=[_cond()], group=[1, 2]), "medium"),
    (_sql(select=((3, 1),), where=[_cond(neg=True)], group=[1, 2]), "extra"),
    # ... and it counts HAVING's 'and'/'or' connectors as aggregates
    (_sql(select=((3, 1),), group=[1], having=[_cond()]), "easy"),
    (_sql(select=((3, 1),), group=[1], having=[_cond(), "and", _cond()]), "medium"),
])
def test_hardness_rules(sql, level):
    assert hardness(sql) == level


def test_hardness_raises_on_malformed_structure():
    with pytest.raises((KeyError, TypeError, IndexError, ValueError)):
        hardness({"select": []})


@pytest.mark.parametrize("sql, expected", [
    ('SELECT name FROM author WHERE country = "UK"', "SELECT name FROM author WHERE country = 'UK'"),
    ('SELECT "name" FROM author WHERE "country" = "it\'s"', "SELECT \"name\" FROM author WHERE \"country\" = 'it''s'"),
    ("SELECT name FROM author WHERE country = 'UK'", "SELECT name FROM author WHERE country = 'UK'"),
    ('SELECT count(*) FROM "Book"', 'SELECT count(*) FROM "Book"'),  # a table name, any case
])
def test_double_quoted_values_become_string_literals(sql, expected):
    from mlx_text2sql.example import Column, Table
    from mlx_text2sql.sources.spider import single_quote_values

    tables = [Table("author", [Column("name"), Column("country")]), Table("book", [Column("title")])]
    assert single_quote_values(sql, tables) == expected
