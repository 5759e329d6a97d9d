"""The export command: mlx_lm loads the mlx-lm export with our logits, the PEFT tensors give our
layers' weight update (NumPy), the GGUF export reads back and its Modelfile renders our training
prompt; bad input fails clearly and leaves nothing behind; adapters.npz has the usual mode."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from exportkit import logits, make_adapter, probe_ids, probe_messages, tiny_gguf
from mlx_text2sql import export
from mlx_text2sql.interop.gotemplate import render
from mlx_text2sql.interop.ollama import parse_modelfile
from mlx_text2sql.tuner.lora import load_with_adapter, lora_layers


def run(argv, capsys):
    code = export.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.endswith((".partial", ".old"))]


@pytest.fixture(scope="module")
def gguf_base(tiny_llama, tmp_path_factory):
    return tiny_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny-q4.gguf")


# --------------------------------------------------------------------------- mlx-lm

@pytest.mark.parametrize("dora", [False, True])
def test_mlx_lm_export_loads_in_mlx_lm_with_our_logits(tmp_path, tiny_llama, capsys, dora):
    from mlx_lm import load as mlx_load

    adapter = make_adapter(tiny_llama, tmp_path / "adapter", dora=dora, num_layers=1,
                           targets=["q_proj", "v_proj", "mlp.down_proj"])
    out = tmp_path / "mlx"
    code, stdout, err = run(["--adapter-path", str(adapter), "--to", "mlx-lm", "--out", str(out)], capsys)
    assert code == 0, err
    assert stdout.strip() == str(out) and "[export]" in err
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapters.safetensors"]  # base loadable as is
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == ("dora" if dora else "lora") and cfg["num_layers"] == 1
    assert cfg["lora_parameters"] == {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                      "keys": ["mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj"]}
    ours = load_with_adapter(adapter)
    ids = probe_ids(ours)
    want = logits(ours.model, ids)
    model, _ = mlx_load(cfg["model"], adapter_path=str(out))
    got = logits(model, ids)
    assert np.abs(want - logits(load_with_adapter(None, model=str(tiny_llama)).model, ids)).max() > 1e-2
    assert np.abs(got - want).max() <= 1e-5  # same layers, same weights: equal up to float32 rounding


@pytest.mark.parametrize("qlora", [False, True])
def test_mlx_lm_export_of_a_gguf_base_writes_a_base_folder_mlx_lm_loads(tmp_path, gguf_base, capsys, qlora):
    from mlx_lm import load as mlx_load

    # as train does on a CPU: a dense float32 copy of the quantized GGUF (or QLoRA over it)
    adapter = make_adapter(gguf_base, tmp_path / "adapter", dequantize=not qlora)
    out = tmp_path / "mlx"
    code, _, err = run(["--adapter-path", str(adapter), "--to", "mlx-lm", "--out", str(out)], capsys)
    assert code == 0, err
    base = out / "base"
    conf = json.loads((base / "config.json").read_text())
    assert conf["rope_theta"] == 10000.0 and ("quantization" in conf) == qlora
    assert json.loads((base / "tokenizer_config.json").read_text()).get("chat_template") or \
        (base / "chat_template.jinja").is_file()
    ours = load_with_adapter(adapter)
    ids = probe_ids(ours)
    model, tok = mlx_load(str(base), adapter_path=str(out))
    assert tok.encode("SELECT name FROM singer") == ours.tokenizer.encode("SELECT name FROM singer")
    assert np.abs(logits(model, ids) - logits(ours.model, ids)).max() <= 1e-5


# --------------------------------------------------------------------------- peft

def _hf_names(folder: Path) -> set[str]:
    return set(mx.load(str(folder / "model.safetensors")))


@pytest.mark.parametrize("dora", [False, True])
def test_peft_tensors_reproduce_our_layers(tmp_path, gguf_base, capsys, dora):
    """LoRA: x (s B A)^T is our layer's update; DoRA: PEFT's formula on the exported tensors
    (rows of W x + s B A x scaled by magnitude / ||W + s B A||) is our layer's output."""
    from safetensors.numpy import load_file

    adapter = make_adapter(gguf_base, tmp_path / "adapter", dequantize=True, rank=4, dora=dora)
    out = tmp_path / "peft"
    code, _, err = run(["--adapter-path", str(adapter), "--to", "peft", "--out", str(out)], capsys)
    assert code == 0, err
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["use_dora"] == dora and cfg["base_model_name_or_path"] == str((out / "base").resolve())
    scaling = cfg["lora_alpha"] / cfg["r"]
    tensors = load_file(str(out / "adapter_model.safetensors"))
    ours = load_with_adapter(adapter)
    layers = lora_layers(ours.model)
    assert len(tensors) == (3 if dora else 2) * len(layers) == (3 if dora else 2) * 7 * 2  # 7 linear layers x 2 blocks
    base_names = _hf_names(out / "base")
    rng = np.random.default_rng(0)
    for name, layer in layers:
        assert scaling == pytest.approx(layer.scale)
        assert any(name.endswith(t) for t in cfg["target_modules"]) and f"{name}.weight" in base_names
        A = tensors[f"base_model.model.{name}.lora_A.weight"]
        B = tensors[f"base_model.model.{name}.lora_B.weight"]
        out_dims, in_dims = np.array(layer.linear.weight).shape
        assert A.shape == (4, in_dims) and B.shape == (out_dims, 4)
        x = rng.standard_normal((3, in_dims)).astype(np.float32)
        W = np.array(layer.linear.weight)
        if dora:
            mag = tensors[f"base_model.model.{name}.lora_magnitude_vector"]
            scale_rows = mag / np.linalg.norm(W + scaling * B @ A, axis=1)
            peft_y = scale_rows * (x @ W.T + scaling * x @ A.T @ B.T)
            np.testing.assert_allclose(peft_y, np.array(layer(mx.array(x))), atol=1e-5, rtol=1e-4)
        else:
            ours_delta = np.array(layer(mx.array(x)) - layer.linear(mx.array(x)))
            np.testing.assert_allclose(x @ (scaling * B @ A).T, ours_delta, atol=1e-5, rtol=1e-4)


