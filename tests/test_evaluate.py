"""The evaluate command: gold self-check, malformed input, settings errors, and a real model run."""

import json
import sqlite3

import pytest

from mlx_text2sql import evaluate
from mlx_text2sql.prompts import build_messages

SCHEMA = 'CREATE TABLE "players" (\n  "name" TEXT,\n  "team" TEXT,\n  "points" REAL\n);'


def _db(path):
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "players" ("name" TEXT, "team" TEXT, "points" REAL)')
    con.executemany("INSERT INTO players VALUES (?, ?, ?)",
                    [("Ann Lee", "Hawks", 12.0), ("Bo Chen", "Owls", 30.5), ("Cy Diaz", "Hawks", 7.0)])
    con.commit()
    con.close()


def _record(i, question, sql, db="db.sqlite"):
    return {"messages": build_messages(question, SCHEMA, sql), "question": question, "schema": SCHEMA,
            "sql": sql, "source": "wikisql", "id": f"t{i}", "db_path": db, "table": "players"}


@pytest.fixture
def dataset(tmp_path):
    _db(tmp_path / "db.sqlite")
    recs = [
        _record(0, "how many players are on the hawks?", "SELECT COUNT(\"name\") FROM \"players\" WHERE \"team\" = 'hawks'"),
        _record(1, "who scored the most points?", 'SELECT "name" FROM "players" ORDER BY "points" DESC LIMIT 1'),
        _record(2, "what is the total of points?", 'SELECT SUM("points") FROM "players"'),
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_gold_scores_every_record_and_writes_per_example_output(dataset, tmp_path, capsys):
    out = tmp_path / "pred.jsonl"
    assert evaluate.main(["--data", str(dataset.parent), "--gold", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.strip().splitlines()[-1] == "execution_accuracy: 1.000"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["t0", "t1", "t2"]
    assert all(r["match"] and r["valid_sql"] for r in rows)
    # the lower-cased 'hawks' still finds 'Hawks' (WikiSQL's case-insensitive comparison)
    assert rows[0]["gold_rows"]["rows"] == [[2]]
    assert not (tmp_path / "pred.jsonl.partial").exists()


def test_sample_draws_a_seeded_subset_in_file_order(dataset, tmp_path, capsys):
    picks = {}
    for seed in range(8):
        out = tmp_path / f"s{seed}.jsonl"
        assert evaluate.main(["--data", str(dataset), "--gold", "--sample", "2", "--seed", str(seed),
                              "--output", str(out)]) == 0
        ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        assert len(ids) == 2 and ids == sorted(ids)
        picks[seed] = tuple(ids)
        again = tmp_path / f"again{seed}.jsonl"
        evaluate.main(["--data", str(dataset), "--gold", "--sample", "2", "--seed", str(seed), "--output", str(again)])
        assert [json.loads(x)["id"] for x in again.read_text().splitlines()] == ids
    assert len(set(picks.values())) > 1          # the seed changes the sample
    assert "a random sample of 2 of 3 records" in capsys.readouterr().err


def test_executable_only_leaves_out_records_without_a_database_file(dataset, tmp_path, capsys):
    recs = [json.loads(x) for x in dataset.read_text().splitlines()]
    recs[1]["db_path"] = "missing/gone.sqlite"
    recs[1]["db_id"] = "gone"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "pred.jsonl"
    assert evaluate.main(["--data", str(dataset), "--gold", "--output", str(out)]) == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["t0", "t1", "t2"]
    capsys.readouterr()
    assert evaluate.main(["--data", str(dataset), "--gold", "--executable-only", "--limit", "2",
                          "--output", str(out)]) == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["t0", "t2"]
    assert "left out 1 records without a database file: gone (1)" in capsys.readouterr().err


def test_gold_catches_a_broken_gold_query(tmp_path, capsys):
    _db(tmp_path / "db.sqlite")
    path = tmp_path / "test.jsonl"
    recs = [_record(0, "q", 'SELECT "name" FROM "players"'), _record(1, "q2", 'SELECT "name" FROM "no_such_table"')]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    evaluate.main(["--data", str(path), "--gold"])
    out = capsys.readouterr().out
    assert "execution_accuracy: 1.000" in out  # the broken one is not scored ...
    first = out.splitlines()[3].split()
    assert first[:2] == ["all", "(wikisql)"]
    assert first[2:4] == ["2", "1"] and first[-1] == "1"  # n=2, scored=1, 1 gold error


def test_malformed_lines_are_skipped_and_named(dataset, capsys):
    with open(dataset, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"question": "q", "schema": SCHEMA}) + "\n")  # no gold sql
    assert evaluate.main(["--data", str(dataset), "--gold"]) == 0
    err = capsys.readouterr().err
    assert f"{dataset}:4: malformed JSON line" in err
    assert f"{dataset}:5: record has no gold 'sql' string" in err


def test_strict_stops_at_first_malformed_line(dataset, capsys):
    with open(dataset, "a") as f:
        f.write("[1, 2]\n")
    assert evaluate.main(["--data", str(dataset), "--gold", "--strict"]) == 2
    assert f"{dataset}:4: malformed JSON line" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--data", "nowhere.jsonl", "--gold"], "nowhere.jsonl: file not found"),
    (["--data", "{data}", "--gold", "--adapter-path", "x"], "--gold scores the data itself"),
    (["--data", "{data}", "--compare-base"], "--compare-base needs --adapter-path"),
    (["--data", "{data}", "--adapter-path", "/no/such/adapter"], "no such folder"),
    (["--data", "{data}", "--gold", "--limit", "0"], "--limit must be at least 1"),
    (["--data", "{data}", "--gold", "--sample", "2", "--limit", "2"], "give --limit or --sample, not both"),
])
def test_bad_settings_give_one_clear_error(dataset, capsys, argv, message):
    argv = [a.replace("{data}", str(dataset)) for a in argv]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_model_run_scores_generated_sql(dataset, tiny_llama, tmp_path, capsys):
    """A random tiny model writes no usable SQL: every example is scored, none matches, and the
    raw replies are kept for reading."""
    out = tmp_path / "pred.jsonl"
    code = evaluate.main(["--data", str(dataset), "--model", str(tiny_llama), "--max-tokens", "8",
                          "--batch-size", "2", "--output", str(out), "--quiet"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "queries/s" in stdout
    assert stdout.strip().splitlines()[-1] == "execution_accuracy: 0.000"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["model"] == "model" and "reply" in r for r in rows)
    assert all(r["match"] is False for r in rows)


def test_an_interrupted_run_keeps_its_results_and_resume_generates_only_the_rest(tmp_path, capsys, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tinymodels import make_programmed_model

    from mlx_text2sql.engine import SQLGenerator

    reply = "SELECT SUM(points) FROM players"
    model = make_programmed_model(tmp_path / "m", reply, "chatml")
    _db(tmp_path / "db.sqlite")
    recs = [_record(i, f"what is the total of points, take {i}?" if i % 2 else f"who plays, take {i}?",
                    reply if i % 2 else 'SELECT "name" FROM "players"') for i in range(70)]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "pred.jsonl"
    argv = ["--data", str(data), "--model", str(model), "--max-tokens", "24", "--batch-size", "8",
            "--output", str(out), "--quiet"]

    generated = []
    real_generate = SQLGenerator.generate

    def counting(self, prompts, **kw):
        generated.append(len(prompts))
        return real_generate(self, prompts, **kw)

    monkeypatch.setattr(SQLGenerator, "generate", counting)
    real_score = evaluate.score_predictions
    calls = []

    def interrupt_second_chunk(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_score(*a, **kw)

    monkeypatch.setattr(evaluate, "score_predictions", interrupt_second_chunk)
    assert evaluate.main(argv) != 0
    err = capsys.readouterr().err
    partial = tmp_path / "pred.jsonl.partial"
    assert "--resume" in err and str(partial) in err and not out.exists()
    kept = [json.loads(line) for line in partial.read_text().splitlines()]
    assert [r["id"] for r in kept] == [f"t{i}" for i in range(64)]   # the first chunk, scored
    # a torn last line (killed mid-write) is dropped on resume
    with open(partial, "a") as f:
        f.write('{"id": "t64", "mod')

    monkeypatch.setattr(evaluate, "score_predictions", real_score)
    generated.clear()
    assert evaluate.main(argv + ["--resume"]) == 0
    cap = capsys.readouterr()
    assert generated == [6]                       # only the 6 unscored records
    assert "64 results taken from" in cap.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"t{i}" for i in range(70))
    assert all(r["match"] == (int(r["id"][1:]) % 2 == 1) for r in rows)
    assert cap.out.strip().splitlines()[-1] == "execution_accuracy: 0.500"
    assert not partial.exists()


def test_resume_needs_output(dataset, capsys):
    assert evaluate.main(["--data", str(dataset), "--gold", "--resume"]) == 2
    assert "--resume needs --output" in capsys.readouterr().err


def _misnaming_run(tmp_path) -> list[str]:
    """A model that always writes SUM(goals), three records over a database without goals:
    the evaluate arguments (output in ``tmp_path / "pred.jsonl"``)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tinymodels import make_programmed_model

    model = make_programmed_model(tmp_path / "m", "SELECT SUM(goals) FROM players", "chatml")
    _db(tmp_path / "db.sqlite")
    recs = [_record(i, f"what is the total of points, take {i}?", 'SELECT SUM("points") FROM "players"')
            for i in range(3)]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return ["--data", str(data), "--model", str(model), "--max-tokens", "16",
            "--output", str(tmp_path / "pred.jsonl"), "--quiet"]


def test_constrain_names_decodes_over_each_record_s_database(tmp_path, capsys, monkeypatch):
    """The model writes SUM(goals); the database has points. Constrained, no reply names goals,
    and the report says how many tokens the constraint chose. (The tiny model's logits beyond
    its reply are random, so the constraint looks through the whole vocabulary here.)"""
    from mlx_text2sql.engine import SQLGenerator

    init = SQLGenerator.__init__

    def whole_vocabulary(self, *a, **kw):
        init(self, *a, **kw)
        self.constraint_top_k = 10**6

    monkeypatch.setattr(SQLGenerator, "__init__", whole_vocabulary)

    argv = _misnaming_run(tmp_path)
    out = tmp_path / "pred.jsonl"
    assert evaluate.main(argv) == 0
    free = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["reply"] == "SELECT SUM(goals) FROM players" for r in free)
    assert "constrained decoding" not in capsys.readouterr().out
    assert evaluate.main(argv + ["--constrain-names"]) == 0
    report = capsys.readouterr().out
    bound = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["reply"].startswith("SELECT SUM(") and "goals" not in r["reply"] for r in bound)
    changed = int(report.split("constrained decoding: ")[1].split(" tokens")[0])
    assert changed >= 3 and "; 0 replies decoded freely" in report  # at least one token per reply


def test_constrained_retry_redecodes_the_queries_that_fail(tmp_path, capsys):
    """The greedy SUM(goals) fails on a database without goals; --constrained-retry decodes
    each again under the name constraint, and the report and the results say so."""
    argv = _misnaming_run(tmp_path)
    out = tmp_path / "pred.jsonl"
    assert evaluate.main(argv + ["--constrained-retry"]) == 0
    report = capsys.readouterr().out
    assert "constrained retry: 3 greedy queries raised an error on the database" in report
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["guided"]["mode"] == "constrained" and r["guided"]["samples"] == 1 for r in rows)
    assert all(r["guided"]["reason"] == "error" for r in rows)
    assert evaluate.main(["--data", str(tmp_path / "test.jsonl"), "--replies", str(out), "--constrained-retry"]) == 2
    assert "--constrained-retry needs a model run" in capsys.readouterr().err


def test_a_retried_prompt_starts_from_its_stored_cache(tmp_path, capsys, monkeypatch):
    """With --constrained-retry and a prefix store that holds a chunk's prompts, the second
    decoding of a failing query computes only what its prompt does not share; with
    --prefix-cache-mb 0 the retries compute as much as the greedy pass."""
    from mlx_text2sql.engine import SQLGenerator

    made = []
    init = SQLGenerator.__init__

    def recording(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(SQLGenerator, "__init__", recording)
    argv = _misnaming_run(tmp_path) + ["--constrained-retry"]
    computed = {}
    for mb in ("4096", "0"):
        assert evaluate.main(argv + ["--prefix-cache-mb", mb]) == 0
        assert "constrained retry: 3 greedy queries" in capsys.readouterr().out
        stats = made[-1].stats
        assert stats.prompts == 6  # three greedy prompts, three retries
        computed[mb] = stats.computed_prompt_tokens
    ran = [g for g in made if g.stats.prompts]
    assert [g.store.max_bytes for g in ran] == [4096 * 2**20, 0]
    assert evaluate.main(argv) == 0 and made[-1].store.max_bytes == 512 * 2**20  # the default
    once = computed["0"] // 2  # without a store both decodings compute the same (a shared start once)
    assert computed["0"] == 2 * once and once > 100
    assert 0 < 5 * (computed["4096"] - once) < once  # the retries: only each question's own end
    assert evaluate.main(argv + ["--prefix-cache-mb", "-1"]) == 2
    assert "--prefix-cache-mb must be 0 or more (got -1)" in capsys.readouterr().err
