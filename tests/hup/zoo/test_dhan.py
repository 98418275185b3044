"""DHAN: target-aware scoring of every candidate, and its clusters."""

from __future__ import annotations

import torch
from untrained_zoo import untrained_model

from hup.hup_recommender import profiles_at_points
from hup.zoo import dhan as dhan_module
from hup.zoo.dhan import Dhan, DhanConfig


def test_dhan_scores_every_candidate_like_a_subset_and_in_chunks(tiny, monkeypatch) -> None:
    model, points, test, checkpoint = untrained_model(Dhan, "dhan", tiny, window=6)
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