def test_peft_targets_of_the_last_blocks_match_exactly_the_adapted_modules(tmp_path, tiny_llama, capsys):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", num_layers=1, targets=["q_proj", "down_proj"])
    out = tmp_path / "peft"
    code, _, err = run(["--adapter-path", str(adapter), "--to", "peft", "--out", str(out)], capsys)
    assert code == 0, err
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert not (out / "base").exists() and cfg["base_model_name_or_path"] == str(Path(tiny_llama).resolve())
    modules = {k.rsplit(".", 1)[0] for k in _hf_names(Path(tiny_llama))}
    matched = {m for m in modules if re.fullmatch(cfg["target_modules"], m)}
    assert matched == {"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"}


def test_peft_refuses_a_quantized_base_and_writes_nothing(tmp_path, gguf_base, capsys):
    adapter = make_adapter(gguf_base, tmp_path / "adapter")  # QLoRA over the 4-bit GGUF
    out = tmp_path / "peft"
    code, _, err = run(["--adapter-path", str(adapter), "--to", "peft", "--out", str(out)], capsys)
    assert code == 2 and "quantized base" in err and "--to mlx-lm" in err and "--dequantize" in err
    assert not out.exists() and no_leftovers(tmp_path)


# --------------------------------------------------------------------------- gguf + Modelfile

