"""The loss plot: training loss per report and validation loss per evaluation."""

from __future__ import annotations

from pathlib import Path


def plot_losses(records: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Draw train and validation loss against the optimizer step into ``path`` (PNG).

    records: log.jsonl records ({"type": "train", "step", "loss"} and {"type": "eval", "step",
    "val_loss"}). Returns the path, or None when there is nothing to draw.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe in threads and on servers
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("type") == "train" and "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("type") == "eval" and "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", linewidth=1.5)
    if val:
        ax.plot(*zip(*val), label="validation loss", color="tab:orange", marker="o", linewidth=1.5)
        best = min(val, key=lambda sv: sv[1])
        ax.annotate(f"best {best[1]:.3f}", best, textcoords="offset points", xytext=(5, 8), fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per trained token")
    ax.set_title(title or "LoRA fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
