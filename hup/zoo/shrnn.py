"""S-HRNN (Quadrana et al., RecSys 2017): a session-level GRU re-initialised by a user-level GRU.

HRNN models a user as a sequence of sessions: a session GRU runs over the items of one
session; when a session ends, a user GRU takes the session's last hidden state, and the
next session's GRU starts from ``tanh(W_init c_user + b_init)`` (the paper's HRNN-Init).

Adaptation: a JD session file holds one session per user, so the cross-session layer would
never step. We split each session into *sub-sessions* at long pauses and run HRNN over
them: a new sub-session starts at a run whose gap since the previous micro-behaviour falls in
the top gap bucket (>= 90 s with the paper's buckets; ``split_bucket``). The shared causal
featurizer only exposes bucketed gaps, so the classic 30-minute rule is not available; 90 s
between two product pages means the user spent at least that long elsewhere (lists,
search), which is where browsing intents change. The split is causal: it is decided when
the new run starts. One session-GRU step per item run (input = the sku's embedding); the
profile is the session GRU's state. Categories: a softmax head per level trained jointly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hup.zoo.base import OutputHeads, SequenceModel, ZooConfig
from hup.zoo.ops import at_points, run_steps, take

__all__ = ["SHrnn", "SHrnnConfig"]


@dataclass(frozen=True)
class SHrnnConfig(ZooConfig):
    """S-HRNN's sizes on top of ZooConfig's (session GRU = ``hidden``)."""

    user_hidden: int = 100  # user-level GRU
    split_bucket: int = 4  # gap bucket id from which a run opens a new sub-session


class SHrnn(SequenceModel):
    """Session GRU over runs, user GRU over sub-sessions, softmax heads on the session state."""

    name = "s-hrnn"
    config_class = SHrnnConfig
    config: SHrnnConfig

    def __init__(self, config: SHrnnConfig) -> None:
        """Build the layers."""
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.item_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.session_cell = nn.GRUCell(config.item_dim, config.hidden)
        self.user_cell = nn.GRUCell(config.hidden, config.user_hidden)
        self.init = nn.Linear(config.user_hidden, config.hidden)
        self.out = OutputHeads(config.hidden, config)

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Session state after the run of each point -> profiles [N, D]."""
        steps = run_steps(batch)
        x = self.dropout(self.item_embedding(take(batch["item"], steps)))  # [B, S, E]
        split = (take(batch["gap"], steps) >= self.config.split_bucket).unsqueeze(-1)  # [B, S, 1]
        user = x.new_zeros(x.shape[0], self.config.user_hidden)
        h = torch.tanh(self.init(user))
        outputs = []
        for s in range(x.shape[1]):
            if s > 0:  # the first run always opens the first sub-session
                new_user = self.user_cell(h, user)
                user = torch.where(split[:, s], new_user, user)
                h = torch.where(split[:, s], torch.tanh(self.init(user)), h)
            h = self.session_cell(x[:, s], h)
            outputs.append(h)
        ys = torch.stack(outputs, dim=1)  # [B, S, H]
        return self.out(self.dropout(at_points(ys, steps, positions)))

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The softmax layer's weights and bias of ``head``."""
        return self.out.table(head)
