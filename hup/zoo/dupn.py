"""DUPN (Ni et al., KDD 2018): a property-gated LSTM, attention and multi-task heads.

Each behaviour x_i is split into item features e_i (the sku's embedding and its category
embeddings, one per level) and behaviour *properties* p_i (behaviour type, gap and dwell
embeddings). Properties say how much a behaviour matters, not what it is about, so in the
paper they enter the LSTM's gates only, not its candidate:

    i, f, o = sigmoid(W [e_t; h_{t-1}; p_t] + b)     (one W per gate)
    c~      = tanh(W_c [e_t; h_{t-1}] + b_c)
    c_t = f * c_{t-1} + i * c~;   h_t = o * tanh(c_t)

An attention layer pools the LSTM outputs, scored from each step's output and properties
against the current state (the paper's query and user-profile vectors have no data here):

    a_j = softmax_j(v . tanh(W_a [h_j; p_j; h_t]));   r = sum_j a_j h_j

and the user representation r = [r; h_t] feeds one softmax head per task.

Adaptations:

* Tasks: the paper's CTR, learning-to-rank, price preference, fashion icon and shop
  preference tasks need impressions, queries, prices and shops, which the JD sessions do
  not have. The multi-task layer is reduced to the tasks this data supports: the next sku
  and the next category of every level, sharing the representation (items weigh 1,
  each category level ``category_weight``).
* Left out for lack of data: the user profile features and query of the attention, and
  the item-side shop, brand and tag embeddings (only the sku and its categories exist).
* One LSTM step per micro event (behaviour types live there); the gap is the featurizer's
  micro-gap bucket, the dwell its causal dwell bucket (time spent so far on the page).
* The attention covers the last ``window`` steps at each point (the paper's sequences
  are cut to 100 behaviours; 50 is HUP's window W), so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hup.zoo.base import OutputHeads, SequenceModel, ZooConfig
from hup.zoo.ops import micro_steps, take, window

__all__ = ["Dupn", "DupnConfig"]


@dataclass(frozen=True)
class DupnConfig(ZooConfig):
    """DUPN's sizes on top of ZooConfig's embeddings and hidden size."""

    attention_hidden: int = 50  # size of the attention layer's tanh projection
    window: int = 50  # LSTM outputs the attention sees at a point


class PropertyGatedLstm(nn.Module):
    """The paper's LSTM: properties feed the i, f, o gates but not the candidate."""

    def __init__(self, item_dim: int, property_dim: int, hidden: int) -> None:
        """Create the gate and candidate weights."""
        super().__init__()
        self.hidden = hidden
        self.gate_input = nn.Linear(item_dim + property_dim, 3 * hidden)  # i, f, o
        self.candidate_input = nn.Linear(item_dim, hidden)
        self.recurrent = nn.Linear(hidden, 4 * hidden, bias=False)  # i, f, o, c~

    def forward(self, e: Tensor, p: Tensor) -> Tensor:
        """Run over a padded sequence: e [B, S, E], p [B, S, P] -> outputs [B, S, H]."""
        gates_in = self.gate_input(torch.cat([e, p], dim=-1))  # [B, S, 3H]
        cand_in = self.candidate_input(e)  # [B, S, H]
        h = c = e.new_zeros(e.shape[0], self.hidden)
        outputs = []
        for s in range(e.shape[1]):
            rec = self.recurrent(h)  # [B, 4H]
            i, f, o = torch.sigmoid(gates_in[:, s] + rec[:, : 3 * self.hidden]).chunk(3, -1)
            c = f * c + i * torch.tanh(cand_in[:, s] + rec[:, 3 * self.hidden :])
            h = o * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class Dupn(SequenceModel):
    """[sku; categories] + [behaviour; gap; dwell] -> property-gated LSTM -> attention -> heads."""

    name = "dupn"
    config_class = DupnConfig
    config: DupnConfig

    def __init__(self, config: DupnConfig) -> None:
        """Build the layers."""
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.item_dim)
        self.category_embeddings = nn.ModuleList(
            nn.Embedding(n, config.category_dim) for n in config.n_categories
        )
        self.behavior_embedding = nn.Embedding(config.n_behaviors, config.behavior_dim)
        self.gap_embedding = nn.Embedding(config.n_gap_buckets, config.gap_dim)
        self.dwell_embedding = nn.Embedding(config.n_dwell_buckets, config.dwell_dim)
        item_width = config.item_dim + config.n_levels * config.category_dim
        property_width = config.behavior_dim + config.gap_dim + config.dwell_dim
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = PropertyGatedLstm(item_width, property_width, config.hidden)
        self.attention = nn.Linear(2 * config.hidden + property_width, config.attention_hidden)
        self.score = nn.Linear(config.attention_hidden, 1, bias=False)  # v
        self.out = OutputHeads(2 * config.hidden, config)

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Attention over the LSTM outputs up to each point, with the state -> profiles [N, D]."""
        steps = micro_steps(batch)
        categories = take(batch["categories"], steps)  # [B, S, K]
        e = torch.cat(
            [
                self.item_embedding(take(batch["item"], steps)),
                *(emb(categories[..., k]) for k, emb in enumerate(self.category_embeddings)),
            ],
            dim=-1,
        )  # [B, S, E]
        p = torch.cat(
            [
                self.behavior_embedding(take(batch["behavior"], steps)),
                self.gap_embedding(take(batch["gap"], steps)),
                self.dwell_embedding(take(batch["dwell"], steps)),
            ],
            dim=-1,
        )  # [B, S, P]
        ys = self.lstm(self.dropout(e), p)  # [B, S, H]
        rows, index, mask = window(steps, positions, self.config.window)  # [N, 1], [N, W]
        hs, ps = ys[rows, index], p[rows, index]  # [N, W, H], [N, W, P]
        current = hs[:, -1]  # [N, H] the state at the point (the window's last step)
        query = current.unsqueeze(1).expand_as(hs)
        logits = self.score(torch.tanh(self.attention(torch.cat([hs, ps, query], -1))))
        weights = torch.softmax(logits.squeeze(-1).masked_fill(~mask, float("-inf")), dim=-1)
        pooled = torch.einsum("nw,nwh->nh", weights, hs)  # [N, H]
        return self.out(self.dropout(torch.cat([pooled, current], dim=-1)))

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The task head's softmax weights and bias."""
        return self.out.table(head)
