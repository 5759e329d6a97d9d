"""The settings table: the parser, the YAML validation and TrainArgs all agree with it."""

import dataclasses

import pytest

from mlx_text2sql import config as C
from mlx_text2sql.errors import ConfigError
from mlx_text2sql.train import build_parser, settings
from mlx_text2sql.training.settings import BY_KEY, DEFAULTS, SETTINGS, check, trainer_kwargs
from mlx_text2sql.tuner import trainer as T

# What `python -m mlx_text2sql.train` uses when nothing is set (configs/default.yaml and README
# say the same): changing one of these changes every user's training run.
EFFECTIVE_DEFAULTS = {
    "model": "smollm2-135m", "chat_template": None, "dtype": "float32", "quantize": None, "group_size": 64,
    "dequantize": None, "data": "data", "max_seq_length": 1024, "train_on_prompt": False, "rank": 8,
    "alpha": 16.0, "dropout": 0.0, "targets": None, "lora_layers": None, "dora": False, "iters": 60,
    "epochs": None, "batch_size": 4, "grad_accum": 1, "grad_checkpoint": False, "lr": 5e-4,
    "lr_schedule": "cosine", "warmup": None, "min_lr": 0.0, "optimizer": "adamw", "weight_decay": 0.0,
    "max_grad_norm": 1.0, "seed": 0, "time_limit": None, "cpu_streams": None, "share_prefix": True,
    "eval_every": 20,
    "val_batches": 8, "early_stop": None, "best_metric": "val_loss", "exec_acc_samples": 64,
    "exec_acc_max_tokens": 192, "adapter_path": "adapters", "save_every": 20, "keep_checkpoints": 3,
    "resume": None, "report_every": 5, "plot": True,
}

# A valid command-line value of each non-bool setting other than its default, and what it parses to.
CLI_VALUES = {
    "model": ("some/model", "some/model"), "chat_template": ("zephyr", "zephyr"), "dtype": ("bfloat16", "bfloat16"),
    "quantize": ("4", 4), "group_size": ("32", 32), "data": ("d", "d"), "max_seq_length": ("256", 256),
    "rank": ("4", 4), "alpha": ("8", 8.0), "dropout": ("0.1", 0.1), "targets": ("q_proj,v_proj", "q_proj,v_proj"),
    "lora_layers": ("2", 2), "iters": ("7", 7), "epochs": ("1.5", 1.5), "batch_size": ("2", 2),
    "grad_accum": ("3", 3), "lr": ("1e-3", 1e-3), "lr_schedule": ("linear", "linear"), "warmup": ("2", 2),
    "min_lr": ("1e-5", 1e-5), "optimizer": ("adam", "adam"), "weight_decay": ("0.01", 0.01),
    "max_grad_norm": ("0.5", 0.5), "seed": ("3", 3), "time_limit": ("90", 90.0), "cpu_streams": ("2", 2),
    "eval_every": ("9", 9),
    "val_batches": ("-1", -1), "early_stop": ("2", 2), "best_metric": ("val_loss", "val_loss"),
    "exec_acc_samples": ("8", 8), "exec_acc_max_tokens": ("64", 64), "adapter_path": ("out", "out"),
    "save_every": ("11", 11), "keep_checkpoints": ("0", 0), "resume": ("ck", "ck"), "report_every": ("1", 1),
}


def test_the_table_is_the_effective_defaults():
    assert DEFAULTS == EFFECTIVE_DEFAULTS and C.DEFAULTS == DEFAULTS
    for s in SETTINGS:
        assert s.default is None and s.nullable or isinstance(s.default, s.type) or (
            s.type is float and isinstance(s.default, int)), s.key


def test_command_line_defaults(data_dir):
    cfg, _, _ = settings(["--data", str(data_dir)])
    assert cfg == {**EFFECTIVE_DEFAULTS, "data": str(data_dir)}
    ns = build_parser().parse_args([])
    assert all(getattr(ns, s.key) is None for s in SETTINGS)  # so a YAML file can set any of them


@pytest.mark.parametrize("key", sorted(BY_KEY))
def test_parser_agrees_with_the_table(key):
    s = BY_KEY[key]
    p = build_parser()
    if s.type is bool:
        if s.positive:
            assert getattr(p.parse_args([s.cli_flags[0]]), key) is True
        for flag in s.negative:
            assert getattr(p.parse_args([flag]), key) is False
        assert s.positive or s.negative
        return
    given, parsed = CLI_VALUES[key]
    for flag in s.cli_flags:
        got = getattr(p.parse_args([flag, given]), key)
        assert got == parsed and type(got) is type(parsed), (flag, got)
    if s.type in (int, float):
        with pytest.raises(SystemExit):
            p.parse_args([s.cli_flags[0], "not-a-number"])
    if s.choices is not None and s.type is str:
        with pytest.raises(SystemExit):
            p.parse_args([s.cli_flags[0], "no-such-choice"])


