"""Execution-guided decoding: a greedy query that fails on the database is replaced by the
result most sampled replies agree on; a usable greedy query is never touched. Unit tests of the
verdict and the vote, the real engine sampling repeated prompts, and evaluate / generate end to
end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mlx_text2sql import evaluate
from mlx_text2sql.guided import ExecutionGuide, Item, verdict
from mlx_text2sql.prompts import build_messages

sys.path.insert(0, str(Path(__file__).parent))
from sqlitefiles import make_sqlite  # noqa: E402

GOOD = "SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'Montreal Canadiens'"
OTHER = "SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'Buffalo Sabres'"
EMPTY = "SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'Vancouver'"
BROKEN = "SELECT \"Home\" FROM \"games\" WHERE \"Nope\" = 1 AND"


@pytest.fixture()
def db(tmp_path):
    return make_sqlite(tmp_path / "nhl.sqlite", ("games", '"Visitor" TEXT, "Home" TEXT, "Score" REAL', [
        ("Montreal Canadiens", "Boston Bruins", 3.0),
        ("Buffalo Sabres", "Ottawa", 4.0),
        ("Toronto Maple Leafs", "Boston Bruins", None),
    ]))


def test_verdict(db):
    assert verdict(GOOD, db)[0] is None
    assert verdict(EMPTY, db) == ("empty", None)
    assert verdict(BROKEN, db) == ("error", None)
    assert verdict("", db) == ("error", None)
    # only NULLs is an answer (WikiSQL's gold often returns them), not a failure
    assert verdict("SELECT MAX(\"Score\") FROM \"games\" WHERE \"Home\" = 'Nobody'", db)[0] is None
    assert verdict("SELECT \"Score\" FROM \"games\" WHERE \"Visitor\" = 'Toronto Maple Leafs'", db)[0] is None
    # case: as WikiSQL is scored, text compares without case only when asked to
    lower = "SELECT \"Home\" FROM \"games\" WHERE \"Visitor\" = 'montreal canadiens'"
    assert verdict(lower, db)[0] == "empty"
    assert verdict(lower, db, case_insensitive=True)[0] is None
    # the signature is the result: the same rows in another order or case vote together
    a = verdict("SELECT \"Home\" FROM \"games\" WHERE \"Score\" > 2", db)[1]
    b = verdict("SELECT UPPER(\"Home\") FROM \"games\" WHERE \"Score\" >= 3 ORDER BY 1 DESC", db)[1]
    assert a == b and a != verdict(GOOD, db)[1]


class FakeGen:
    """What the sampling model says: a fixed list of replies per prompt, in order."""

    def __init__(self, samples):
        self.samples = samples
        self.calls = []

    def generate(self, prompts, **kw):
        from mlx_text2sql.engine import Result

        self.calls.append((list(prompts), kw))
        out = []
        seen: dict[str, int] = {}
        for p in prompts:
            key = json.dumps(p)
            k = seen.get(key, 0)
            seen[key] = k + 1
            sql = self.samples[p[-1]["content"]][k]
            out.append(Result(text=sql, sql=sql, n_prompt_tokens=1, n_tokens=5, seconds=0.0))
        return out


def _item(q, sql, db):
    return Item([{"role": "user", "content": q}], sql, str(db), q)


def test_refine_votes_by_result_and_leaves_usable_queries_alone(db):
    gen = FakeGen({
        "a": [BROKEN, OTHER, GOOD, GOOD.replace("SELECT", "SELECT DISTINCT"), EMPTY],  # GOOD's rows twice
        "b": [EMPTY, OTHER, GOOD, BROKEN, EMPTY],  # a tie: the first sampled group wins
        "c": [EMPTY, BROKEN, "", EMPTY, EMPTY],  # nothing usable: the greedy query stays
    })
    guide = ExecutionGuide(gen, samples=5, temp=0.8, seed=3)
    announced = []
    choices = guide.refine([_item("ok", GOOD, db), _item("a", EMPTY, db), _item("b", BROKEN, db),
                            _item("c", EMPTY, db), Item([{"role": "user", "content": "x"}], EMPTY, None)],
                           progress=len, announce=announced.append)
    assert announced == [15]
    ok, a, b, c, nodb = choices
    assert (ok.reason, ok.sql, ok.changed, ok.samples) == (None, GOOD, False, 0)
    assert (a.reason, a.sql, a.changed, a.samples, a.usable, a.votes) == ("empty", GOOD, True, 5, 3, 2)
    assert (b.reason, b.sql, b.changed, b.usable, b.votes) == ("error", OTHER, True, 2, 1)
    assert (c.reason, c.sql, c.changed, c.usable) == ("empty", EMPTY, False, 0)
    assert (nodb.reason, nodb.sql, nodb.samples) == (None, EMPTY, 0)  # no database: nothing to check
    # one sampling call, 5 copies of each failing prompt only, sampled (temp > 0) and seeded
    assert len(gen.calls) == 1
    prompts, kw = gen.calls[0]
    assert [p[-1]["content"] for p in prompts] == ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    assert kw["temp"] == 0.8 and kw["seed"] == 3 and kw["progress"] is len
    # nothing fails: no sampling at all
    assert guide.refine([_item("ok", GOOD, db)])[0].changed is False and len(gen.calls) == 1
    with pytest.raises(ValueError):
        ExecutionGuide(gen, temp=0.0)


def test_refine_repairs_samples(db):
    from mlx_text2sql.repair import Repairer

    miscopied = GOOD.replace("Canadiens", "Canadien")
    gen = FakeGen({"a": [miscopied, EMPTY]})
    choice = ExecutionGuide(gen, samples=2, repairer=Repairer()).refine([_item("a", EMPTY, db)])[0]
    assert choice.changed and choice.sql == GOOD and choice.candidates[0] == GOOD


def test_real_engine_samples_repeated_prompts(tiny_llama, db):
    """The real engine, sampling 3 replies for each of 2 identical-prefix prompts: every reply
    comes back (a random tiny model writes no usable SQL, so the greedy query stays)."""
    from mlx_text2sql.engine import SQLGenerator
    from mlx_text2sql.models import load_model

    gen = SQLGenerator(load_model(str(tiny_llama)))
    calls = []
    real = gen.generate

    def spy(prompts, **kw):
        out = real(prompts, **kw)
        calls.append((len(prompts), kw["temp"], len(out), [o.n_tokens for o in out]))
        return out

    gen.generate = spy
    guide = ExecutionGuide(gen, samples=3, temp=1.0, max_tokens=6, batch_size=4)
    msgs = [build_messages(q, 'CREATE TABLE "games" ("Visitor" TEXT);') for q in ("who visited?", "who won?")]
    choices = guide.refine([Item(msgs[0], EMPTY, str(db)), Item(msgs[1], BROKEN, str(db))])
    assert [(c.reason, c.samples) for c in choices] == [("empty", 3), ("error", 3)]
    assert calls[0][:3] == (6, 1.0, 6) and all(0 < n <= 6 for n in calls[0][3])
    for c in choices:
        assert not c.changed or verdict(c.sql, db)[0] is None


def _record(db, question, gold):
    schema = 'CREATE TABLE "games" ("Visitor" TEXT, "Home" TEXT, "Score" REAL);'
    return {"messages": build_messages(question, schema, gold), "question": question, "schema": schema,
            "sql": gold, "source": "wikisql", "id": question, "db_path": db.name, "table": "games"}


def test_evaluate_exec_guided_reports_both_accuracies(db, tiny_llama, tmp_path, capsys, monkeypatch):
    from mlx_text2sql.engine import Result, SQLGenerator

    greedy = {"home of montreal?": EMPTY, "home of buffalo?": OTHER}
    sampled = [BROKEN, GOOD, GOOD, OTHER]

    def replies(self, prompts, **kw):
        out = []
        for i, p in enumerate(prompts):
            q = p[1]["content"].rsplit("Question: ", 1)[-1].strip()
            sql = greedy[q] if kw["temp"] == 0 else sampled[i % len(sampled)]
            out.append(Result(text=sql, sql=sql, n_prompt_tokens=1, n_tokens=9, seconds=0.1))
        if kw.get("progress"):
            kw["progress"](len(out))
        return out

    monkeypatch.setattr(SQLGenerator, "generate", replies)
    data = tmp_path / "test.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [_record(db, "home of montreal?", GOOD),
                                                      _record(db, "home of buffalo?", OTHER)]) + "\n")
    base = ["--data", str(data), "--model", str(tiny_llama), "--quiet"]
    assert evaluate.main(base) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "execution_accuracy: 0.500"
    out = tmp_path / "pred.jsonl"
    assert evaluate.main(base + ["--exec-guided", "4", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.strip().splitlines()[-1] == "execution_accuracy: 1.000"
    assert ("execution-guided decoding: 1 greedy queries failed on the database (0 errors, 1 without rows), "
            "1 replaced by a sampled one (1 now match, 0 no longer do); execution accuracy without it 50.0%") in stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["pred_sql"] == GOOD and rows[0]["pred_sql_greedy"] == EMPTY
    assert rows[0]["match_greedy"] is False and rows[0]["match"] is True
    assert rows[0]["guided"] == {"reason": "empty", "changed": True, "samples": 4, "usable": 3, "votes": 2}
    assert "guided" not in rows[1] and rows[1]["match"] is True
    # without --quiet the sampled replies have their own progress bar
    assert evaluate.main(base[:-1] + ["--exec-guided", "4"]) == 0
    err = capsys.readouterr().err
    assert "sampling for failed queries" in err and "4/4" in err


def test_evaluate_exec_guided_flag_errors(tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    data.write_text("{}\n")
    assert evaluate.main(["--data", str(data), "--exec-guided", "-1"]) == 2
    assert "--exec-guided must be 0" in capsys.readouterr().err
    assert evaluate.main(["--data", str(data), "--exec-guided", "4", "--guided-temp", "0"]) == 2
    assert "--guided-temp must be above 0" in capsys.readouterr().err
    assert evaluate.main(["--data", str(data), "--exec-guided", "4", "--guided-top-p", "0"]) == 2
    assert "--guided-top-p must be in (0, 1]" in capsys.readouterr().err


def test_generate_exec_guided(db, tiny_llama, tmp_path, capsys, monkeypatch):
    from mlx_text2sql import generate
    from mlx_text2sql.engine import Result, SQLGenerator

    def replies(self, prompts, **kw):
        sql = EMPTY if kw["temp"] == 0 else GOOD
        return [Result(text=sql, sql=sql, n_prompt_tokens=1, n_tokens=9, seconds=0.1) for _ in prompts]

    monkeypatch.setattr(SQLGenerator, "generate", replies)
    argv = ["--model", str(tiny_llama), "--db", str(db), "-q", "who hosted montreal?", "--execute"]
    assert generate.main(argv) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[0] == EMPTY
    assert generate.main(argv + ["--exec-guided", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == GOOD and "Boston Bruins" in out
    assert f"execution-guided: the greedy query returned no rows; 3 of 3 sampled queries ran, 3 agree on the result: {GOOD}" in err
    # batch mode: the record's database; the greedy query is kept beside the chosen one
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": "who hosted montreal?", "db_path": str(db), "table": "games"}) + "\n")
    assert generate.main(["--model", str(tiny_llama), "--input", str(inp), "--exec-guided", "2", "--quiet"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["prediction"] == GOOD and rec["prediction_raw"] == EMPTY
    assert rec["guided"] == {"reason": "empty", "changed": True, "samples": 2, "usable": 2, "votes": 2}
    inp.write_text(inp.read_text() * 2)  # a batch of two, with progress bars
    assert generate.main(["--model", str(tiny_llama), "--input", str(inp), "--exec-guided", "2"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(x)["prediction"] for x in out.splitlines()] == [GOOD, GOOD]
    assert "sampling for failed queries" in err
    # needs a database
    assert generate.main(["--model", str(tiny_llama), "--schema", "CREATE TABLE t (a TEXT);", "-q", "x",
                          "--exec-guided", "2"]) == 2
    assert "--exec-guided needs --db" in capsys.readouterr().err


def test_generate_interactive_exec_guided(db, tiny_llama, capsys, monkeypatch):
    import io

    from mlx_text2sql import generate
    from mlx_text2sql.engine import Result, SQLGenerator

    def replies(self, prompts, **kw):
        sql = EMPTY if kw["temp"] == 0 else GOOD
        return [Result(text=sql, sql=sql, n_prompt_tokens=1, n_tokens=9, seconds=0.1) for _ in prompts]

    class TTY(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(SQLGenerator, "generate", replies)
    monkeypatch.setattr(sys, "stdin", TTY())
    answers = iter(["who hosted montreal?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert generate.main(["--model", str(tiny_llama), "--db", str(db), "--exec-guided", "2", "--execute"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == GOOD and "Boston Bruins" in out
    assert "execution-guided: the greedy query returned no rows" in err


def test_vote_mode_asks_for_every_question_and_counts_empty_results(db):
    """Voting: the greedy query and the samples each vote with their result; an empty result
    is an answer (it votes with the other empty ones); errors have no vote."""
    gen = FakeGen({
        # right answer is the empty set: greedy EMPTY + 2 empty samples beat 1 GOOD
        "empty": [EMPTY, GOOD, BROKEN, EMPTY.replace("SELECT", "SELECT DISTINCT")],
        # a usable greedy query is outvoted by 2 samples that agree
        "outvoted": [OTHER, BROKEN, OTHER, EMPTY],
        # tie between the greedy query's group and another: the greedy query's group wins
        "tie": [OTHER, BROKEN, BROKEN, BROKEN],
        # greedy errors; a tie between an empty group and a group with rows: rows win
        "rows-over-empty": [EMPTY, GOOD, BROKEN, BROKEN],
        # nothing runs: the greedy query stays
        "none": [BROKEN, "", BROKEN, BROKEN],
    })
    guide = ExecutionGuide(gen, samples=4, temp=0.7, mode="vote")
    announced = []
    empty, outvoted, tie, rows_over_empty, none = guide.refine(
        [_item("empty", EMPTY, db), _item("outvoted", GOOD, db), _item("tie", GOOD, db),
         _item("rows-over-empty", BROKEN, db), _item("none", BROKEN, db)], announce=announced.append)
    assert announced == [20]  # every question is sampled, usable greedy queries too
    assert (empty.reason, empty.sql, empty.changed, empty.usable, empty.votes) == ("empty", EMPTY, False, 4, 3)
    assert (outvoted.reason, outvoted.sql, outvoted.changed, outvoted.votes) == (None, OTHER, True, 2)
    assert (tie.sql, tie.changed, tie.votes, tie.usable) == (GOOD, False, 1, 2)
    assert (rows_over_empty.reason, rows_over_empty.sql, rows_over_empty.changed) == ("error", GOOD, True)
    assert (none.sql, none.changed, none.usable, none.votes) == (BROKEN, False, 0, 0)
    assert [p[-1]["content"] for p in gen.calls[0][0]] == (
        ["empty"] * 4 + ["outvoted"] * 4 + ["tie"] * 4 + ["rows-over-empty"] * 4 + ["none"] * 4)


def test_failed_mode_keeps_losing_right_empty_answers_that_vote_mode_keeps(db):
    """The reason vote mode exists: when the right answer is empty, "failed" mode replaces
    the greedy query by any sample with rows; voting keeps it when the samples agree."""
    replies = {"q": [GOOD, EMPTY, EMPTY]}
    failed = ExecutionGuide(FakeGen(replies), samples=3).refine([_item("q", EMPTY, db)])[0]
    voted = ExecutionGuide(FakeGen(replies), samples=3, mode="vote").refine([_item("q", EMPTY, db)])[0]
    assert failed.sql == GOOD and failed.changed
    assert voted.sql == EMPTY and not voted.changed and voted.votes == 3


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        ExecutionGuide(FakeGen({}), mode="sometimes")


def test_constrained_mode_redecodes_only_queries_that_raise_errors(db):
    """Mode "constrained": one greedy reply under the item's name constraint, only for a query
    that raises an error (an empty result may be the right answer); it replaces the query
    when it runs, empty results included, and an item without a constraint is left alone."""
    from mlx_text2sql.sql.constrain import NameConstraint, schema_names

    constraint = NameConstraint(schema_names(db=db))
    gen = FakeGen({"fixed": [EMPTY], "still broken": [BROKEN]})

    def item(q, sql, c=constraint):
        return Item([{"role": "user", "content": q}], sql, str(db), q, constraint=c)

    items = [item("good", GOOD), item("empty", EMPTY), item("fixed", BROKEN), item("still broken", BROKEN),
             item("no constraint", BROKEN, None)]
    guide = ExecutionGuide(gen, mode="constrained", temp=0.0, max_tokens=50, batch_size=4)
    good, empty, fixed, broken, free = guide.refine(items)
    assert [p[-1]["content"] for p in gen.calls[0][0]] == ["fixed", "still broken"] and len(gen.calls) == 1
    kw = gen.calls[0][1]
    assert kw["temp"] == 0.0 and kw["constraints"] == [constraint, constraint] and kw["max_tokens"] == 50
    assert (good.reason, good.changed, empty.reason, empty.changed) == (None, False, "empty", False)
    assert (fixed.reason, fixed.sql, fixed.changed, fixed.samples) == ("error", EMPTY, True, 1)
    assert (broken.sql, broken.changed, broken.candidates) == (BROKEN, False, [BROKEN])
    assert (free.reason, free.changed, free.samples) == ("error", False, 0)
    assert fixed.as_json()["mode"] == "constrained"


def test_constrained_retry_options():
    from mlx_text2sql.api import AskOptions

    assert AskOptions(constrained_retry=True).guided_mode == "constrained"
    assert AskOptions(constrained_retry=True).guided_samples == 1
    assert AskOptions(constrained_retry=True, guided_temp=0).problems() == []  # nothing is sampled
    assert "choose one" in AskOptions(constrained_retry=True, vote=2).problems()[0]
    assert "not with constrain_names" in AskOptions(constrained_retry=True, constrain_names=True).problems()[0]
