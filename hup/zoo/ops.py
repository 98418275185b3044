"""Causal sequence operations the zoo models share: compress events to steps, read at points.

A batch holds every event of a session (micro and dwell events, padded at the end). Models
step on a subset of them: item-level models on run starts (the first micro event of each
visit run, when the sku is known), micro-level models on micro events. `compress` packs the
chosen events of each row to the front, so a plain ``nn.GRU`` can run over them (padding
stays at the end, where a causal pass never reads it), and `at_points` maps a prediction
point back to the latest step at or before it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Steps", "at_points", "compress", "micro_steps", "run_steps", "take", "window"]


class Steps(NamedTuple):
    """Which events of a padded batch a model steps on."""

    events: Tensor  # [B, S] event time of each step (0 on padding)
    valid: Tensor  # [B, S] bool: a real step
    at_event: Tensor  # [B, T] index of the latest step at or before each event (-1: none yet)


def compress(mask: Tensor) -> Steps:
    """Steps at the events where ``mask`` [B, T] is True, in time order."""
    counts = mask.sum(dim=1)  # [B]
    n_steps = max(int(counts.max()), 1) if mask.numel() else 1
    # A stable sort of "not chosen" puts the chosen events first, in time order.
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :n_steps]
    valid = torch.arange(n_steps, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return Steps(torch.where(valid, order, 0), valid, mask.long().cumsum(dim=1) - 1)


def run_steps(batch: dict[str, Tensor]) -> Steps:
    """One step per item run, at its first micro event (the sku, categories and item gap are known)."""
    return compress(batch["item_change"].bool() & batch["is_micro"].bool() & batch["valid"])


def micro_steps(batch: dict[str, Tensor]) -> Steps:
    """One step per micro event (dwell events only update features, they are not behaviours)."""
    return compress(batch["is_micro"].bool() & batch["valid"])


def take(x: Tensor, steps: Steps) -> Tensor:
    """The values of ``x`` [B, T, *] at the steps, [B, S, *]."""
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    return x[rows, steps.events]


def at_points(ys: Tensor, steps: Steps, positions: Tensor) -> Tensor:
    """Step outputs ``ys`` [B, S, *] at the latest step at or before each point, [N, *]."""
    rows, times = positions[:, 0], positions[:, 1]
    return ys[rows, steps.at_event[rows, times].clamp(min=0)]


def window(steps: Steps, positions: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The last ``size`` steps at or before each point, for attention over a bounded history.

    Returns:
        rows [N, 1], step indices [N, W] (oldest first, the point's own step last) and a mask
        [N, W] of the ones that exist. Gather with ``ys[rows, index]``.
    """
    rows, times = positions[:, 0], positions[:, 1]
    upto = steps.at_event[rows, times]  # [N]
    offsets = torch.arange(-(size - 1), 1, device=positions.device)  # [W]
    index = upto.unsqueeze(1) + offsets
    mask = index >= 0
    return rows.unsqueeze(1), index.clamp(min=0), mask
