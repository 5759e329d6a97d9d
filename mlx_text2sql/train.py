"""``train``: fine-tune LoRA / DoRA / QLoRA adapters for Text-to-SQL.

    python -m mlx_text2sql.train                      # SmolLM2-135M on data/, writes adapters/
    python -m mlx_text2sql.train -c configs/wikisql.yaml --iters 300
    python -m mlx_text2sql.train --resume             # continue from the last checkpoint

Settings: command line > YAML (``-c``) > the settings table in :mod:`mlx_text2sql.training.settings`.
Outputs in ``--adapter-path`` (default ``adapters/``): adapters.npz + adapter_config.json (the
final adapter, also rewritten every ``--save-every`` steps), best/ (lowest validation loss),
checkpoints/step-NNNNNN/ (adapter + optimizer + RNG + data position, for ``--resume``),
train_config.yaml (the effective settings: ``-c`` it to rerun), log.jsonl, loss.png, summary.txt.

Data parallel: ``mlx.launch -n 2 -m mlx_text2sql.train ...`` (or with --hosts): each process
trains on its share of every batch, gradients are summed across processes, rank 0 writes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, run_cli

EXAMPLES = """\
examples:
  python -m mlx_text2sql.train                                  # defaults: smollm2-135m on data/
  python -m mlx_text2sql.train --data data/spider --epochs 2 --lr 2e-4 --lora-layers 16
  python -m mlx_text2sql.train --model mlx-community/TinyLlama-1.1B-Chat-v1.0-4bit --keep-quantized
  python -m mlx_text2sql.train --model ./my-model --quantize 4        # QLoRA
  python -m mlx_text2sql.train -c adapters/train_config.yaml --resume  # continue a run