@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_tinyllama", "tiny_mistral"])
def test_gguf_export_reads_back_and_its_modelfile_renders_the_training_prompt(tmp_path, request, capsys, fixture):
    from mlx_text2sql.models import load_model
    from mlx_text2sql.tuner.data import Encoder

    base = request.getfixturevalue(fixture)
    adapter = make_adapter(base, tmp_path / "adapter")
    out = tmp_path / "gguf"
    code, _, err = run(["--adapter-path", str(adapter), "--to", "gguf", "--out", str(out), "--gguf-dtype", "f32"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model-f32.gguf"]
    mf = parse_modelfile((out / "Modelfile").read_text())
    ours = load_with_adapter(adapter)
    assert mf.model == "./model-f32.gguf"
    assert mf.system == json.loads((adapter / "adapter_config.json").read_text())["prompt"]["system_prompt"]
    assert ours.eos in mf.parameters["stop"] and mf.parameters["temperature"] == ["0"]
    # the prompt Ollama builds for a user turn (SYSTEM supplies the system turn) is the training prompt
    msgs = probe_messages()
    enc = Encoder(ours.tokenizer, ours.eos)
    want = enc.chat(msgs, add_generation_prompt=True)
    values = {"System": mf.system, "Messages": [{"Role": "system", "Content": mf.system},
                                                {"Role": "user", "Content": msgs[1]["content"]}]}
    got = render(mf.template, values)
    assert got == want or "<s>" + got == want  # exact, or the runtime adds the BOS token itself
    # ... and the runtime's tokens (the GGUF's tokenizer, adding what it adds) are the training tokens
    back = load_model(str(out / "model-f32.gguf"))
    assert back.tokenizer.encode(got) == enc.encode_prompt(want)
    # the fused GGUF computes base + adapter
    ids = probe_ids(ours)
    assert np.abs(logits(back.model, ids) - logits(ours.model, ids)).max() <= 1e-3  # merged in float32


def test_go_template_renderer_subset():
    values = {"System": "S", "Messages": [{"Role": "system", "Content": "sys"}, {"Role": "user", "Content": "u1"},
                                          {"Role": "assistant", "Content": "a"}, {"Role": "user", "Content": "u2"}]}
    tpl = ('{{- $p := "" }}\n{{- range .Messages }}{{ if eq .Role "system" }}<{{ .Content }}>'
           '{{ else if eq $p "system" }}{{ .Content }}|{{ else if ne .Role "user" }}[{{ .Content }}]'
           '{{ else }}{{ $.System }}:{{ .Content }}|{{ end }}{{ $p = .Role }}{{ end }}  \n {{- if not $p }}x{{ end -}}  !')
    assert render(tpl, values) == "<sys>u1|[a]S:u2|!"
    with pytest.raises(ValueError):
        render("{{ range .Tools }}{{ end }}", values)
    with pytest.raises(ValueError):
        render("{{ if .Role }}x", values)


# --------------------------------------------------------------------------- bad input, atomicity

def test_unknown_base_model_is_a_clear_error(tmp_path, tiny_llama, capsys):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model"] = str(tmp_path / "gone")
    cfg_path.write_text(json.dumps(cfg))
    code, _, err = run(["--adapter-path", str(adapter), "--to", "mlx-lm", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "base model" in err and "gone" in err and "--model" in err
    assert not (tmp_path / "o").exists() and no_leftovers(tmp_path)
    code, _, err = run(["--adapter-path", str(adapter), "--to", "mlx-lm", "--out", str(tmp_path / "o"),
                        "--model", str(tiny_llama)], capsys)
    assert code == 0, err


def test_non_empty_out_needs_force_and_force_replaces_it(tmp_path, tiny_llama, capsys):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(["--adapter-path", str(adapter), "--to", "peft", "--out", str(out)], capsys)
    assert code == 2 and "not empty" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    code, _, err = run(["--adapter-path", str(adapter), "--to", "peft", "--out", str(out), "--force"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert no_leftovers(tmp_path)
    (tmp_path / "empty").mkdir()  # an empty folder is fine without --force
    assert run(["--adapter-path", str(adapter), "--to", "mlx-lm", "--out", str(tmp_path / "empty")], capsys)[0] == 0


def test_a_failure_while_writing_leaves_nothing(tmp_path, tiny_llama, capsys, monkeypatch):
    from mlx_text2sql.interop import mlx_lm as mlx_lm_export

    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(mlx_lm_export, "write_json", boom)
    with pytest.raises(OSError):
        export.main(["--adapter-path", str(adapter), "--to", "mlx-lm", "--out", str(out), "--force"])
    assert [p.name for p in out.iterdir()] == ["old.txt"] and no_leftovers(tmp_path)


def test_adapter_files_get_the_usual_permissions(tmp_path, tiny_llama):
    old = os.umask(0o022)
    try:
        adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    finally:
        os.umask(old)
    assert (adapter / "adapters.npz").stat().st_mode & 0o777 == 0o644
    assert (adapter / "adapter_config.json").stat().st_mode & 0o777 == 0o644


def test_cli_lists_export(capsys):
    from mlx_text2sql import cli

    assert cli.main([]) == 0
    assert "export" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--help"])
    assert e.value.code == 0 and "--to" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["chatml", "zephyr", "mistral", "llama2", "plain"])
def test_each_registry_chat_template_gets_a_go_template_that_renders_it(name):
    from tinymodels import make_tokenizer

    from mlx_text2sql.interop.ollama import choose_go_template, go_messages
    from mlx_text2sql.prompts import build_messages, get_template, render_chat

    tpl = get_template(name)
    tok = make_tokenizer()
    tok.chat_template, tok.eos_token = tpl.jinja, tpl.eos
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    chosen, go = choose_go_template(TokenizerWrapper(tok))
    assert chosen == name
    msgs = build_messages("How many heads?", 'CREATE TABLE "head" ("age" INT);')
    want = render_chat(tpl, msgs, add_generation_prompt=True, bos_token=tok.bos_token)
    assert render(go, go_messages(msgs)) == want  # this tokenizer adds no BOS itself: the template writes it


# --------------------------------------------------------------------------- gguf-lora (llama.cpp adapter)

def test_gguf_lora_tensors_are_our_update_in_llama_cpp_layout(tmp_path, gguf_base, tiny_llama, capsys):
    import gguf
    from ggufwriter import gguf_name, llama_cpp_permute

    adapter = make_adapter(gguf_base, tmp_path / "adapter", targets=["q_proj", "k_proj", "o_proj", "down_proj"])
    out = tmp_path / "lora"
    code, _, err = run(["--adapter-path", str(adapter), "--to", "gguf-lora", "--out", str(out),
                        "--gguf-dtype", "f32"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "lora-f32.gguf"]
    mf = parse_modelfile((out / "Modelfile").read_text())
    assert mf.model == str(gguf_base.resolve()) and mf.adapter == "./lora-f32.gguf"
    reader = gguf.GGUFReader(str(out / "lora-f32.gguf"))
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    assert field("general.type") == "adapter" and field("adapter.type") == "lora"
    assert field("general.architecture") == "llama"
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    ours = load_with_adapter(adapter)
    conf = json.loads((Path(tiny_llama) / "config.json").read_text())
    heads = {"q_proj": conf["num_attention_heads"], "k_proj": conf["num_key_value_heads"]}
    layers = lora_layers(ours.model)
    assert len(tensors) == 2 * len(layers) == 2 * 4 * 2
    for name, layer in layers:
        A, B = tensors[gguf_name(f"{name}.weight") + ".lora_a"], tensors[gguf_name(f"{name}.weight") + ".lora_b"]
        eye = mx.eye(layer.lora_a.shape[0])  # our layer's update on the identity: delta W^T (in, out)
        delta = np.array(layer(eye) - layer.linear(eye)).T
        kind = name.rsplit(".", 1)[-1]
        if kind in heads:
            delta = llama_cpp_permute(delta, heads[kind])  # llama.cpp's row order for q/k
        np.testing.assert_allclose(field("adapter.lora.alpha") / A.shape[0] * B @ A, delta, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("what", ["dora", "folder"])
def test_gguf_lora_refuses_what_llama_cpp_adapters_cannot_hold(tmp_path, gguf_base, tiny_llama, capsys, what):
    base = gguf_base if what == "dora" else tiny_llama
    adapter = make_adapter(base, tmp_path / "adapter", dora=what == "dora", dequantize=what == "dora")
    out = tmp_path / "lora"
    code, _, err = run(["--adapter-path", str(adapter), "--to", "gguf-lora", "--out", str(out)], capsys)
    assert code == 2 and "--to gguf" in err and ("DoRA" in err if what == "dora" else "not a GGUF file" in err)
    assert not out.exists() and no_leftovers(tmp_path)
