"""The repeat memory (hup.repeat) and the repeat-aware model's mixture (hup.model)."""

from __future__ import annotations

import math

import pytest
import torch
from adam_steps import adam_losses

from hup.config import VARIANTS, HupConfig
from hup.features import FeatureSpec, Featurizer
from hup.model import HupModel, collate_repeat
from hup.repeat import CATEGORY_FEATURES, ITEM_FEATURES, REPEAT_SLOTS, repeat_inputs
from hup.sequences import batches, featurize_session
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy, build_vocabularies

torch.set_num_threads(1)


@pytest.fixture
def featurizer(make_micro) -> Featurizer:
    events = [make_micro(ts=n, item=f"i{n}", categories=[f"c{n % 2}"]) for n in range(40)]
    return Featurizer(FeatureSpec(n_levels=1), build_vocabularies(events, 1))


def _run(featurizer: Featurizer, events):
    state = featurizer.initial_state()
    for event in events:
        state, _, _ = featurizer.apply(state, event)
    return state


def test_memory_counts_runs_micro_events_behaviours_and_closed_dwell(
    featurizer, make_micro, make_dwell
) -> None:
    events = [
        make_micro(item="i1", ts=0, behavior=5, categories=["c1"]),
        make_micro(item="i1", ts=10, behavior=9, categories=["c1"]),
        make_dwell(item="i1", ts=30, dwell_s=30),
        make_micro(item="i2", ts=40, behavior=2, categories=["c0"]),
        make_micro(item="i1", ts=100, behavior=10, categories=["c1"]),
    ]
    state = _run(featurizer, events)
    assert [e.item for e in state.recent] == ["i1", "i2"]
    first, second = state.recent
    assert (first.runs, first.micro, second.runs, second.micro) == (2, 3, 1, 1)
    assert first.behaviors == (1 << 4) | (1 << 8) | (1 << 9)
    assert first.dwell_closed == 30  # its first run's dwell; the open run adds when it ends
    # i2's visit got no dwell event: its run ended with the dwell known at its last event (0),
    # as the featurizer's run dwell defines it.
    assert second.dwell_closed == 0
    assert first.last_ts == 100


def test_memory_keeps_the_most_recent_distinct_items_only(featurizer, make_micro) -> None:
    events = [make_micro(item=f"i{n}", ts=n) for n in range(REPEAT_SLOTS + 5)]
    state = _run(featurizer, events)
    assert len(state.recent) == REPEAT_SLOTS
    assert state.recent[0].item == f"i{REPEAT_SLOTS + 4}"
    assert state.recent[-1].item == "i5"


def test_repeat_inputs_put_the_open_item_first_and_name_it(featurizer, make_micro) -> None:
    events = [
        make_micro(item="i1", ts=0, categories=["c1"]),
        make_micro(item="i2", ts=60, categories=["c0"]),
        make_micro(item="i3", ts=120, categories=["c1"]),
    ]
    state = _run(featurizer, events)
    inputs = repeat_inputs(state)
    ids = featurizer.vocabularies.items
    assert inputs.items[:3].tolist() == [ids.lookup("i3"), ids.lookup("i2"), ids.lookup("i1")]
    assert (inputs.items[3:] == 0).all()
    assert inputs.open_item == ids.lookup("i3")
    assert inputs.item_features.shape == (REPEAT_SLOTS, ITEM_FEATURES)
    # Rank one-hot, and minutes since each item's latest event (0, 1, 2 minutes).
    assert inputs.item_features[:3, :3].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert inputs.item_features[:3, 7].tolist() == pytest.approx(
        [0.0, math.log1p(1.0), math.log1p(2.0)]
    )
    # Categories of level 0 in order of their most recent item: c1 (i3), c0 (i2).
    cats = featurizer.vocabularies.categories[0]
    assert inputs.categories[0, :2].tolist() == [cats.lookup("c1"), cats.lookup("c0")]
    assert inputs.category_features.shape == (1, REPEAT_SLOTS, CATEGORY_FEATURES)
    assert inputs.category_features[0, 0, 5] == pytest.approx(math.log1p(2))  # two items


