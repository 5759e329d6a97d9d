"""Reporting: the hooks the training loop calls (:class:`Callback`), the window of steps a
report averages over, and two callbacks: a tqdm progress bar and a JSONL log of every report.

Pure Python: the loop hands in the figures it reads from MLX.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class Callback:
    """Hooks the loop calls; override what you need. ``info`` dicts are JSON-ready."""

    def on_start(self, info: dict) -> None: ...
    def on_step(self, step: int) -> None: ...
    def on_report(self, info: dict) -> None: ...
    def on_eval(self, info: dict) -> None: ...
    def on_save(self, info: dict) -> None: ...
    def on_end(self, info: dict) -> None: ...


class Hooks:
    """Calls one hook on every callback, or on none (processes other than rank 0 report nothing)."""

    def __init__(self, callbacks: list[Callback], enabled: bool = True):
        self.callbacks = list(callbacks) if enabled else []

    def __call__(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)


class ReportWindow:
    """Sums over the optimizer steps since the last report; :meth:`report` turns them into the
    report's figures and starts a new window."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.loss, self.steps, self.seconds, self.cpu = 0.0, 0, 0.0, 0.0
        self.tokens = self.loss_tokens = self.computed = 0

    def add(self, loss: float, tokens: int, loss_tokens: int, computed: int, seconds: float, cpu: float) -> None:
        """One step: its loss, effective / loss / computed tokens, wall and CPU seconds."""
        self.loss += loss
        self.steps += 1
        self.tokens += tokens
        self.loss_tokens += loss_tokens
        self.computed += computed
        self.seconds += seconds
        self.cpu += cpu

    def report(self, *, step: int, epoch: float, lr: float, grad_norm: float, trained_tokens: int,
               peak_memory_gb: float, seconds: float) -> dict:
        """The ``train`` record of log.jsonl (averages over the window), then an empty window."""
        info = {
            "type": "train", "step": step, "epoch": epoch,
            "loss": self.loss / self.steps,
            "lr": lr,
            "grad_norm": grad_norm,
            # effective tokens: every example counted whole, as if run alone
            "tokens_per_second": self.tokens / self.seconds,
            "computed_tokens_per_second": self.computed / self.seconds,
            # CPU seconds of this process per step: steadier than wall time on a busy machine
            "cpu_seconds_per_step": self.cpu / self.steps,
            "trained_tokens": trained_tokens,
            "loss_tokens": self.loss_tokens,
            "peak_memory_gb": peak_memory_gb,
            "seconds": round(seconds, 3),
        }
        self._reset()
        return info


class ProgressBar(Callback):
    """tqdm bar over optimizer steps, showing loss, learning rate, tokens/s and peak memory."""

    def __init__(self, total: int, initial: int = 0, file=None, disable: bool | None = None):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=file or sys.stderr,
                        dynamic_ncols=True, disable=disable)

    def on_step(self, step: int) -> None:
        self.bar.update(step - self.bar.n)

    def on_report(self, info: dict) -> None:
        self.bar.set_postfix(loss=f"{info['loss']:.3f}", lr=f"{info['lr']:.2e}",
                             tok_s=f"{info['tokens_per_second']:.0f}",
                             mem=f"{info['peak_memory_gb']:.2f}GB", refresh=False)

    def on_eval(self, info: dict) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in info.items()
                          if k not in ("type", "step") and not k.endswith("_seconds"))
        self.bar.write(f"step {info['step']}: {shown}")

    def on_save(self, info: dict) -> None:
        self.bar.write(f"step {info['step']}: saved {info['adapter']} and {info['checkpoint']}")

    def on_end(self, info: dict) -> None:
        self.bar.close()


class JsonlLog(Callback):
    """Appends every report and evaluation, one JSON object per line, to ``path`` (flushed)."""

    def __init__(self, path: str | Path, keep_until: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until is None:
            self.path.write_text("")
        else:
            # Resuming: drop what the interrupted run logged after its checkpoint.
            self.path.write_text("".join(json.dumps(r) + "\n" for r in read_log(self.path)
                                         if r.get("step", 0) <= keep_until))

    def _write(self, info: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(info) + "\n")

    def on_report(self, info: dict) -> None:
        self._write(info)

    def on_eval(self, info: dict) -> None:
        self._write(info)


def read_log(path: str | Path) -> list[dict]:
    """The records of a log.jsonl (a torn last line from a killed run is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