"""


def build_parser() -> argparse.ArgumentParser:
    from .training.settings import add_arguments

    p = argparse.ArgumentParser(
        prog="mlx-text2sql train",
        description="Fine-tune LoRA / DoRA / QLoRA adapters for Text-to-SQL. Settings: command line > "
                    "YAML (-c) > defaults (configs/default.yaml lists them all).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    # One option per setting of the table in training/settings.py, every default None: unset
    # options fall through to the YAML file, then to the table's defaults.
    p.add_argument("-c", "--config", help="YAML file with settings (ours or mlx_lm's lora config keys)")
    g = add_arguments(p)["validation, saving, reporting"]
    # Options of this run that are not settings (not saved in train_config.yaml).
    g.add_argument("--no-compile", dest="compile", action="store_false", default=True,
                   help="run the step uncompiled (debugging)")
    g.add_argument("--no-fast-ops", dest="fast_ops", action="store_false", default=True,
                   help="use MLX's exp/softmax/SiLU instead of the faster polynomial versions")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def settings(argv: list[str] | None) -> tuple[dict, argparse.Namespace, object | None]:
    """Merge defaults, YAML, a resumed run's settings and the command line; validate.

    Returns (config, parsed args, checkpoint path or None)."""
    from . import config as C
    from .tuner import exec_acc
    from .tuner.checkpoints import latest_checkpoint

    exec_acc.register()  # the metrics best_metric may name are known before validation
    ns = build_parser().parse_args(argv)
    cli = {k: v for k, v in vars(ns).items() if k in C.DEFAULTS and v is not None}
    problems: list[str] = []
    yaml_layer: dict = {}
    if ns.config:
        yaml_layer, problems = C.load_yaml(ns.config)
    checkpoint = None
    ck_layer: dict = {}
    if ns.resume is not None or yaml_layer.get("resume"):
        resume = ns.resume or yaml_layer.get("resume")
        where = (cli.get("adapter_path") or yaml_layer.get("adapter_path") or C.DEFAULTS["adapter_path"]) \
            if resume == "latest" else resume
        checkpoint = latest_checkpoint(where)
        if checkpoint is None:
            problems.append(f"resume: no checkpoint found in {where} (checkpoints are written every --save-every steps)")
        else:
            import json

            try:
                saved = json.loads((checkpoint / "adapter_config.json").read_text()).get("train") or {}
            except (OSError, ValueError) as e:
                saved = {}
                problems.append(f"resume: cannot read {checkpoint / 'adapter_config.json'}: {e}")
            ck_layer = {k: v for k, v in saved.items() if k in C.DEFAULTS and k != "resume"}
    try:
        cfg = C.validate(C.merge(ck_layer, yaml_layer, cli))
    except ConfigError as e:
        problems += e.problems
    if problems:  # every problem of the file, the checkpoint and the values, in one error
        raise ConfigError(problems)
    if checkpoint is not None:
        changed = [f"{k}: checkpoint has {ck_layer.get(k)!r}, this run {cfg.get(k)!r}"
                   for k in C.RESUME_LOCKED if k in ck_layer and ck_layer.get(k) != cfg.get(k)]
        if changed:
            raise ConfigError([f"cannot resume {checkpoint} with different settings ({c})" for c in changed])
    return cfg, ns, checkpoint


@dataclass
class TrainContext:
    """What a metric factory (``tuner.validation.register_metric``) gets to build its metric."""

    loaded: object          # models.load.LoadedModel
    config: dict
    data_dir: Path
    encoder: object         # tuner.data.Encoder


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_for_training(cfg: dict):
    """Load the base model as the settings say; returns (LoadedModel, dequantized: bool)."""
    import mlx.core as mx

    from .models import load as load_mod

    lm = load_mod.load_model(cfg["model"], dtype=cfg["dtype"], quantize=cfg["quantize"],
                             group_size=cfg["group_size"], chat_template=cfg["chat_template"])
    dequantized = False
    if lm.quantization and not cfg["quantize"]:
        want_dense = cfg["dequantize"]
        if want_dense is None:
            auto = getattr(load_mod, "default_train_dequantize", None)
            want_dense = auto() if auto else mx.default_device().type == mx.DeviceType.cpu
        if want_dense:
            from mlx.utils import tree_map
            from mlx_lm.utils import dequantize_model

            dequantize_model(lm.model)
            target = getattr(mx, cfg["dtype"])
            lm.model.update(tree_map(lambda a: a.astype(target) if mx.issubdtype(a.dtype, mx.floating) else a,
                                     lm.model.parameters()))
            mx.eval(lm.model.parameters())
            lm.config.pop("quantization", None)
            lm.config.pop("quantization_config", None)
            lm.quantization = None
            dequantized = True
        else:
            log(f"[train] QLoRA: training adapters over the {lm.quantization.get('bits')}-bit base")
    return lm, dequantized


def _prompt_settings(cfg: dict, lm, data_dir: Path) -> dict:
    import json

    from .prompts import SYSTEM_PROMPT

    out = {"system_prompt": SYSTEM_PROMPT, "template": lm.template, "eos": lm.eos, "stop": list(lm.stop),
           "train_on_prompt": cfg["train_on_prompt"], "max_seq_length": cfg["max_seq_length"]}
    report = data_dir / "convert_report.json"
    if report.is_file():
        try:
            conv = json.loads(report.read_text()).get("settings") or {}
            out["sample_rows"] = conv.get("sample_rows")
            out["value_hints"] = bool(conv.get("value_hints"))
            if conv.get("value_hints"):
                out["max_hints"] = conv.get("max_hints")
            out["convert"] = conv
        except (OSError, ValueError):
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    from .blas import ensure_fast_blas

    ensure_fast_blas()
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg, ns, checkpoint = settings(argv)

    import mlx.core as mx

    world = mx.distributed.init()
    rank = world.rank()
    say = log if rank == 0 else (lambda _m: None)
    started = time.perf_counter()

    mx.random.seed(cfg["seed"])
    lm, dequantized = _load_model(cfg, say)
    data = _load_data(cfg, lm, say)
    loss, metrics = _loss_and_metrics(cfg, ns, lm, data, world, say)
    optimizer, start = _optimizer(cfg, lm, data.total, checkpoint, say)
    adapter_config = _adapter_config(cfg, lm, dequantized, data)
    if rank == 0:
        _write_run_config(Path(cfg["adapter_path"]), adapter_config["train"])
    result = _run(cfg, ns, lm, optimizer, data, loss, metrics, adapter_config, start, rank)
    if rank == 0:
        _report(cfg, result, data, time.perf_counter() - started)
    return 0


@dataclass
class TrainData:
    """The run's data: the encoded splits and the length of the run they give."""

    data_dir: Path
    encoder: object         # tuner.data.Encoder
    train_set: object       # tuner.data.TokenizedSet
    val_set: object | None
    total: int              # optimizer steps of the run (from --iters or --epochs)


def _load_model(cfg: dict, say):
    """The base model with LoRA/DoRA layers on it; returns (LoadedModel, dequantized)."""
    from mlx.utils import tree_flatten

    from .tuner.lora import apply_lora

    lm, dequantized = load_for_training(cfg)
    n_trainable = apply_lora(lm.model, rank=cfg["rank"], alpha=cfg["alpha"], dropout=cfg["dropout"],
                             targets=cfg["targets"], num_layers=cfg["lora_layers"], dora=cfg["dora"])
    n_total = sum(v.size for k, v in tree_flatten(lm.model.parameters())
                  if not k.endswith(("lora_a", "lora_b", ".m")))
    say(f"[train] {cfg['model']}: {'DoRA' if cfg['dora'] else 'LoRA'} rank {cfg['rank']}, alpha {cfg['alpha']:g} "
        f"-> trainable parameters: {n_trainable:,} ({100 * n_trainable / max(n_total, 1):.3f}% of {n_total:,})")
    return lm, dequantized


