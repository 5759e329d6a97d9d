"""PyTorch + PEFT LoRA training throughput: the CPU training peer our MLX trainer is measured against.

    python benchmarks/peers/peft_train.py --model-dir DIR --data data/train.jsonl --json
    python benchmarks/peers/peft_train.py --model-dir DIR --export-model      # write DIR first
    python benchmarks/peers/peft_train.py --model-dir DIR --check-logits      # torch vs MLX logits

An HF-Trainer-style loop (float32, AdamW without weight decay, LoRA on every attention and MLP
projection of every block, dropout 0, loss on the answer only: labels -100 on prompt tokens and
padding), on exactly the token sequences our trainer sees: the records are tokenized by our own
``tuner.data.Encoder`` (the tokenizer's chat template; prompt = template with the generation
prompt, answer = the rest up to and including the turn's EOS; a too-long schema trimmed as ours
trims it, an example that still does not fit skipped) and, by default, batched by our
``epoch_batches`` with the same seed, so both trainers process the same batches. Each batch is
padded to its longest sequence (right padding, attention mask 0).

Timing covers the ``--steps`` optimizer steps after ``--warmup-steps`` untimed ones (the first
steps pay for lazy allocation and kernel selection). Effective tokens/s counts the real tokens
(prompt + answer, no padding) of the timed batches per second of wall time; padded tokens/s
counts batch x padded length. Peak memory is the process's peak resident set (ru_maxrss).

``--model-dir`` is a dense float32 Hugging Face llama folder; ``--export-model`` writes it from
our default model (SmolLM2-135M-Instruct dequantized) with our own loader and saver, in a child
process so MLX never enters the measured process. Needs torch and peft:
``bash benchmarks/setup_peers.sh``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Every linear layer of a llama block: attention and MLP (as our trainer's default targets).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ORDERS = ("bucketed", "shuffle", "file")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="dense float32 Hugging Face llama folder")
    p.add_argument("--data", default=str(ROOT / "data" / "train.jsonl"),
                   help="converted JSONL with 'messages' (default: the bundled data/train.jsonl)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before them (default 2)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", choices=ORDERS, default="bucketed",
                   help="batches: 'bucketed' = our trainer's (length-bucketed, seeded; default), "
                        "'shuffle' = seeded random order as HF Trainer's sampler, 'file' = file order")
    p.add_argument("--json", action="store_true", help="print one JSON line with the results")
    p.add_argument("--export-model", action="store_true",
                   help="write --model-dir from --model with our loader, then exit")
    p.add_argument("--model", default="smollm2-135m", help="what --export-model exports (default smollm2-135m)")
    p.add_argument("--prepare", action="store_true",
                   help="export --model into --model-dir first when it has no config.json")
    p.add_argument("--check-logits", action="store_true",
                   help="compare torch's logits with MLX's on the first record's prompt, then exit "
                        "(exit 1 when the largest difference passes --tolerance)")
    p.add_argument("--tolerance", type=float, default=1e-3)
    args = p.parse_args(argv)
    for name in ("batch_size", "max_seq_length", "steps", "rank", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.warmup_steps < 0:
        p.error(f"--warmup-steps must be 0 or more (got {args.warmup_steps})")
    if not (args.lr > 0 and args.alpha > 0):
        p.error("--lr and --alpha must be positive")
    return args


# --------------------------------------------------------------------------- the model folder

def export_model(spec: str, model_dir: str | Path) -> Path:
    """Write ``spec`` dequantized to float32 as a Hugging Face folder, with our own code (MLX)."""
    from mlx_text2sql.models import load_model
    from mlx_text2sql.models.save import save_model_folder

    lm = load_model(spec, dequantize=True, dtype="float32")
    return save_model_folder(lm.model, lm.tokenizer, lm.config, model_dir)


def export_in_child(spec: str, model_dir: str | Path) -> None:
    """Run :func:`export_model` in a child process, so MLX's memory never counts as the peer's."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--model-dir", str(model_dir),
           "--model", spec, "--export-model"]
    env = dict(os.environ)
    env.pop("MLX_TEXT2SQL_NO_BLAS", None)
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"error: exporting {spec} into {model_dir} failed (exit {done.returncode})")


def need_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise SystemExit(f"error: {path} is not a model folder (no config.json); create it with\n"
                         f"  python {Path(__file__).relative_to(ROOT)} --model-dir {path} --export-model\n"
                         f"or add --prepare")
    return path


# --------------------------------------------------------------------------- data

