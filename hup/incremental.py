"""One event per user at a time: the per-user state and the batched step the stream calls.

`step` applies, for a batch of different users, exactly the rule `HupModel.forward`
applies over whole sequences: one micro step per micro event, the item and category
layers committed on focus change and stepped provisionally while their entry is open,
attention over the last W entries. It is pure: states in, new states and profiles out.

State layout (`ProfileState.to_arrays`, encoded by `state.codec`), L layers, hidden H:

* `hidden` float32 [4, L, H]: committed h, committed c, open h, open c per layer;
* `open_signal` int64 [L]: attention signal id of each layer's open entry;
* `window_key{l}` float32 [n, A] / `window_value{l}` float32 [n, V]: the layer's last
  n <= W-1 committed entries, oldest first, each reduced to what attention pooling reads
  (see `HupModel.entry_summary`): A = attention hidden size, V = the sizes of the heads
  the layer feeds (empty for a model without attention);
* `feature_f` float64 / `feature_i` int64 / `feature_s` utf-8: the featurizer's memory;
* `recent_i` int64 [n, 4 + K] / `recent_f` float64 [n, 2] / `recent_s` utf-8: the repeat
  memory (`hup.repeat.RecentItem`: vocabulary id, runs, micro events, behaviour bits,
  category ids; closed dwell and latest time; the skus joined), absent when empty;
* `last_ts` float64 0-d (read by expiry), `meta` int64 [3]: events applied, input
  partition and offset of the last applied event (the stream's idempotency record);
* `sources` int64 [n, 2] (absent in states written before it existed): per partition
  of the input topic, the offset of the last event applied from it (the stream's
  idempotency record; a user's events arrive from several partitions when the stream
  re-keys its input).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from hup.exceptions import StateError
from hup.features import EventFeatures, FeatureState
from hup.model import HupModel, stack_features
from hup.repeat import RecentItem

__all__ = ["ProfileState", "initial_state", "step"]

_SEPARATOR = "\x1f"  # joins category ids in the string field; never part of an id


@dataclass(frozen=True)
class ProfileState:
    """Everything the stream keeps for one user."""

    features: FeatureState
    hidden: np.ndarray  # [4, L, H] float32
    open_signal: np.ndarray  # [L] int64
    window_keys: tuple[np.ndarray, ...]  # per layer [n, A] float32, n <= W-1
    window_values: tuple[np.ndarray, ...]  # per layer [n, V] float32
    applied: int = 0  # events applied so far (also the profile sequence number)
    input_partition: int = -1  # where the last applied event came from (idempotency)
    input_offset: int = -1
    # (input partition, offset of the last event applied from it), per partition.
    source_offsets: tuple[tuple[int, int], ...] = ()

    def source_offset(self, partition: int) -> int:
        """Offset of the last event applied from ``partition`` of the original input, or -1."""
        return dict(self.source_offsets).get(partition, -1)

    def with_input(self, partition: int, offset: int) -> ProfileState:
        """This state having applied the event at ``offset`` of input ``partition``."""
        offsets = dict(self.source_offsets)
        offsets[partition] = offset
        return replace(
            self,
            input_partition=partition,
            input_offset=offset,
            source_offsets=tuple(sorted(offsets.items())),
        )

    def window_lengths(self) -> tuple[int, ...]:
        """Committed entries held in each layer's attention window (at most W - 1)."""
        return tuple(len(keys) for keys in self.window_keys)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain named arrays (the layout in the module docstring)."""
        f = self.features
        arrays = {
            "hidden": self.hidden,
            "open_signal": self.open_signal,
            "feature_f": np.array(
                [
                    f.last_micro_ts,
                    f.last_ts,
                    f.run_start_ts,
                    f.visit_start_ts,
                    f.run_dwell_closed,
                    f.run_dwell,
                    *f.category_start_ts,
                    *f.category_dwell_closed,
                ],
                dtype=np.float64,
            ),
            "feature_i": np.array(
                [
                    int(f.has_open),
                    f.item_id,
                    f.last_behavior,
                    f.last_gap,
                    f.item_gap,
                    *f.category_ids,
                    *f.category_gap,
                ],
                dtype=np.int64,
            ),
            "feature_s": np.frombuffer(
                _SEPARATOR.join((f.item, *f.categories)).encode(), dtype=np.uint8
            ),
            "last_ts": np.array(f.last_ts, dtype=np.float64),
            "meta": np.array(
                [self.applied, self.input_partition, self.input_offset], dtype=np.int64
            ),
        }
        if self.source_offsets:
            arrays["sources"] = np.array(self.source_offsets, dtype=np.int64)
        if f.recent:
            arrays.update(_recent_to_arrays(f.recent))
        for layer, (keys, values) in enumerate(
            zip(self.window_keys, self.window_values, strict=True)
        ):
            arrays[f"window_key{layer}"] = keys
            arrays[f"window_value{layer}"] = values
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ProfileState:
        """Inverse of `to_arrays`; raises `StateError` when arrays are missing or inconsistent."""
        try:
            hidden = arrays["hidden"]
            n_layers = hidden.shape[1]
            ff = arrays["feature_f"].tolist()
            fi = arrays["feature_i"].tolist()
            strings = arrays["feature_s"].tobytes().decode().split(_SEPARATOR)
            n_levels = len(fi) - 5
            if n_levels % 2 or len(ff) != 6 + n_levels:
                raise ValueError("feature arrays do not agree on the number of levels")
            n_levels //= 2
            features = FeatureState(
                has_open=bool(fi[0]),
                item=strings[0],
                categories=tuple(strings[1:]),
                item_id=fi[1],
                category_ids=tuple(fi[5 : 5 + n_levels]),
                last_micro_ts=ff[0],
                last_ts=ff[1],
                last_behavior=fi[2],
                last_gap=fi[3],
                run_start_ts=ff[2],
                item_gap=fi[4],
                visit_start_ts=ff[3],
                run_dwell_closed=ff[4],
                run_dwell=ff[5],
                category_start_ts=tuple(ff[6 : 6 + n_levels]),
                category_gap=tuple(fi[5 + n_levels :]),
                category_dwell_closed=tuple(ff[6 + n_levels :]),
                recent=_recent_from_arrays(arrays),
            )
            applied, partition, offset = arrays["meta"].tolist()
            sources = arrays.get("sources", np.zeros((0, 2), dtype=np.int64))
            if sources.ndim != 2 or sources.shape[1] != 2:
                raise ValueError(f"sources has shape {sources.shape}, expected [n, 2]")
            return cls(
                features=features,
                hidden=hidden,
                open_signal=arrays["open_signal"],
                window_keys=tuple(arrays[f"window_key{layer}"] for layer in range(n_layers)),
                window_values=tuple(arrays[f"window_value{layer}"] for layer in range(n_layers)),
                applied=applied,
                input_partition=partition,
                input_offset=offset,
                source_offsets=tuple((int(p), int(o)) for p, o in sources.tolist()),
            )
        except (KeyError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise StateError(f"profile state arrays are inconsistent: {exc}") from exc

    def nbytes(self) -> int:
        """Bytes of array payload (what the codec stores, before its small header)."""
        return sum(a.nbytes for a in self.to_arrays().values())


def _recent_to_arrays(recent: tuple[RecentItem, ...]) -> dict[str, np.ndarray]:
    return {
        "recent_i": np.array(
            [(e.item_id, e.runs, e.micro, e.behaviors, *e.category_ids) for e in recent],
            dtype=np.int64,
        ),
        "recent_f": np.array([(e.dwell_closed, e.last_ts) for e in recent], dtype=np.float64),
        "recent_s": np.frombuffer(_SEPARATOR.join(e.item for e in recent).encode(), dtype=np.uint8),
    }


def _recent_from_arrays(arrays: dict[str, np.ndarray]) -> tuple[RecentItem, ...]:
    if "recent_i" not in arrays:
        return ()
    ints, floats = arrays["recent_i"].tolist(), arrays["recent_f"].tolist()
    items = arrays["recent_s"].tobytes().decode().split(_SEPARATOR)
    if not len(ints) == len(floats) == len(items):
        raise ValueError("the repeat memory arrays do not agree on their length")
    return tuple(
        RecentItem(item, i[0], tuple(i[4:]), i[1], i[2], i[3], f[0], f[1])
        for item, i, f in zip(items, ints, floats, strict=True)
    )


def initial_state(model: HupModel, features: FeatureState) -> ProfileState:
    """The state of a user never seen before."""
    n_layers, hidden = len(model.layer_names), model.config.hidden
    key_size, value_sizes = _summary_sizes(model)
    return ProfileState(
        features=features,
        hidden=np.zeros((4, n_layers, hidden), dtype=np.float32),
        open_signal=np.zeros(n_layers, dtype=np.int64),
        window_keys=tuple(np.zeros((0, key_size), dtype=np.float32) for _ in range(n_layers)),
        window_values=tuple(np.zeros((0, v), dtype=np.float32) for v in value_sizes),
    )


def _summary_sizes(model: HupModel) -> tuple[int, list[int]]:
    if not model.config.attention:
        return 0, [0] * len(model.layer_names)
    sizes = [
        sum(model.head_of(h).out_features for h in model.heads_of(name))
        for name in model.layer_names
    ]
    return model.config.attention_hidden, sizes


@torch.no_grad()
def step(
    model: HupModel,
    states: list[ProfileState],
    features: list[EventFeatures],
    feature_states: list[FeatureState],
) -> tuple[list[ProfileState], dict[str, Tensor]]:
    """Apply one event to each of a batch of *different* users.

    Args:
        model: the model, in eval mode.
        states: each user's state before the event.
        features: the event's features (from `Featurizer.apply` on `states[i].features`).
        feature_states: the featurizer state after the event.

    Returns:
        The new states and the profiles after the event, per head [B, D].
    """
    if not states:
        return [], {}
    n_layers = len(model.layer_names)
    if states[0].hidden.shape != (4, n_layers, model.config.hidden):
        raise StateError(
            f"state has hidden shape {states[0].hidden.shape}, the model needs "
            f"{(4, n_layers, model.config.hidden)}"
        )
    attention = model.config.attention
    back = model.config.window - 1 if attention else 0
    f = stack_features(features)
    hidden = torch.from_numpy(np.stack([s.hidden for s in states]))  # [B, 4, L, H]
    open_signal = torch.from_numpy(np.stack([s.open_signal for s in states]))  # [B, L]
    # Every layer opens an entry at a user's first event, so "has an open entry" = "seen".
    seen = torch.tensor([s.applied > 0 for s in states])
    new_hidden = hidden.clone()
    new_signal = open_signal.clone()
    keys: list[list[np.ndarray]] = [list(s.window_keys) for s in states]
    values: list[list[np.ndarray]] = [list(s.window_values) for s in states]
    profiles: dict[str, Tensor] = {}
    finer = None
    for layer, name in enumerate(model.layer_names):
        inputs = model.layer_input(name, f, finer)
        h_committed, c_committed, h_open, c_open = hidden[:, :, layer].unbind(1)  # [B, H] each
        commit = inputs.change & seen
        h_committed = torch.where(commit.unsqueeze(-1), h_open, h_committed)
        c_committed = torch.where(commit.unsqueeze(-1), c_open, c_committed)
        rows = torch.nonzero(commit).flatten()
        if attention and len(rows):
            # The entry being closed joins the window as its summary.
            closed_keys, closed_values = model.entry_summary(
                name, h_open[rows], open_signal[rows, layer]
            )
            for n, row in enumerate(rows.tolist()):
                keys[row][layer] = _push(keys[row][layer], closed_keys[n : n + 1].numpy(), back)
                values[row][layer] = _push(
                    values[row][layer], closed_values[n : n + 1].numpy(), back
                )
        h_new, c_new = model.cell_of(name)(inputs.x, inputs.dt, inputs.a, h_committed, c_committed)
        recompute = inputs.recompute.unsqueeze(-1)
        h_open = torch.where(recompute, h_new, h_open)
        c_open = torch.where(recompute, c_new, c_open)
        signal = torch.where(inputs.recompute, inputs.signal, open_signal[:, layer])
        new_hidden[:, :, layer] = torch.stack([h_committed, c_committed, h_open, c_open], dim=1)
        new_signal[:, layer] = signal
        if attention:
            profiles.update(
                _pool(
                    model,
                    name,
                    [k[layer] for k in keys],
                    [v[layer] for v in values],
                    h_open,
                    signal,
                )
            )
        else:
            profiles.update(model.profiles({name: h_open}, only=model.heads_of(name)))
        finer = h_open
    hidden_np, signal_np = new_hidden.numpy(), new_signal.numpy()
    new_states = [
        replace(
            state,
            features=fs,
            hidden=hidden_np[row].copy(),
            open_signal=signal_np[row].copy(),
            window_keys=tuple(keys[row]),
            window_values=tuple(values[row]),
            applied=state.applied + 1,
        )
        for row, (state, fs) in enumerate(zip(states, feature_states, strict=True))
    ]
    return new_states, profiles


def _push(window: np.ndarray, entry: np.ndarray, capacity: int) -> np.ndarray:
    """Append and keep the newest `capacity` entries (a new array: states are values)."""
    if capacity <= 0:
        return window[:0]
    joined = np.concatenate([window, entry])
    return joined[max(0, len(joined) - capacity) :]


def _pool(
    model: HupModel,
    name: str,
    window_keys: list[np.ndarray],
    window_values: list[np.ndarray],
    current: Tensor,
    current_signal: Tensor,
) -> dict[str, Tensor]:
    """Profiles of `name`'s heads: attention over stored summaries plus the current entry."""
    width = model.config.window
    current_keys, current_values = model.entry_summary(name, current, current_signal)
    batch = current.shape[0]
    keys = current_keys.new_zeros(batch, width, current_keys.shape[1])
    values = current_values.new_zeros(batch, width, current_values.shape[1])
    mask = torch.zeros(batch, width, dtype=torch.bool)
    for row, (k, v) in enumerate(zip(window_keys, window_values, strict=True)):
        n = len(k)
        if n:
            keys[row, width - 1 - n : width - 1] = torch.from_numpy(k)
            values[row, width - 1 - n : width - 1] = torch.from_numpy(v)
            mask[row, width - 1 - n : width - 1] = True
    keys[:, -1] = current_keys
    values[:, -1] = current_values
    mask[:, -1] = True
    return model.pooled_profiles(name, keys, values, mask, current)
