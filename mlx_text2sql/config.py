"""Training settings: YAML files, command-line overrides, one validation.

Every setting (key, default, type, help, check) is defined once, in
:mod:`mlx_text2sql.training.settings`; this module reads YAML files into it, merges the layers
and validates the result. Precedence: command line > YAML file (``-c config.yaml``) >
:data:`DEFAULTS`. YAML files may use our names (those of :data:`DEFAULTS`, with ``_`` or ``-``)
or mlx_lm's LoRA config names
(``learning_rate``, ``num_layers``, ``lora_parameters: {rank, scale, dropout, keys}``,
``fine_tune_type``, ``steps_per_eval``, ``grad_accumulation_steps``, ``mask_prompt``,
``lr_schedule: {name, arguments, warmup}``, ``optimizer_config``, ...), so an mlx_lm config
file works unchanged. :func:`validate` checks every setting and raises one
:class:`~mlx_text2sql.errors.ConfigError` listing every problem.

Pure Python: no MLX import.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .training.settings import DEFAULTS as SETTINGS_DEFAULTS
from .training.settings import OPTIMIZERS, SCHEDULES  # noqa: F401 - part of this module's API
from .training.settings import check as check_settings

# The defaults of every setting, from the one table in mlx_text2sql.training.settings.
DEFAULTS: dict[str, Any] = SETTINGS_DEFAULTS

# mlx_lm config names -> ours (values that need converting are handled in _from_mlx_lm).
ALIASES = {
    "learning_rate": "lr",
    "num_layers": "lora_layers",
    "steps_per_eval": "eval_every",
    "steps_per_report": "report_every",
    "grad_accumulation_steps": "grad_accum",
    "adapter_file": None,
    "train": None,             # mlx_lm's "do train" flag: this command always trains
    "test": None,
    "test_batches": None,
    "report_to": None,
    "project_name": None,
    "trust_remote_code": None,
    "clear_cache_threshold": None,
    "config": None,
    "resume_adapter_file": None,
    "wandb": None,
}


def _norm_key(key: str) -> str:
    return str(key).strip().replace("-", "_")


def from_mapping(raw: dict, source: str = "config") -> tuple[dict, list[str]]:
    """Normalise a YAML mapping to our keys. Returns (settings, problems)."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    if not isinstance(raw, dict):
        return out, [f"{source}: expected a mapping of settings, got {type(raw).__name__}"]
    for key, value in raw.items():
        k = _norm_key(key)
        if k == "lr_schedule" and isinstance(value, dict):
            _mlx_lm_schedule(value, out, problems, source)
        elif k in DEFAULTS:
            out[k] = value
        elif k == "lora_parameters":
            if not isinstance(value, dict):
                problems.append(f"{source}: lora_parameters must be a mapping")
                continue
            for pk, pv in value.items():
                pk = _norm_key(pk)
                if pk in ("rank", "alpha", "dropout"):
                    out[pk] = pv
                elif pk == "scale":
                    out["_scale"] = pv  # turned into alpha once the rank is known
                elif pk == "keys":
                    out["targets"] = pv
                else:
                    problems.append(f"{source}: unknown lora_parameters key {pk!r} "
                                    "(known: rank, alpha, scale, dropout, keys)")
        elif k == "fine_tune_type":
            if value == "dora":
                out["dora"] = True
            elif value == "lora":
                out["dora"] = False
            else:
                problems.append(f"{source}: fine_tune_type {value!r} is not supported "
                                "(this trainer does lora and dora)")
        elif k == "mask_prompt":
            out["train_on_prompt"] = not value if isinstance(value, bool) else value
        elif k == "optimizer_config":
            if isinstance(value, dict):
                for opt_cfg in value.values():
                    if isinstance(opt_cfg, dict) and "weight_decay" in opt_cfg:
                        out["weight_decay"] = opt_cfg["weight_decay"]
        elif k in ALIASES:
            if ALIASES[k] is not None:
                out[ALIASES[k]] = value
        else:
            problems.append(f"{source}: unknown setting {key!r}" + _suggest(k))
    if "_scale" in out:
        scale = out.pop("_scale")
        rank = out.get("rank", DEFAULTS["rank"])
        if "alpha" in out:
            pass  # an explicit alpha wins over scale
        elif isinstance(scale, (int, float)) and isinstance(rank, int):
            out["alpha"] = float(scale) * rank
        else:
            problems.append(f"{source}: lora_parameters.scale must be a number (got {scale!r})")
    if out.get("lora_layers") == -1:
        out["lora_layers"] = None
    return out, problems


