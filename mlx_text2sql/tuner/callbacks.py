"""Reporting callbacks: a tqdm progress bar and a JSONL log of every report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .trainer import Callback


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