def _repeat_model(seed: int = 0):
    dataset = generate(SyntheticConfig(users=12, seed=2, min_events=4, max_events=30))
    taxonomy = Taxonomy(dataset.taxonomy)
    vocab = build_vocabularies(
        (e for s in dataset.sessions for e in s.events), taxonomy.n_levels, taxonomy
    )
    featurizer = Featurizer(FeatureSpec(n_levels=taxonomy.n_levels), vocab)
    torch.manual_seed(seed)
    config = HupConfig(
        n_items=len(vocab.items),
        n_categories=tuple(len(v) for v in vocab.categories),
        hidden=16,
        attention_hidden=8,
        window=5,
        **VARIANTS["hup"],
    )
    sessions = [featurize_session(featurizer, s) for s in dataset.sessions]
    return HupModel(config), sessions


def test_mixture_is_a_distribution_without_oov_or_the_open_item() -> None:
    model, sessions = _repeat_model()
    batch, positions, _ = next(batches(sessions, 12, repeat=True))
    model.eval()
    with torch.no_grad():
        profiles = model(batch, positions)
        mixture = model.item_mixture(profiles, batch)
        probs = mixture.probabilities()
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(positions)), atol=1e-5)
    assert (probs[:, 0] == 0).all()
    rows = torch.arange(len(positions))
    assert (probs[rows, batch["repeat_open_item"]] == 0).all()
    # A point whose only remembered item is the open one has no repeat candidate.
    has_candidate = (
        (batch["repeat_items"] != 0) & (batch["repeat_items"] != batch["repeat_open_item"][:, None])
    ).any(dim=1)
    assert has_candidate.any() and (~has_candidate).any()
    assert (mixture.gate[has_candidate] > 0).all() and (mixture.gate < 1).all()
    assert (mixture.gate[~has_candidate] == 0).all()
    for level in range(model.config.n_levels):
        with torch.no_grad():
            level_probs = model.category_mixture(level, profiles, batch).probabilities()
        assert torch.allclose(level_probs.sum(dim=1), torch.ones(len(positions)), atol=1e-5)


def test_mixture_nll_is_minus_the_log_probability_of_the_target() -> None:
    model, sessions = _repeat_model()
    batch, positions, targets = next(batches(sessions, 12, repeat=True))
    model.eval()
    with torch.no_grad():
        mixture = model.item_mixture(model(batch, positions), batch)
        expected = -torch.log(
            mixture.probabilities().gather(1, targets["item"].unsqueeze(1)) + 1e-9
        ).mean()
        assert mixture.nll(targets["item"]).item() == pytest.approx(expected.item(), rel=1e-5)
        # OOV targets are left out of the mean.
        masked = targets["item"].clone()
        masked[::2] = 0
        keep = masked != 0
        kept = -torch.log(mixture.probabilities()[keep].gather(1, masked[keep, None]) + 1e-9)
        assert mixture.nll(masked).item() == pytest.approx(kept.mean().item(), rel=1e-5)


def test_no_candidates_means_explore_only() -> None:
    model, sessions = _repeat_model()
    batch, positions, _ = next(batches(sessions, 12, repeat=True))
    empty = {**batch, "repeat_items": torch.zeros_like(batch["repeat_items"])}
    with torch.no_grad():
        mixture = model.item_mixture(model.eval()(batch, positions), empty)
    assert (mixture.gate == 0).all()
    assert (mixture.repeat == 0).all()


def test_repeat_model_loss_decreases_over_adam_steps() -> None:
    model, sessions = _repeat_model()
    model.train()
    losses = adam_losses(model, *next(batches(sessions, 12, repeat=True)))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1, losses
    assert model.repeat_heads is not None
    assert model.repeat_heads.item_scorer[0].weight.grad is not None


def test_collate_repeat_stacks_points() -> None:
    model, sessions = _repeat_model()
    session = sessions[0]
    stacked = collate_repeat([repeat_inputs(s) for s in session.states])
    assert stacked["repeat_items"].shape == (len(session.states), REPEAT_SLOTS)
    assert stacked["repeat_open_item"].tolist() == [s.item_id for s in session.states]
