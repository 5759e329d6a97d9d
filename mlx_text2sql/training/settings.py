"""Every training setting, defined once: key, default, type, help text, check.

:data:`SETTINGS` is the table. From it come the defaults (:data:`DEFAULTS`, what
``configs/default.yaml`` lists), the command-line options of ``train`` (:func:`add_arguments`:
one option per setting, every default None so that an unset option falls through to the YAML
file), the checks of a merged config (:func:`check`: every problem, one message each) and the
trainer's arguments (:func:`trainer_fields`, from which ``tuner.trainer.TrainArgs`` is made).
Checks that involve several settings (iters or epochs, min_lr below lr, ...) and those that
look at files live in :func:`mlx_text2sql.config.validate`, which runs both.

Pure Python: no MLX import.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Setting", "SETTINGS", "BY_KEY", "DEFAULTS", "GROUPS", "SCHEDULES", "OPTIMIZERS", "DTYPES",
           "add_arguments", "check", "trainer_fields", "trainer_kwargs"]

SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adam", "adamw")
DTYPES = ("float32", "float16", "bfloat16")
GROUPS = ("model", "data", "LoRA", "schedule", "validation, saving, reporting")


@dataclass(frozen=True)
class Setting:
    """One training setting.

    ``type`` is the value's Python type (int, float, bool, str or list for a list of names);
    ``nullable``: None is a valid value (not set / automatic). The generated check wants an
    ``int`` / ``float`` at least ``minimum`` (more than it with ``minimum_open``) and below
    ``below``, one of ``choices``, ``true or false`` for a bool; ``check`` replaces it with a
    function returning the problem (or None). ``help`` may say ``{default}``. ``flags``: the
    command-line spellings (default ``--key-with-dashes``); ``negative``: the flags that set a
    bool to false (a bool with only ``negative`` flags has no positive one). ``trainer``: the
    name of the ``TrainArgs`` field the training loop reads it from (None: not a loop setting).
    """

    key: str
    default: Any
    type: type
    help: str
    group: str
    nullable: bool = False
    minimum: float | None = None
    minimum_open: bool = False
    below: float | None = None
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None
    flags: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    negative_help: str = ""
    positive: bool = True
    metavar: str | None = None
    cli: dict = field(default_factory=dict)
    trainer: str | None = None

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.key.replace("_", "-"),)

    def want(self) -> str:
        """What a valid value is, as the problem message says it."""
        if self.choices is not None and self.type is not int:
            return "one of " + ", ".join(map(str, self.choices))
        if self.type is bool:
            return "true or false"
        if self.type is int:
            return "an integer" + (f" >= {self.minimum}" if self.minimum is not None else "")
        rng = ""
        if self.minimum is not None:
            rng = f" {'>' if self.minimum_open else '>='} {self.minimum}"
        if self.below is not None:
            rng += f"{' and' if rng else ''} < {self.below}"
        return "a number" + rng


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _model(v) -> str | None:
    if not isinstance(v, str) or not v.strip():
        return "model must be a model spec (smollm2-135m, a .gguf file, a model folder or a Hub id)"
    return None


def _chat_template(v) -> str | None:
    if v is None:
        return None
    from ..prompts import CHAT_TEMPLATES, TEMPLATE_ALIASES

    name = str(v).lower()
    if name not in CHAT_TEMPLATES and name not in TEMPLATE_ALIASES:
        return f"chat_template {v!r} unknown; choose one of {', '.join(sorted(CHAT_TEMPLATES))}"
    return None


def _dtype(v) -> str | None:
    return None if v in DTYPES else f"dtype must be float32, float16 or bfloat16 (got {v!r})"


def _quantize(v) -> str | None:
    return None if v is None or v in (4, 8) else f"quantize must be 4 or 8 (got {v!r})"


def _folder(key: str, what: str) -> Callable[[Any], str | None]:
    def check_folder(v) -> str | None:
        return None if isinstance(v, str) and v else f"{key} must be {what}"
    return check_folder


def _targets(v) -> str | None:
    if v is not None and (not isinstance(v, (list, tuple)) or not v
                          or not all(isinstance(s, str) and s for s in v)):
        return f"targets must be a list of module names such as q_proj,v_proj (got {v!r})"
    return None


def _resume(v) -> str | None:
    if v is not None and not isinstance(v, str):
        return f"resume must be 'latest' or a checkpoint folder (got {v!r})"
    return None


def _best_metric(v) -> str | None:
    """val_loss, or a metric registered with ``tuner.validation.register_metric`` by the time
    the settings are checked (``train`` registers its metrics first). Without that module loaded
    no metric can be registered yet, so any name passes here and ``train`` checks it again."""
    import sys

    if not isinstance(v, str) or not v:
        return "best_metric must be a metric name such as val_loss"
    registry = sys.modules.get("mlx_text2sql.tuner.validation")
    if registry is None or v == "val_loss" or v in registry.METRIC_FACTORIES:
        return None
    known = ", ".join(["val_loss", *sorted(registry.METRIC_FACTORIES)])
    return f"best_metric {v!r} is not a registered metric; known: {known}"


M, D, L, S, V = GROUPS

SETTINGS: tuple[Setting, ...] = (
    # model
    Setting("model", "smollm2-135m", str, "smollm2-135m (default), a .gguf file, a model folder or a Hugging Face id",
            M, check=_model),
    Setting("chat_template", None, str, "registry template overriding the tokenizer's (chatml, zephyr, mistral, ...)",
            M, nullable=True, check=_chat_template),
    Setting("dtype", "float32", str, "dtype of dense weights (default float32)", M, choices=DTYPES, check=_dtype),
    Setting("quantize", None, int, "quantize the base to 4 or 8 bits (QLoRA)", M, nullable=True, choices=(4, 8),
            check=_quantize, cli={"choices": [4, 8]}),
    Setting("group_size", 64, int, "quantization group size for --quantize (default {default})", M, minimum=1,
            choices=(32, 64, 128)),
    Setting("dequantize", None, bool, "train on a dense copy of a quantized model (the default on CPU)", M,
            nullable=True, negative=("--no-dequantize", "--keep-quantized"),
            negative_help="keep a quantized model quantized (QLoRA), even on CPU"),
    # data
    Setting("data", "data", str, "folder with train.jsonl and valid.jsonl (default data/)", D,
            check=_folder("data", "a folder holding train.jsonl (and valid.jsonl)")),
    Setting("max_seq_length", 1024, int, "longest example in tokens (default {default}); "
            "longer ones get a trimmed schema or are skipped, never a cut SQL", D, minimum=16),
    Setting("train_on_prompt", False, bool,
            "put loss on the prompt tokens too (default: on the SQL answer and its EOS only)", D, trainer="train_on_prompt"),
    # LoRA
    Setting("rank", 8, int, "LoRA rank (default {default})", L, minimum=1),
    Setting("alpha", 16.0, float, "LoRA alpha; the update is scaled by alpha/rank (default {default:g})", L,
            minimum=0, minimum_open=True),
    Setting("dropout", 0.0, float, "dropout on the LoRA input (default 0)", L, minimum=0, below=1),
    Setting("targets", None, list, "comma-separated module names (default: every linear layer of the blocks)", L,
            nullable=True, check=_targets),
    Setting("lora_layers", None, int, "adapt only the last N blocks (default: all; -1: all, over a config that sets N)",
            L, nullable=True, minimum=1),
    Setting("dora", False, bool, "DoRA instead of LoRA", L),
    # schedule
    Setting("iters", 60, int, "optimizer steps (default {default})", S, nullable=True, minimum=1),
    Setting("epochs", None, float, "passes over the training set (instead of --iters)", S, nullable=True,
            minimum=0, minimum_open=True),
    Setting("batch_size", 4, int, "examples per batch (default {default})", S, minimum=1, trainer="batch_size"),
    Setting("grad_accum", 1, int, "batches per optimizer step (default 1)", S, minimum=1, trainer="grad_accum"),
    Setting("grad_checkpoint", False, bool,
            "recompute activations in the backward pass (less memory; slower, as each block's forward pass runs again)", S, trainer="grad_checkpoint"),
    Setting("lr", 5e-4, float, "peak learning rate (default {default:g})", S, minimum=0, minimum_open=True,
            flags=("--lr", "--learning-rate")),
    Setting("lr_schedule", "cosine", str, "default cosine", S, choices=SCHEDULES),
    Setting("warmup", None, int, "linear warm-up steps (default: 5%% of the steps)", S, nullable=True, minimum=0),
    Setting("min_lr", 0.0, float, "learning rate at the end of cosine/linear decay (default 0)", S, minimum=0),
    Setting("optimizer", "adamw", str, "default adamw", S, choices=OPTIMIZERS),
    Setting("weight_decay", 0.0, float, "AdamW weight decay (default 0)", S, minimum=0),
    Setting("max_grad_norm", 1.0, float, "clip the gradient norm (default 1.0; 0 = off)", S, nullable=True,
            minimum=0, minimum_open=True, trainer="max_grad_norm"),
    Setting("seed", 0, int, "seed for LoRA init, dropout and data order (default 0)", S, minimum=0, trainer="seed"),
    Setting("time_limit", None, float, "stop after MINUTES of training-loop wall time (steps, validation and saves, "
            "summed over resumes), leaving room for the closing validation: the run ends as at its last step, with "
            "adapters/best chosen as usual; the learning-rate schedule stays planned for --iters (default: no limit)", S,
            nullable=True, minimum=0, minimum_open=True, metavar="MINUTES", trainer="time_limit"),
    Setting("cpu_streams", None, int, "split each batch over N parallel CPU streams (default: one per core, at most "
            "4; MLX's elementwise CPU kernels use one core each)", S, nullable=True, minimum=1, metavar="N",
            trainer="streams"),
    Setting("share_prefix", True, bool, "", S, positive=False, negative=("--no-share-prefix",),
            negative_help="run every example's whole prompt (default: questions on the same schema in a batch "
                          "share one run of their common prompt prefix; same loss, less work)", trainer="share_prefix"),
    # validation, saving, reporting
    Setting("eval_every", 20, int, "validate every N steps (default {default})", V, minimum=1, trainer="eval_every"),
    Setting("val_batches", 8, int, "validation batches per evaluation, -1 = all (default {default})", V,
            minimum=-1, trainer="val_batches"),
    Setting("early_stop", None, int, "stop after PATIENCE evaluations without a better validation metric", V,
            nullable=True, minimum=1, metavar="PATIENCE", trainer="early_stop"),
    Setting("best_metric", "val_loss", str, "metric that selects adapters/best: val_loss (default) or exec_acc (greedy execution "
            "accuracy on a fixed sample of valid.jsonl)", V,
            check=_best_metric, trainer="best_metric"),
    Setting("exec_acc_samples", 64, int, "validation records the exec_acc metric generates greedy SQL for and "
            "executes; a fixed seeded sample (default {default})", V, minimum=1, metavar="N"),
    Setting("exec_acc_max_tokens", 192, int, "generation limit for the exec_acc metric (default {default})", V,
            minimum=16, metavar="N"),
    Setting("adapter_path", "adapters", str, "output folder (default adapters/)", V, flags=("--adapter-path", "-o"),
            check=_folder("adapter_path", "a folder path"), trainer="adapter_path"),
    Setting("save_every", 20, int, "save adapter + checkpoint every N steps (default {default})", V, minimum=1,
            trainer="save_every"),
    Setting("keep_checkpoints", 3, int, "newest checkpoints kept, 0 = all (default {default})", V, minimum=0,
            trainer="keep_checkpoints"),
    Setting("resume", None, str, "continue from the newest checkpoint in --adapter-path, or from PATH "
            "(a checkpoint folder or an adapter folder)", V, nullable=True, check=_resume, metavar="PATH",
            cli={"nargs": "?", "const": "latest"}),
    Setting("report_every", 5, int, "report loss every N steps (default {default})", V, minimum=1,
            trainer="report_every"),
    Setting("plot", True, bool, "", V, positive=False, negative=("--no-plot",), negative_help="skip loss.png"),
)

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS}


# --------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One option per setting (in the table's order, grouped), every default None: an unset
    option falls through to the YAML file, then to :data:`DEFAULTS`. Returns the groups by name,
    for options that are not settings."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for s in SETTINGS:
        g = groups[s.group]
        text = s.help.format(default=s.default)
        if s.type is bool:
            if s.positive:
                g.add_argument(*s.cli_flags, dest=s.key, action="store_true", default=None, help=text)
            if s.negative:
                g.add_argument(*s.negative, dest=s.key, action="store_false", default=None, help=s.negative_help)
            continue
        kw: dict[str, Any] = {"dest": s.key, "default": None, "help": text}
        if s.type in (int, float):
            kw["type"] = s.type
        if s.choices is not None and s.type is str:
            kw["choices"] = list(s.choices)
        if s.metavar:
            kw["metavar"] = s.metavar
        kw.update(s.cli)
        g.add_argument(*s.cli_flags, **kw)
    return groups


# --------------------------------------------------------------------------- checks

def _coerce(s: Setting, v: Any) -> Any:
    """A YAML string that holds a number of the setting's type (``"5"``, ``"1e-3"``) becomes it."""
    if not isinstance(v, str):
        return v
    if s.type is int and v.strip().lstrip("-").isdigit():
        return int(v)
    if s.type is float:
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _problem(s: Setting, v: Any) -> str | None:
    if s.check is not None:
        return s.check(v)
    if v is None and s.nullable:
        return None
    if s.type is bool:
        ok = isinstance(v, bool)
    elif s.type is int:
        ok = _is_int(v) and (s.minimum is None or v >= s.minimum)
        if ok and s.choices is not None and v not in s.choices:
            return f"{s.key} must be {', '.join(map(str, s.choices[:-1]))} or {s.choices[-1]} (got {v})"
    elif s.type is float:
        ok = _is_num(v)
        if ok and s.minimum is not None:
            ok = v > s.minimum if s.minimum_open else v >= s.minimum
        if ok and s.below is not None:
            ok = v < s.below
    elif s.choices is not None:
        ok = v in s.choices
    else:
        ok = isinstance(v, s.type)
    return None if ok else f"{s.key} must be {s.want()} (got {v!r})"


