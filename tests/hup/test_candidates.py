"""Candidate ranking of large vocabularies: recall, equal scores, the switch and the fallback."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from hup import candidates
from hup.candidates import ItemIndex, RankingOptions, build_item_index
from hup.config import HupConfig
from hup.exceptions import RankingOptionsError
from hup.features import FeatureSpec
from hup.hup_checkpoint import Checkpoint
from hup.hup_recommender import rank_profiles
from hup.model import HupModel
from hup.runtime import Profiler
from hup.synthetic_ranking import ranking_inputs, ranking_model
from hup.vocab import Vocabularies, Vocabulary

pytest.importorskip("faiss", reason="the candidate path needs the ann extra (faiss-cpu)")

torch.set_num_threads(1)

LARGE = 200_000
POINTS = 64
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def large():
    model = ranking_model(LARGE, seed=0, item_dim=16)
    index = build_item_index(model, RankingOptions(min_items=LARGE))
    assert isinstance(index, ItemIndex)
    return model, index, ranking_inputs(model, POINTS, seed=0)


def _excluded(inputs: dict[str, torch.Tensor]) -> list[int | None]:
    # Offline the last input sku is left out; here every other row leaves out a remembered id.
    return [int(i) if n % 2 else None for n, i in enumerate(inputs["repeat_items"][:, 1])]


def test_candidates_recall_the_exact_top_20_with_the_exact_scores(large) -> None:
    model, index, inputs = large
    excluded = _excluded(inputs)
    exact, exact_levels = rank_profiles(model, inputs, 20, 5, excluded)
    approx, approx_levels = rank_profiles(model, inputs, 20, 5, excluded, index)
    found = [len(set(e) & set(a)) / len(e) for (e, _), (a, _) in zip(exact, approx, strict=True)]
    assert sum(found) / len(found) >= 0.95
    for (exact_ids, exact_scores), (ids, scores) in zip(exact, approx, strict=True):
        assert len(ids) == 20
        assert 0 not in ids
        assert scores == sorted(scores, reverse=True)
        # The exact normaliser: an id both rank has one probability, whichever path ranks it.
        by_id = dict(zip(exact_ids, exact_scores, strict=True))
        shared = [i for i in ids if i in by_id]
        assert [s for i, s in zip(ids, scores, strict=True) if i in by_id] == pytest.approx(
            [by_id[i] for i in shared], abs=TOLERANCE
        )
    for row, (ids, _) in enumerate(approx):
        assert int(inputs["repeat_open_item"][row]) not in ids
        assert excluded[row] not in ids
    assert approx_levels == exact_levels  # categories are always ranked exactly


def _top_ids(model, inputs, index, k=10):
    ranked, _ = rank_profiles(model, inputs, k, 3, [None] * len(inputs["item"]), index)
    return [ids for ids, _ in ranked]


@pytest.mark.parametrize("channel", ["repeat", "neighbours", "prior"])
def test_the_candidate_set_holds_what_the_index_cannot_find(channel: str) -> None:
    # One id from the index (M = 1): the ids that lead the exact ranking come from the
    # remembered ids (a gate near 1), the co-visitation neighbours (a large weight on
    # their score) or the prior (ten ids far above every other) only.
    model = ranking_model(20_000, seed=3, item_dim=16)
    heads = model.repeat_heads
    with torch.no_grad():
        if channel == "repeat":
            heads.item_gate.bias.fill_(12.0)
        elif channel == "neighbours":
            heads.item_neighbour_scale.fill_(40.0)
        else:
            heads.item_bias[torch.arange(1, 20_000, 2_000)] += 100.0
    inputs = ranking_inputs(model, 16, seed=3)
    prior = 10 if channel == "prior" else 0
    options = RankingOptions(min_items=1, ann_candidates=1, prior_candidates=prior, nprobe=1)
    index = build_item_index(model, options)
    assert index is not None
    exact, got = _top_ids(model, inputs, None), _top_ids(model, inputs, index)
    if channel == "repeat":
        # Only the remembered ids (not the open one) lead; the explore channel's ids follow.
        remembered = (inputs["repeat_items"] != 0).sum(1) - 1
        exact = [ids[: int(n)] for ids, n in zip(exact, remembered, strict=True)]
        got = [ids[: int(n)] for ids, n in zip(got, remembered, strict=True)]
        assert sum(map(len, exact)) > 16 * 5
    assert got == exact
    if channel == "prior":
        assert sorted(index.prior_ids.tolist()) == list(range(1, 20_000, 2_000))


def test_candidates_covering_the_vocabulary_rank_exactly() -> None:
    model = ranking_model(3_000, seed=5)
    inputs = ranking_inputs(model, 32, seed=5)
    index = build_item_index(model, RankingOptions(min_items=1, ann_candidates=3_000))
    excluded = _excluded(inputs)
    exact, _ = rank_profiles(model, inputs, 20, 3, excluded)
    approx, _ = rank_profiles(model, inputs, 20, 3, excluded, index)
    for (exact_ids, exact_scores), (ids, scores) in zip(exact, approx, strict=True):
        assert ids == exact_ids
        assert scores == pytest.approx(exact_scores, abs=TOLERANCE)


def test_two_builds_from_one_model_rank_identically() -> None:
    model = ranking_model(20_000, seed=2, item_dim=16)
    inputs = ranking_inputs(model, 16, seed=2)
    options = RankingOptions(min_items=1, ann_candidates=50, nprobe=4)
    first, second = build_item_index(model, options), build_item_index(model, options)
    assert first is not None and second is not None
    assert rank_profiles(model, inputs, 20, 3, [None] * 16, first) == rank_profiles(
        model, inputs, 20, 3, [None] * 16, second
    )


def _checkpoint(model) -> Checkpoint:
    n_items, levels = model.config.n_items, model.config.n_categories
    vocab = Vocabularies(
        Vocabulary(tuple(f"sku{i}" for i in range(n_items))),
        tuple(Vocabulary(tuple(f"c{k}-{i}" for i in range(n))) for k, n in enumerate(levels)),
    )
    return Checkpoint(model, FeatureSpec(n_levels=len(levels)), vocab, "m", {})


def test_the_threshold_switches_between_exact_and_candidate_ranking() -> None:
    model = ranking_model(5_000, seed=1)
    assert build_item_index(model, RankingOptions(min_items=5_001)) is None
    assert isinstance(build_item_index(model, RankingOptions(min_items=5_000)), ItemIndex)
    assert build_item_index(model, RankingOptions(min_items=0)) is None  # 0: never
    paper = HupModel(HupConfig(n_items=5_000, n_categories=(8,)))
    assert build_item_index(paper, RankingOptions(min_items=1)) is None
    checkpoint = _checkpoint(model)
    assert Profiler(checkpoint, ranking=RankingOptions(min_items=5_001)).item_index is None
    assert Profiler(checkpoint, ranking=RankingOptions(min_items=5_000)).item_index is not None


def test_the_default_threshold_is_100k_items_and_the_environment_sets_it(monkeypatch) -> None:
    for name in ("HUP_ANN_MIN_ITEMS", "HUP_ANN_CANDIDATES", "HUP_ANN_PRIOR", "HUP_ANN_NPROBE"):
        monkeypatch.delenv(name, raising=False)
    default = RankingOptions.from_env()
    assert default == RankingOptions()
    assert not default.applies_to(99_999) and default.applies_to(100_000)
    monkeypatch.setenv("HUP_ANN_MIN_ITEMS", "5000")
    monkeypatch.setenv("HUP_ANN_CANDIDATES", "300")
    monkeypatch.setenv("HUP_ANN_PRIOR", "0")
    monkeypatch.setenv("HUP_ANN_NPROBE", "16")
    assert RankingOptions.from_env() == RankingOptions(5000, 300, 0, 16)
    checkpoint = _checkpoint(ranking_model(5_000, seed=1))
    assert Profiler(checkpoint).item_index is not None  # the stream reads the same variables
    monkeypatch.setenv("HUP_ANN_NPROBE", "many")
    with pytest.raises(RankingOptionsError, match="HUP_ANN_NPROBE must be an integer, got 'many'"):
        RankingOptions.from_env()
    monkeypatch.setenv("HUP_ANN_NPROBE", "0")
    with pytest.raises(RankingOptionsError, match="HUP_ANN_.*nprobe must be >= 1"):
        RankingOptions.from_env()
    with pytest.raises(RankingOptionsError):
        RankingOptions(ann_candidates=0)


def test_without_faiss_large_vocabularies_rank_exactly_with_one_warning(
    monkeypatch, caplog
) -> None:
    model = ranking_model(5_000, seed=1)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    candidates._warn_without_faiss.cache_clear()
    caplog.set_level(logging.WARNING, logger="hup.candidates")
    options = RankingOptions(min_items=1)
    assert build_item_index(model, options) is None
    assert build_item_index(model, options) is None
    warnings = [r for r in caplog.records if r.name == "hup.candidates"]
    assert len(warnings) == 1
    assert "hup-stream[ann]" in warnings[0].getMessage()
    candidates._warn_without_faiss.cache_clear()
