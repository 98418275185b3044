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
        i, f, g, o = self.gates(torch.cat([x, h], dim=-1)).chunk(4, dim=-1)
        update = torch.sigmoid(i) * torch.tanh(g)
        if self.time_gate is not None:
            update = update * torch.sigmoid(self.time_gate(torch.cat([x, dt], dim=-1)))
        if self.behavior_gate is not None:
            update = update * torch.sigmoid(self.behavior_gate(torch.cat([x, a], dim=-1)))
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
        query = last.unsqueeze(1).expand(-1, ys.shape[1], -1)  # [N, W, H]
        hidden = torch.tanh(self.score_hidden(torch.cat([ys, query, signals], dim=-1)))
        scores = self.score_out(hidden).squeeze(-1).masked_fill(~mask, float("-inf"))  # [N, W]
        weights = torch.softmax(scores, dim=-1)
        return torch.einsum("nw,nwh->nh", weights, ys)
