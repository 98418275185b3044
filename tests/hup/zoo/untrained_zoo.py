"""An untrained zoo model with its profiles' inputs, for the tests of one model's mechanics."""

from __future__ import annotations

import torch

from hup.points import prediction_points
from hup.train import training_vocabularies
from hup.zoo.zoo_checkpoint import ZooCheckpoint


def untrained_model(cls, name: str, splits, **sizes):
    """(model, test points, test sessions, checkpoint) of a seeded untrained ``cls``."""
    train, _, test, taxonomy = splits
    vocab, spec = training_vocabularies(train, taxonomy)
    config = cls.config_class(
        n_items=len(vocab.items),
        n_categories=tuple(len(v) for v in vocab.categories),
        hidden=8,
        item_dim=8,
        **sizes,
    )
    torch.manual_seed(0)
    model = cls(config).eval()
    points = prediction_points(test)
    checkpoint = ZooCheckpoint(name, model, spec, vocab, "test", {})
    return model, points, test, checkpoint
