"""Building blocks of the pyramid: the Behavior-LSTM cell and the attention pooling."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hup.config import CellKind

__all__ = ["AttentionPool", "BehaviorLSTMCell"]


class BehaviorLSTMCell(nn.Module):
    """Eq. 4 of the paper: an LSTM whose candidate is scaled by a time and a behaviour gate.

    I, F, O, C~ = gates of [h_{t-1}, x_t];  T = s(W_T [x_t, dt_t] + b_T);
    A = s(W_A [x_t, a_t] + b_A);  C_t = F*C_{t-1} + I*T*A*C~;  h_t = O*tanh(C_t).
    `kind="time"` drops A (Time-LSTM-style gating), `kind="lstm"` drops both.
    """

    def __init__(self, x_dim: int, dt_dim: int, a_dim: int, hidden: int, kind: CellKind) -> None:
        """Create the gate weights for inputs of the given sizes."""
        super().__init__()
        self.kind = kind
        self.hidden = hidden
        self.gates = nn.Linear(x_dim + hidden, 4 * hidden)  # I, F, C~, O
        self.time_gate = nn.Linear(x_dim + dt_dim, hidden) if kind != "lstm" else None
        self.behavior_gate = nn.Linear(x_dim + a_dim, hidden) if kind == "behavior" else None

    def forward(
        self, x: Tensor, dt: Tensor, a: Tensor, h: Tensor, c: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One step for a batch.

        Args:
            x: inputs [N, X]; dt: time-gap embedding [N, G]; a: behaviour/dwell embedding [N, A].
            h, c: previous hidden and cell state [N, H].

        Returns:
            The new (h, c), each [N, H].
        """
        x_gates, scale = self.input_part(x, dt, a)
        return self.recur(x_gates, scale, h, c)

    def input_part(self, x: Tensor, dt: Tensor, a: Tensor) -> tuple[Tensor, Tensor | None]:
        """Everything that depends on the inputs only, for any leading shape.

        A sequence pass computes this for all steps at once and loops only over `recur`;
        that is the same arithmetic as `forward`, step by step.

        Returns:
            The input half of the I, F, C~, O pre-activations [*, 4H] (bias included) and
            the product of the time and behaviour gates [*, H] (None for a plain LSTM).
        """
        x_dim = x.shape[-1]
        x_gates = nn.functional.linear(x, self.gates.weight[:, :x_dim], self.gates.bias)
        scale = None
        if self.time_gate is not None:
            scale = torch.sigmoid(self.time_gate(torch.cat([x, dt], dim=-1)))
        if self.behavior_gate is not None:
            behavior = torch.sigmoid(self.behavior_gate(torch.cat([x, a], dim=-1)))
            scale = behavior if scale is None else scale * behavior
        return x_gates, scale

    def recur(
        self, x_gates: Tensor, scale: Tensor | None, h: Tensor, c: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The recurrent half of a step, from `input_part`'s outputs and the previous state."""
        h_weight = self.gates.weight[:, self.gates.weight.shape[1] - self.hidden :]
        i, f, g, o = (x_gates + nn.functional.linear(h, h_weight)).chunk(4, dim=-1)
        update = torch.sigmoid(i) * torch.tanh(g)
        if scale is not None:
            update = update * scale
        c_new = torch.sigmoid(f) * c + update
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        return h_new, c_new


class AttentionPool(nn.Module):
    """Eq. 5: s = sum_i alpha_i y_i with alpha = softmax(f(y_i, y_last, a_i)).

    f is a two-layer feed-forward net (tanh hidden layer, linear score).
    """

    def __init__(self, hidden: int, signal_dim: int, attention_hidden: int) -> None:
        """Create the scoring net for outputs of size `hidden` and signals of `signal_dim`."""
        super().__init__()
        self.score_hidden = nn.Linear(2 * hidden + signal_dim, attention_hidden)
        self.score_out = nn.Linear(attention_hidden, 1)

    def forward(self, ys: Tensor, signals: Tensor, mask: Tensor, last: Tensor) -> Tensor:
        """Pool a window of outputs.

        Args:
            ys: window outputs [N, W, H]; signals: their signal embeddings [N, W, S];
            mask: True where the window has an entry [N, W]; last: the current output [N, H].

        Returns:
            The context vectors [N, H].
        """
        return self.pool(self.keys(ys, signals), ys, mask, last)

    def keys(self, ys: Tensor, signals: Tensor) -> Tensor:
        """The part of the first scoring layer that depends on an entry alone, [*, A].

        The first layer is linear in [y_i, y_last, a_i], so it splits into a per-entry term
        (computed once per output, not once per window it appears in) and a query term.
        """
        hidden = ys.shape[-1]
        weight = self.score_hidden.weight
        return nn.functional.linear(
            torch.cat([ys, signals], dim=-1),
            torch.cat([weight[:, :hidden], weight[:, 2 * hidden :]], dim=1),
            self.score_hidden.bias,
        )

    def pool(self, keys: Tensor, ys: Tensor, mask: Tensor, last: Tensor) -> Tensor:
        """Pool from precomputed `keys` [N, W, A] of the window entries `ys` [N, W, H]."""
        return torch.einsum("nw,nwh->nh", self.weights(keys, mask, last), ys)

    def weights(self, keys: Tensor, mask: Tensor, last: Tensor) -> Tensor:
        """Attention weights [N, W] of a window from its entries' keys and the current output."""
        hidden = last.shape[-1]
        query = nn.functional.linear(last, self.score_hidden.weight[:, hidden : 2 * hidden])
        scores = self.score_out(torch.tanh(keys + query.unsqueeze(1))).squeeze(-1)  # [N, W]
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
