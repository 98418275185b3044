"""The incremental step's state: ring windows, stored layout, size without encoding, plan cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hup.config import HupConfig
from hup.features import FeatureSpec, Featurizer
from hup.incremental import ProfileState, initial_state, step
from hup.model import HupModel
from hup.schema import MicroEvent
from hup.vocab import build_vocabularies

WINDOW = 4


def _events(n: int) -> list[MicroEvent]:
    """A user on a new item of alternating categories at every event: every layer commits."""
    paths = [["c0", "c0.ü", "c0.ü.1"], ["c1", "c1.a", "c1.a.1"]]
    return [
        MicroEvent(
            user_id="u", ts=1000.0 + 7 * k, item_id=f"i{k}", categories=paths[k % 2], behavior=1
        )
        for k in range(n)
    ]


@pytest.fixture(scope="module")
def model_and_featurizer() -> tuple[HupModel, Featurizer]:
    vocab = build_vocabularies(_events(20), 3, None)
    torch.manual_seed(0)
    config = HupConfig(
        n_items=len(vocab.items),
        n_categories=tuple(len(v) for v in vocab.categories),
        hidden=12,
        window=WINDOW,
    )
    return HupModel(config).eval(), Featurizer(FeatureSpec(n_levels=3), vocab)


def _run(model: HupModel, featurizer: Featurizer, n: int) -> tuple[ProfileState, dict]:
    state, profiles = initial_state(model, featurizer.initial_state()), {}
    for event in _events(n):
        features_state, features, _ = featurizer.apply(state.features, event)
        assert features is not None
        (state,), profiles = step(model, [state], [features], [features_state])
    return state, profiles


def test_windows_fill_to_w_minus_one_committed_entries(model_and_featurizer) -> None:
    model, featurizer = model_and_featurizer
    assert _run(model, featurizer, 2)[0].window_lengths() == (1,) * 5
    full = _run(model, featurizer, 3 * WINDOW)[0]
    assert full.window_lengths() == (WINDOW - 1,) * 5
    assert full.window_count.tolist() == [3 * WINDOW] * 5


def test_windows_are_stored_filled_slots_only_and_read_back_exactly(model_and_featurizer) -> None:
    model, featurizer = model_and_featurizer
    state = _run(model, featurizer, 3 * WINDOW)[0]
    arrays = state.to_arrays()
    entries = sum(ring.size for ring in state.windows)  # every slot filled
    assert arrays["windows"].dtype == np.float32 and arrays["windows"].size == entries
    young = _run(model, featurizer, 2)[0]  # two entries opened per layer
    assert young.to_arrays()["windows"].size == sum(2 * ring.shape[1] for ring in young.windows)
    back = ProfileState.from_arrays(arrays)
    for ring, again in zip(state.windows, back.windows, strict=True):
        assert ring.dtype == again.dtype == np.float32
        np.testing.assert_array_equal(ring, again)
    assert back.features == state.features and back.applied == state.applied
    np.testing.assert_array_equal(back.window_count, state.window_count)


@pytest.mark.parametrize("events", [1, 2, 3 * WINDOW])
def test_array_sizes_are_those_of_the_arrays(model_and_featurizer, events: int) -> None:
    model, featurizer = model_and_featurizer
    state = _run(model, featurizer, events)[0]
    expected = [(name, a.ndim, a.nbytes) for name, a in state.to_arrays().items()]
    assert state.array_sizes() == expected


def test_the_step_follows_weights_changed_in_place(model_and_featurizer) -> None:
    # The step caches the model's weights rearranged; training between two calls
    # (in-place parameter updates) must not leave it stepping with the old ones.
    model, featurizer = model_and_featurizer
    before = _run(model, featurizer, 3)[1]
    with torch.no_grad():
        model.head_of("item").bias.add_(1.0)
    try:
        after = _run(model, featurizer, 3)[1]
    finally:
        with torch.no_grad():
            model.head_of("item").bias.sub_(1.0)
    assert not torch.allclose(before["item"], after["item"])
    assert torch.allclose(before["category0"], after["category0"])


def test_a_batch_equals_its_users_stepped_alone_and_leaves_its_inputs_unchanged(
    model_and_featurizer,
) -> None:
    # Users at different window fills (empty, young, wrapped) in one call: the batch's
    # stacked rings, the mask over unfilled slots and the shared buffers must neither
    # mix rows nor write into the states passed in.
    model, featurizer = model_and_featurizer
    events = _events(3 * WINDOW + 2)
    states = [initial_state(model, featurizer.initial_state())]
    states += [_run(model, featurizer, n)[0] for n in (1, 2, WINDOW + 1, 3 * WINDOW + 1)]
    inputs = [featurizer.apply(s.features, events[s.applied]) for s in states]
    before = [[s.hidden.copy(), *(ring.copy() for ring in s.windows)] for s in states]
    batched, profiles = step(model, states, [f for _, f, _ in inputs], [s for s, _, _ in inputs])
    for row, (state, (feature_state, features, _)) in enumerate(zip(states, inputs, strict=True)):
        (alone,), alone_profiles = step(model, [state], [features], [feature_state])
        for head, vector in alone_profiles.items():
            torch.testing.assert_close(profiles[head][row], vector[0], rtol=0, atol=1e-6)
        new = batched[row]
        np.testing.assert_allclose(new.hidden, alone.hidden, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(new.window_count, alone.window_count)
        for ring, again, n in zip(new.windows, alone.windows, new.window_count, strict=True):
            np.testing.assert_allclose(ring, again, rtol=0, atol=1e-6)
            assert not ring[min(int(n), WINDOW) :].any()  # unfilled slots stay zero
        for array, copy in zip([state.hidden, *state.windows], before[row], strict=True):
            np.testing.assert_array_equal(array, copy)
