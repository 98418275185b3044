"""The Profiler the stream drives: batches of users' events in, states and profiles out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hup.config import HupConfig
from hup.exceptions import CheckpointError
from hup.features import FeatureSpec
from hup.hup_checkpoint import load_checkpoint, save_checkpoint
from hup.model import HupModel
from hup.runtime import Profiler, round_scores
from hup.schema import MicroEvent
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy, build_vocabularies

torch.set_num_threads(1)

ITEM_DIM, CATEGORY_DIM = 10, 6


@pytest.fixture(scope="module")
def dataset():
    return generate(SyntheticConfig(users=6, seed=13, min_events=3, max_events=8))


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, dataset) -> Path:
    taxonomy = Taxonomy(dataset.taxonomy)
    vocab = build_vocabularies(
        (e for s in dataset.sessions for e in s.events), taxonomy.n_levels, taxonomy
    )
    torch.manual_seed(2)
    model = HupModel(
        HupConfig(
            n_items=len(vocab.items),
            n_categories=tuple(len(v) for v in vocab.categories),
            item_dim=ITEM_DIM,
            category_dim=CATEGORY_DIM,
            hidden=16,
            window=5,
        )
    )
    directory = tmp_path_factory.mktemp("runtime") / "model"
    save_checkpoint(directory, model, FeatureSpec(n_levels=taxonomy.n_levels), vocab)
    return directory


@pytest.fixture
def profiler(checkpoint_dir: Path) -> Profiler:
    return Profiler.load(checkpoint_dir, top_n=4)


def _first_micro_events(dataset, n: int) -> list[MicroEvent]:
    events = [s.events[0] for s in dataset.sessions[:n]]
    assert all(isinstance(e, MicroEvent) for e in events)
    assert len({e.user_id for e in events}) == n
    return events


def test_load_sets_the_version_and_fails_with_a_checkpoint_error(
    profiler: Profiler, checkpoint_dir: Path, tmp_path: Path
) -> None:
    assert profiler.version == (checkpoint_dir / "VERSION").read_text().strip()
    assert profiler.version == profiler.checkpoint.version
    with pytest.raises(CheckpointError, match="nowhere"):
        Profiler.load(tmp_path / "nowhere")


def test_apply_returns_one_result_per_event_in_order(profiler: Profiler, dataset) -> None:
    events = _first_micro_events(dataset, 3)
    states = [profiler.new_state() for _ in events]
    assert all(s.applied == 0 for s in states)
    results = profiler.apply(states, events)
    assert len(results) == 3
    heads = set(profiler.model.head_specs)
    for event, result in zip(events, results, strict=True):
        assert result.profile is not None
        assert result.flags.dropped is None
        assert result.state.applied == 1
        assert result.state.features.item == event.item_id
        assert set(result.profile.vectors) == heads
        for head, vector in result.profile.vectors.items():
            width = CATEGORY_DIM if head.startswith("category") else ITEM_DIM
            assert vector.shape == (width,), head
        # The same event alone gives the same profile: rows are not mixed up.
        (alone,) = profiler.apply([profiler.new_state()], [event])
        for head, vector in alone.profile.vectors.items():
            np.testing.assert_allclose(result.profile.vectors[head], vector, atol=1e-6)


def test_a_dropped_dwell_event_leaves_the_state_alone(
    profiler: Profiler, dataset, make_dwell
) -> None:
    u1, u2, u3 = _first_micro_events(dataset, 3)
    states = [profiler.new_state() for _ in range(3)]
    stray = make_dwell(u2.ts, 5.0, item=u2.item_id, user=u2.user_id)  # nothing open yet
    first = profiler.apply(states, [u1, stray, u3])
    assert len(first) == 3
    assert first[1].profile is None
    assert first[1].state is states[1]
    assert first[1].flags.dropped == "dwell_not_open_item"
    assert first[0].profile is not None and first[2].profile is not None

    states = [r.state for r in first]
    wrong_item = make_dwell(u1.ts + 5, 5.0, item=u1.item_id + "-other", user=u1.user_id)
    closing = make_dwell(u3.ts + 5, 5.0, item=u3.item_id, user=u3.user_id)
    second = profiler.apply([states[0], states[2]], [wrong_item, closing])
    assert second[0].profile is None and second[0].state is states[0]
    assert second[0].flags.dropped == "dwell_not_open_item"
    assert second[1].profile is not None and second[1].state.applied == 2

    again = make_dwell(u3.ts + 6, 6.0, item=u3.item_id, user=u3.user_id)
    (third,) = profiler.apply([second[1].state], [again])
    assert third.profile is None and third.state is second[1].state
    assert third.flags.dropped == "dwell_visit_closed"


def _finest(profiler: Profiler) -> tuple[str, torch.Tensor, tuple[str, ...]]:
    level = profiler.checkpoint.spec.n_levels - 1
    table = profiler.model.category_embeddings[level].weight.detach()
    return f"category{level}", table, profiler.checkpoint.vocabularies.categories[level].tokens


def test_top_categories_are_the_finest_best_cosines_without_oov(
    profiler: Profiler, dataset
) -> None:
    head, table, tokens = _finest(profiler)
    assert len(tokens) - 1 > profiler.top_n
    results = profiler.apply(
        [profiler.new_state() for _ in range(4)], _first_micro_events(dataset, 4)
    )
    for result in results:
        top = result.profile.top_categories
        assert len(top) == profiler.top_n
        ids = [category for category, _ in top]
        scores = [score for _, score in top]
        assert scores == sorted(scores, reverse=True)
        assert set(ids) <= set(tokens[1:])
        assert tokens[0] not in ids
        # Each score is the cosine of the finest profile with that category's embedding.
        profile = torch.from_numpy(result.profile.vectors[head])
        cosines = torch.nn.functional.cosine_similarity(
            profile.unsqueeze(0), table[[tokens.index(c) for c in ids]]
        )
        np.testing.assert_allclose(scores, cosines.numpy(), atol=1e-5)
        # And nothing outside the top scores higher.
        all_cosines = torch.nn.functional.cosine_similarity(profile.unsqueeze(0), table[1:])
        assert all_cosines.max().item() == pytest.approx(scores[0], abs=1e-5)


def test_top_categories_skip_oov_even_when_it_matches_best(checkpoint_dir: Path, dataset) -> None:
    checkpoint = load_checkpoint(checkpoint_dir)
    (event,) = _first_micro_events(dataset, 1)
    head, _, tokens = _finest(Profiler(checkpoint))
    (before,) = Profiler(checkpoint).apply([Profiler(checkpoint).new_state()], [event])
    level = checkpoint.spec.n_levels - 1
    with torch.no_grad():  # the OOV embedding becomes the profile itself: cosine 1
        checkpoint.model.category_embeddings[level].weight[0] = torch.from_numpy(
            before.profile.vectors[head]
        )
    profiler = Profiler(checkpoint, top_n=len(tokens) + 3)
    (after,) = profiler.apply([profiler.new_state()], [event])
    ids = [category for category, _ in after.profile.top_categories]
    assert tokens[0] not in ids
    assert sorted(ids) == sorted(tokens[1:])  # top_n above the vocabulary: every category once


def test_rounded_scores_equal_round_to_six_decimals() -> None:
    # Profiles publish scores rounded as round(s, 6) would; the batch rounding must give
    # the same floats for every float32 score, ties and signs included.
    rng = np.random.default_rng(0)
    scores = np.concatenate(
        [
            rng.uniform(-1, 1, 200_000),
            rng.uniform(0, 1e-5, 1_000),
            (np.arange(-2_000, 2_000) + 0.5) / 1e6,  # decimal ties (inexact in binary)
            [0.0, -0.0, 1.0, -1.0, 0.5, 1e-7, -1e-7],
        ]
    ).astype(np.float32)
    values = scores.tolist()
    assert round_scores(values) == [round(s, 6) for s in values]
    wider = [0.1234565, 2.0 / 3.0]  # not float32 values: rounded by round itself
    assert round_scores(wider) == [round(s, 6) for s in wider]
