"""Word2vec baselines: skip-gram sku embeddings, ranked by cosine to the last or average input sku.

* ``Word2vec`` (Grbovic et al., KDD 2015, prod2vec; the paper's [10]): the profile is the
  embedding of the last input sku.
* ``Word2vec-avg`` (as in RIB's paper, [41]): the profile is the average embedding of the
  input's item runs (each visit counts once, like a word of the training sentences).

The embeddings are those HUP initialises its items with (`hup.train.skipgram_vectors`):
gensim skip-gram over the training sessions' item runs, one sentence per session (window
5, 10 negatives, 10 epochs). Nothing is learnt by gradient, so the shared fit loop runs no
epochs (``trainable = False``). Input skus outside the training vocabulary have no
embedding: ``Word2vec`` then falls back to the latest known input sku, ``Word2vec-avg``
leaves them out. Categories: "last category" (the input's categories, most recent first,
then popularity), the protocol's fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hup.sessions import Session
from hup.vocab import Vocabularies
from hup.zoo.base import SequenceModel, ZooConfig, skipgram_table

__all__ = ["Word2vec", "Word2vecAvg", "Word2vecConfig"]


@dataclass(frozen=True)
class Word2vecConfig(ZooConfig):
    """Only ``item_dim`` (the skip-gram vector size) matters."""


class Word2vec(SequenceModel):
    """Profile = skip-gram embedding of the last known input sku; cosine ranking."""

    name = "word2vec"
    config_class = Word2vecConfig
    trainable = False
    scoring = "cosine"
    category_heads = False

    def __init__(self, config: Word2vecConfig) -> None:
        """An all-zero table until `prepare` fills it (a buffer: saved, never trained)."""
        super().__init__(config)
        self.register_buffer("vectors", torch.zeros(config.n_items, config.item_dim))
        self.vectors: Tensor

    def prepare(self, train: Sequence[Session], vocabularies: Vocabularies, seed: int) -> None:
        """Train skip-gram on the training sessions; its vectors are the table."""
        self.vectors.copy_(skipgram_table(train, vocabularies, self.config.item_dim, seed))

    def _known_runs(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, T] True at the first micro event of each run of a training sku."""
        run_start = batch["item_change"].bool() & batch["is_micro"].bool() & batch["valid"]
        return run_start & (batch["item"] != 0)

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """The latest known input sku's vector at each point, [N, D] (zero if none is known)."""
        known = self._known_runs(batch)
        times = torch.arange(known.shape[1], device=known.device).expand_as(known)
        latest = torch.where(known, times, -1).cummax(dim=1).values  # [B, T]
        rows, t = positions[:, 0], positions[:, 1]
        item = torch.where(
            latest[rows, t] >= 0, batch["item"][rows, latest[rows, t].clamp(min=0)], 0
        )
        return {"item": self.vectors[item]}

    def output_table(self, head: str) -> tuple[Tensor, Tensor | None]:
        """The skip-gram table (items only)."""
        return self.vectors, None


class Word2vecAvg(Word2vec):
    """Profile = mean skip-gram embedding of the input's known item runs; cosine ranking."""

    name = "word2vec-avg"

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Running mean of the run vectors up to each point, [N, D]."""
        known = self._known_runs(batch).unsqueeze(-1)  # [B, T, 1]
        sums = (self.vectors[batch["item"]] * known).cumsum(dim=1)  # [B, T, D]
        counts = known.cumsum(dim=1).clamp(min=1)  # [B, T, 1]
        rows, t = positions[:, 0], positions[:, 1]
        return {"item": sums[rows, t] / counts[rows, t]}