def _data_module():
    """Our ``tuner.data`` (NumPy only: importing it loads no MLX, so the peak memory measured
    here is torch's own)."""
    from mlx_text2sql.tuner import data

    return data


def turn_eos(tokenizer) -> str:
    """The string that ends an assistant turn, read off the chat template (as our loader does)."""
    mark = "XQZSENTINELQZX"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}], tokenize=False)
    suffix = text.split(mark, 1)[1].strip() if mark in text else ""
    return suffix or (tokenizer.eos_token or "")


def load_samples(tokenizer, data_path: str | Path, max_seq_length: int):
    """Tokenized examples exactly as our trainer makes them: ``TokenizedSet`` (samples + stats)."""
    data = _data_module()
    # Encoder unwraps mlx_lm's TokenizerWrapper through ``._tokenizer``; a transformers fast
    # tokenizer has a ``._tokenizer`` too (the raw ``tokenizers`` object), so wrap it the same way.
    wrapped = types.SimpleNamespace(_tokenizer=tokenizer)
    encoder = data.Encoder(wrapped, turn_eos(tokenizer), max_seq_length=max_seq_length)
    return data.load_split(data_path, encoder)


def batch_order(lengths, batch_size: int, seed: int, epoch: int, order: str) -> list[list[int]]:
    """Index lists of one epoch's batches; incomplete batches are dropped (as ours drops them)."""
    import numpy as np

    n = len(lengths)
    if order == "bucketed":
        return [b.tolist() for b in _data_module().epoch_batches(np.asarray(lengths), batch_size, seed, epoch)]
    idx = np.arange(n) if order == "file" else np.random.default_rng([seed, epoch]).permutation(n)
    return [idx[i: i + batch_size].tolist() for i in range(0, n - batch_size + 1, batch_size)]


def collate(samples, pad_id: int):
    """(input_ids, attention_mask, labels) as (B, L) int64 tensors, L = the longest sample.

    labels: the token itself where it is an answer token (from ``prompt_len`` on), -100 on prompt
    tokens and padding; the model shifts them by one internally, so position t-1 is trained to
    predict answer token t, exactly the positions our trainer puts loss on."""
    import torch

    L = max(len(s.tokens) for s in samples)
    ids = torch.full((len(samples), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), L), dtype=torch.long)
    labels = torch.full((len(samples), L), -100, dtype=torch.long)
    for b, s in enumerate(samples):
        t = torch.as_tensor(s.tokens.astype("int64"))
        ids[b, : len(t)] = t
        mask[b, : len(t)] = 1
        labels[b, s.prompt_len: len(t)] = t[s.prompt_len:]
    return ids, mask, labels


# --------------------------------------------------------------------------- training