def _mlx_lm_schedule(value: dict, out: dict, problems: list[str], source: str) -> None:
    """mlx_lm's ``lr_schedule: {name: cosine_decay, arguments: [lr, steps, end], warmup: N}``."""
    name = str(value.get("name", ""))
    args = value.get("arguments") or []
    mapping = {"cosine_decay": "cosine", "linear_schedule": "linear", "constant": "constant"}
    if name not in mapping and name not in SCHEDULES:
        problems.append(f"{source}: lr_schedule name {name!r} not supported "
                        f"(use {', '.join(SCHEDULES)} or mlx_lm's cosine_decay / linear_schedule)")
        return
    out["lr_schedule"] = mapping.get(name, name)
    if args:
        out.setdefault("lr", args[0])
        if name == "cosine_decay" and len(args) >= 3:
            out["min_lr"] = args[2]
        if name == "linear_schedule" and len(args) >= 2:
            out["min_lr"] = args[1]
    if value.get("warmup") is not None:
        out["warmup"] = value["warmup"]


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(DEFAULTS) + list(ALIASES), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_yaml(path: str | Path) -> tuple[dict, list[str]]:
    """Read a YAML config file; returns (settings in our keys, problems)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return {}, [f"config file {path} not found"]
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        return {}, [f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})"]
    if raw is None:
        return {}, []
    return from_mapping(raw, str(path))


def merge(*layers: dict) -> dict:
    """DEFAULTS overlaid by each layer in turn (later wins); None values in a layer do not count.

    ``iters`` and ``epochs`` are one setting (the run's length): the last layer that sets either
    decides, so ``--epochs 2`` on the command line replaces ``iters: 300`` from a YAML file.
    """
    cfg = dict(DEFAULTS)
    for layer in layers:
        present = {k: v for k, v in layer.items() if v is not None}
        if "iters" in present or "epochs" in present:
            cfg["iters"] = cfg["epochs"] = None
        cfg.update(present)
    return cfg


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(cfg: dict) -> dict:
    """Check every setting; return a normalised copy or raise one ConfigError listing all problems.

    Each setting's own check comes from the table (:func:`mlx_text2sql.training.settings.check`,
    which also rejects unknown keys); the checks between settings and on files are here.
    """
    c, p = check_settings(cfg)
    if c.get("quantize") and c.get("dequantize") is True:
        p.append("quantize and dequantize contradict each other: --quantize asks for a quantized base (QLoRA)")
    if isinstance(c.get("data"), str) and c["data"]:
        d = Path(c["data"])
        if not d.is_dir():
            p.append(f"data folder {d} not found (make one with `python -m mlx_text2sql.convert`)")
        elif not (d / "train.jsonl").is_file():
            p.append(f"data folder {d} has no train.jsonl")
    if c.get("iters") is not None and c.get("epochs") is not None:
        p.append("give either iters or epochs, not both")
    if c.get("iters") is None and c.get("epochs") is None:
        p.append("give iters or epochs")
    if _is_num(c.get("min_lr")) and _is_num(c.get("lr")) and 0 < c["lr"] < c["min_lr"]:
        p.append(f"min_lr ({c['min_lr']}) must not exceed lr ({c['lr']})")
    if c.get("optimizer") == "adam" and _is_num(c.get("weight_decay")) and c["weight_decay"] > 0:
        p.append("weight_decay needs optimizer adamw (adam has no decoupled weight decay)")
    if _is_int(c.get("iters")) and _is_int(c.get("warmup")) and c["warmup"] >= c["iters"] > 1:
        p.append(f"warmup ({c['warmup']}) must be shorter than the run ({c['iters']} steps)")
    if c.get("val_batches") == 0:
        p.append("val_batches must be -1 (all) or >= 1")
    if p:
        raise ConfigError(p)
    return c


# Settings that must match between a checkpoint and the run resuming it.
RESUME_LOCKED = ("model", "chat_template", "dtype", "quantize", "group_size", "dequantize", "rank",
                 "alpha", "dropout", "targets", "lora_layers", "dora", "batch_size", "grad_accum",
                 "seed", "max_seq_length", "train_on_prompt", "optimizer")
