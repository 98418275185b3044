"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the most recent item runs.

The session is the sequence of visited skus, one step per item run (as GRU4Rec's). At a
point, the last ``window`` runs (the paper's maximum length n = 50) are embedded with
learned position embeddings (position 0 = the oldest run in the window) and go through
``blocks`` self-attention blocks (the paper's 2):

    x = E[s] * sqrt(d) + P;   x = LN(x) + MHA(LN(x), x, x) (causal);   x = FFN(LN(x)) + x

with dropout on the embeddings, attention weights and feed-forward layers and a final
LayerNorm. The output at the point's run is the profile; it is scored against the same item
embedding table E (the paper's shared input/output embeddings), so ``output_table("item")``
is E and there is no output bias.

Adaptations, all for the shared pipeline:

* Positions count from the oldest run in the window, with padding after the sequence (as
  RecBole's SASRec lays sequences out) rather than before it: then the window of every point
  among a session's first ``window`` runs is a prefix of one sequence, and a single causal
  pass over those runs gives all their profiles. Later points get a window of their own.
  Each point sees only its last ``window`` runs, and training and ranking read them alike.
* The loss is taken at the protocol's prediction points, with the full softmax over the sku
  vocabulary (the zoo default), instead of the paper's binary cross-entropy with one sampled
  negative per position.
* No category head: categories are ranked by the protocol's "last category" rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hup.zoo.base import SequenceModel, ZooConfig
from hup.zoo.ops import run_steps, take

__all__ = ["Sasrec", "SasrecConfig"]


@dataclass(frozen=True)
class SasrecConfig(ZooConfig):
    """SASRec's sizes: the model width is ``item_dim`` (the paper's d = 50; ours 64)."""

    blocks: int = 2  # self-attention blocks (the paper's 2)
    heads: int = 1  # attention heads (the paper's 1; must divide ``item_dim``)
    window: int = 50  # most recent runs attended (the paper's maximum sequence length n)
    # Adam's rate, picked on the JD Appliances validation split (item Recall@20, budget of
    # `hup train`): 1e-2 peaked at 30.1 % (epoch 8); 3e-3 learnt too slowly (13.7 % at epoch
    # 8), 1e-3 hardly at all (0.3 % at epoch 2) and the zoo's 3e-2 was unstable (14.4 %).
    learning_rate: float = 1e-2
    # On embeddings, attention weights and feed-forward layers: the paper's 0.5 for sparse
    # data; on the same split (rate 1e-2) it peaked at 30.9 % against 30.1 % with the zoo's 0.3.
    dropout: float = 0.5


class _Block(nn.Module):
    """Pre-norm causal self-attention, then a point-wise feed-forward layer, both residual."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor, causal: Tensor) -> Tensor:
        """Sequences x [R, L, D] -> [R, L, D]; ``causal`` [L, L] is True where attention is barred."""
        query = self.attention_norm(x)
        attended, _ = self.attention(query, x, x, attn_mask=causal, need_weights=False)
        x = query + attended  # the paper's residual is on the normalised query
        x = self.forward_norm(x)
        return x + self.feed_forward(x)


class Sasrec(SequenceModel):
    """Item runs -> embeddings + positions -> causal self-attention blocks -> shared softmax."""

    name = "sasrec"
    config_class = SasrecConfig
    config: SasrecConfig
    category_heads = False
    causal: Tensor  # [window, window] buffer, True above the diagonal

    def __init__(self, config: SasrecConfig) -> None:
        """Build the layers."""
        super().__init__(config)
        dim = config.item_dim
        if dim % config.heads:
            raise ValueError(f"heads ({config.heads}) must divide item_dim ({dim})")
        self.item_embedding = nn.Embedding(config.n_items, dim)
        nn.init.normal_(self.item_embedding.weight, std=dim**-0.5)
        self.position = nn.Embedding(config.window, dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            _Block(dim, config.heads, config.dropout) for _ in range(config.blocks)
        )
        self.norm = nn.LayerNorm(dim)
        # True above the diagonal: a run never attends to a later one.
        causal = torch.ones(config.window, config.window, dtype=torch.bool).triu(1)
        self.register_buffer("causal", causal, persistent=False)

    def encode(self, skus: Tensor) -> Tensor:
        """Outputs of the blocks over sequences of sku ids [R, L] (L <= window) -> [R, L, D].

        The causal mask is all the masking needed: padding only ever follows a sequence, so a
        real run never attends to it, and what padding slots output is never read.
        """
        length = skus.shape[1]
        x = self.item_embedding(skus) * math.sqrt(self.config.item_dim)
        x = self.dropout(x + self.position.weight[:length])  # [R, L, D]
        causal = self.causal[:length, :length]
        for block in self.blocks:
            x = block(x, causal)
        return x

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """The output at each point's run over its last ``window`` runs -> {"item": [N, D]}."""
        size = self.config.window
        steps = run_steps(batch)
        skus = take(batch["item"], steps)  # [B, S]
        rows, times = positions[:, 0], positions[:, 1]
        upto = steps.at_event[rows, times]  # [N] the point's run, counted from the first
        out = torch.zeros(len(rows), self.config.item_dim, device=skus.device)
        early = upto < size
        if bool(early.any()):
            # Points among the first `window` runs: one causal pass per session.
            prefix = self.encode(skus[:, :size])  # [B, min(S, W), D]
            out[early] = prefix[rows[early], upto[early]]
        late = ~early
        if bool(late.any()):
            # Later points: each its own window of exactly `window` runs, ending at its run.
            offsets = torch.arange(1 - size, 1, device=skus.device)
            windows = skus[rows[late].unsqueeze(1), upto[late].unsqueeze(1) + offsets]  # [M, W]
            out[late] = self.encode(windows)[:, -1]
        return {"item": self.norm(out)}

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The item embedding table (shared with the input), no bias."""
        if head != "item":
            raise KeyError(f"SASRec has no {head!r} head")
        return self.item_embedding.weight, None
