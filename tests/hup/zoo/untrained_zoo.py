"""An untrained zoo model with its profiles' inputs, for the tests of one model's mechanics."""

from __future__ import annotations

import torch

from hup.hup_recommender import profiles_at_points
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


def assert_causal(checkpoint, test, points) -> None:
    """Profiles at every point equal those of the sessions cut at the point: nothing leaks
    from the future."""
    full = profiles_at_points(checkpoint, test, points)
    cut_sessions = [
        type(s)(s.session_id, s.user_id, s.events[: p.n_input])
        for s, p in ((test[p.session_index], p) for p in points)
    ]
    cut_points = [
        type(p)(n, p.n_input, p.target_item, p.target_categories, p.last_input_item, p.is_last)
        for n, p in enumerate(points)
    ]
    cut = profiles_at_points(checkpoint, cut_sessions, cut_points)
    for head in full:
        torch.testing.assert_close(full[head], cut[head], rtol=1e-5, atol=1e-5)
