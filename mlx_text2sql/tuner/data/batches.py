"""Padded batches with the answer positions gathered for the loss, and the order of an epoch's
batches (length-bucketed for training, fixed for validation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .encode import Sample


@dataclass
class Batch:
    """A padded batch, with the answer positions gathered for the loss.

    inputs:  (B, L) int32 token ids (the sequences without their last token), zero-padded;
             L is rounded up to a multiple of ``pad_to`` so few shapes need compiling.
    index:   (N,) int32 flat positions into (B * L) whose next token carries loss; N is rounded
             up to a multiple of ``pad_to`` with dummy positions of weight 0.
    targets: (N,) int32 the token to predict at each position; weights: (N,) float32 1 or 0.
    tokens:  real (non-padding) tokens in the batch; loss_tokens: positions with loss.
    """

    inputs: np.ndarray
    index: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    tokens: int
    loss_tokens: int


def round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def collate(samples: list[Sample], train_on_prompt: bool = False, pad_to: int = 16,
            pad_id: int = 0) -> Batch:
    inputs_len = [len(s.tokens) - 1 for s in samples]
    L = round_up(max(inputs_len), pad_to)
    inputs = np.full((len(samples), L), pad_id, dtype=np.int32)
    index, targets = [], []
    for b, s in enumerate(samples):
        n = inputs_len[b]
        inputs[b, :n] = s.tokens[:-1]
        # Position t predicts token t+1: the answer tokens tokens[prompt_len:] are predicted at
        # positions prompt_len-1 ... n-1.
        first = 0 if train_on_prompt else max(s.prompt_len - 1, 0)
        index.append(b * L + np.arange(first, n, dtype=np.int32))
        targets.append(s.tokens[first + 1: n + 1])
    index, targets, weights, n_loss = loss_positions(index, targets, pad_to)
    return Batch(inputs, index, targets, weights, int(sum(inputs_len) + len(samples)), n_loss)


def loss_positions(index: list[np.ndarray], targets: list[np.ndarray], pad_to: int):
    """The per-row loss positions and their target tokens joined into flat int32 arrays, padded
    with zeros to a multiple of ``pad_to``; returns (index, targets, weights, n_loss) where
    ``weights`` is 1.0 on the ``n_loss`` real positions and 0.0 on the padding."""
    index = np.concatenate(index)
    targets = np.concatenate(targets).astype(np.int32)
    n_loss = len(index)
    N = round_up(n_loss, pad_to)
    weights = np.zeros(N, dtype=np.float32)
    weights[:n_loss] = 1.0
    return (np.pad(index, (0, N - n_loss)).astype(np.int32), np.pad(targets, (0, N - n_loss)),
            weights, n_loss)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  bucket: int = 32) -> list[np.ndarray]:
    """The batches of one epoch as index arrays, a pure function of (seed, epoch).

    Length bucketing: the shuffled examples are cut into windows of ``bucket`` batches, each
    window is sorted by length and cut into batches (so a batch holds similar lengths and little
    padding), and the batch order is shuffled. Incomplete batches are dropped (at most
    batch_size - 1 examples per epoch), so every batch has the same size.
    """
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    window = batch_size * bucket
    batches = []
    for i in range(0, n, window):
        part = perm[i: i + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[j: j + batch_size] for j in range(0, len(part) - batch_size + 1, batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def eval_batches(lengths: np.ndarray, batch_size: int, limit: int) -> list[np.ndarray]:
    """Fixed validation batches (the same at every evaluation, so losses compare): the set
    sorted by length and cut into batches; with a ``limit``, batches spread evenly over the
    lengths so short and long examples are both measured. The last batch may be partial."""
    order = np.argsort(lengths, kind="stable")
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if limit is not None and 0 < limit < len(batches):
        pick = np.linspace(0, len(batches) - 1, limit).round().astype(int)
        batches = [batches[i] for i in sorted(set(pick.tolist()))]
    return batches
