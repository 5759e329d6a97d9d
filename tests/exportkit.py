"""Helpers for the export tests: adapters with random (non-zero) weights saved as train saves
them, a tiny GGUF base like the built-in model, logits, and the peers' Python (torch + PEFT +
llama-cpp-python, from benchmarks/setup_peers.sh) for checks by the consuming tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

PEERS_PYTHON_ENV = "MLX_TEXT2SQL_PEERS_PYTHON"
DEFAULT_PEERS_PYTHON = "/tmp/peers-venv/bin/python"


def make_adapter(base, out_dir, *, scale: float = 0.3, seed: int = 0, targets=None, dora: bool = False,
                 num_layers=None, quantize: dict | None = None, dequantize: bool = False, rank: int = 4):
    """An adapter on ``base`` (a folder or .gguf) with random weights, saved as train saves one."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_text2sql.models import load_model
    from mlx_text2sql.tuner.lora import apply_lora, save_adapter

    kw = {"quantize": quantize["bits"], "group_size": quantize["group_size"]} if quantize else {}
    lm = load_model(str(base), dequantize=dequantize, **kw)
    apply_lora(lm.model, rank=rank, alpha=2.0 * rank, targets=targets, dora=dora, num_layers=num_layers)
    mx.random.seed(seed)
    lm.model.load_weights([(k, mx.random.normal(v.shape) * scale)
                           for k, v in tree_flatten(lm.model.trainable_parameters())
                           if k.endswith(("lora_a", "lora_b"))], strict=False)
    from mlx_text2sql.prompts import SYSTEM_PROMPT

    save_adapter(lm.model, out_dir, {
        "base_model": str(base), "quantize": quantize, "dequantized": dequantize, "dtype": None,
        "chat_template": lm.template,
        "prompt": {"system_prompt": SYSTEM_PROMPT, "template": lm.template, "eos": lm.eos, "stop": list(lm.stop)}})
    return Path(out_dir)


def tiny_gguf(folder, out, qtype: str | None = "Q4_1", embed_qtype: str | None = "Q8_0") -> Path:
    """``folder``'s tiny model as a GGUF quantized as the built-in SmolLM2 file is."""
    from ggufwriter import write_gguf

    write_gguf(folder, out, qtype=qtype, embed_qtype=embed_qtype)
    return Path(out)


def probe_messages():
    from mlx_text2sql.prompts import build_messages

    return build_messages("how many singers are older than 30?", 'CREATE TABLE "singer" ("name" TEXT, "age" INT);')


def probe_ids(lm) -> list[int]:
    from mlx_text2sql.engine import SQLGenerator

    return SQLGenerator(lm).prompt_tokens(probe_messages())


def logits(model, ids) -> np.ndarray:
    import mlx.core as mx

    out = model(mx.array([list(ids)]))
    mx.eval(out)
    return np.array(out.astype(mx.float32))[0]


def greedy(model, ids, n: int, eos: set[int] = frozenset()) -> list[int]:
    """Greedy tokens by full forward passes (no cache): the plainest reference decoder."""
    out, seq = [], list(ids)
    for _ in range(n):
        t = int(np.argmax(logits(model, seq)[-1]))
        out.append(t)
        seq.append(t)
        if t in eos:
            break
    return out


def peers_python() -> tuple[str | None, str]:
    """(python with torch + peft + llama_cpp, reason when there is none)."""
    exe = os.environ.get(PEERS_PYTHON_ENV) or DEFAULT_PEERS_PYTHON
    if not Path(exe).is_file():
        return None, (f"no peers Python at {exe} (build it with benchmarks/setup_peers.sh into "
                      f"/tmp/peers-venv, or set {PEERS_PYTHON_ENV})")
    return exe, ""


def peer_has(exe: str, *modules: str) -> str:
    """'' when ``exe`` imports every module, else the reason it does not."""
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    r = subprocess.run([exe, "-c", code, *modules], capture_output=True, text=True, timeout=300)
    return "" if r.returncode == 0 else f"{exe} cannot import {', '.join(modules)}: {r.stderr.strip()[-300:]}"


def run_peer(exe: str, script: str, payload: dict, timeout: int = 900) -> dict:
    """Run ``script`` under the peers' Python with ``payload`` as JSON on stdin; its last stdout
    line is JSON."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_PRELOAD")}
    env.setdefault("OMP_NUM_THREADS", "2")
    r = subprocess.run([exe, "-c", script], input=json.dumps(payload), capture_output=True, text=True,
                       timeout=timeout, env=env)
    if r.returncode != 0:
        raise AssertionError(f"peer script failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


sys.path.insert(0, str(Path(__file__).parent))
