"""MIND (Li et al., CIKM 2019): behaviour-to-interest dynamic routing into several interests.

The last ``window`` item runs at a point are the user's behaviours; each is embedded as the
mean of its sku and category embeddings (the paper's pooled id/category embedding). B2I
dynamic routing with one shared bilinear map S turns them into K' interest capsules:

    u^_i = S e_i;   w_ij = softmax_j(b_ij);   z_j = sum_i w_ij u^_i;   u_j = squash(z_j)
    b_ij <- b_ij + u_j . u^_i          (3 iterations)
    K' = max(1, min(K, floor(log2 |I_u|)))   (|I_u|: behaviours in the window, K = 4)

Each capsule goes through a ReLU layer (the paper's H layers) and one linear map per head.
Training uses label-aware attention: the target's output embedding e_t picks the user
vector v = V softmax(pow(V^T e_t, p)), p = 2, scored by softmax cross-entropy. Serving
scores every candidate by its best interest, max_j (u_j . e_v + b_v) (`scores`).

Adaptations:

* Routing logits start from a fixed Gaussian draw per (sku, interest), a buffer drawn
  once at construction, instead of a fresh draw per call: the paper's random start breaks
  the symmetry between capsules, and a fixed one also keeps profiles deterministic (the
  checkpoint round-trip and causality tests compare them).
* Full softmax over the sku vocabulary (~10k on JD) instead of sampled softmax: it is
  affordable here and needs no sampling hyper-parameters.
* Categories: the same interests, scored per level with label-aware attention in training
  and max over interests at ranking (MIND itself ranks items only).
* Left out for lack of data: the user profile features concatenated to the interests and
  the item's brand/shop embeddings (the JD sessions carry skus and categories only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from hup.zoo.base import OutputHeads, SequenceModel, ZooConfig
from hup.zoo.ops import run_steps, take, window

__all__ = ["Mind", "MindConfig"]


@dataclass(frozen=True)
class MindConfig(ZooConfig):
    """MIND's sizes on top of ZooConfig's embeddings and hidden size (the capsule size)."""

    interests: int = 4  # K, the most interest capsules a user gets
    routing_iterations: int = 3  # the paper's 3
    attention_power: float = 2.0  # p of the label-aware attention
    window: int = 50  # item runs routed at a point (the behaviours I_u)


def squash(z: Tensor) -> Tensor:
    """|z|^2 / (1 + |z|^2) * z / |z| along the last dim."""
    norm2 = (z * z).sum(dim=-1, keepdim=True)
    return norm2 / (1 + norm2) * z / torch.sqrt(norm2 + 1e-9)


class Mind(SequenceModel):
    """Pooled sku/category embeddings -> B2I routing -> K' interests -> max-over-interest scores."""

    name = "mind"
    config_class = MindConfig
    config: MindConfig
    routing_start: Tensor  # [n_items, K] buffer

    def __init__(self, config: MindConfig) -> None:
        """Build the layers and the fixed routing start."""
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.item_dim)
        self.category_embeddings = nn.ModuleList(
            nn.Embedding(n, config.item_dim) for n in config.n_categories
        )
        self.dropout = nn.Dropout(config.dropout)
        self.bilinear = nn.Linear(config.item_dim, config.hidden, bias=False)  # S, shared
        self.interest_layer = nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.ReLU())
        self.out = OutputHeads(config.hidden, config)
        start = torch.randn(
            config.n_items, config.interests, generator=torch.Generator().manual_seed(0)
        )
        self.register_buffer("routing_start", start)  # b_ij before the first iteration

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Interests at each point: per head [N, K, D] and ``interest_mask`` [N, K]."""
        steps = run_steps(batch)
        items = take(batch["item"], steps)  # [B, S]
        categories = take(batch["categories"], steps)  # [B, S, L]
        pooled = self.item_embedding(items)
        for k, embedding in enumerate(self.category_embeddings):
            pooled = pooled + embedding(categories[..., k])
        pooled = pooled / (1 + self.config.n_levels)  # [B, S, E]
        rows, index, mask = window(steps, positions, self.config.window)  # [N, 1], [N, W]
        u_hat = self.bilinear(self.dropout(pooled[rows, index]))  # [N, W, H]
        n_interests = torch.log2(mask.sum(dim=1).float()).floor().clamp(1, self.config.interests)
        interest_mask = torch.arange(
            self.config.interests, device=mask.device
        ) < n_interests.unsqueeze(1)  # [N, K]
        logits = self.routing_start[items[rows, index]]  # [N, W, K]
        # Routing only sets the coupling; gradients flow through the last z, as in capsule nets.
        u_hat_fixed = u_hat.detach()
        for iteration in range(self.config.routing_iterations):
            w = torch.softmax(logits.masked_fill(~interest_mask.unsqueeze(1), float("-inf")), -1)
            w = w * mask.unsqueeze(-1)  # padding routes nowhere
            last = iteration == self.config.routing_iterations - 1
            caps = squash(torch.einsum("nwk,nwh->nkh", w, u_hat if last else u_hat_fixed))
            if not last:
                logits = logits + torch.einsum("nkh,nwh->nwk", caps, u_hat_fixed)
        interests = self.dropout(self.interest_layer(caps))  # [N, K, H]
        return {**self.out(interests), "interest_mask": interest_mask}

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The head's output embeddings and bias."""
        return self.out.table(head)

    def scores(self, profiles: dict[str, Tensor], head: str) -> Tensor:
        """Each candidate's score under its best interest, [N, V]."""
        weight, bias = self.output_table(head)
        per_interest = torch.einsum("nkd,vd->nvk", profiles[head], weight)  # [N, V, K]
        mask = profiles["interest_mask"].unsqueeze(1)  # [N, 1, K]
        best = per_interest.masked_fill(~mask, float("-inf")).amax(dim=-1)
        return best if bias is None else best + bias

    def loss(
        self, batch: dict[str, Tensor], positions: Tensor, targets: dict[str, Tensor]
    ) -> Tensor:
        """Softmax cross-entropy of the label-aware user vector, item + weighted categories."""
        profiles = self(batch, positions)
        total = positions.new_zeros((), dtype=torch.float)
        for head in self.heads:
            weight, bias = self.out.table(head)
            if head == "item":
                target, scale = targets["item"], 1.0
            else:
                target = targets["categories"][:, int(head.removeprefix("category"))]
                scale = self.config.category_weight
            interests = profiles[head]  # [N, K, D]
            affinity = torch.einsum("nkd,nd->nk", interests, weight[target])
            attention = torch.softmax(
                affinity.pow(self.config.attention_power).masked_fill(
                    ~profiles["interest_mask"], float("-inf")
                ),
                dim=-1,
            )
            user = torch.einsum("nk,nkd->nd", attention, interests)  # [N, D]
            logits = user @ weight.T + bias
            if bool((target == 0).all()):
                continue
            total = total + scale * F.cross_entropy(logits, target, ignore_index=0)
        return total
