"""Schema selection on a multi-table fixture: the tables a question needs survive (recall),
foreign-key paths between them are kept, and nothing depends on a gold query."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mlx_text2sql.hints import ValueIndex
from mlx_text2sql.prompting.selection import (connect, prune, recall, score_tables, select_tables,
                                              stem, training_tables, words)
from mlx_text2sql.sources.common import tables_in_sql
from mlx_text2sql.sources import SourceOptions
from mlx_text2sql.sources.common import Problems
from mlx_text2sql.sources.spider import read

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "spider_school"


@pytest.fixture(scope="module")
def school(tmp_path_factory):
    """(examples, database path) of the school fixture in Spider's folder layout."""
    root = tmp_path_factory.mktemp("spider")
    for name in ("tables.json", "train_spider.json", "dev.json"):
        (root / name).write_text((FIX / name).read_text())
    db = root / "database" / "school" / "school.sqlite"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.executescript((FIX / "school.sql").read_text())
    con.close()
    res = read(str(root), SourceOptions(out_dir=str(root), sample_rows=3, progress=False), Problems(strict=True))
    return [e for exs in res.splits.values() for e in exs], db


@pytest.mark.parametrize("text, expected", [
    ("club_member", ["club", "member"]),
    ("CountryId", ["country", "id"]),
    ("Song_release_year", ["song", "release", "year"]),
])
def test_words_split_snake_and_camel_case(text, expected):
    assert words(text) == expected


@pytest.mark.parametrize("plural, singular", [
    ("students", "student"), ("cities", "city"), ("classes", "class"), ("courses", "course"),
    ("ages", "age"), ("addresses", "address"), ("founded", "found"),
])
def test_stem_is_one_key_for_singular_and_plural(plural, singular):
    assert stem(plural) == stem(singular)


@pytest.mark.parametrize("a, b", [("student", "study"), ("class", "clas"), ("course", "count")])
def test_stem_keeps_different_words_apart(a, b):
    assert stem(a) != stem(b)


def _selection(ex, db):
    with ValueIndex(db) as vi:
        cells = [h.table for h in vi.hints(ex.question, [t.name for t in ex.tables])]
    return select_tables(ex.question, ex.tables, cells)


def test_every_fixture_question_keeps_its_gold_tables(school):
    examples, db = school
    for ex in examples:
        sel = _selection(ex, db)
        gold = tables_in_sql(ex.sql, ex.tables)
        assert recall(sel.tables, gold), (ex.question, sel.tables, gold)
        assert len(sel.tables) < len(ex.tables), (ex.question, sel.tables)


def test_unrelated_tables_are_dropped(school):
    examples, db = school
    ex = next(e for e in examples if e.question.startswith("How many students"))
    sel = _selection(ex, db)
    assert "student" in sel.tables
    assert "club" not in sel.tables and "department" not in sel.tables


def test_foreign_key_path_joins_kept_tables(school):
    examples, _ = school
    tables = examples[0].tables
    # student and course are linked only through enrolment
    assert connect(tables, ["student", "course"]) == ["enrolment"]
    # department to student: department - course - enrolment - student (3 joins)
    assert set(connect(tables, ["department", "student"])) == {"course", "enrolment"}
    assert connect(tables, ["department", "student"], max_joins=2) == []


def test_value_mentions_bring_their_table(school):
    examples, db = school
    ex = next(e for e in examples if "North Hall" in e.question)
    scores_without = score_tables(ex.question, ex.tables)
    scores_with = score_tables(ex.question, ex.tables, ["department"])
    assert scores_with["department"] == pytest.approx(scores_without["department"] + 2.0)
    assert {"teacher", "department"} <= set(_selection(ex, db).tables)


def test_small_schema_is_kept_whole(school):
    examples, _ = school
    tables = examples[0].tables[:3]
    sel = select_tables("anything at all", tables)
    assert sel.whole and sel.tables == [t.name for t in tables]


def test_no_match_keeps_the_best_table_only():
    from mlx_text2sql.example import Column, Table

    tables = [Table(f"t{i}", [Column("a")]) for i in range(5)]
    sel = select_tables("zebra?", tables)
    assert sel.tables == ["t0"]


def test_training_tables_add_the_gold_and_its_joins(school):
    examples, db = school
    ex = next(e for e in examples if e.question.startswith("How many students"))
    sel = _selection(ex, db)
    shown = training_tables(sel, ex.tables, ["club"])
    assert {"student", "club", "club_member"} <= set(shown)
    assert [t for t in [t.name for t in ex.tables] if t in shown] == shown  # database order


def test_prune_drops_foreign_keys_into_dropped_tables(school):
    examples, _ = school
    kept = prune(examples[0].tables, ["course", "teacher"])
    course = next(t for t in kept if t.name == "course")
    assert course.foreign_keys == [("teacher_id", "teacher", "teacher_id")]
    assert [t.name for t in kept] == ["teacher", "course"]


def test_selection_never_reads_the_gold_query(school):
    examples, db = school
    for ex in examples:
        a = _selection(ex, db)
        ex.sql = "SELECT * FROM club"
        b = _selection(ex, db)
        assert a.tables == b.tables and a.scores == b.scores
