"""MIND: the interest count follows log2 of the behaviours."""

from __future__ import annotations

import math

import torch
from untrained_zoo import untrained_model

from hup.features import Featurizer
from hup.model import collate_features
from hup.sequences import featurize_session
from hup.zoo.mind import Mind, MindConfig


def test_mind_interest_count_follows_log2_of_the_behaviours(tiny) -> None:
    """K' = max(1, min(K, floor(log2 |I_u|))) with |I_u| the item runs routed at the point."""
    _, _, test, _ = tiny
    model, _, _, checkpoint = untrained_model(Mind, "mind", tiny, window=50)
    assert isinstance(model.config, MindConfig)
    featurizer = Featurizer(checkpoint.spec, checkpoint.vocabularies)
    sessions = [featurize_session(featurizer, s) for s in test]
    batch = collate_features([s.features for s in sessions])
    times = batch["valid"].sum(dim=1) - 1  # each session's last event
    positions = torch.stack([torch.arange(len(sessions)), times], dim=1)
    with torch.no_grad():
        profiles = model(batch, positions)
    runs = (batch["item_change"].bool() & batch["is_micro"].bool() & batch["valid"]).sum(1)
    expected = [max(1, min(4, math.floor(math.log2(n)))) for n in runs.tolist()]
    assert profiles["interest_mask"].sum(dim=1).tolist() == expected
    assert len(set(expected)) > 1
    scores = model.scores(profiles, "item")
    assert scores.shape == (len(sessions), model.config.n_items) and torch.isfinite(scores).all()
