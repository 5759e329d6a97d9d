"""The convert command end to end: splits, record forms, --strict vs skip, atomic output,
schema trimming, --limit, --hf-dataset, option validation."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from mlx_text2sql import convert as convert_mod
from mlx_text2sql.convert import _main, main
from mlx_text2sql.errors import ConfigError, InputError
from mlx_text2sql.prompts import SYSTEM_PROMPT, record_messages, render_chat

FIX = Path(__file__).parent / "fixtures" / "convert"
SAMPLE = Path(__file__).parent.parent / "data" / "sample" / "wikisql"


def load(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def outputs(out):
    return {s: load(out / f"{s}.jsonl") for s in ("train", "valid", "test")}


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- help and options

def test_help_lists_examples(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--keep-splits" in text and "wikisql" in text


def test_every_option_problem_is_reported_at_once(capsys):
    with pytest.raises(ConfigError) as e:
        _main(["wikisql", "--valid-fraction", "1.5", "--sample-rows", "-1", "--limit", "0",
               "--format", "text", "--split-map", "dev"])
    problems = " | ".join(e.value.problems)
    for part in ("give INPUT", "--valid-fraction", "--sample-rows", "--limit",
                 "--format text needs", "--split-map 'dev'"):
        assert part in problems
    assert main(["wikisql", "x", "--chat-template", "nope"]) == 2
    assert "unknown chat template 'nope'" in capsys.readouterr().err


def test_missing_input_is_one_clear_line(tmp_path, capsys):
    assert main(["wikisql", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no such file or folder" in err and "\n" not in err


# --------------------------------------------------------------------------- splits

def test_pooled_splits_are_by_table_and_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    args = ["--valid-fraction", "0.2", "--test-fraction", "0.2", "--no-progress"]
    assert main(["wikisql", str(SAMPLE), "--out", str(a), *args]) == 0
    assert main(["wikisql", str(SAMPLE), "--out", str(b), *args]) == 0
    assert main(["wikisql", str(SAMPLE), "--out", str(c), *args, "--seed", "7"]) == 0
    recs = outputs(a)
    for s in ("train", "valid", "test"):
        assert (a / f"{s}.jsonl").read_bytes() == (b / f"{s}.jsonl").read_bytes()
    tables = {s: {r["table"] for r in recs[s]} for s in recs}
    assert all(tables.values())
    assert not (tables["train"] & tables["valid"] or tables["train"] & tables["test"]
                or tables["valid"] & tables["test"])
    assert sum(map(len, recs.values())) == 109
    assert {r["table"] for r in outputs(c)["test"]} != tables["test"]


def test_keep_splits_and_split_map(tmp_path):
    out = tmp_path / "o"
    assert main(["wikisql", str(SAMPLE), "--out", str(out), "--keep-splits", "--no-progress"]) == 0
    recs = outputs(out)
    assert [len(recs[s]) for s in ("train", "valid", "test")] == [68, 20, 21]
    assert {r["meta"]["split"] for r in recs["valid"]} == {"dev"}
    # dev as test: valid is then carved out of train by table
    assert main(["wikisql", str(SAMPLE), "--out", str(out), "--keep-splits", "--split-map", "dev=test",
                 "--valid-fraction", "0.25", "--no-progress"]) == 0
    recs = outputs(out)
    assert {r["meta"]["split"] for r in recs["test"]} == {"dev", "test"}
    assert recs["valid"] and {r["meta"]["split"] for r in recs["valid"]} == {"train"}
    assert not {r["table"] for r in recs["valid"]} & {r["table"] for r in recs["train"]}


def test_keep_splits_with_an_unknown_split_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("dev.jsonl", "dev.tables.jsonl"):
        shutil.copy(FIX / "wikisql" / name, src / name.replace("dev", "extra"))
    with pytest.raises(ConfigError, match="--split-map extra=train"):
        _main(["wikisql", str(src), "--out", str(tmp_path / "o"), "--keep-splits", "--no-progress"])
    assert main(["wikisql", str(src), "--out", str(tmp_path / "o"), "--keep-splits",
                 "--split-map", "extra=test", "--no-progress"]) == 0
    assert len(outputs(tmp_path / "o")["test"]) == 11


def test_limit_per_input_file(tmp_path):
    out = tmp_path / "o"
    assert main(["wikisql", str(SAMPLE), "--out", str(out), "--keep-splits", "--limit", "3", "--no-progress"]) == 0
    recs = outputs(out)
    assert [len(recs[s]) for s in ("train", "valid", "test")] == [3, 3, 3]
    con = sqlite3.connect(out / "wikisql.sqlite")  # only the tables the examples use
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0] == 3


# --------------------------------------------------------------------------- bad input

def _bad_wikisql(folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(FIX / "wikisql" / "dev.tables.jsonl", folder / "dev.tables.jsonl")
    good = (FIX / "wikisql" / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    q = {"table_id": "1-1000-1", "question": "q?", "sql": {"sel": 0, "agg": 0, "conds": []}}
    bad = [
        '{"table_id": "1-1000-1", "question": ',                                   # line 3
        json.dumps({**q, "sql": {"sel": 0, "agg": 9, "conds": []}}),               # line 4
        json.dumps({**q, "table_id": "9-9-9"}),                                    # line 5
        json.dumps({**q, "sql": {"sel": 0, "agg": 0, "conds": [[17, 0, "x"]]}}),   # line 6
        json.dumps({"table_id": "1-1000-1", "sql": q["sql"]}),                     # line 7
    ]
    (folder / "dev.jsonl").write_text("\n".join(good[:2] + bad + good[2:]) + "\n", encoding="utf-8")
    return folder / "dev.jsonl"


def test_bad_records_are_skipped_and_reported_with_file_and_line(tmp_path, capsys):
    path = _bad_wikisql(tmp_path / "src")
    out = tmp_path / "o"
    assert main(["wikisql", str(tmp_path / "src"), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 5 bad records" in printed
    report = json.loads((out / "convert_report.json").read_text())
    assert report["skipped"] == 5
    lines = report["skipped_records"]
    assert [s.split(": ")[0] for s in lines] == [f"{path}:{n}" for n in (3, 4, 5, 6, 7)]
    assert "malformed JSON" in lines[0] and "unknown aggregation index 9" in lines[1]
    assert "table id '9-9-9' is not in the tables file" in lines[2]
    assert "condition column index 17 is out of range" in lines[3]
    assert "missing field 'question'" in lines[4]
    assert sum(map(len, outputs(out).values())) == 11


def test_strict_stops_at_the_first_bad_record_and_keeps_old_outputs(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["wikisql", str(FIX / "wikisql"), "--out", str(out), "--no-progress"]) == 0
    before = snapshot(out)
    path = _bad_wikisql(tmp_path / "src")
    assert main(["wikisql", str(tmp_path / "src"), "--out", str(out), "--strict", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:3: malformed JSON line (") and err.count("\n") == 1
    with pytest.raises(InputError) as e:
        _main(["wikisql", str(tmp_path / "src"), "--out", str(out), "--strict", "--no-progress"])
    assert (e.value.path, e.value.line) == (str(path), 3)
    assert snapshot(out) == before


def test_failure_while_writing_leaves_previous_files_intact(tmp_path, monkeypatch):
    out = tmp_path / "o"
    assert main(["wikisql", str(SAMPLE), "--out", str(out), "--no-progress"]) == 0
    before = snapshot(out)
    db_before = (out / "wikisql.sqlite").read_bytes()
    calls = {"n": 0}
    real_dumps = json.dumps

    def flaky_dumps(obj, **kw):
        calls["n"] += 1
        if calls["n"] == 10:  # 13 records: train has 2, so this is inside the second file
            raise OSError("disk full")
        return real_dumps(obj, **kw)

    monkeypatch.setattr(json, "dumps", flaky_dumps)
    with pytest.raises(OSError, match="disk full"):
        _main(["wikisql", str(FIX / "wikisql"), "--out", str(out), "--no-progress"])
    monkeypatch.undo()
    assert snapshot(out) == before
    assert (out / "wikisql.sqlite").read_bytes() == db_before
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


# --------------------------------------------------------------------------- record forms

def test_chat_template_text_records(tmp_path):
    out = tmp_path / "o"
    assert main(["wikisql", str(FIX / "wikisql"), "--out", str(out), "--chat-template", "zephyr",
                 "--no-progress"]) == 0
    recs = [r for rs in outputs(out).values() for r in rs]
    for r in recs:
        assert "messages" not in r
        msgs = record_messages(r, with_answer=True)
        assert msgs[0]["content"] == SYSTEM_PROMPT and msgs[-1]["content"] == r["sql"]
        assert r["text"] == render_chat("zephyr", msgs)
        assert r["text"].endswith(r["sql"] + "</s>\n")


def test_prompt_completion_records(tmp_path):
    out = tmp_path / "o"
    assert main(["wikisql", str(FIX / "wikisql"), "--out", str(out), "--chat-template", "chatml",
                 "--format", "prompt-completion", "--no-progress"]) == 0
    r = outputs(out)["train"][0]
    assert r["prompt"].endswith("<|im_start|>assistant\n")
    assert r["completion"] == r["sql"] + "<|im_end|>\n"
    assert r["prompt"] + r["completion"] == render_chat("chatml", record_messages(r, with_answer=True))
    assert main(["wikisql", str(FIX / "wikisql"), "--out", str(out), "--format", "prompt-completion",
                 "--no-progress"]) == 0
    r = outputs(out)["train"][0]
    assert r["prompt"] == f"Schema:\n{r['schema']}\n\nQuestion: {r['question']}"
    assert r["completion"] == r["sql"]


def _tokenizer_folder(path: Path, with_template: bool = True) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if with_template:
        hf.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% if m['role'] == "
                            "'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
                            "{% if add_generation_prompt %}[assistant] {% endif %}")
    hf.save_pretrained(path)
    return path


def test_model_tokenizer_template(tmp_path):
    model = _tokenizer_folder(tmp_path / "model")
    out = tmp_path / "o"
    assert main(["wikisql", str(FIX / "wikisql"), "--out", str(out), "--model", str(model), "--no-progress"]) == 0
    r = outputs(out)["train"][0]
    assert r["text"].startswith(f"[system] {SYSTEM_PROMPT}\n[user] Schema:\n")
    assert r["text"].endswith(f"[assistant] {r['sql']}</s>\n")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    assert r["text"] == tok.apply_chat_template(record_messages(r, with_answer=True), tokenize=False)
    bare = _tokenizer_folder(tmp_path / "bare", with_template=False)
    assert main(["wikisql", str(FIX / "wikisql"), "--out", str(out), "--model", str(bare), "--no-progress"]) == 2


# --------------------------------------------------------------------------- trimming

@pytest.fixture()
def spider_dir(tmp_path):
    src = tmp_path / "spider"
    src.mkdir()
    for name in ("dev.json", "tables.json"):
        shutil.copy(FIX / "spider" / name, src / name)
    db = src / "database" / "bookshop" / "bookshop.sqlite"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.executescript((FIX / "spider" / "bookshop.sql").read_text())
    con.close()
    return src


def _spider(src, out, *args):
    assert main(["spider", str(src), "--out", str(out), "--no-progress", "--valid-fraction", "0",
                 "--test-fraction", "0", *args]) == 0
    return {r["id"]: r for r in load(out / "train.jsonl")}


def test_trimming_drops_unrelated_tables_then_rows_never_the_sql(spider_dir, tmp_path):
    full = _spider(spider_dir, tmp_path / "full")
    count = full["dev-0"]  # SELECT count(*) FROM author: book and sale are unrelated
    size = len("\n\n".join(m["content"] for m in count["messages"]))
    budget = int(size / convert_mod.CHARS_PER_TOKEN) - 20
    trimmed = _spider(spider_dir, tmp_path / "t", "--max-tokens", str(budget))
    r = trimmed["dev-0"]
    assert r["sql"] == count["sql"] and r["question"] == count["question"]
    assert '"sale"' not in r["schema"] and '"author"' in r["schema"]
    assert r["meta"]["trimmed"]["dropped_tables"] == ["sale"]
    assert r["messages"][1]["content"].endswith(f"Question: {r['question']}")
    # a join query keeps both tables it uses; with a tight budget it loses rows instead
    join = trimmed["dev-2"]
    assert '"author"' in join["schema"] and '"book"' in join["schema"]
    tiny = _spider(spider_dir, tmp_path / "tiny", "--max-tokens", "150")
    report = json.loads((tmp_path / "tiny" / "convert_report.json").read_text())
    assert report["too_long"] >= 1 and len(tiny) + report["too_long"] == 7
    for r in tiny.values():
        assert r["sql"] == full[r["id"]]["sql"]
        assert len("\n\n".join(m["content"] for m in r["messages"])) / convert_mod.CHARS_PER_TOKEN <= 150


def test_trimming_counts_with_a_tokenizer(spider_dir, tmp_path):
    tok = _tokenizer_folder(tmp_path / "tok")
    # the toy word-level tokenizer makes one token of every word and punctuation mark
    recs = _spider(spider_dir, tmp_path / "o", "--max-tokens", "120", "--tokenizer", str(tok))
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tok)
    assert recs and any("trimmed" in r["meta"] for r in recs.values())
    for r in recs.values():  # counted as the model will read it: through the chat template
        text = t.apply_chat_template(r["messages"], tokenize=False)
        assert len(t(text, add_special_tokens=False)["input_ids"]) <= 120


# --------------------------------------------------------------------------- datasets library

def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in (FIX / "sql_create_context" / "sqlqa.jsonl").read_text().splitlines()]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:2]),
                               "validation": datasets.Dataset.from_list(rows[2:])})
    dd.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "o"
    assert main(["sql-create-context", "--hf-dataset", str(tmp_path / "ds"), "--keep-splits",
                 "--out", str(out), "--no-progress"]) == 0
    recs = outputs(out)
    # no test split in the dataset: it is carved out of train (by schema)
    assert [len(recs[s]) for s in ("train", "valid", "test")] == [1, 1, 1]
    assert main(["sql-create-context", "--hf-dataset", str(tmp_path / "ds"), "--keep-splits",
                 "--test-fraction", "0", "--out", str(out), "--no-progress"]) == 0
    recs = outputs(out)
    assert [len(recs[s]) for s in ("train", "valid", "test")] == [2, 1, 0]
    assert recs["valid"][0]["id"] == "validation-1"
    assert main(["sql-create-context", "--hf-dataset", str(tmp_path / "ds"), "--hf-split", "validation",
                 "--out", str(out), "--no-progress", "--valid-fraction", "0", "--test-fraction", "0"]) == 0
    assert len(outputs(out)["train"]) == 1


def test_hf_dataset_from_local_data_files(tmp_path):
    pytest.importorskip("datasets")
    out = tmp_path / "o"
    src = tmp_path / "files"
    src.mkdir()
    shutil.copy(FIX / "nsql" / "nsql.jsonl", src / "part.jsonl")
    assert main(["nsql", "--hf-dataset", str(src), "--out", str(out), "--no-progress",
                 "--valid-fraction", "0", "--test-fraction", "0"]) == 0
    assert len(outputs(out)["train"]) == 4
