"""HUP as a `Recommender`: cosine top-k, rankings per point, profiles at prediction points."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch

from hup.config import HupConfig
from hup.features import FeatureSpec
from hup.hup_checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from hup.hup_recommender import (
    HupRecommender,
    cosine_scores,
    profiles_at_points,
    rank_profiles,
    top_k_of_scores,
)
from hup.model import HupModel
from hup.points import prediction_points
from hup.runtime import Profiler
from hup.sessions import Session
from hup.synthetic import SyntheticConfig, generate
from hup.synthetic_ranking import ranking_inputs, ranking_model
from hup.vocab import Taxonomy, build_vocabularies

torch.set_num_threads(1)

# Row 0 is OOV and points exactly along the profile: it must never be returned.
TABLE = torch.tensor(
    [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.1], [-1.0, 0.0], [1.0, 0.5], [2.0, -0.3]]
)
PROFILE = torch.tensor([[3.0, 0.0]])


def _cosines(profile: torch.Tensor, ids: list[int]) -> list[float]:
    unit = torch.nn.functional.normalize
    return (unit(profile, dim=-1) @ unit(TABLE[ids], dim=-1).T).flatten().tolist()


def top_k_excluding(profiles, table, k, excluded):
    return top_k_of_scores(cosine_scores(profiles, table), k, excluded)


def test_top_k_is_in_descending_cosine_order_without_oov() -> None:
    assert top_k_excluding(PROFILE, TABLE, 4, [None]) == [[3, 6, 5, 2]]
    scores = _cosines(PROFILE, [3, 6, 5, 2])
    assert scores == sorted(scores, reverse=True)


def test_top_k_leaves_out_the_excluded_id_per_row() -> None:
    profiles = torch.cat([PROFILE, torch.tensor([[0.0, 1.0]])])
    assert top_k_excluding(profiles, TABLE, 3, [3, 1]) == [[6, 5, 2], [2, 5, 3]]


@pytest.mark.parametrize("k", [5, 6, 50])
@pytest.mark.parametrize("excluded", [None, 3])
def test_top_k_never_returns_oov_or_the_excluded_id_when_k_reaches_the_vocabulary(
    k: int, excluded: int | None
) -> None:
    # Six real ids (1..6); with one excluded only five can be ranked.
    available = [i for i in range(1, len(TABLE)) if i != excluded]
    (ranked,) = top_k_excluding(PROFILE, TABLE, k, [excluded])
    assert 0 not in ranked
    assert excluded not in ranked
    assert len(ranked) == min(k, len(available))
    assert len(set(ranked)) == len(ranked)


@pytest.fixture(scope="module")
def dataset():
    return generate(SyntheticConfig(users=10, seed=9, min_events=3, max_events=10))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, dataset) -> Checkpoint:
    """An untrained checkpoint whose vocabularies know only the first half of the sessions."""
    taxonomy = Taxonomy(dataset.taxonomy)
    half = dataset.sessions[: len(dataset.sessions) // 2]
    vocab = build_vocabularies((e for s in half for e in s.events), taxonomy.n_levels, taxonomy)
    torch.manual_seed(1)
    model = HupModel(
        HupConfig(
            n_items=len(vocab.items),
            n_categories=tuple(len(v) for v in vocab.categories),
            hidden=16,
            window=5,
        )
    )
    directory: Path = tmp_path_factory.mktemp("recommender") / "model"
    save_checkpoint(directory, model, FeatureSpec(n_levels=taxonomy.n_levels), vocab)
    return load_checkpoint(directory)


@pytest.mark.parametrize("k_items", [10, "vocabulary"])
def test_rank_returns_training_items_k_per_point_without_the_last_input(
    checkpoint: Checkpoint, dataset, k_items: int | str
) -> None:
    sessions = dataset.sessions  # the second half holds items the model never saw
    points = prediction_points(sessions)
    vocab = checkpoint.vocabularies
    known_items = set(vocab.items.tokens[1:])
    assert any(p.last_input_item not in known_items for p in points)  # OOV inputs included
    assert any(p.last_input_item in known_items for p in points)
    k = len(vocab.items) if k_items == "vocabulary" else k_items  # k >= every candidate
    rankings = HupRecommender("hup", checkpoint=checkpoint).rank(sessions, points, k, 3)
    assert len(rankings.items) == len(rankings.categories) == len(points)
    for point, items, categories in zip(points, rankings.items, rankings.categories, strict=True):
        candidates = known_items - {point.last_input_item}
        assert point.last_input_item not in items
        assert set(items) <= known_items, set(items) - known_items
        assert len(items) == min(k, len(candidates))
        assert len(set(items)) == len(items)
        assert len(categories) == vocab.n_levels
        for level, ranked in enumerate(categories):
            known = vocab.categories[level].tokens[1:]
            assert len(ranked) == min(3, len(known))
            assert set(ranked) <= set(known)


def test_rank_with_no_points_and_before_fit(checkpoint: Checkpoint, dataset) -> None:
    empty = HupRecommender("hup", checkpoint=checkpoint).rank(dataset.sessions, [], 10, 3)
    assert (empty.items, empty.categories) == ([], [])
    with pytest.raises(RuntimeError, match="before fit"):
        HupRecommender("hup").rank(dataset.sessions, prediction_points(dataset.sessions), 10, 3)


def test_fit_calls_the_training_function_with_both_splits(checkpoint: Checkpoint) -> None:
    calls = []

    def fit_fn(train, valid):
        calls.append((train, valid))
        return checkpoint

    recommender = HupRecommender("hup", fit_fn=fit_fn)
    recommender.fit(["train"], ["valid"])
    assert calls == [(["train"], ["valid"])]
    assert recommender.checkpoint is checkpoint


def _stepped_profiles(profiler: Profiler, sessions: list[Session]) -> list[list[dict | None]]:
    """Per session, per event index: the latest profile, stepping every user in lockstep.

    Each `apply` call gets the next event of every session that has one (distinct users).
    """
    states = [profiler.new_state() for _ in sessions]
    latest: list[dict | None] = [None] * len(sessions)
    out: list[list[dict | None]] = [[] for _ in sessions]
    for t in range(max(len(s.events) for s in sessions)):
        rows = [i for i, s in enumerate(sessions) if t < len(s.events)]
        applied = profiler.apply([states[i] for i in rows], [sessions[i].events[t] for i in rows])
        assert len(applied) == len(rows)
        for i, result in zip(rows, applied, strict=True):
            states[i] = result.state
            if result.profile is not None:
                latest[i] = result.profile.vectors
            out[i].append(latest[i])
    return out


def test_profiles_at_points_equal_the_incremental_stepping_profiles(
    checkpoint: Checkpoint, dataset
) -> None:
    sessions = dataset.sessions
    points = prediction_points(sessions)
    random.Random(0).shuffle(points)  # any order: results come back in the order asked
    offline = profiles_at_points(checkpoint, sessions, points, batch_size=3)
    assert set(offline) == set(checkpoint.model.head_specs)
    profiler = Profiler(checkpoint)
    stepped = _stepped_profiles(profiler, sessions)
    for n, point in enumerate(points):
        expected = stepped[point.session_index][point.n_input - 1]
        assert expected is not None
        for head, vector in expected.items():
            torch.testing.assert_close(
                offline[head][n], torch.from_numpy(vector), atol=1e-5, rtol=0, msg=head
            )


def test_profiles_at_points_run_on_the_models_device(checkpoint: Checkpoint, dataset) -> None:
    """Batches and positions go to the model's device (`--device cuda`); here the meta device.

    No GPU runs these tests: the meta device has no data but checks devices like CUDA does, so
    a batch left on the CPU fails the forward pass exactly as it would on a GPU.
    """
    model = copy.deepcopy(checkpoint.model).to("meta")
    seen: list[set[torch.device]] = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        batch, positions = args
        seen.append({*(value.device for value in batch.values()), positions.device})

    model.register_forward_pre_hook(record)
    on_meta = Checkpoint(model, checkpoint.spec, checkpoint.vocabularies, "meta", {})
    points = prediction_points(dataset.sessions)
    profiles = profiles_at_points(on_meta, dataset.sessions, points, batch_size=4)
    assert len(seen) > 1 and all(devices == {torch.device("meta")} for devices in seen)
    for head, value in profiles.items():
        assert value.device == torch.device("meta"), head
        assert value.shape[0] == len(points), head


def test_ranking_some_category_levels_gives_those_levels_of_the_full_ranking() -> None:
    model = ranking_model(500, seed=3)
    inputs = ranking_inputs(model, 16, seed=3)
    excluded: list[int | None] = [None] * 16
    items, every_level = rank_profiles(model, inputs, 20, 5, excluded)
    assert len(every_level) == model.config.n_levels > 1
    finest = model.config.n_levels - 1
    only_items, only = rank_profiles(model, inputs, 20, 5, excluded, levels=(finest, 0))
    assert only_items == items
    assert only == [every_level[finest], every_level[0]]
