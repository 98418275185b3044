"""The seed systems' own mechanics: SDM's session split, MIND's interest count, DHAN's scoring."""

from __future__ import annotations

import math

import torch

from hup.features import Featurizer
from hup.hup_recommender import profiles_at_points
from hup.model import collate_features
from hup.points import prediction_points
from hup.sequences import featurize_session
from hup.train import training_vocabularies
from hup.zoo import dhan as dhan_module
from hup.zoo.dhan import Dhan, DhanConfig
from hup.zoo.mind import Mind, MindConfig
from hup.zoo.sdm import Sdm, SdmConfig
from hup.zoo.zoo_checkpoint import ZooCheckpoint


def _profiles(cls, name: str, splits, **sizes):
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


def test_sdm_short_and_long_parts_slide_causally(tiny) -> None:
    model, points, test, checkpoint = _profiles(Sdm, "sdm", tiny, short=2, long=3, heads=2)
    assert isinstance(model.config, SdmConfig)
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


def test_mind_interest_count_follows_log2_of_the_behaviours(tiny) -> None:
    """K' = max(1, min(K, floor(log2 |I_u|))) with |I_u| the item runs routed at the point."""
    _, _, test, _ = tiny
    model, _, _, checkpoint = _profiles(Mind, "mind", tiny, window=50)
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


def test_dhan_scores_every_candidate_like_a_subset_and_in_chunks(tiny, monkeypatch) -> None:
    model, points, test, checkpoint = _profiles(Dhan, "dhan", tiny, window=6)
    assert isinstance(model.config, DhanConfig)
    profiles = profiles_at_points(checkpoint, test, points)
    full = model.scores(profiles, "item")  # [N, V]
    weight, bias = model.output_table("item")
    subset = torch.tensor([1, 5, 7])
    with torch.no_grad():
        part = model._candidate_scores(profiles, weight[subset]) + bias[subset]
    torch.testing.assert_close(part, full[:, subset])
    # Per-point candidates (training: each point's target + shared negatives) agree too.
    per_point = torch.stack([torch.arange(len(full)) % 9 + 1, torch.full((len(full),), 5)], 1)
    with torch.no_grad():
        own = model._candidate_scores(profiles, weight[per_point]) + bias[per_point]
    torch.testing.assert_close(own, full.gather(1, per_point))
    monkeypatch.setattr(dhan_module, "_CELLS", 1)  # one point per chunk
    torch.testing.assert_close(model.scores(profiles, "item"), full)
    with torch.no_grad():
        chunked = model._candidate_scores(profiles, weight[per_point]) + bias[per_point]
    torch.testing.assert_close(chunked, own)


def test_dhan_clusters_are_the_first_slot_of_each_category() -> None:
    groups = torch.tensor([[9, 3, 4, 3, 9, 3]])
    mask = torch.tensor([[False, True, True, True, True, True]])
    slots = dhan_module._cluster_slots(groups, mask)
    assert slots.tolist() == [[0, 1, 2, 1, 4, 1]]
