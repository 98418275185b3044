"""The Pyramid RNN of Behavior-LSTMs (HUP) and its full-sequence forward pass.

Every layer keeps a *committed* state (after its last closed entry: micro event, item
run or category run) and an *open* entry, recomputed from the committed state at each
event while the entry is open. This provisional step is what lets every event yield a
profile at every level; when the entry closes, its last provisional step becomes the
committed one. The same rule runs here over whole sequences (training, evaluation) and
in `hup.incremental` one event at a time (the stream); the parity test holds them equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from hup.config import HupConfig
from hup.features import EventFeatures
from hup.layers import AttentionPool, BehaviorLSTMCell
from hup.vocab import OOV

__all__ = [
    "FEATURE_KEYS",
    "HupModel",
    "LayerInput",
    "collate_features",
    "stack_features",
]

FEATURE_KEYS = EventFeatures._fields


class LayerInput(NamedTuple):
    """What one layer sees at each event (any leading shape S)."""

    x: Tensor  # [*S, X]
    dt: Tensor  # [*S, G]
    a: Tensor  # [*S, A]
    change: Tensor  # [*S] bool: a new entry starts (the open one is committed first)
    recompute: Tensor  # [*S] bool: the open entry is stepped again
    signal: Tensor  # [*S] long: attention signal id of the entry (behaviour or dwell bucket)


@dataclass(frozen=True)
class _Head:
    source: str  # layer whose attention context feeds the head
    level: int | None  # category level, None for item-space heads


def stack_features(features: list[EventFeatures]) -> dict[str, Tensor]:
    """One event per row: tensors of shape [B] (category fields [B, K])."""
    columns = list(zip(*features, strict=True))
    return {
        k: torch.tensor(col, dtype=torch.long) for k, col in zip(FEATURE_KEYS, columns, strict=True)
    }


def collate_features(sequences: list[list[EventFeatures]]) -> dict[str, Tensor]:
    """Pad sequences to [B, T] (category fields [B, T, K]) with a `valid` mask."""
    longest = max(len(s) for s in sequences)
    padding = sequences[0][0]._replace(is_micro=0)
    rows = [list(s) + [padding] * (longest - len(s)) for s in sequences]
    batch = {
        key: torch.tensor([[getattr(f, key) for f in row] for row in rows], dtype=torch.long)
        for key in FEATURE_KEYS
    }
    lengths = torch.tensor([len(s) for s in sequences])
    batch["valid"] = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)
    return batch


class HupModel(nn.Module):
    """HUP: embeddings, pyramid layers, attention pools and profile heads."""

    def __init__(self, config: HupConfig) -> None:
        """Build the layers `config` asks for (the full model or an ablation)."""
        super().__init__()
        cfg = self.config = config
        self.item_embedding = nn.Embedding(cfg.n_items, cfg.item_dim)
        self.category_embeddings = nn.ModuleList(
            nn.Embedding(n, cfg.category_dim) for n in cfg.n_categories
        )
        self.behavior_embedding = nn.Embedding(cfg.n_behaviors, cfg.behavior_dim)
        self.gap_embedding = nn.Embedding(cfg.n_gap_buckets, cfg.gap_dim)
        self.dwell_embedding = nn.Embedding(cfg.n_dwell_buckets, cfg.dwell_dim)

        levels = range(cfg.n_levels - 1, -1, -1)  # finest first: each feeds the next coarser
        if cfg.single:
            self.layer_names = ["micro"]
        elif cfg.use_micro:
            self.layer_names = ["micro", "item", *(f"category{k}" for k in levels)]
        else:
            self.layer_names = ["item", *(f"category{k}" for k in levels)]

        self.cells = nn.ModuleDict()
        self.pools = nn.ModuleDict()
        for name in self.layer_names:
            signal_dim = cfg.behavior_dim if name == "micro" else cfg.dwell_dim
            self.cells[name] = BehaviorLSTMCell(
                self._input_dim(name), cfg.gap_dim, signal_dim, cfg.hidden, cfg.cell
            )
            if cfg.attention:
                self.pools[name] = AttentionPool(cfg.hidden, signal_dim, cfg.attention_hidden)

        self.head_specs: dict[str, _Head] = {}
        if "micro" in self.layer_names:
            self.head_specs["micro"] = _Head("micro", None)
        self.head_specs["item"] = _Head("micro" if cfg.single else "item", None)
        for k in range(cfg.n_levels):
            self.head_specs[f"category{k}"] = _Head("micro" if cfg.single else f"category{k}", k)
        self.heads = nn.ModuleDict(
            {
                name: nn.Linear(cfg.hidden, cfg.item_dim if h.level is None else cfg.category_dim)
                for name, h in self.head_specs.items()
            }
        )

    def _input_dim(self, name: str) -> int:
        cfg = self.config
        if name == "micro":
            return (
                cfg.item_dim
                + cfg.n_levels * cfg.category_dim
                + cfg.behavior_dim
                + cfg.gap_dim
                + cfg.dwell_dim
            )
        if name == "item":
            return cfg.item_dim + (cfg.hidden if cfg.use_micro else 0)
        return cfg.category_dim + cfg.hidden

    # ---- typed access to the module containers ------------------------------------------------

    def cell_of(self, name: str) -> BehaviorLSTMCell:
        """The recurrent cell of layer `name`."""
        return cast(BehaviorLSTMCell, self.cells[name])

    def pool_of(self, name: str) -> AttentionPool:
        """The attention pooling of layer `name`."""
        return cast(AttentionPool, self.pools[name])

    def head_of(self, name: str) -> nn.Linear:
        """The dense profile head `name`."""
        return cast(nn.Linear, self.heads[name])

    def category_embedding(self, level: int) -> nn.Embedding:
        """The category embedding table of `level` (0 = coarsest)."""
        return cast(nn.Embedding, self.category_embeddings[level])

    # ---- shared by the sequence forward and the incremental step -------------------------

    def layer_input(self, name: str, f: dict[str, Tensor], finer: Tensor | None) -> LayerInput:
        """Inputs of layer `name` from feature tensors of any leading shape.

        `finer` is the open output of the next finer layer at the same events (None for
        the bottom layer).
        """
        if name == "micro":
            categories = torch.cat(
                [emb(f["categories"][..., k]) for k, emb in enumerate(self.category_embeddings)],
                dim=-1,
            )
            gap = self.gap_embedding(f["gap"])
            behavior = self.behavior_embedding(f["behavior"])
            x = torch.cat(
                [
                    self.item_embedding(f["item"]),
                    categories,
                    behavior,
                    gap,
                    self.dwell_embedding(f["dwell"]),
                ],
                dim=-1,
            )
            is_micro = f["is_micro"].bool()
            return LayerInput(x, gap, behavior, is_micro, is_micro, f["behavior"])
        if name == "item":
            parts = [self.item_embedding(f["item"])] + ([finer] if finer is not None else [])
            return LayerInput(
                torch.cat(parts, dim=-1),
                self.gap_embedding(f["item_gap"]),
                self.dwell_embedding(f["dwell"]),
                f["item_change"].bool(),
                torch.ones_like(f["item_change"], dtype=torch.bool),
                f["dwell"],
            )
        k = int(name.removeprefix("category"))
        assert finer is not None, "a category layer always has a finer layer"  # noqa: S101
        dwell = f["category_dwell"][..., k]
        return LayerInput(
            torch.cat([self.category_embedding(k)(f["categories"][..., k]), finer], dim=-1),
            self.gap_embedding(f["category_gap"][..., k]),
            self.dwell_embedding(dwell),
            f["category_change"][..., k].bool(),
            torch.ones_like(dwell, dtype=torch.bool),
            dwell,
        )

    def signal_embedding(self, name: str, ids: Tensor) -> Tensor:
        """Embedding of attention signals of layer `name`."""
        return self.behavior_embedding(ids) if name == "micro" else self.dwell_embedding(ids)

    def heads_of(self, layer: str) -> list[str]:
        """The profile heads fed by `layer`'s attention context, in a fixed order."""
        return [name for name, spec in self.head_specs.items() if spec.source == layer]

    def entry_summary(self, name: str, ys: Tensor, signals: Tensor) -> tuple[Tensor, Tensor]:
        """What a window entry contributes, reduced to what pooling needs.

        The attention score's first layer and the heads are linear, so an entry enters
        the profile only through its key (score-layer term, [*, A]) and its head
        projections without bias ([*, sum of head sizes]). Storing these instead of the
        output itself makes a user's state several times smaller.
        """
        keys = self.pool_of(name).keys(ys, self.signal_embedding(name, signals))
        values = torch.cat([F.linear(ys, self.head_of(h).weight) for h in self.heads_of(name)], -1)
        return keys, values

    def pooled_profiles(
        self, name: str, keys: Tensor, values: Tensor, mask: Tensor, last: Tensor
    ) -> dict[str, Tensor]:
        """Profiles of the heads of `name` from a window of entry summaries [N, W, *]."""
        weights = self.pool_of(name).weights(keys, mask, last)
        pooled = torch.einsum("nw,nwv->nv", weights, values)
        heads = self.heads_of(name)
        sizes = [self.head_of(h).out_features for h in heads]
        return {
            h: torch.tanh(part + self.head_of(h).bias)
            for h, part in zip(heads, pooled.split(sizes, dim=-1), strict=True)
        }

    def profiles(
        self, contexts: dict[str, Tensor], only: list[str] | None = None
    ) -> dict[str, Tensor]:
        """Profile vectors per head from the layers' contexts (tanh dense, as the authors)."""
        return {
            name: torch.tanh(self.heads[name](contexts[spec.source]))
            for name, spec in self.head_specs.items()
            if only is None or name in only
        }

    # ---- full-sequence forward -------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Profiles after the events at `positions`, from whole padded sequences.

        Args:
            batch: `collate_features` output, tensors [B, T] (category fields [B, T, K]).
            positions: [N, 2] (row, time) pairs of valid events.

        Returns:
            Profile per head, [N, D] (D = item_dim or category_dim).
        """
        valid = batch["valid"]
        finer = None
        contexts: dict[str, Tensor] = {}
        pooled: dict[str, Tensor] = {}
        for name in self.layer_names:
            inputs = self.layer_input(name, batch, finer)
            ys = self._run_layer(name, inputs, valid)  # [B, T, H]
            if self.config.attention:
                pooled.update(self._pool_at(name, ys, inputs, valid, positions))
            else:
                rows, times = positions[:, 0], positions[:, 1]
                contexts[name] = ys[rows, times]
            finer = ys
        if not self.config.attention:
            return self.profiles(contexts)
        return {name: pooled[name] for name in self.head_specs}

    def _run_layer(self, name: str, inputs: LayerInput, valid: Tensor) -> Tensor:
        batch_size, steps = valid.shape
        zeros = inputs.x.new_zeros(batch_size, self.config.hidden)
        h_committed, c_committed, h_open, c_open = zeros, zeros, zeros, zeros
        outputs = []
        cell = self.cell_of(name)
        x_gates, scale = cell.input_part(inputs.x, inputs.dt, inputs.a)  # [B, T, 4H], [B, T, H]
        commits = (inputs.change & valid).unsqueeze(-1)
        steps_mask = (inputs.recompute & valid).unsqueeze(-1)
        for t in range(steps):
            commit = commits[:, t]
            h_committed = torch.where(commit, h_open, h_committed)
            c_committed = torch.where(commit, c_open, c_committed)
            h_new, c_new = cell.recur(
                x_gates[:, t], None if scale is None else scale[:, t], h_committed, c_committed
            )
            step = steps_mask[:, t]
            h_open = torch.where(step, h_new, h_open)
            c_open = torch.where(step, c_new, c_open)
            outputs.append(h_open)
        return torch.stack(outputs, dim=1)

    def _pool_at(
        self, name: str, ys: Tensor, inputs: LayerInput, valid: Tensor, positions: Tensor
    ) -> dict[str, Tensor]:
        """Profiles of `name`'s heads at `positions`: attention over each one's window.

        Every entry enters through its summary (`entry_summary`), as in the stream.
        """
        rows, times = positions[:, 0], positions[:, 1]
        last = ys[rows, times]  # [N, H]
        batch_size, steps = valid.shape
        change = inputs.change & valid
        entry = change.long().cumsum(dim=1) - 1  # [B, T] index of the open entry at each event
        # The time of each entry's final event: that is the value it was committed with.
        arange = torch.arange(steps, device=ys.device).expand(batch_size, steps)
        entry_end = torch.full_like(entry, -1).scatter_reduce(
            1, entry.clamp(min=0), torch.where(valid, arange, -1), reduce="amax"
        )
        back = self.config.window - 1
        offsets = torch.arange(-back, 0, device=ys.device)  # [W-1]
        past = entry[rows, times].unsqueeze(1) + offsets  # [N, W-1] earlier entries
        has_past = past >= 0
        past_times = entry_end[rows.unsqueeze(1), past.clamp(min=0)]
        window_times = torch.cat([past_times, times.unsqueeze(1)], dim=1)  # [N, W]
        mask = torch.cat([has_past, has_past.new_ones(has_past.shape[0], 1)], dim=1)
        window_times = torch.where(mask, window_times, 0)
        keys, values = self.entry_summary(name, ys, inputs.signal)  # [B, T, A], [B, T, V]
        window = (rows.unsqueeze(1), window_times)
        return self.pooled_profiles(name, keys[window], values[window], mask, last)

    # ---- training ----------------------------------------------------------------------------

    def loss(
        self, batch: dict[str, Tensor], positions: Tensor, targets: dict[str, Tensor]
    ) -> Tensor:
        """Eq. 7: weighted cosine proximity of each level's profile to the next item/categories.

        A target that is the OOV id (a sku or category below the vocabulary's min-count) is
        left out of its level's term: the OOV embedding stands for every rare id at once, and
        pulling profiles toward it teaches nothing about the next item. Each level averages
        over its own remaining points.

        Args:
            batch, positions: as for `forward` (positions = the prediction points).
            targets: `item` [N] and `categories` [N, K] ids of what the user moved to next.
        """
        cfg = self.config
        profiles = self(batch, positions)
        levels: list[tuple[str, nn.Embedding, Tensor, float]] = [
            ("item", self.item_embedding, targets["item"], cfg.lambda_item)
        ]
        if "micro" in profiles and cfg.lambda_micro:
            levels.append(("micro", self.item_embedding, targets["item"], cfg.lambda_micro))
        for k in range(cfg.n_levels):
            emb = self.category_embedding(k)
            levels.append((f"category{k}", emb, targets["categories"][:, k], cfg.lambda_category))
        # Zero, but attached to the graph, so a batch whose targets are all OOV still backprops.
        total = profiles["item"].sum() * 0.0
        for head, table, target, weight in levels:
            keep = target != OOV
            if not bool(keep.any()):
                continue
            profile, target = profiles[head][keep], target[keep]
            loss = _cosine_loss(profile, table(target))
            if cfg.softmax_weight:
                loss = loss + cfg.softmax_weight * self._softmax_loss(profile, table.weight, target)
            total = total + weight * loss
        return total

    def _softmax_loss(self, profile: Tensor, table: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy over cosine scores: keeps trained target embeddings apart.

        Cosine proximity alone is minimised by collapsing every embedding onto one
        direction when the targets are trainable; the negatives of this term prevent it.
        """
        cfg = self.config
        if cfg.softmax_negatives and cfg.softmax_negatives < table.shape[0]:
            negatives = torch.randint(
                1, table.shape[0], (cfg.softmax_negatives,), device=table.device
            )
            candidates = torch.cat([target, negatives])
            labels = torch.arange(target.shape[0], device=table.device)
        else:
            candidates = torch.arange(table.shape[0], device=table.device)
            labels = target
        scores = F.normalize(profile, dim=-1) @ F.normalize(table[candidates], dim=-1).T
        return F.cross_entropy(scores / cfg.softmax_temperature, labels)


def _cosine_loss(profile: Tensor, target: Tensor) -> Tensor:
    return -F.cosine_similarity(profile, target, dim=-1).mean()
