"""Checkpoints: ``checkpoints/step-NNNNNN/`` holds the adapter, the optimizer state, the RNG
and the loop's position, so ``--resume`` continues exactly where a run stopped."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map_with_path

from ..errors import TrainingError
from ..jsonl import write_json
from .lora import adapter_weights, save_adapter

CHECKPOINTS = "checkpoints"


@dataclass
class LoopState:
    """Where a run is: enough, with the weights and optimizer state, to continue exactly."""

    step: int = 0            # optimizer steps done
    epoch: int = 0           # current pass over the data
    position: int = 0        # batches of the current epoch already consumed
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0       # evaluations since the best one
    tokens: int = 0          # real tokens trained on so far
    seconds: float = 0.0     # training time so far
    wall_seconds: float = 0.0  # the loop's wall time so far (steps, validation, saves)


def checkpoint_dir(adapter_path, step: int) -> Path:
    return Path(adapter_path) / CHECKPOINTS / f"step-{step:06d}"


def latest_checkpoint(path) -> Path | None:
    """The newest complete checkpoint under an adapter folder (or ``path`` if it is one)."""
    path = Path(path)
    if (path / "trainer_state.json").is_file():
        return path
    root = path / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def save_checkpoint(model, optimizer, state: LoopState, adapter_path, adapter_config: dict,
                    keep: int = 0) -> Path:
    """Write checkpoints/step-NNNNNN/ (adapter, optimizer state, RNG, loop state) atomically:
    into a temporary folder renamed into place once complete."""
    final = checkpoint_dir(adapter_path, state.step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save_adapter(model, tmp, adapter_config)
        arrays = {f"optimizer.{k}": v for k, v in tree_flatten(optimizer.state)}
        arrays["rng"] = mx.random.state[0]
        mx.eval(arrays)
        mx.savez(str(tmp / "state.npz"), **arrays)
        write_json(tmp / "trainer_state.json", asdict(state))
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        done = sorted(p for p in final.parent.glob("step-*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(model, optimizer, path) -> LoopState:
    """Restore adapter weights, optimizer state and RNG from a checkpoint; returns its LoopState.

    The model must already carry LoRA layers of the same shapes (apply_lora with the saved
    settings)."""
    path = Path(path)
    try:
        state = LoopState(**json.loads((path / "trainer_state.json").read_text()))
        arrays = mx.load(str(path / "state.npz"))
        weights = mx.load(str(path / "adapters.npz"))
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        raise TrainingError(f"cannot read checkpoint {path}: {e}") from None
    expected = adapter_weights(model)
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in weights):
        raise TrainingError(f"checkpoint {path} does not match the model's LoRA layers "
                            "(different model, rank, targets or layers)")
    model.load_weights(list(weights.items()), strict=False)
    opt_arrays = {k[len("optimizer."):]: v for k, v in arrays.items() if k.startswith("optimizer.")}
    optimizer.init(model.trainable_parameters())
    have = dict(tree_flatten(optimizer.state))
    if set(have) != set(opt_arrays):
        raise TrainingError(f"checkpoint {path}: optimizer state does not match (different optimizer?)")
    optimizer.state = tree_map_with_path(lambda p, _: opt_arrays[p], optimizer.state)
    hi, lo = (int(x) for x in arrays["rng"].tolist())
    mx.random.seed((hi << 32) | lo)
    mx.eval(model.parameters(), optimizer.state)
    return state
