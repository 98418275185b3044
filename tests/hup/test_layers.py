"""The Behavior-LSTM cell (Eq. 4) and the attention pool (Eq. 5) against NumPy references."""

import numpy as np
import pytest
import torch
from torch import nn

from hup.config import CellKind
from hup.layers import AttentionPool, BehaviorLSTMCell

X, G, A, H = 5, 3, 4, 6  # input, time-gap embedding, behaviour embedding, hidden sizes
N = 7  # batch


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _weights(linear: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return linear.weight.detach().numpy(), linear.bias.detach().numpy()


def _reference_cell(
    cell: BehaviorLSTMCell,
    x: np.ndarray,
    dt: np.ndarray,
    a: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4 written out: C = F*C + I*T*A*C~, h = O*tanh(C)."""
    w, b = _weights(cell.gates)
    z = np.concatenate([x, h], axis=-1) @ w.T + b
    i, f, g, o = (z[:, k * H : (k + 1) * H] for k in range(4))  # I, F, C~, O
    time = np.ones_like(c)
    behavior = np.ones_like(c)
    if cell.kind != "lstm":
        assert cell.time_gate is not None
        w_t, b_t = _weights(cell.time_gate)
        time = _sigmoid(np.concatenate([x, dt], axis=-1) @ w_t.T + b_t)
    if cell.kind == "behavior":
        assert cell.behavior_gate is not None
        w_a, b_a = _weights(cell.behavior_gate)
        behavior = _sigmoid(np.concatenate([x, a], axis=-1) @ w_a.T + b_a)
    c_new = _sigmoid(f) * c + _sigmoid(i) * time * behavior * np.tanh(g)
    h_new = _sigmoid(o) * np.tanh(c_new)
    return h_new, c_new


def _cell_inputs(seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((N, d)) for d in (X, G, A, H, H))


def _run(cell: BehaviorLSTMCell, inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        h, c = cell(*(torch.from_numpy(v) for v in inputs))
    return h.numpy(), c.numpy()


@pytest.mark.parametrize("kind", ["behavior", "time", "lstm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cell_matches_numpy_reference(kind: CellKind, seed: int) -> None:
    torch.manual_seed(seed)
    cell = BehaviorLSTMCell(X, G, A, H, kind).double()
    inputs = _cell_inputs(seed)
    h, c = _run(cell, inputs)
    h_ref, c_ref = _reference_cell(cell, *inputs)
    np.testing.assert_allclose(h, h_ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(c, c_ref, atol=1e-6, rtol=0)
    assert h.shape == c.shape == (N, H)


@pytest.mark.parametrize(("kind", "has_time", "has_behavior"), [
    ("behavior", True, True),
    ("time", True, False),
    ("lstm", False, False),
])  # fmt: skip
def test_cell_kind_decides_which_gates_exist(
    kind: CellKind, has_time: bool, has_behavior: bool
) -> None:
    cell = BehaviorLSTMCell(X, G, A, H, kind)
    assert (cell.time_gate is not None) == has_time
    assert (cell.behavior_gate is not None) == has_behavior
    assert cell.gates.in_features == X + H
    assert cell.gates.out_features == 4 * H


def test_lstm_kind_ignores_time_and_behavior_inputs() -> None:
    torch.manual_seed(3)
    cell = BehaviorLSTMCell(X, G, A, H, "lstm").double()
    x, dt, a, h, c = _cell_inputs(3)
    base = _run(cell, (x, dt, a, h, c))
    other = _run(cell, (x, dt * 10 + 1, a - 5, h, c))
    np.testing.assert_array_equal(base[0], other[0])
    np.testing.assert_array_equal(base[1], other[1])


@pytest.mark.parametrize("kind", ["behavior", "time"])
def test_saturated_time_and_behavior_gates_reduce_to_plain_lstm(kind: CellKind) -> None:
    torch.manual_seed(4)
    cell = BehaviorLSTMCell(X, G, A, H, kind).double()
    lstm = BehaviorLSTMCell(X, G, A, H, "lstm").double()
    lstm.gates.load_state_dict(cell.gates.state_dict())
    with torch.no_grad():
        # sigmoid(1e3 + O(10)) is exactly 1.0 in float64: T = A = 1.
        for gate in (cell.time_gate, cell.behavior_gate):
            if gate is not None:
                gate.bias.fill_(1e3)
    inputs = _cell_inputs(4)
    h, c = _run(cell, inputs)
    h_lstm, c_lstm = _run(lstm, inputs)
    np.testing.assert_allclose(h, h_lstm, atol=1e-6, rtol=0)
    np.testing.assert_allclose(c, c_lstm, atol=1e-6, rtol=0)


def test_closed_time_gate_keeps_the_cell_state_forgetting_only() -> None:
    # T = 0 blocks the candidate entirely: C = F * C_prev.
    torch.manual_seed(5)
    cell = BehaviorLSTMCell(X, G, A, H, "time").double()
    assert cell.time_gate is not None
    with torch.no_grad():
        cell.time_gate.bias.fill_(-1e3)
    x, dt, a, h, c = _cell_inputs(5)
    _, c_new = _run(cell, (x, dt, a, h, c))
    w, b = _weights(cell.gates)
    forget = _sigmoid((np.concatenate([x, h], axis=-1) @ w.T + b)[:, H : 2 * H])
    np.testing.assert_allclose(c_new, forget * c, atol=1e-6, rtol=0)


# --- AttentionPool (Eq. 5) --------------------------------------------------------------

W, S, HA = 5, 3, 8  # window, signal size, attention hidden size


def _reference_pool(
    pool: AttentionPool, ys: np.ndarray, signals: np.ndarray, mask: np.ndarray, last: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Context vectors and the attention weights, masked entries excluded from the softmax."""
    w1, b1 = _weights(pool.score_hidden)
    w2, b2 = _weights(pool.score_out)
    query = np.broadcast_to(last[:, None, :], ys.shape)
    hidden = np.tanh(np.concatenate([ys, query, signals], axis=-1) @ w1.T + b1)
    scores = (hidden @ w2.T + b2)[..., 0]  # [N, W]
    weights = np.zeros_like(scores)
    for n in range(scores.shape[0]):
        kept = scores[n, mask[n]]
        e = np.exp(kept - kept.max())
        weights[n, mask[n]] = e / e.sum()
    return np.einsum("nw,nwh->nh", weights, ys), weights


def _pool_inputs(seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    ys = rng.standard_normal((N, W, H))
    signals = rng.standard_normal((N, W, S))
    mask = rng.random((N, W)) < 0.6
    mask[:, -1] = True  # the current entry is always in its window
    mask[0] = False
    mask[0, -1] = True  # one row with only the current entry
    mask[1] = True  # one full row
    last = ys[:, -1].copy()
    return ys, signals, mask, last


def _pool(pool: AttentionPool, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    with torch.no_grad():
        return pool(*(torch.from_numpy(v) for v in inputs)).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_pool_matches_numpy_reference(seed: int) -> None:
    torch.manual_seed(seed)
    pool = AttentionPool(H, S, HA).double()
    inputs = _pool_inputs(seed)
    out = _pool(pool, inputs)
    ref, weights = _reference_pool(pool, *inputs)
    assert out.shape == (N, H)
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)


def test_attention_pool_gives_masked_entries_zero_weight() -> None:
    torch.manual_seed(6)
    pool = AttentionPool(H, S, HA).double()
    ys, signals, mask, last = _pool_inputs(6)
    out = _pool(pool, (ys, signals, mask, last))
    # Whatever the padding holds, a masked entry must not move the result.
    rng = np.random.default_rng(7)
    ys2, signals2 = ys.copy(), signals.copy()
    ys2[~mask] = rng.standard_normal(ys2[~mask].shape) * 100
    signals2[~mask] = rng.standard_normal(signals2[~mask].shape) * 100
    out2 = _pool(pool, (ys2, signals2, mask, last))
    np.testing.assert_allclose(out2, out, atol=1e-12, rtol=0)


def test_attention_pool_of_only_the_current_entry_returns_it() -> None:
    torch.manual_seed(8)
    pool = AttentionPool(H, S, HA).double()
    ys, signals, _, last = _pool_inputs(8)
    mask = np.zeros((N, W), dtype=bool)
    mask[:, -1] = True
    out = _pool(pool, (ys, signals, mask, last))
    np.testing.assert_allclose(out, last, atol=1e-12, rtol=0)


def test_attention_pool_window_of_one() -> None:
    torch.manual_seed(9)
    pool = AttentionPool(H, S, HA).double()
    rng = np.random.default_rng(9)
    last = rng.standard_normal((N, H))
    out = _pool(
        pool, (last[:, None, :], rng.standard_normal((N, 1, S)), np.ones((N, 1), bool), last)
    )
    np.testing.assert_allclose(out, last, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["behavior", "time", "lstm"])
def test_sequence_split_into_input_part_and_recur_equals_stepping_forward(kind: CellKind) -> None:
    # The model precomputes input_part for [T, N, *] at once and loops over recur only.
    torch.manual_seed(10)
    cell = BehaviorLSTMCell(X, G, A, H, kind).double()
    steps = 4
    rng = np.random.default_rng(10)
    xs, dts, as_ = (torch.from_numpy(rng.standard_normal((steps, N, d))) for d in (X, G, A))
    h0, c0 = (torch.from_numpy(rng.standard_normal((N, H))) for _ in range(2))
    with torch.no_grad():
        x_gates, scale = cell.input_part(xs, dts, as_)
        assert x_gates.shape == (steps, N, 4 * H)
        assert (scale is None) == (kind == "lstm")
        h_seq, c_seq, h_step, c_step = h0, c0, h0, c0
        for t in range(steps):
            h_seq, c_seq = cell.recur(x_gates[t], None if scale is None else scale[t], h_seq, c_seq)
            h_step, c_step = cell(xs[t], dts[t], as_[t], h_step, c_step)
            np.testing.assert_allclose(h_seq.numpy(), h_step.numpy(), atol=1e-12, rtol=0)
            np.testing.assert_allclose(c_seq.numpy(), c_step.numpy(), atol=1e-12, rtol=0)
