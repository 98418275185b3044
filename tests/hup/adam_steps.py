"""A few Adam steps on one batch, for the tests that check a loss can be optimised."""

from __future__ import annotations

import torch


def adam_losses(model, batch, positions, targets, steps: int = 30) -> list[float]:
    """The loss before each of `steps` Adam steps (lr 0.01) on one fixed batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model.loss(batch, positions, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