def _load_data(cfg: dict, lm, say) -> TrainData:
    """Encode train.jsonl (and valid.jsonl where there is one); work out the run's steps."""
    from .errors import TrainingError
    from .tuner.data import Encoder, epoch_batches, load_split

    data_dir = Path(cfg["data"])
    encoder = Encoder(lm.tokenizer, lm.eos, cfg["max_seq_length"], cfg["train_on_prompt"])
    train_set = load_split(data_dir / "train.jsonl", encoder)
    say("[train] " + train_set.stats.describe(str(data_dir / "train.jsonl")))
    val_path = data_dir / "valid.jsonl"
    val_set = load_split(val_path, encoder) if val_path.is_file() else None
    if val_set is not None:
        say("[train] " + val_set.stats.describe(str(val_path)))
    else:
        say(f"[train] no {val_path}: training without validation (adapters/best is not written)")
    if len(train_set) < cfg["batch_size"]:
        raise TrainingError(f"{data_dir / 'train.jsonl'} has {len(train_set)} usable examples, fewer than "
                            f"--batch-size {cfg['batch_size']}")
    batches_per_epoch = len(epoch_batches(train_set.lengths, cfg["batch_size"], cfg["seed"], 0))
    steps_per_epoch = max(1, batches_per_epoch // cfg["grad_accum"])
    total = cfg["iters"] or max(1, math.ceil(cfg["epochs"] * steps_per_epoch))
    say(f"[train] {total} steps of {cfg['batch_size']} x {cfg['grad_accum']} examples "
        f"({total / steps_per_epoch:.2f} epochs of {steps_per_epoch} steps)")
    return TrainData(data_dir, encoder, train_set, val_set, total)


def _loss_and_metrics(cfg: dict, ns, lm, data: TrainData, world, say):
    """The training loss and the metrics evaluated during the run (val_loss, best_metric)."""
    from .tuner.loss import make_loss
    from .tuner.validation import METRIC_FACTORIES, ValLoss

    loss = make_loss(lm.model, fast=ns.fast_ops)
    if not loss.answer_only_head:
        say("[train] this architecture's output head does not split from its body: computing full logits")
    metrics = []
    if data.val_set is not None and len(data.val_set):
        metrics.append(ValLoss(loss, data.val_set, cfg["batch_size"], cfg["val_batches"], cfg["train_on_prompt"],
                               world=world, streams=cfg["cpu_streams"]))
    ctx = TrainContext(loaded=lm, config=cfg, data_dir=data.data_dir, encoder=data.encoder)
    if cfg["best_metric"] != "val_loss":
        if cfg["best_metric"] not in METRIC_FACTORIES:
            raise ConfigError(f"best_metric {cfg['best_metric']!r} is not available; known: "
                              f"{', '.join(['val_loss', *METRIC_FACTORIES])}")
        metrics.append(METRIC_FACTORIES[cfg["best_metric"]](ctx))
    return loss, metrics


def _optimizer(cfg: dict, lm, total: int, checkpoint, say):
    """The optimizer with its schedule; returns (optimizer, LoopState of the checkpoint or None)."""
    from .tuner.checkpoints import load_checkpoint
    from .tuner.schedule import make_optimizer

    warmup = cfg["warmup"] if cfg["warmup"] is not None else round(0.05 * total)
    if warmup >= total > 1:
        raise ConfigError(f"warmup ({warmup}) must be shorter than the run ({total} steps)")
    optimizer = make_optimizer(cfg["optimizer"], cfg["lr"], schedule=cfg["lr_schedule"], warmup=warmup,
                               total=total, min_lr=cfg["min_lr"], weight_decay=cfg["weight_decay"])
    start = None
    if checkpoint is not None:
        start = load_checkpoint(lm.model, optimizer, checkpoint)
        say(f"[train] resumed from {checkpoint} at step {start.step} (epoch {start.epoch}, batch {start.position})")
        if start.step >= total:
            say(f"[train] the checkpoint is already at step {start.step} of {total}: raise --iters to train more")
    return optimizer, start


def _adapter_config(cfg: dict, lm, dequantized: bool, data: TrainData) -> dict:
    """What every adapter_config.json of the run holds besides the LoRA settings: enough to
    rebuild the model and its prompts, and the run's settings (``train``)."""
    return {
        "base_model": cfg["model"],
        "chat_template": lm.template if cfg["chat_template"] is None else cfg["chat_template"],
        "dtype": cfg["dtype"],
        "dequantized": dequantized,
        "quantization": lm.quantization,
        "quantize": {"bits": cfg["quantize"], "group_size": cfg["group_size"]} if cfg["quantize"] else None,
        "prompt": _prompt_settings(cfg, lm, data.data_dir),
        "total_steps": data.total,
        "train": {k: v for k, v in cfg.items() if k != "resume"},
    }


def _write_run_config(adapter_path: Path, run_config: dict) -> None:
    """train_config.yaml: the effective settings, to rerun with ``-c``."""
    import yaml

    from . import __version__
    from .jsonl import atomic_open

    adapter_path.mkdir(parents=True, exist_ok=True)
    with atomic_open(adapter_path / "train_config.yaml") as f:
        f.write(f"# effective settings of this run (mlx-text2sql {__version__}); "
                f"rerun with: python -m mlx_text2sql.train -c {adapter_path / 'train_config.yaml'}\n")
        yaml.safe_dump(run_config, f, sort_keys=False)


def _run(cfg: dict, ns, lm, optimizer, data: TrainData, loss, metrics, adapter_config: dict, start, rank: int):
    """The training loop, with the log and the progress bar on rank 0; returns its TrainResult."""
    from .training.settings import trainer_kwargs
    from .tuner.callbacks import JsonlLog, ProgressBar
    from .tuner.trainer import TrainArgs, train

    adapter_path = Path(cfg["adapter_path"])
    args = TrainArgs(**{**trainer_kwargs(cfg), "iters": data.total, "adapter_path": str(adapter_path),
                        "compile": ns.compile, "fast_ops": ns.fast_ops})
    callbacks = []
    if rank == 0:
        callbacks.append(JsonlLog(adapter_path / "log.jsonl", keep_until=start.step if start else None))
        callbacks.append(ProgressBar(data.total, initial=start.step if start else 0,
                                     disable=True if ns.quiet else None))
    return train(lm.model, optimizer, data.train_set, args, loss=loss, metrics=metrics, callbacks=callbacks,
                 adapter_config=adapter_config, start=start)


def _report(cfg: dict, result, data: TrainData, wall: float) -> None:
    """loss.png (unless --no-plot), summary.txt, and the summary on stdout."""
    from .jsonl import atomic_open
    from .tuner.callbacks import read_log
    from .tuner.plot import plot_losses

    adapter_path = Path(cfg["adapter_path"])
    records = read_log(adapter_path / "log.jsonl")
    if cfg["plot"]:
        plot_losses(records, adapter_path / "loss.png",
                    title=f"{Path(str(cfg['model'])).name}: LoRA r{cfg['rank']} on {data.data_dir}")
    summary = _summary(cfg, result, records, data.train_set, adapter_path, data.total, wall)
    with atomic_open(adapter_path / "summary.txt") as f:
        f.write(summary + "\n")
    print(summary)


def _summary(cfg, result, records, train_set, adapter_path: Path, total: int, wall: float) -> str:
    st = result.state
    train_losses = [r["loss"] for r in records if r.get("type") == "train"]
    vals = [(r["step"], r["val_loss"]) for r in records if r.get("type") == "eval" and "val_loss" in r]
    tps = st.tokens / st.seconds if st.seconds else 0.0
    text = (f"Trained {'DoRA' if cfg['dora'] else 'LoRA'} rank {cfg['rank']} adapters for {cfg['model']} on "
            f"{len(train_set)} examples from {cfg['data']}: {st.step} of {total} steps "
            f"({st.tokens:,} tokens at {tps:.0f} tokens/s; {wall / 60:.1f} min in all).")
    if train_losses:
        text += f" Training loss went from {train_losses[0]:.3f} to {train_losses[-1]:.3f}."
    if vals:
        text += f" Validation loss {vals[0][1]:.3f} at step {vals[0][0]} -> {vals[-1][1]:.3f} at step {vals[-1][0]}"
        if st.best_step is not None:
            text += (f"; the best {cfg['best_metric']} ({st.best_value:.4f}, step {st.best_step}) "
                     f"is in {adapter_path / 'best'}")
        text += "."
    if result.stopped_early:
        text += f" Stopped early: {cfg['early_stop']} evaluations without improvement."
    if result.stopped_for_time:
        text += (f" Stopped at step {st.step} of {total} by the {cfg['time_limit']:g}-minute time limit "
                 f"({st.wall_seconds / 60:.1f} min of training loop; the learning-rate schedule was planned "
                 f"for {total} steps).")
    text += (f" Final adapter: {adapter_path} (for generate, evaluate and fuse); "
             f"loss curve: {adapter_path / 'loss.png'}.")
    return text


if __name__ == "__main__":
    sys.exit(main())
