"""Time-LSTM (Zhu et al., IJCAI 2017): an item-level LSTM whose time gate reads the item gap.

One step per item run (a visit), input = the sku's embedding, time input = the gap since
the previous run started (the featurizer's ``item_gap`` bucket, known when the run starts).
The cell is `hup.layers.BehaviorLSTMCell` with ``kind="time"``, i.e. Time-LSTM 1's

    T = sigmoid(W_T [x, dt] + b_T);   C = F * C + I * T * C~;   h = O * tanh(C)

with two departures: the interval enters as an embedding of its bucket (the shared
featurizer only exposes the paper's 5 buckets) instead of ``sigmoid(dt W_tt)`` of the raw
seconds, and the output gate does not read dt. This is the same cell HUP-TLSTM uses, so
the comparison isolates the pyramid and micro-behaviours. The output layer is a softmax over
skus (the paper's); categories come from a jointly trained softmax head per level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hup.layers import BehaviorLSTMCell
from hup.zoo.base import OutputHeads, SequenceModel, ZooConfig
from hup.zoo.ops import at_points, run_steps, take

__all__ = ["TimeLstm", "TimeLstmConfig"]


@dataclass(frozen=True)
class TimeLstmConfig(ZooConfig):
    """Time-LSTM's sizes (ZooConfig's: item embedding 64, hidden 100, gap embedding 8)."""


class TimeLstm(SequenceModel):
    """Item embedding + item-gap embedding -> time-gated LSTM over runs -> softmax heads."""

    name = "time-lstm"
    config_class = TimeLstmConfig

    def __init__(self, config: TimeLstmConfig) -> None:
        """Build the layers."""
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.item_dim)
        self.gap_embedding = nn.Embedding(config.n_gap_buckets, config.gap_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.cell = BehaviorLSTMCell(config.item_dim, config.gap_dim, 0, config.hidden, "time")
        self.out = OutputHeads(config.hidden, config)

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """LSTM state after the run of each point -> profiles [N, D]."""
        steps = run_steps(batch)
        x = self.dropout(self.item_embedding(take(batch["item"], steps)))  # [B, S, E]
        dt = self.gap_embedding(take(batch["item_gap"], steps))  # [B, S, G]
        x_gates, scale = self.cell.input_part(x, dt, x.new_zeros(*x.shape[:2], 0))
        h = c = x.new_zeros(x.shape[0], self.config.hidden)
        outputs = []
        for s in range(x.shape[1]):
            h, c = self.cell.recur(x_gates[:, s], None if scale is None else scale[:, s], h, c)
            outputs.append(h)
        ys = torch.stack(outputs, dim=1)  # [B, S, H]
        return self.out(self.dropout(at_points(ys, steps, positions)))

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The softmax layer's weights and bias of ``head``."""
        return self.out.table(head)