@pytest.mark.parametrize("key", sorted(BY_KEY))
def test_yaml_validation_agrees_with_the_table(key, data_dir):
    s = BY_KEY[key]
    base = {**DEFAULTS, "data": str(data_dir)}
    c, problems = check(base)
    assert problems == [] and c == base  # every default passes
    if s.type is bool:
        bad = "yes"
    elif s.type in (int, float):
        bad = "many"
    elif s.type is list:
        bad = 5
    else:
        bad = 5 if s.choices is None else "no-such-choice"
    _, problems = check({**base, key: bad})
    assert len(problems) == 1 and problems[0].startswith(key), problems
    if s.nullable:
        assert check({**base, key: None})[1] == []
    elif s.type is not str or s.key in ("model", "data"):
        assert check({**base, key: None})[1] != []
    if s.minimum is not None:
        assert check({**base, key: s.type(s.minimum - 1)})[1], key
        if s.minimum_open and key != "max_grad_norm":  # max_grad_norm 0 means no clipping
            assert check({**base, key: s.type(s.minimum)})[1], key
    if s.type in (int, float):  # a number written as a YAML string becomes the number
        given, parsed = CLI_VALUES[key]
        c, problems = check({**base, key: given})
        assert problems == [] and c[key] == parsed and type(c[key]) is s.type


@pytest.mark.parametrize("value, problem", [
    (0, "exec_acc_samples must be an integer >= 1 (got 0)"),
    (2.5, "exec_acc_samples must be an integer >= 1 (got 2.5)"),
])
def test_exec_acc_samples(value, problem, data_dir):
    cfg, _, _ = settings(["--data", str(data_dir), "--exec-acc-samples", "16", "--exec-acc-max-tokens", "48"])
    assert (cfg["exec_acc_samples"], cfg["exec_acc_max_tokens"]) == (16, 48)
    with pytest.raises(ConfigError) as e:
        C.validate(C.merge({"data": str(data_dir), "exec_acc_samples": value, "exec_acc_max_tokens": 8}))
    assert e.value.problems == [problem, "exec_acc_max_tokens must be an integer >= 16 (got 8)"]


def test_unknown_keys_are_rejected_with_their_names(tmp_path, data_dir):
    with pytest.raises(ConfigError) as e:
        C.validate({**C.merge({"data": str(data_dir)}), "bogus": 1, "ranks": 4})
    assert e.value.problems == ["unknown setting 'bogus'", "unknown setting 'ranks'"]
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {data_dir}\nexec_acc_sample: 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'exec_acc_sample' \\(did you mean 'exec_acc_samples'\\?\\)"):
        settings(["-c", str(path)])


def test_best_metric_accepts_registered_metrics(monkeypatch, data_dir):
    base = {"data": str(data_dir)}
    with pytest.raises(ConfigError, match="best_metric 'my_metric' is not a registered metric; known: val_loss"):
        C.validate(C.merge(base, {"best_metric": "my_metric"}))
    monkeypatch.setitem(T.METRIC_FACTORIES, "my_metric", lambda ctx: None)
    assert C.validate(C.merge(base, {"best_metric": "my_metric"}))["best_metric"] == "my_metric"
    cfg, _, _ = settings(["--data", str(data_dir), "--best-metric", "my_metric"])
    assert cfg["best_metric"] == "my_metric"
    # exec_acc is registered by train itself before it validates
    monkeypatch.delitem(T.METRIC_FACTORIES, "exec_acc", raising=False)
    cfg, _, _ = settings(["--data", str(data_dir), "--best-metric", "exec_acc"])
    assert cfg["best_metric"] == "exec_acc"


def test_train_args_are_the_tables_trainer_subset(data_dir):
    fields = {f.name: f for f in dataclasses.fields(T.TrainArgs)}
    subset = [s for s in SETTINGS if s.trainer]
    assert {s.trainer for s in subset} | {"iters", "pad_to", "compile", "fast_ops"} == set(fields)
    for s in subset:
        f = fields[s.trainer]
        assert f.default == s.default, s.key
        assert f.type == (s.type | None if s.nullable else s.type), s.key
    args = T.TrainArgs(iters=3)
    assert all(getattr(args, s.trainer) == s.default for s in subset)
    cfg, _, _ = settings(["--data", str(data_dir), "--cpu-streams", "2", "--eval-every", "7"])
    args = T.TrainArgs(iters=5, **trainer_kwargs(cfg))
    assert (args.streams, args.eval_every, args.save_every, args.report_every) == (2, 7, 20, 5)
