"""Training settings: one defaults table, YAML files, command-line overrides, one validation.

Precedence: command line > YAML file (``-c config.yaml``) > :data:`DEFAULTS`. YAML files may use
our names (those of :data:`DEFAULTS`, with ``_`` or ``-``) or mlx_lm's LoRA config names
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

# One table of every training setting and its default. `None` means "not set / automatic".
DEFAULTS: dict[str, Any] = {
    # model
    "model": "smollm2-135m",       # model spec: smollm2-135m, a .gguf file, a model folder, a Hub id
    "chat_template": None,         # registry template name overriding the tokenizer's
    "dtype": "float32",            # training dtype of the dense weights
    "quantize": None,              # 4 or 8: quantize the base (QLoRA)
    "group_size": 64,              # quantization group size for --quantize
    "dequantize": None,            # None: automatic (dense float32 on CPU), True/False to force
    # data
    "data": "data",                # folder with train.jsonl and valid.jsonl
    "max_seq_length": 1024,        # longer examples: schema trimmed, else skipped (never the SQL cut)
    "train_on_prompt": False,      # loss on the prompt tokens too (default: the answer only)
    # LoRA
    "rank": 8,
    "alpha": 16.0,                 # scale = alpha / rank
    "dropout": 0.0,
    "targets": None,               # module names; None: every linear layer of the blocks
    "lora_layers": None,           # adapt only the last N blocks; None: all
    "dora": False,
    # schedule
    "iters": 60,                   # optimizer steps (each = grad_accum batches)
    "epochs": None,                # alternative to iters: passes over the training set
    "batch_size": 4,
    "grad_accum": 1,
    "grad_checkpoint": False,
    "lr": 5e-4,
    "lr_schedule": "cosine",       # constant | cosine | linear
    "warmup": None,                # linear warm-up steps; None: 5% of the run
    "min_lr": 0.0,                 # where cosine / linear decay ends
    "optimizer": "adamw",          # adam | adamw
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,          # 0 / None: no clipping
    "seed": 0,
    "cpu_streams": None,           # split each batch over N CPU threads; None: one per core (CPU only)
    "share_prefix": True,          # run a prompt prefix (schema) shared by several questions once per batch
    # validation, saving, reporting
    "eval_every": 20,
    "val_batches": 8,              # batches of valid.jsonl per evaluation; -1: all
    "early_stop": None,            # stop after N evaluations without improvement
    "best_metric": "val_loss",     # metric that picks adapters/best/: val_loss or exec_acc
    "exec_acc_samples": 64,        # exec_acc: validation records generated (greedy) and executed
    "exec_acc_max_tokens": 192,    # exec_acc: generation limit per record
    "adapter_path": "adapters",
    "save_every": 20,
    "keep_checkpoints": 3,         # newest checkpoints kept; 0: keep all
    "resume": None,                # "latest" or a checkpoint / adapter folder
    "report_every": 5,
    "plot": True,
}

SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adam", "adamw")

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
    """Check every setting; return a normalised copy or raise one ConfigError listing all problems."""
    c = dict(cfg)
    p: list[str] = []

    def need_int(key, lo=None, allow_none=False, hint=""):
        v = c.get(key)
        if v is None and allow_none:
            return
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = c[key] = int(v)
        if not _is_int(v) or (lo is not None and v < lo):
            want = "an integer" + (f" >= {lo}" if lo is not None else "")
            p.append(f"{key} must be {want} (got {v!r}){hint}")

    def need_num(key, lo=None, hi=None, allow_none=False, lo_open=False):
        v = c.get(key)
        if v is None and allow_none:
            return
        if isinstance(v, str):
            try:
                v = c[key] = float(v)
            except ValueError:
                pass
        bad = not _is_num(v)
        if not bad and lo is not None:
            bad = v <= lo if lo_open else v < lo
        if not bad and hi is not None:
            bad = v >= hi
        if bad:
            rng = ""
            if lo is not None:
                rng = f" {'>' if lo_open else '>='} {lo}"
            if hi is not None:
                rng += f"{' and' if rng else ''} < {hi}"
            p.append(f"{key} must be a number{rng} (got {v!r})")

    def need_bool(key, allow_none=False):
        v = c.get(key)
        if v is None and allow_none:
            return
        if not isinstance(v, bool):
            p.append(f"{key} must be true or false (got {v!r})")

    if not isinstance(c.get("model"), str) or not c["model"].strip():
        p.append("model must be a model spec (smollm2-135m, a .gguf file, a model folder or a Hub id)")
    if c.get("chat_template") is not None:
        from .prompts import CHAT_TEMPLATES, TEMPLATE_ALIASES

        name = str(c["chat_template"]).lower()
        if name not in CHAT_TEMPLATES and name not in TEMPLATE_ALIASES:
            p.append(f"chat_template {c['chat_template']!r} unknown; choose one of {', '.join(sorted(CHAT_TEMPLATES))}")
    if c.get("dtype") not in ("float32", "float16", "bfloat16"):
        p.append(f"dtype must be float32, float16 or bfloat16 (got {c.get('dtype')!r})")
    if c.get("quantize") is not None and c["quantize"] not in (4, 8):
        p.append(f"quantize must be 4 or 8 (got {c['quantize']!r})")
    need_int("group_size", 1)
    if _is_int(c.get("group_size")) and c["group_size"] not in (32, 64, 128):
        p.append(f"group_size must be 32, 64 or 128 (got {c['group_size']})")
    need_bool("dequantize", allow_none=True)
    if c.get("quantize") and c.get("dequantize") is True:
        p.append("quantize and dequantize contradict each other: --quantize asks for a quantized base (QLoRA)")

    if not isinstance(c.get("data"), str) or not c["data"]:
        p.append("data must be a folder holding train.jsonl (and valid.jsonl)")
    else:
        d = Path(c["data"])
        if not d.is_dir():
            p.append(f"data folder {d} not found (make one with `python -m mlx_text2sql.convert`)")
        elif not (d / "train.jsonl").is_file():
            p.append(f"data folder {d} has no train.jsonl")
    need_int("max_seq_length", 16)
    need_bool("train_on_prompt")

    need_int("rank", 1)
    need_num("alpha", 0, lo_open=True)
    need_num("dropout", 0, 1)
    t = c.get("targets")
    if isinstance(t, str):
        c["targets"] = t = [s.strip() for s in t.split(",") if s.strip()]
    if t is not None and (not isinstance(t, (list, tuple)) or not t or not all(isinstance(s, str) and s for s in t)):
        p.append(f"targets must be a list of module names such as q_proj,v_proj (got {t!r})")
    elif t is not None:
        c["targets"] = list(t)
    if c.get("lora_layers") == -1:
        c["lora_layers"] = None
    need_int("lora_layers", 1, allow_none=True)
    need_bool("dora")

    if c.get("iters") is not None and c.get("epochs") is not None:
        p.append("give either iters or epochs, not both")
    if c.get("iters") is None and c.get("epochs") is None:
        p.append("give iters or epochs")
    need_int("iters", 1, allow_none=True)
    need_num("epochs", 0, allow_none=True, lo_open=True)
    need_int("batch_size", 1)
    need_int("grad_accum", 1)
    need_bool("grad_checkpoint")
    need_num("lr", 0, lo_open=True)
    if c.get("lr_schedule") not in SCHEDULES:
        p.append(f"lr_schedule must be one of {', '.join(SCHEDULES)} (got {c.get('lr_schedule')!r})")
    need_int("warmup", 0, allow_none=True)
    need_num("min_lr", 0)
    if _is_num(c.get("min_lr")) and _is_num(c.get("lr")) and 0 < c["lr"] < c["min_lr"]:
        p.append(f"min_lr ({c['min_lr']}) must not exceed lr ({c['lr']})")
    if c.get("optimizer") not in OPTIMIZERS:
        p.append(f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {c.get('optimizer')!r})")
    need_num("weight_decay", 0)
    if c.get("optimizer") == "adam" and _is_num(c.get("weight_decay")) and c["weight_decay"] > 0:
        p.append("weight_decay needs optimizer adamw (adam has no decoupled weight decay)")
    if c.get("max_grad_norm") in (0, 0.0):
        c["max_grad_norm"] = None
    need_num("max_grad_norm", 0, allow_none=True, lo_open=True)
    need_int("seed", 0)
    need_int("cpu_streams", 1, allow_none=True)
    need_bool("share_prefix")
    if _is_int(c.get("iters")) and _is_int(c.get("warmup")) and c["warmup"] >= c["iters"] > 1:
        p.append(f"warmup ({c['warmup']}) must be shorter than the run ({c['iters']} steps)")

    need_int("eval_every", 1)
    need_int("val_batches", -1)
    if c.get("val_batches") == 0:
        p.append("val_batches must be -1 (all) or >= 1")
    need_int("early_stop", 1, allow_none=True)
    if not isinstance(c.get("best_metric"), str) or not c["best_metric"]:
        p.append("best_metric must be a metric name such as val_loss")
    need_int("exec_acc_samples", 1)
    need_int("exec_acc_max_tokens", 16)
    if not isinstance(c.get("adapter_path"), str) or not c["adapter_path"]:
        p.append("adapter_path must be a folder path")
    need_int("save_every", 1)
    need_int("keep_checkpoints", 0)
    if c.get("resume") is not None and not isinstance(c["resume"], str):
        p.append(f"resume must be 'latest' or a checkpoint folder (got {c['resume']!r})")
    need_int("report_every", 1)
    need_bool("plot")
    if p:
        raise ConfigError(p)
    return c


# Settings that must match between a checkpoint and the run resuming it.
RESUME_LOCKED = ("model", "chat_template", "dtype", "quantize", "group_size", "dequantize", "rank",
                 "alpha", "dropout", "targets", "lora_layers", "dora", "batch_size", "grad_accum",
                 "seed", "max_seq_length", "train_on_prompt", "optimizer")
