"""GRU4Rec (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou, CIKM 2018): a GRU over item runs.

The session is the sequence of visited skus: one GRU step per item run (a visit, the
first micro event of a run, when its sku is known), input = the sku's embedding. The hidden
state is the session representation; a softmax output layer scores the next sku.

Adaptations, all for the shared pipeline:

* Padded batches of whole sessions (`hup.sequences.batches`, sessions grouped by length)
  instead of session-parallel mini-batches, with full back-propagation through the session
  instead of truncated one-step updates. The loss is taken at the protocol's prediction
  points (every run start after the first), which are exactly GRU4Rec's next-item targets
  with consecutive repeats of a sku merged into one run.
* Full-vocabulary softmax cross-entropy (GRU4Rec's "cross-entropy" loss of the 2018 version)
  rather than TOP1/BPR-max over sampled negatives: the JD vocabularies (~10k skus) make the
  full softmax affordable and it needs no sampling hyper-parameters.
* Categories: a category head per level trained jointly (softmax of the next run's category,
  weight ``category_weight``) on the same hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from hup.zoo.base import OutputHeads, SequenceModel, ZooConfig
from hup.zoo.ops import at_points, run_steps, take

__all__ = ["Gru4Rec", "Gru4RecConfig"]


@dataclass(frozen=True)
class Gru4RecConfig(ZooConfig):
    """GRU4Rec's sizes: one GRU layer of 100 units; dropout on input and output (the paper's)."""

    layers: int = 1  # stacked GRU layers (``dropout`` applies between them too)


class Gru4Rec(SequenceModel):
    """Embedding -> GRU over runs -> softmax heads."""

    name = "gru4rec"
    config_class = Gru4RecConfig
    config: Gru4RecConfig

    def __init__(self, config: Gru4RecConfig) -> None:
        """Build the layers."""
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.item_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(
            config.item_dim,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.out = OutputHeads(config.hidden, config)

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Hidden state after the run of each point -> profiles [N, D]."""
        steps = run_steps(batch)
        x = self.dropout(self.item_embedding(take(batch["item"], steps)))  # [B, S, E]
        ys, _ = self.gru(x)  # [B, S, H]
        return self.out(self.dropout(at_points(ys, steps, positions)))

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The softmax layer's weights and bias of ``head``."""
        return self.out.table(head)
