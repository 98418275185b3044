"""The zoo's contract for neural sequence models: config, profiles at points, loss, output tables.

How to add a model (e.g. DUPN, SDM, MIND, DHAN) to the comparison:

1. Write ``hup/zoo/<name>.py`` with a frozen ``@dataclass`` config subclassing `ZooConfig`
   (one comment per field; defaults are the model's documented defaults) and an ``nn.Module``
   subclassing `SequenceModel` with ``config_class`` set to it and ``name`` to its CLI name.
2. ``forward(batch, positions)`` receives `hup.model.collate_features` tensors ([B, T], category
   fields [B, T, K], ``valid`` [B, T]) of whole featurized sessions and the (row, time) pairs of
   the events to profile ([N, 2]; always micro events). It must be causal: the profile at
   (b, t) may read only events <= t of row b (every sequence op in `hup.zoo.ops` is). It
   returns a dict of per-point tensors: ``"item"`` [N, D] in the space of
   ``output_table("item")`` and ``"category{k}"`` per level k (coarse..fine) when the model
   has category heads. Extra keys are allowed (they reach `scores`, e.g. a sequence memory for
   a target-aware model).
3. ``loss(batch, positions, targets)``: the default is softmax cross-entropy of `scores` against
   the next item (weight 1) and each level's next category (``category_weight``). Override it
   for another objective (sampled softmax, BPR, label-aware attention...).
4. ``scores(profiles, head) -> [N, V]``: the default is the dot product with the head's output
   table plus its bias (``scoring = "dot"``) or the cosine (``scoring = "cosine"``). Override it
   for multi-interest profiles (MIND: the max over interests) or target-aware scoring (DHAN:
   attend to the sequence once per candidate).
5. Other hooks, all optional: ``prepare`` (fit what gradients do not, before the epochs:
   word2vec tables, ``pretrained_items``), ``training_batches``/``count_batches`` (another
   kind of example than the prediction points, e.g. BPR-MF's (session, sku) pairs),
   ``trainable = False`` (no epochs), ``category_heads = False`` (categories by the
   protocol's "last category" rule).
6. Register the class in `hup.zoo.registry` (``ZOO_CLASSES`` and ``DISPLAY_NAMES``); the
   CLI (``hup train --model``, ``hup compare``) and the parametrized tests in
   tests/hup/zoo (beats POP after a short training, causal, ranks by the protocol,
   checkpoints) pick it up from there. Add its paper figures to `hup.zoo.paper` if any.

Everything else is shared: `hup.zoo.fit.fit_zoo` builds the vocabularies and the causal
featurizer exactly as HUP's recipe does, trains on `hup.sequences.batches` (the protocol's
prediction points) with `hup.train.fit_epochs` (Adam, gradient clipping) under the common
budget (max epochs, patience, batch size, seed), stops early on validation item Recall@20 and
saves a checkpoint (`hup.zoo.zoo_checkpoint`); `hup.zoo.zoo_recommender` ranks through `scores`,
removing the OOV id and the last input sku. Zoo models are offline comparison models: they
have no incremental ``step`` (the stream serves HUP), so causality is tested instead by
comparing profiles on whole and truncated sessions. ``profiles_at_points`` concatenates
every returned tensor along N, so per-point tensors of any shape work ([N, K, D] interests,
an [N, W, D] memory with its [N, W] mask).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from hup.config import SavedConfig
from hup.model_contract import ProfileModel
from hup.sequences import FeaturizedSession, batches, count_batches
from hup.sessions import Session
from hup.train import skipgram_vectors
from hup.vocab import Vocabularies

__all__ = ["Batch", "OutputHeads", "SequenceModel", "ZooConfig", "skipgram_table"]

Batch = tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]
"""(features, positions [N, 2], targets) as `hup.sequences.batches` yields them."""


@dataclass(frozen=True)
class ZooConfig(SavedConfig):
    """Sizes every zoo model has; saved in its checkpoint. Subclasses add their own fields."""

    n_items: int  # item vocabulary size, OOV (id 0) included
    n_categories: tuple[int, ...]  # category vocabulary size per level, coarse..fine
    n_train_sessions: int = 0  # training sessions (models with per-session factors need it)
    n_behaviors: int = 11  # JD codes 1..10; id 0 unused
    n_gap_buckets: int = 5  # FeatureSpec buckets (the paper's)
    n_dwell_buckets: int = 5
    item_dim: int = 64  # item embedding / item profile size
    category_dim: int = 16  # category profile size
    behavior_dim: int = 8
    gap_dim: int = 8
    dwell_dim: int = 8
    hidden: int = 100  # recurrent size (the paper's 100 for every RNN)
    # Adam's rate and the dropout on a model's inputs and final representation: picked for
    # GRU4Rec on the JD Appliances validation split (rate 0.01 vs 0.03, dropout 0 vs 0.3,
    # 10 epochs: 700 sessions make ~6 steps an epoch, and without dropout the softmax
    # overfits the ~7k skus by epoch 5), then used by every softmax model of the zoo.
    learning_rate: float = 3e-2
    dropout: float = 0.3
    category_weight: float = 0.5  # loss weight of each category level (items weigh 1)
    # Initialise ``item_embedding`` with HUP's skip-gram vectors (HUP's default): off by
    # default, as the baselines' papers train theirs; on, it is a control for the comparison.
    pretrained_items: bool = False


class OutputHeads(nn.Module):
    """Hidden state -> item and category profiles, with the output tables they are scored on.

    A softmax output layer ``W h + b`` factorised as ``table @ (P h) + bias``: the profile
    ``P h`` lives in the table's space, which is what the contract ranks with.
    """

    def __init__(self, hidden: int, config: ZooConfig, categories: bool = True) -> None:
        """Create projections and tables for the item and (optionally) each category level."""
        super().__init__()
        sizes = {"item": (config.n_items, config.item_dim)}
        if categories:
            for k, n in enumerate(config.n_categories):
                sizes[f"category{k}"] = (n, config.category_dim)
        self.project = nn.ModuleDict({h: nn.Linear(hidden, d) for h, (_, d) in sizes.items()})
        self.tables = nn.ParameterDict(
            {h: nn.Parameter(0.05 * torch.randn(n, d)) for h, (n, d) in sizes.items()}
        )
        self.biases = nn.ParameterDict(
            {h: nn.Parameter(torch.zeros(n)) for h, (n, _) in sizes.items()}
        )

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        """Profiles per head from hidden states [N, H] -> [N, D_head]."""
        return {name: proj(h) for name, proj in self.project.items()}

    def table(self, head: str) -> tuple[Tensor, Tensor]:
        """(weight [V, D], bias [V]) of one head."""
        return self.tables[head], self.biases[head]


class SequenceModel(ProfileModel):
    """Base of every zoo model: `ProfileModel` plus the hooks the module docstring lists."""

    name: ClassVar[str]  # the CLI name, the key of `hup.zoo.registry.ZOO_CLASSES`
    config: ZooConfig
    config_class: ClassVar[type[ZooConfig]] = ZooConfig
    trainable: ClassVar[bool] = True  # False: `prepare` fits it; no gradient epochs
    scoring: ClassVar[Literal["dot", "cosine"]] = "dot"
    category_heads: ClassVar[bool] = True  # False: categories by "last category"

    def __init__(self, config: ZooConfig) -> None:
        """Keep the config; subclasses build their layers from it."""
        super().__init__()
        self.config = config

    # ---- what every model implements (and `ProfileModel.forward`) ---------------------------

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The table [V, D] a head's profiles are scored against, and its bias [V] or None."""
        raise NotImplementedError

    # ---- defaults a model may override -----------------------------------------------------

    @property
    def heads(self) -> list[str]:
        """The heads `scores` ranks: the item, then each category level if the model has them."""
        levels = range(self.config.n_levels) if self.category_heads else range(0)
        return ["item", *(f"category{k}" for k in levels)]

    def scores(self, profiles: dict[str, Tensor], head: str) -> Tensor:
        """Score of every id of ``head``'s vocabulary for each point, [N, V] (higher is better)."""
        weight, bias = self.output_table(head)
        profile = profiles[head]
        if self.scoring == "cosine":
            return F.normalize(profile, dim=-1) @ F.normalize(weight, dim=-1).T
        out = profile @ weight.T
        return out if bias is None else out + bias

    def loss(
        self, batch: dict[str, Tensor], positions: Tensor, targets: dict[str, Tensor]
    ) -> Tensor:
        """Softmax cross-entropy of the next item (weight 1) and next categories (each level)."""
        profiles = self(batch, positions)
        total = _cross_entropy(self.scores(profiles, "item"), targets["item"])
        for head in self.heads[1:]:
            k = int(head.removeprefix("category"))
            ce = _cross_entropy(self.scores(profiles, head), targets["categories"][:, k])
            total = total + self.config.category_weight * ce
        return total

    def prepare(self, train: Sequence[Session], vocabularies: Vocabularies, seed: int) -> None:
        """Fit what is not learnt by gradient before the epochs (here: ``pretrained_items``)."""
        embedding = getattr(self, "item_embedding", None)
        if self.config.pretrained_items and isinstance(embedding, nn.Embedding):
            table = skipgram_table(train, vocabularies, embedding.embedding_dim, seed)
            found = table.abs().sum(dim=1) > 0
            embedding.weight.data[found] = table[found]

    def training_batches(
        self,
        sessions: Sequence[FeaturizedSession],
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """One epoch of training batches; the default is the protocol's prediction points."""
        return batches(sessions, batch_size, generator)

    def count_batches(self, sessions: Sequence[FeaturizedSession], batch_size: int) -> int:
        """How many batches `training_batches` yields per epoch (for progress bars)."""
        return count_batches(sessions, batch_size)


def skipgram_table(
    train: Sequence[Session], vocabularies: Vocabularies, dim: int, seed: int
) -> Tensor:
    """HUP's skip-gram vectors (`hup.train.skipgram_vectors`) as a table [V, dim] (OOV: 0)."""
    vectors = skipgram_vectors(train, dim, seed)
    table = torch.zeros(len(vocabularies.items), dim)
    for token_id, token in enumerate(vocabularies.items.tokens):
        if token_id and token in vectors:
            table[token_id] = torch.from_numpy(vectors[token].copy())
    return table


def _cross_entropy(scores: Tensor, target: Tensor) -> Tensor:
    # OOV targets (id 0; only with min_item_count > 1) carry no signal: ignore them.
    if bool((target == 0).all()):
        return scores.sum() * 0.0
    return F.cross_entropy(scores, target, ignore_index=0)
