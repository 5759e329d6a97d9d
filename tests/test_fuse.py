"""The fuse command: fused logits == base + adapter logits (dense and quantized bases), a zero
adapter changes nothing, the written folder reloads (our loader and mlx_lm's) with the same
logits, a re-quantization that rounds the adapter away is an error, GGUF export reads back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_text2sql import fuse
from mlx_text2sql.models import load_model
from mlx_text2sql.prompts import build_messages
from mlx_text2sql.tuner.lora import apply_lora, load_with_adapter, save_adapter

sys.path.insert(0, str(Path(__file__).parent))


def probe_tokens(lm):
    msgs = build_messages("how many singers are older than 30?", "CREATE TABLE singer (name TEXT, age INT)")
    from mlx_text2sql.engine import SQLGenerator

    return mx.array([SQLGenerator(lm).prompt_tokens(msgs)])


def logits(lm, tokens):
    out = lm.model(tokens)
    mx.eval(out)
    return np.array(out.astype(mx.float32))


def make_adapter(base_dir, out_dir, *, scale: float = 0.3, quantize: dict | None = None, seed: int = 0,
                 targets=None, dora: bool = False):
    """An adapter with random (non-zero unless scale == 0) weights, saved as train saves one."""
    kw = {"quantize": quantize["bits"], "group_size": quantize["group_size"]} if quantize else {}
    lm = load_model(str(base_dir), **kw)
    apply_lora(lm.model, rank=4, alpha=8.0, targets=targets, dora=dora)
    if scale:
        mx.random.seed(seed)
        lm.model.load_weights([(k, mx.random.normal(v.shape) * scale)
                               for k, v in tree_flatten(lm.model.trainable_parameters())
                               if k.endswith(("lora_a", "lora_b"))], strict=False)
    save_adapter(lm.model, out_dir, {"base_model": str(base_dir), "quantize": quantize,
                                     "prompt": {"sample_rows": 2}})
    return out_dir


def run(argv, capsys):
    code = fuse.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_dense_fuse_matches_base_plus_adapter_and_reloads(tmp_path, tiny_llama, capsys):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    code, out, err = run(["--adapter-path", str(adapter), "--save-path", str(tmp_path / "fused")], capsys)
    assert code == 0, err
    assert out.strip() == str(tmp_path / "fused")
    with_adapter = load_with_adapter(adapter)
    tokens = probe_tokens(with_adapter)
    want = logits(with_adapter, tokens)
    base = logits(load_model(str(tiny_llama)), tokens)
    assert np.abs(want - base).max() > 1e-2  # the adapter matters
    fused = load_model(str(tmp_path / "fused"))
    np.testing.assert_allclose(logits(fused, tokens), want, atol=1e-4, rtol=1e-4)
    # mlx_lm's own loader reads the folder too
    from mlx_lm import load as mlx_load

    model, _ = mlx_load(str(tmp_path / "fused"))
    np.testing.assert_allclose(np.array(model(tokens)), want, atol=1e-4, rtol=1e-4)
    info = json.loads((tmp_path / "fused" / fuse.FUSE_INFO).read_text())
    assert info["verification"]["lora_layers"] == info["verification"]["probed"] > 0
    assert info["prompt"] == {"sample_rows": 2}
    assert not list((tmp_path / "fused").glob("adapters*"))


def test_zero_adapter_changes_nothing(tmp_path, tiny_llama, capsys):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", scale=0)
    code, _, err = run(["--adapter-path", str(adapter), "--save-path", str(tmp_path / "fused")], capsys)
    assert code == 0, err
    base = dict(tree_flatten(load_model(str(tiny_llama)).model.parameters()))
    fused = dict(tree_flatten(load_model(str(tmp_path / "fused")).model.parameters()))
    assert set(base) == set(fused)
    for k in base:
        assert np.array_equal(np.array(base[k]), np.array(fused[k])), k


@pytest.fixture(scope="module")
def quant_adapter(tmp_path_factory, tiny_llama):
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("qad") / "adapter",
                        quantize={"bits": 4, "group_size": 32})


@pytest.mark.parametrize("bits,closer", [(8, 0.1), (4, 0.6)])
def test_quantized_base_is_requantized_and_keeps_the_adapter(tmp_path, tiny_llama, capsys, bits, closer):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", quantize={"bits": bits, "group_size": 32})
    code, _, err = run(["--adapter-path", str(adapter), "--save-path", str(tmp_path / "fused")], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert config["quantization"]["bits"] == bits and config["quantization"]["group_size"] == 32
    with_adapter = load_with_adapter(adapter)
    tokens = probe_tokens(with_adapter)
    want = logits(with_adapter, tokens)
    base = logits(load_model(str(tiny_llama), quantize=bits, group_size=32), tokens)
    got = logits(load_model(str(tmp_path / "fused")), tokens)
    # Re-quantizing W + delta rounds it to the grid again (coarse at 4 bits on these tiny
    # random layers), but the fused model sits much closer to base + adapter than the base does.
    assert np.abs(got - want).mean() < closer * np.abs(base - want).mean()


def test_quantized_base_with_dequantize_is_exact(tmp_path, quant_adapter, capsys):
    code, _, err = run(["--adapter-path", str(quant_adapter), "--save-path", str(tmp_path / "fused"),
                        "--dequantize"], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert "quantization" not in config
    with_adapter = load_with_adapter(quant_adapter)
    tokens = probe_tokens(with_adapter)
    np.testing.assert_allclose(logits(load_model(str(tmp_path / "fused")), tokens),
                               logits(with_adapter, tokens), atol=1e-4, rtol=1e-4)


def test_an_adapter_rounded_away_by_requantization_is_an_error(tmp_path, tiny_llama, capsys):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", scale=1e-3,
                           quantize={"bits": 4, "group_size": 32})
    code, out, err = run(["--adapter-path", str(adapter), "--save-path", str(tmp_path / "fused")], capsys)
    assert code == 2 and "--dequantize" in err and "rounded the adapter away" in err
    assert not (tmp_path / "fused" / "config.json").exists()
    code, _, err = run(["--adapter-path", str(adapter), "--save-path", str(tmp_path / "fused"), "--dequantize"],
                       capsys)
    assert code == 0, err


def test_dora_adapter_fuses(tmp_path, tiny_llama, capsys):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", dora=True, targets=["q_proj", "v_proj"])
    code, _, err = run(["--adapter-path", str(adapter), "--save-path", str(tmp_path / "fused")], capsys)
    assert code == 0, err
    with_adapter = load_with_adapter(adapter)
    tokens = probe_tokens(with_adapter)
    np.testing.assert_allclose(logits(load_model(str(tmp_path / "fused")), tokens),
                               logits(with_adapter, tokens), atol=1e-4, rtol=1e-4)


def test_gguf_export_reads_back(tmp_path, tiny_llama, capsys):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    gguf = tmp_path / "out" / "m.gguf"
    code, _, err = run(["--adapter-path", str(adapter), "--save-path", str(tmp_path / "fused"),
                        "--export-gguf", str(gguf), "--gguf-dtype", "f32"], capsys)
    assert code == 0, err
    assert gguf.is_file()
    fused = load_model(str(tmp_path / "fused"))
    tokens = probe_tokens(fused)
    from_gguf = load_model(str(gguf))
    np.testing.assert_allclose(logits(from_gguf, tokens), logits(fused, tokens), atol=1e-3, rtol=1e-3)
    # default GGUF path: inside the saved folder
    code, _, err = run(["--adapter-path", str(adapter), "--save-path", str(tmp_path / "fused2"),
                        "--export-gguf"], capsys)
    assert code == 0 and (tmp_path / "fused2" / "model-f16.gguf").is_file()


def test_generate_uses_the_fused_models_prompt_settings(tmp_path, tiny_llama, capsys):
    import sqlite3

    from mlx_text2sql import generate

    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    assert run(["--adapter-path", str(adapter), "--save-path", str(tmp_path / "fused")], capsys)[0] == 0
    db = tmp_path / "d.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (a INT)")
    con.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
    con.commit()
    con.close()
    generate.main(["--model", str(tmp_path / "fused"), "--db", str(db), "-q", "q", "--show-prompt",
                   "--max-tokens", "2"])
    err = capsys.readouterr().err
    assert '/* 2 example rows from "t"' in err  # the adapter's sample_rows, not the default 3


def test_errors(tmp_path, tiny_llama, capsys):
    code, _, err = run(["--adapter-path", str(tmp_path / "none"), "--save-path", str(tmp_path / "f")], capsys)
    assert code == 2 and "no such folder" in err
    (tmp_path / "file").write_text("x")
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    code, _, err = run(["--adapter-path", str(adapter), "--save-path", str(tmp_path / "file")], capsys)
    assert code == 2 and "is a file" in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    code, _, err = run(["--adapter-path", str(tmp_path / "broken"), "--save-path", str(tmp_path / "f")], capsys)
    assert code == 2 and "corrupt adapter config" in err and "Traceback" not in err


def test_adapter_of_another_model_names_the_mismatch(tmp_path, tiny_llama, capsys):
    from tinymodels import make_tiny_model

    small = make_tiny_model(tmp_path / "small", "llama", "chatml", hidden=32, intermediate=64)
    adapter = make_adapter(small, tmp_path / "adapter")
    code, out, err = run(["--adapter-path", str(adapter), "--model", str(tiny_llama),
                          "--save-path", str(tmp_path / "fused")], capsys)
    assert code == 2 and "does not fit" in err and "shape" in err
    assert not (tmp_path / "fused").exists()
