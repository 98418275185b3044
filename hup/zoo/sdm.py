"""SDM (Lv et al., CIKM 2019): short-term session + long-term preferences, gated fusion.

Short-term: the last ``short`` item runs before a point are the session. Each run is
embedded as the concatenation of its sku and category embeddings (the paper's side
information). An LSTM runs over them, multi-head self-attention relates them, and a user
attention pools them into s:

    h_1..h_n = LSTM(e_1..e_n);   X = MultiHead(h, h, h);   s = sum_k a_k X_k,  a = softmax(q . X)

Long-term: the runs before the session form one set per feature (skus, categories per
level). An attention per set pools its embeddings (z_f = sum_k a_k g_k, a = softmax(q . g)),
and p = tanh(W [z_item; z_category0; ...]). Gated fusion mixes both:

    G = sigmoid(W_s s + W_p p + b);   o = (1 - G) * p + G * s

and o is scored against the sku table (one head per category level too).

Adaptations:

* A JD session file holds one session per user, so there is no earlier session to be the
  long-term behaviour. Long-term is the input *before the last* ``short`` *runs* of the
  point (at most ``long`` runs), short-term the last ``short`` runs; early in a session
  the long-term set is empty and p is tanh(W 0), which the gate learns to ignore.
* The user-attention query of both parts is the paper's user embedding e_u; there are no
  user profile features (and no per-user factors for unseen sessions), so the query is the
  projected last LSTM output of the session instead. The gate drops its e_u term for the
  same reason.
* Left out for lack of data: the shop and brand sets of the long-term part and the brand/
  shop side information of each item.
* Full softmax over the sku vocabulary instead of sampled softmax (affordable here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hup.zoo.base import OutputHeads, SequenceModel, ZooConfig
from hup.zoo.ops import run_steps, take, window

__all__ = ["Sdm", "SdmConfig"]


@dataclass(frozen=True)
class SdmConfig(ZooConfig):
    """SDM's sizes on top of ZooConfig's embeddings and hidden size."""

    heads: int = 4  # self-attention heads (must divide ``hidden``)
    short: int = 10  # runs of the short-term session at a point
    long: int = 40  # most runs of the long-term sets, before the session


def attend(query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
    """sum_k softmax_k(q . g_k) g_k over the masked keys; all-masked rows give 0.

    Args:
        query: [N, D]; keys: [N, W, D]; mask: [N, W] bool.

    Returns:
        [N, D].
    """
    logits = torch.einsum("nd,nwd->nw", query, keys) / keys.shape[-1] ** 0.5
    weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    weights = torch.nan_to_num(weights) * mask  # an empty set contributes nothing
    return torch.einsum("nw,nwd->nd", weights, keys)


class Sdm(SequenceModel):
    """Session LSTM + self-attention + user attention, long-term set attention, gated fusion."""

    name = "sdm"
    config_class = SdmConfig
    config: SdmConfig

    def __init__(self, config: SdmConfig) -> None:
        """Build the layers."""
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.item_dim)
        self.category_embeddings = nn.ModuleList(
            nn.Embedding(n, config.category_dim) for n in config.n_categories
        )
        width = config.item_dim + config.n_levels * config.category_dim
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(width, config.hidden, batch_first=True)
        self.self_attention = nn.MultiheadAttention(config.hidden, config.heads, batch_first=True)
        self.short_query = nn.Linear(config.hidden, config.hidden)
        self.long_queries = nn.ModuleList(
            nn.Linear(config.hidden, d)
            for d in (config.item_dim, *(config.category_dim for _ in config.n_categories))
        )
        self.long_merge = nn.Linear(width, config.hidden)
        self.gate = nn.Linear(2 * config.hidden, config.hidden)
        self.out = OutputHeads(config.hidden, config)

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Fused short- and long-term preference at each point -> profiles [N, D]."""
        steps = run_steps(batch)
        categories = take(batch["categories"], steps)  # [B, S, L]
        features = [
            self.item_embedding(take(batch["item"], steps)),
            *(emb(categories[..., k]) for k, emb in enumerate(self.category_embeddings)),
        ]  # per feature [B, S, d_f]
        e = self.dropout(torch.cat(features, dim=-1))  # [B, S, E]
        cfg = self.config
        rows, index, mask = window(steps, positions, cfg.long + cfg.short)  # [N, 1], [N, W]
        # Short-term: the last `short` runs, moved to the front so the LSTM reads no padding.
        s_index, s_mask = index[:, cfg.long :], mask[:, cfg.long :]  # [N, short]
        n_valid = s_mask.sum(dim=1, keepdim=True)  # [N, 1], >= 1 at a prediction point
        shift = torch.arange(cfg.short, device=index.device) + (cfg.short - n_valid)
        front_mask = torch.arange(cfg.short, device=index.device) < n_valid
        front = s_index.gather(1, shift.clamp(max=cfg.short - 1))  # [N, short]
        hs, _ = self.lstm(e[rows, front])  # [N, short, H]; padding at the end, never read
        x, _ = self.self_attention(hs, hs, hs, key_padding_mask=~front_mask, need_weights=False)
        last = hs.gather(1, (n_valid - 1).unsqueeze(-1).expand(-1, 1, hs.shape[-1])).squeeze(1)
        s = attend(self.short_query(last), x, front_mask)  # [N, H]
        # Long-term: one attention per feature set over the runs before the session.
        l_index, l_mask = index[:, : cfg.long], mask[:, : cfg.long]
        pooled = [
            attend(query(last), f[rows, l_index], l_mask)
            for query, f in zip(self.long_queries, features, strict=True)
        ]
        p = torch.tanh(self.long_merge(torch.cat(pooled, dim=-1)))  # [N, H]
        gate = torch.sigmoid(self.gate(torch.cat([s, p], dim=-1)))
        return self.out(self.dropout((1 - gate) * p + gate * s))

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The softmax layer's weights and bias of ``head``."""
        return self.out.table(head)