def _peak_rss() -> int:
    """Peak resident set of this process in bytes (ru_maxrss is in KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def build_model(model_dir: Path, rank: int, alpha: float):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    return model


def train(args) -> dict:
    """Run the loop; returns the result dict printed by ``--json``."""
    try:
        import peft
        import torch
        import transformers
    except ImportError as e:
        raise SystemExit(f"error: the PyTorch peer needs torch and peft ({e}); install them with "
                         f"bash benchmarks/setup_peers.sh") from None
    from tqdm import tqdm
    from transformers import AutoTokenizer

    # peft calls a transformers 5 API that transformers now marks deprecated; not ours to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    loadavg_start = list(os.getloadavg())
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model_dir = need_model_dir(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    data = load_samples(tokenizer, args.data, args.max_seq_length)
    if len(data) < args.batch_size:
        raise SystemExit(f"error: {args.data} gives {len(data)} usable examples at --max-seq-length "
                         f"{args.max_seq_length}, fewer than one batch of {args.batch_size}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0

    model = build_model(model_dir, args.rank, args.alpha)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    rss_loaded = _peak_rss()

    lengths = data.lengths
    epoch, position, order = 0, 0, batch_order(lengths, args.batch_size, args.seed, 0, args.order)
    losses, step_seconds = [], []
    tokens = padded = examples = 0
    total = args.warmup_steps + args.steps
    timed_start = cpu_start = None
    bar = tqdm(total=total, desc="peft steps", unit="step", disable=args.json, file=sys.stderr)
    for step in range(total):
        if position == len(order):  # next epoch, reshuffled as our trainer does
            epoch, position = epoch + 1, 0
            order = batch_order(lengths, args.batch_size, args.seed, epoch, args.order)
        if step == args.warmup_steps:
            timed_start, cpu_start = time.perf_counter(), time.process_time()
        t0 = time.perf_counter()
        samples = [data.samples[i] for i in order[position]]
        position += 1
        ids, mask, labels = collate(samples, pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.item())
        if not math.isfinite(value):
            raise SystemExit(f"error: loss is {value} at step {step + 1}")
        losses.append(value)
        if step >= args.warmup_steps:
            step_seconds.append(time.perf_counter() - t0)
            tokens += int(mask.sum())
            padded += ids.numel()
            examples += len(samples)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}")
    seconds = time.perf_counter() - timed_start
    # CPU seconds of this process (all its threads): steadier than wall time on a shared machine.
    cpu_seconds = time.process_time() - cpu_start
    bar.close()

    return {
        "peer": "pytorch+peft",
        "effective_tokens_per_s": tokens / seconds,
        "padded_tokens_per_s": padded / seconds,
        "examples": examples,
        "tokens": tokens,
        "padded_tokens": padded,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "effective_tokens_per_cpu_s": tokens / cpu_seconds,
        "step_seconds": step_seconds,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "losses": losses,
        "peak_rss_bytes": _peak_rss(),
        "peak_rss_after_load_bytes": rss_loaded,
        "trainable_params": sum(p.numel() for p in trainable),
        "usable_examples": len(data),
        "trimmed": data.stats.trimmed,
        "skipped_too_long": len(data.stats.too_long),
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "rank": args.rank,
        "alpha": args.alpha,
        "lr": args.lr,
        "order": args.order,
        "threads": args.threads,
        "data": str(args.data),
        "model_dir": str(model_dir),
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        # OpenMP's spin-waiting collapses multi-threaded speed on an oversubscribed machine
        # (see benchmarks/README.md); record whether it was switched to passive waiting.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_start": loadavg_start,
        "loadavg": list(os.getloadavg()),  # 1, 5, 15 minute load averages at the end
    }


# --------------------------------------------------------------------------- logit parity

def check_logits(args) -> int:
    """Largest |torch - MLX| logit difference on the first record's prompt; 0 when within tolerance."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    import mlx.core as mx

    from mlx_text2sql.jsonl import read_jsonl
    from mlx_text2sql.models import load_model
    from mlx_text2sql.prompts import record_messages

    model_dir = need_model_dir(args.model_dir)
    records = read_jsonl(args.data)
    if not records:
        raise SystemExit(f"error: no records in {args.data}")
    lm = load_model(str(model_dir))
    ids = lm.tokenizer.encode(lm.apply_chat_template(record_messages(records[0]), add_generation_prompt=True))
    ours = np.array(lm.model(mx.array([ids])).astype(mx.float32))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits.numpy()
    diff = float(np.abs(theirs - ours).max())
    agree = float((theirs.argmax(-1) == ours.argmax(-1)).mean())
    result = {"max_abs_diff": diff, "argmax_agreement": agree, "tokens": len(ids),
              "tolerance": args.tolerance, "ok": diff <= args.tolerance}
    print(json.dumps(result) if args.json else
          f"{len(ids)} prompt tokens: max |torch - mlx| logit difference {diff:.3g} "
          f"(tolerance {args.tolerance:g}), argmax agreement {agree:.1%}")
    return 0 if result["ok"] else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (args.export_model or args.check_logits):
        # Importing mlx_text2sql loads OpenBLAS for MLX; torch brings its own BLAS and this run
        # uses no MLX, so keep OpenBLAS (and its threads) out of the measured process.
        os.environ.setdefault("MLX_TEXT2SQL_NO_BLAS", "1")
    if args.export_model:
        path = export_model(args.model, args.model_dir)
        print(f"wrote {args.model} as a float32 Hugging Face folder: {path}", file=sys.stderr)
        return 0
    if args.prepare and not (Path(args.model_dir) / "config.json").is_file():
        export_in_child(args.model, args.model_dir)
    if not Path(args.data).is_file():
        raise SystemExit(f"error: --data {args.data}: no such file")
    if args.check_logits:
        return check_logits(args)
    result = train(args)
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(f"PyTorch {result['torch']} + PEFT {result['peft']}, {args.threads} threads: "
              f"{result['effective_tokens_per_s']:.1f} effective tok/s "
              f"({result['padded_tokens_per_s']:.1f} padded), {result['examples']} examples in "
              f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB, "
              f"loss {result['losses'][0]:.3f} -> {result['losses'][-1]:.3f}, "
              f"load average {result['loadavg'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
