"""Training settings: defaults < YAML < command line, mlx_lm config keys, and one error that
lists every problem."""

import pytest

from mlx_text2sql import config as C
from mlx_text2sql.errors import ConfigError
from mlx_text2sql.train import settings


def write(path, text):
    path.write_text(text)
    return str(path)


def test_precedence_cli_over_yaml_over_defaults(tmp_path, data_dir):
    cfg_file = write(tmp_path / "c.yaml", f"data: {data_dir}\nrank: 16\nlr: 1.0e-3\nbatch-size: 2\n")
    cfg, _, _ = settings(["-c", cfg_file, "--rank", "4"])
    assert cfg["rank"] == 4             # command line beats YAML
    assert cfg["lr"] == 1e-3            # YAML beats the default
    assert cfg["batch_size"] == 2       # dashed YAML keys work
    assert cfg["alpha"] == C.DEFAULTS["alpha"]  # untouched: the default
    assert cfg["data"] == str(data_dir)


def test_iters_and_epochs_are_one_setting(tmp_path, data_dir):
    cfg_file = write(tmp_path / "c.yaml", f"data: {data_dir}\niters: 300\n")
    cfg, _, _ = settings(["-c", cfg_file, "--epochs", "2"])
    assert cfg["epochs"] == 2 and cfg["iters"] is None
    cfg, _, _ = settings(["-c", cfg_file])
    assert cfg["iters"] == 300 and cfg["epochs"] is None
    with pytest.raises(ConfigError, match="either iters or epochs"):
        settings(["-c", write(tmp_path / "both.yaml", f"data: {data_dir}\niters: 3\nepochs: 1\n")])


def test_mlx_lm_config_keys(tmp_path, data_dir):
    text = f"""
model: some/model
data: {data_dir}
fine_tune_type: dora
num_layers: -1
learning_rate: 2.0e-5
steps_per_eval: 25
steps_per_report: 5
grad_accumulation_steps: 4
mask_prompt: false
train: true
optimizer_config:
  adamw:
    weight_decay: 0.01
lr_schedule:
  name: cosine_decay
  warmup: 20
  arguments: [2.0e-5, 1000, 1.0e-7]
lora_parameters:
  rank: 16
  scale: 2.0
  dropout: 0.05
  keys: [self_attn.q_proj, self_attn.v_proj]
"""
    cfg, _, _ = settings(["-c", write(tmp_path / "mlxlm.yaml", text)])
    assert cfg["dora"] is True and cfg["lora_layers"] is None
    assert cfg["lr"] == 2e-5 and cfg["eval_every"] == 25 and cfg["report_every"] == 5
    assert cfg["grad_accum"] == 4 and cfg["train_on_prompt"] is True  # mask_prompt: false
    assert cfg["rank"] == 16 and cfg["alpha"] == 32.0  # scale * rank
    assert cfg["dropout"] == 0.05 and cfg["targets"] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert cfg["lr_schedule"] == "cosine" and cfg["warmup"] == 20 and cfg["min_lr"] == 1e-7
    assert cfg["weight_decay"] == 0.01


def test_every_problem_reported_at_once(tmp_path):
    text = "rank: 0\nlr: -1\nlr_schedule: exponential\nbatch_size: two\nbogus_key: 1\nlearning_rat: 3\n"
    with pytest.raises(ConfigError) as e:
        settings(["-c", write(tmp_path / "bad.yaml", text), "--data", str(tmp_path / "missing")])
    problems = e.value.problems
    # unknown keys (with a suggestion) and bad values, all in one error
    assert any("bogus_key" in p for p in problems)
    assert any("learning_rat" in p and "did you mean 'learning_rate'" in p for p in problems)
    assert any("rank must be" in p for p in problems) and any("data folder" in p for p in problems)

    with pytest.raises(ConfigError) as e:
        settings(["-c", write(tmp_path / "bad2.yaml", text.replace("bogus_key: 1\nlearning_rat: 3\n", "")),
                  "--data", str(tmp_path / "missing"), "--optimizer", "adam", "--weight-decay", "0.1",
                  "--dropout", "1.0"])
    problems = e.value.problems
    expected = ["rank must be an integer >= 1", "lr must be a number > 0", "lr_schedule must be one of",
                "batch_size must be an integer", "data folder", "weight_decay needs optimizer adamw",
                "dropout must be a number >= 0 and < 1"]
    for want in expected:
        assert any(want in p for p in problems), (want, problems)
    assert len(problems) == len(expected)
    assert str(e.value).startswith("invalid settings:\n  - ")


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"bad.yaml:3: invalid YAML \(mapping values are not allowed"):
        settings(["-c", write(tmp_path / "bad.yaml", "rank: 4\nlr: 1e-3\n  bad: indent\nseed: 1\n")])


def test_validate_normalises(data_dir):
    cfg = C.validate(C.merge({"data": str(data_dir), "targets": "q_proj, v_proj", "lora_layers": -1,
                              "max_grad_norm": 0}))
    assert cfg["targets"] == ["q_proj", "v_proj"] and cfg["lora_layers"] is None
    assert cfg["max_grad_norm"] is None


def test_resume_without_checkpoint_is_a_config_error(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="no checkpoint found"):
        settings(["--data", str(data_dir), "-o", str(tmp_path / "ad"), "--resume"])


@pytest.mark.parametrize("path", sorted((C.Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_configs_are_valid(path, data_dir):
    layer, problems = C.load_yaml(path)
    assert problems == []
    cfg = C.validate(C.merge(layer, {"data": str(data_dir)}))
    assert cfg["rank"] >= 1


def test_default_yaml_lists_every_default():
    layer, problems = C.load_yaml(C.Path(__file__).resolve().parent.parent / "configs" / "default.yaml")
    assert problems == [] and set(layer) == set(C.DEFAULTS) - {"resume"}
    assert all(layer[k] == C.DEFAULTS[k] for k in layer), {k: (layer[k], C.DEFAULTS[k])
                                                           for k in layer if layer[k] != C.DEFAULTS[k]}