def check(cfg: dict) -> tuple[dict, list[str]]:
    """Check every setting of ``cfg`` on its own; returns (normalised copy, problems).

    Unknown keys are problems that name them. Normalising: numbers given as YAML strings become
    numbers, ``targets`` given as ``"q_proj, v_proj"`` becomes a list, ``lora_layers: -1``
    (mlx_lm's "all") and ``max_grad_norm: 0`` (no clipping) become None.
    """
    c = dict(cfg)
    problems = [f"unknown setting {k!r}" for k in c if k not in BY_KEY]
    t = c.get("targets")
    if isinstance(t, str):
        c["targets"] = [p.strip() for p in t.split(",") if p.strip()]
    elif isinstance(t, tuple):
        c["targets"] = list(t)
    if c.get("lora_layers") == -1:
        c["lora_layers"] = None
    if c.get("max_grad_norm") in (0, 0.0):
        c["max_grad_norm"] = None
    for s in SETTINGS:
        v = c[s.key] = _coerce(s, c.get(s.key))
        p = _problem(s, v)
        if p:
            problems.append(p)
    return c, problems


# --------------------------------------------------------------------------- trainer

def trainer_fields() -> list[tuple[str, Any, Any]]:
    """``(field name, type, default)`` of every setting the training loop reads, in table order."""
    out = []
    for s in SETTINGS:
        if s.trainer is not None:
            kind = s.type | None if s.nullable else s.type
            out.append((s.trainer, kind, s.default))
    return out


def trainer_kwargs(cfg: dict) -> dict[str, Any]:
    """The loop's arguments from a checked config: ``{TrainArgs field: cfg[key]}``."""
    return {s.trainer: cfg[s.key] for s in SETTINGS if s.trainer is not None}
