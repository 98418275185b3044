"""BPR-MF (Rendle et al., UAI 2009): matrix factorisation trained with the BPR pairwise loss.

Training treats every training session as a user u with factor p_u, and every sku visited
in it (each run) as a positive i: ``x_ui = p_u . q_i + b_i``, loss
``-log sigmoid(x_ui - x_uj) + reg * (|p_u|^2 + |q_i|^2 + |q_j|^2)`` with j drawn uniformly
from the vocabulary. This is the one model not trained at the protocol's prediction points
(`training_batches` yields (session, sku) pairs of the same sessions, 128 sessions per batch),
since MF has no notion of order.

Prediction folds the test session in as GRU4Rec's paper does for BPR-MF (Hidasi et al., ICLR
2016): a new session has no factor, so its user factor is the average of the item factors
q_j of the skus visited so far (each run once), and skus are ranked by ``p . q_i + b_i``.
Categories: "last category" (no category factors).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from hup.sequences import FeaturizedSession
from hup.zoo.base import Batch, SequenceModel, ZooConfig

__all__ = ["BprMf", "BprMfConfig"]


@dataclass(frozen=True)
class BprMfConfig(ZooConfig):
    """Factor size = ``item_dim``; BPR's regularisation."""

    regularization: float = 1e-4  # L2 weight on the factors of each sampled triple
    learning_rate: float = 1e-2


class BprMf(SequenceModel):
    """User factors (training sessions), item factors and item biases."""

    name = "bpr-mf"
    config_class = BprMfConfig
    category_heads = False
    config: BprMfConfig

    def __init__(self, config: BprMfConfig) -> None:
        """Factors initialised small, biases at zero."""
        super().__init__(config)
        self.user_factors = nn.Embedding(max(config.n_train_sessions, 1), config.item_dim)
        self.item_factors = nn.Embedding(config.n_items, config.item_dim)
        self.item_bias = nn.Parameter(torch.zeros(config.n_items))
        nn.init.normal_(self.user_factors.weight, std=0.05)
        nn.init.normal_(self.item_factors.weight, std=0.05)

    def training_batches(
        self,
        sessions: Sequence[FeaturizedSession],
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """(session, sku) pairs of ``batch_size`` sessions at a time, sessions shuffled."""
        order = (
            torch.randperm(len(sessions), generator=generator).tolist()
            if generator is not None
            else list(range(len(sessions)))
        )
        for start in range(0, len(order), batch_size):
            users, items = [], []
            for user in order[start : start + batch_size]:
                for f in sessions[user].features:
                    if f.is_micro and f.item_change and f.item:
                        users.append(user)
                        items.append(f.item)
            if users:
                pairs = {"user": torch.tensor(users), "item": torch.tensor(items)}
                yield pairs, torch.empty(0, 2, dtype=torch.long), {}

    def count_batches(self, sessions: Sequence[FeaturizedSession], batch_size: int) -> int:
        """Batches of `training_batches`: every ``batch_size`` sessions (empty ones skipped)."""
        return -(-len(sessions) // batch_size)

    def loss(
        self, batch: dict[str, Tensor], positions: Tensor, targets: dict[str, Tensor]
    ) -> Tensor:
        """BPR over the batch's (session, sku) pairs with one uniform negative each."""
        del positions, targets
        user, positive = batch["user"], batch["item"]
        negative = torch.randint(1, self.config.n_items, positive.shape, device=positive.device)
        p, q_i, q_j = (
            self.user_factors(user),
            self.item_factors(positive),
            self.item_factors(negative),
        )
        x = (p * (q_i - q_j)).sum(-1) + self.item_bias[positive] - self.item_bias[negative]
        reg = p.pow(2).sum(-1) + q_i.pow(2).sum(-1) + q_j.pow(2).sum(-1)
        return -F.logsigmoid(x).mean() + self.config.regularization * reg.mean()

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Fold-in user factor: mean item factor of the known runs up to each point, [N, D]."""
        run_start = batch["item_change"].bool() & batch["is_micro"].bool() & batch["valid"]
        known = (run_start & (batch["item"] != 0)).unsqueeze(-1)  # [B, T, 1]
        sums = (self.item_factors(batch["item"]) * known).cumsum(dim=1)  # [B, T, D]
        counts = known.cumsum(dim=1).clamp(min=1)
        rows, t = positions[:, 0], positions[:, 1]
        return {"item": sums[rows, t] / counts[rows, t]}

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """Item factors and biases."""
        return self.item_factors.weight, self.item_bias
