"""DHAN (Xu et al., 2020): target-aware hierarchical attention, items -> category clusters -> user.

The last ``window`` item runs at a point are the behaviours, each embedded by its sku. For a
candidate sku v with embedding q_v (the output table's row), the behaviours are grouped by
their (finest-level) category; a first-level attention pools each cluster, a second-level
attention pools the clusters:

    alpha_iv = softmax_{i in c}(e_i W1 . q_v);     c_v = sum_{i in c} alpha_iv e_i
    beta_cv  = softmax_c(c_v W2 . q_v);            u_v = sum_c beta_cv c_v

DHAN keeps DIN's flat, item-level attention beside the hierarchy
(d_v = sum_i softmax_i(e_i W1 . q_v) e_i), and the candidate's score is
(P_h u_v + P_d d_v) . q_v + b_v: the paper's final MLP over [u_v; d_v; q_v] is reduced to
this bilinear read-out so every candidate of the vocabulary can be scored.

Tractability (the reason for the reduced read-out): both attentions are bilinear in e_i and
q_v, so everything the score needs is a sum over behaviours of [W, V] matrices
(``e_i W . q_v`` for all candidates in one matmul); the cluster sums are scatter-adds over
window slots. `scores` does this for every sku, in chunks of points that keep
[chunk, W, V] small. Training uses a sampled softmax: each point's own target sku against
``negatives`` uniform skus shared by the batch. Scoring every target of the batch at
every point would hold [N, W, V] activations for the backward pass with V in the
thousands: 22 GB on JD_Computers, more than the machine has.

Other adaptations:

* Clusters are the finest category level (DHAN's hierarchy is built from an attribute such
  as category; the featurizer has the category path per sku).
* ``forward``'s ``item`` profile is the same two-level pooling under one learnt query (a
  target-independent user vector, which the contract asks for); it also feeds a softmax
  head per category level. Item ranking is target-aware (`scores`).
* ``window`` defaults to 20 runs (not HUP's 50) to bound the candidate-wise cost.
* Left out for lack of data: the user profile features and the item's price, brand and
  shop attributes of the paper's CTR setting (the JD sessions carry skus and categories).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from hup.zoo.base import OutputHeads, SequenceModel, ZooConfig, _cross_entropy
from hup.zoo.ops import run_steps, take, window

__all__ = ["Dhan", "DhanConfig"]

_CELLS = 1 << 22  # [chunk, W, V] elements scored at once


@dataclass(frozen=True)
class DhanConfig(ZooConfig):
    """DHAN's sizes on top of ZooConfig's embeddings."""

    window: int = 20  # item runs attended at a point
    negatives: int = 100  # uniform negative skus of the training softmax, shared per batch


class Dhan(SequenceModel):
    """Sku embeddings -> per-candidate attention within category clusters, then over clusters."""

    name = "dhan"
    config_class = DhanConfig
    config: DhanConfig

    def __init__(self, config: DhanConfig) -> None:
        """Build the layers."""
        super().__init__(config)
        d = config.item_dim
        self.item_embedding = nn.Embedding(config.n_items, d)
        self.dropout = nn.Dropout(config.dropout)
        self.first = nn.Linear(d, d, bias=False)  # W1, within a cluster (and DIN's flat one)
        self.second = nn.Linear(d, d, bias=False)  # W2, over clusters
        self.read_hier = nn.Linear(d, d, bias=False)  # P_h
        self.read_flat = nn.Linear(d, d, bias=False)  # P_d
        self.user_query = nn.Parameter(0.05 * torch.randn(1, d))  # for the ``item`` profile
        self.out = OutputHeads(d, config)

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Profiles [N, D] and the window the target-aware scores read (memory [N, W, D])."""
        steps = run_steps(batch)
        items = take(batch["item"], steps)  # [B, S]
        leaves = take(batch["categories"][..., -1], steps)  # [B, S]
        rows, index, mask = window(steps, positions, self.config.window)  # [N, 1], [N, W]
        memory = self.dropout(self.item_embedding(items[rows, index]))  # [N, W, D]
        slots = _cluster_slots(leaves[rows, index], mask)  # [N, W]
        hier, flat = self._weights(memory, slots, mask, self.user_query)  # [N, W, 1]
        user = torch.einsum("nw,nwd->nd", hier[..., 0], self.read_hier(memory)) + torch.einsum(
            "nw,nwd->nd", flat[..., 0], self.read_flat(memory)
        )  # [N, D]
        profiles = self.out(self.dropout(user))
        return {**profiles, "memory": memory, "memory_mask": mask, "memory_slots": slots}

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The head's output embeddings (for items, also the candidates' queries q_v) and bias."""
        return self.out.table(head)

    def scores(self, profiles: dict[str, Tensor], head: str) -> Tensor:
        """Target-aware scores of every sku ([N, V]); categories by their softmax heads."""
        if head != "item":
            return super().scores(profiles, head)
        weight, bias = self.out.table("item")
        return self._candidate_scores(profiles, weight) + bias

    def loss(
        self, batch: dict[str, Tensor], positions: Tensor, targets: dict[str, Tensor]
    ) -> Tensor:
        """Sampled softmax of the target-aware item scores + category cross-entropy."""
        profiles = self(batch, positions)
        weight, bias = self.out.table("item")
        target = targets["item"]  # [N], 0 = no target
        negatives = torch.randint(1, self.config.n_items, (self.config.negatives,))
        candidates = torch.cat(
            [target.clamp_min(0).unsqueeze(1), negatives.to(target.device).expand(len(target), -1)],
            dim=1,
        )  # [N, 1 + K]: the point's own target first
        logits = self._candidate_scores(profiles, weight[candidates]) + bias[candidates]
        # A negative that happens to be the target is not a negative.
        clash = candidates == target.unsqueeze(1)
        clash[:, 0] = False
        logits = logits.masked_fill(clash, -1e9)
        labels = torch.where(target > 0, 0, -100)
        total = F.cross_entropy(logits, labels) if bool((labels >= 0).any()) else logits.sum() * 0
        for head in self.heads[1:]:
            k = int(head.removeprefix("category"))
            ce = _cross_entropy(self.scores(profiles, head), targets["categories"][:, k])
            total = total + self.config.category_weight * ce
        return total

    def _candidate_scores(self, profiles: dict[str, Tensor], queries: Tensor) -> Tensor:
        """(P_h u_v + P_d d_v) . q_v per point and candidate -> [N, V].

        ``queries`` is [V, D] (the same candidates at every point) or [N, V, D] (each
        point its own).
        """
        memory, mask, slots = profiles["memory"], profiles["memory_mask"], profiles["memory_slots"]
        n, w = mask.shape
        per_point = queries.dim() == 3
        chunk = max(1, _CELLS // max(1, w * queries.shape[-2]))
        out = []
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            mem = memory[part]
            q = queries[part] if per_point else queries
            hier, flat = self._weights(mem, slots[part], mask[part], q)  # [n, W, V]
            hier_read = _bilinear(self.read_hier(mem), q)
            flat_read = _bilinear(self.read_flat(mem), q)
            out.append((hier * hier_read + flat * flat_read).sum(dim=1))
        return torch.cat(out) if out else memory.new_zeros(0, queries.shape[-2])

    def _weights(
        self, memory: Tensor, slots: Tensor, mask: Tensor, queries: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Behaviour weights [N, W, V] per candidate: hierarchical (alpha * beta) and flat (DIN)."""
        scale = memory.shape[-1] ** -0.5
        first = _bilinear(self.first(memory), queries) * scale
        flat = torch.softmax(first.masked_fill(~mask.unsqueeze(-1), float("-inf")), dim=1)
        index = slots.unsqueeze(-1).expand_as(first)
        safe = first.masked_fill(~mask.unsqueeze(-1), 0.0)  # no inf: exp/where would make NaN grads
        group_max = torch.full_like(safe, float("-inf")).scatter_reduce(1, index, safe, "amax")
        ex = torch.exp(safe - group_max.gather(1, index).detach()) * mask.unsqueeze(-1)
        group_sum = torch.zeros_like(ex).scatter_add(1, index, ex)
        alpha = ex / group_sum.gather(1, index).clamp_min(1e-12)  # within-cluster softmax
        second = _bilinear(self.second(memory), queries) * scale
        cluster_logit = torch.zeros_like(second).scatter_add(1, index, alpha * second)  # at slots
        is_slot = mask & (slots == torch.arange(mask.shape[1], device=mask.device))  # [N, W]
        beta = torch.softmax(cluster_logit.masked_fill(~is_slot.unsqueeze(-1), float("-inf")), 1)
        return alpha * beta.gather(1, index), flat


def _bilinear(behaviours: Tensor, queries: Tensor) -> Tensor:
    """[N, W, D] x candidates ([V, D] shared, or [N, V, D] per point) -> [N, W, V]."""
    if queries.dim() == 2:
        return torch.einsum("nwd,vd->nwv", behaviours, queries)
    return torch.einsum("nwd,nvd->nwv", behaviours, queries)


def _cluster_slots(groups: Tensor, mask: Tensor) -> Tensor:
    """Each behaviour's cluster as the window slot of its first member, [N, W].

    Padding gets its own slot (itself), so it never joins a real cluster.
    """
    same = (groups.unsqueeze(2) == groups.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)
    first = same.to(torch.int8).argmax(dim=2)  # the first True (every valid row has itself)
    return torch.where(mask, first, torch.arange(mask.shape[1], device=mask.device))
