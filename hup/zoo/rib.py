"""RIB (Zhou et al., WSDM 2018): a GRU over micro-behaviours with attention.

Each micro-behaviour is embedded as [sku; behaviour type; dwell], a GRU runs over them, an
attention layer pools its outputs and a softmax output layer scores the next sku:

    u_j = tanh(W h_j + b);   a_j = softmax_j(u_j . u_w);   c = sum_j a_j h_j

Adaptations for the shared pipeline and the causal rule:

* Dwell is the featurizer's causal dwell bucket: the closed visits' dwell plus the time
  spent so far in the open one (the paper used the full dwell of each page, which a
  streaming profile cannot know yet). Dwell events are not behaviours: the GRU steps on
  micro events only.
* The attention at a point covers the last ``window`` micro-behaviours up to it (default
  50, HUP's window W), so memory stays bounded on long sessions.
* Categories: a softmax head per level trained jointly on the attention context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hup.zoo.base import OutputHeads, SequenceModel, ZooConfig
from hup.zoo.ops import micro_steps, take, window

__all__ = ["Rib", "RibConfig"]


@dataclass(frozen=True)
class RibConfig(ZooConfig):
    """RIB's sizes on top of ZooConfig's embeddings and hidden size."""

    attention_hidden: int = 50  # size of u_j
    window: int = 50  # micro-behaviours the attention sees


class Rib(SequenceModel):
    """[item; behaviour; dwell] -> GRU over micro events -> attention -> softmax heads."""

    name = "rib"
    config_class = RibConfig
    config: RibConfig

    def __init__(self, config: RibConfig) -> None:
        """Build the layers."""
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.item_dim)
        self.behavior_embedding = nn.Embedding(config.n_behaviors, config.behavior_dim)
        self.dwell_embedding = nn.Embedding(config.n_dwell_buckets, config.dwell_dim)
        width = config.item_dim + config.behavior_dim + config.dwell_dim
        self.dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(width, config.hidden, batch_first=True)
        self.attention = nn.Linear(config.hidden, config.attention_hidden)
        self.context = nn.Linear(config.attention_hidden, 1, bias=False)  # u_w
        self.out = OutputHeads(config.hidden, config)

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Attention context over the micro-behaviours up to each point -> profiles [N, D]."""
        steps = micro_steps(batch)
        x = torch.cat(
            [
                self.item_embedding(take(batch["item"], steps)),
                self.behavior_embedding(take(batch["behavior"], steps)),
                self.dwell_embedding(take(batch["dwell"], steps)),
            ],
            dim=-1,
        )  # [B, S, X]
        ys, _ = self.gru(self.dropout(x))  # [B, S, H]
        logits = self.context(torch.tanh(self.attention(ys))).squeeze(-1)  # [B, S]
        rows, index, mask = window(steps, positions, self.config.window)  # [N, 1], [N, W]
        weights = torch.softmax(logits[rows, index].masked_fill(~mask, float("-inf")), dim=-1)
        context = torch.einsum("nw,nwh->nh", weights, ys[rows, index])  # [N, H]
        return self.out(self.dropout(context))

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The softmax layer's weights and bias of ``head``."""
        return self.out.table(head)
