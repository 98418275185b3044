"""One event per user at a time: the per-user state and the batched step the stream calls.

`step` applies, for a batch of different users, exactly the rule `HupModel.forward`
applies over whole sequences: one micro step per micro event, the item and category
layers committed on focus change and stepped provisionally while their entry is open,
attention over the last W entries. It is pure: states in, new states and profiles out.

In memory (`ProfileState`), L layers, hidden H, window W:

* `hidden` float32 [4, L, H]: committed h, committed c, open h, open c per layer;
* `open_signal` int64 [L]: attention signal id of each layer's open entry;
* `windows`: per layer a ring of W entry summaries, float32 [W, A + V] (A = attention
  hidden size, V = the sizes of the heads the layer feeds; see `HupModel.entry_summary`;
  [0, 0] for a model without attention). Entry number n of a layer (counting from 1)
  lives in slot (n - 1) % W; the open entry is the newest, so the ring holds it and the
  W - 1 committed entries before it, which is the window attention reads;
* `window_count` int64 [L]: entries each layer opened so far; slots [0, min(count, W))
  are filled.

As arrays (`to_arrays`; `state.userstate` adds the stream's own and stores them):
`hidden` float32; `meta` int64 [2 + 3L]: events applied, W, then per layer the open
signal, the window count and the entry width A + V; `windows` float32: every layer's
filled slots [min(count, W), A + V], flattened and joined in layer order; the
featurizer's memory (`feature_arrays`: `feature_f` float64 / `feature_i` int64 /
`feature_s` utf-8, and the repeat memory `recent_i` int64 [n, 4 + K] / `recent_f`
float64 [n, 2] / `recent_s` utf-8, see `hup.repeat.RecentItem`: vocabulary id, runs,
micro events, behaviour bits, category ids; closed dwell and latest time; the skus
joined; absent when empty); `last_ts` float64 0-d (read by expiry).

The step has no Python loop over users in its arithmetic. Per call it gathers the
states' arrays once (hidden [B, 4, L, H], and the window rings of each run of layers with
equal entry widths as one contiguous float32 [B, G, W, D] buffer), computes every layer's
pre-activations except the finer layer's part in three products (one padded embedding
bag over small precomputed tables for categories, behaviour, gap and dwell buckets and
biases; the item embedding; the committed h of all layers in one batched product), steps
each layer with one product and a handful of fused element-wise ops (one sigmoid covers
every gate), and attends once per run of equal-width layers over the slots filled in
some row of the batch. The new states are views of the call's buffers.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from hup.exceptions import StateError
from hup.features import EventFeatures, FeatureState
from hup.model import HupModel
from hup.repeat import RecentItem

__all__ = ["ProfileState", "initial_state", "step"]

_SEPARATOR = "\x1f"  # joins ids in the string fields; never part of an id


@dataclass(frozen=True, slots=True)
class ProfileState:
    """Everything the stream keeps for one user (see the module docstring for the arrays)."""

    features: FeatureState
    hidden: np.ndarray  # [4, L, H] float32
    open_signal: np.ndarray  # [L] int64
    windows: tuple[np.ndarray, ...]  # per layer [W, A + V] float32 ring of entry summaries
    window_count: np.ndarray  # [L] int64 entries opened so far per layer
    applied: int = 0  # events applied so far (``applied > 0``: the user has an open entry)

    def window_lengths(self) -> tuple[int, ...]:
        """Committed entries in each layer's attention window (at most W - 1)."""
        capacity = [len(w) for w in self.windows]
        return tuple(
            max(0, min(int(n) - 1, c - 1)) if c else 0
            for n, c in zip(self.window_count.tolist(), capacity, strict=True)
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain named arrays (the stored layout in the module docstring).

        Built from Python lists (``tolist``) and one ``concatenate`` straight to
        float32: the stream calls this for every changed user in every batch.
        """
        window = len(self.windows[0])
        counts = self.window_count.tolist()
        arrays = {
            "hidden": self.hidden,
            "meta": np.array(
                [
                    self.applied,
                    window,
                    *self.open_signal.tolist(),
                    *counts,
                    *[ring.shape[1] for ring in self.windows],
                ],
                dtype=np.int64,
            ),
            "windows": np.concatenate(
                [
                    ring[: min(n, window)].ravel()
                    for ring, n in zip(self.windows, counts, strict=True)
                ],
                dtype=np.float32,
            ),
            **feature_arrays(self.features),
            "last_ts": np.array(self.features.last_ts, dtype=np.float64),
        }
        return arrays

    def array_sizes(self) -> list[tuple[str, int, int]]:
        """(name, ndim, bytes) of each array `to_arrays` returns, without building them.

        What the stream's per-event record-size check reads (a test holds the two equal).
        """
        n_layers = len(self.windows)
        window = len(self.windows[0])
        entries = sum(
            min(n, window) * ring.shape[1]
            for ring, n in zip(self.windows, self.window_count.tolist(), strict=True)
        )
        sizes = [
            ("hidden", 3, self.hidden.nbytes),
            ("meta", 1, 8 * (2 + 3 * n_layers)),
            ("windows", 1, 4 * entries),
            *feature_array_sizes(self.features),
            ("last_ts", 0, 8),
        ]
        return sizes

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ProfileState:
        """Inverse of `to_arrays`; raises `StateError` when arrays are missing or inconsistent."""
        try:
            hidden = arrays["hidden"]
            n_layers = hidden.shape[1]
            features = feature_state(arrays)
            meta = arrays["meta"]
            if meta.shape != (2 + 3 * n_layers,):
                raise ValueError(f"meta has shape {meta.shape}, expected {(2 + 3 * n_layers,)}")
            applied, window = meta[:2].tolist()
            open_signal = meta[2 : 2 + n_layers]
            count = meta[2 + n_layers : 2 + 2 * n_layers]
            widths = meta[2 + 2 * n_layers :].tolist()
            flat = arrays["windows"]
            windows, start = [], 0
            for n, width in zip(np.minimum(count, window).tolist(), widths, strict=True):
                ring = np.zeros((window, width), dtype=np.float32)
                ring[:n] = flat[start : start + n * width].reshape(n, width)
                windows.append(ring)
                start += n * width
            if start != len(flat):
                raise ValueError(f"windows has {len(flat)} values, the counts need {start}")
            return cls(
                features=features,
                hidden=hidden,
                open_signal=open_signal,
                windows=tuple(windows),
                window_count=count,
                applied=applied,
            )
        except (KeyError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise StateError(f"profile state arrays are inconsistent: {exc}") from exc


def feature_arrays(f: FeatureState) -> dict[str, np.ndarray]:
    """The featurizer's memory as named arrays (module docstring); `feature_state` inverts.

    `feature_f` float64, `feature_i` int64 and `feature_s` utf-8 hold the scalar fields;
    `recent_i`, `recent_f` and `recent_s` the repeat memory, only when it is not empty.
    """
    arrays: dict[str, np.ndarray] = {
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
    }
    if f.recent:
        arrays.update(_recent_arrays(f.recent))
    return arrays


def feature_array_sizes(f: FeatureState) -> list[tuple[str, int, int]]:
    """(name, ndim, bytes) of each array `feature_arrays` returns, without building them."""
    levels = len(f.category_ids)
    text = len(f.item.encode()) + sum(len(c.encode()) + 1 for c in f.categories)
    sizes = [
        ("feature_f", 1, 8 * (6 + 2 * levels)),
        ("feature_i", 1, 8 * (5 + 2 * levels)),
        ("feature_s", 1, text),
    ]
    if f.recent:
        skus = sum(len(e.item.encode()) for e in f.recent) + len(f.recent) - 1
        sizes += [
            ("recent_i", 2, 8 * (4 + len(f.recent[0].category_ids)) * len(f.recent)),
            ("recent_f", 2, 16 * len(f.recent)),
            ("recent_s", 1, skus),
        ]
    return sizes


def feature_state(arrays: Mapping[str, np.ndarray]) -> FeatureState:
    """Inverse of `feature_arrays`.

    Raises KeyError, ValueError or UnicodeDecodeError when the arrays are inconsistent.
    """
    ff = arrays["feature_f"].tolist()
    fi = arrays["feature_i"].tolist()
    text = arrays["feature_s"].tobytes().decode().split(_SEPARATOR)
    n_levels = len(fi) - 5
    if n_levels % 2 or len(ff) != 6 + n_levels:
        raise ValueError("feature arrays do not agree on the number of levels")
    n_levels //= 2
    return FeatureState(
        has_open=bool(fi[0]),
        item=text[0],
        categories=tuple(text[1:]),
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
        recent=_recent_items(arrays),
    )


def _recent_arrays(recent: tuple[RecentItem, ...]) -> dict[str, np.ndarray]:
    # `recent_f` from a flat list: numpy converts it faster than a list of pairs.
    return {
        "recent_i": np.array(
            [(e.item_id, e.runs, e.micro, e.behaviors, *e.category_ids) for e in recent],
            dtype=np.int64,
        ),
        "recent_f": np.array(
            [v for e in recent for v in (e.dwell_closed, e.last_ts)], dtype=np.float64
        ).reshape(len(recent), 2),
        "recent_s": np.frombuffer(
            _SEPARATOR.join([e.item for e in recent]).encode(), dtype=np.uint8
        ),
    }


def _recent_items(arrays: Mapping[str, np.ndarray]) -> tuple[RecentItem, ...]:
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


def window_size(model: HupModel) -> int:
    """Slots of each layer's window ring: W with attention, 0 without."""
    return model.config.window if model.config.attention else 0


def initial_state(model: HupModel, features: FeatureState) -> ProfileState:
    """The state of a user never seen before."""
    n_layers, hidden = len(model.layer_names), model.config.hidden
    window = window_size(model)
    return ProfileState(
        features=features,
        hidden=np.zeros((4, n_layers, hidden), dtype=np.float32),
        open_signal=np.zeros(n_layers, dtype=np.int64),
        windows=tuple(
            np.zeros((window, size if window else 0), dtype=np.float32)
            for size in _summary_sizes(model)
        ),
        window_count=np.zeros(n_layers, dtype=np.int64),
    )


def _summary_sizes(model: HupModel) -> list[int]:
    """Floats per window entry of each layer: the attention key plus the head projections."""
    if not model.config.attention:
        return [0] * len(model.layer_names)
    return [
        model.config.attention_hidden
        + sum(model.head_of(h).out_features for h in model.heads_of(name))
        for name in model.layer_names
    ]


# ---- the step's plan: the model's weights rearranged once for the per-event step ---------


class _Columns:
    """Column indices of the flat per-event feature matrix (`_feature_matrix`)."""

    def __init__(self, n_levels: int) -> None:
        k = n_levels
        self.is_micro, self.item = 0, 1
        self.categories = list(range(2, 2 + k))
        self.behavior, self.gap, self.dwell = 2 + k, 3 + k, 4 + k
        self.item_change, self.item_gap = 5 + k, 6 + k
        self.category_change = list(range(7 + k, 7 + 2 * k))
        self.category_gap = list(range(7 + 2 * k, 7 + 3 * k))
        self.category_dwell = list(range(7 + 3 * k, 7 + 4 * k))
        self.zero = 7 + 4 * k  # always 0: indexes the bias row of every layer's table
        self.width = 8 + 4 * k


def _feature_matrix(features: list[EventFeatures]) -> np.ndarray:
    """One row of ints per event, in `_Columns` order."""
    return np.array(
        [
            (
                f.is_micro,
                f.item,
                *f.categories,
                f.behavior,
                f.gap,
                f.dwell,
                f.item_change,
                f.item_gap,
                *f.category_change,
                *f.category_gap,
                *f.category_dwell,
                0,
            )
            for f in features
        ],
        dtype=np.int64,
    )


class _Group(NamedTuple):
    """A run of adjacent layers whose window entries have the same width, attended together.

    Every tensor is stacked over the group's G layers; an entry is [key A | values V].
    """

    start: int  # first layer of the run
    stop: int  # one past its last layer
    summary_t: Tensor  # [G, H, A + V + A]: key (entry part), head values, 2 x query
    signal_table: Tensor  # [sum of signal counts, A + V + A]: key (signal part + bias), zeros
    signal_offsets: np.ndarray  # [G, 1] first row of each layer's signals in signal_table
    score: Tensor  # [G, 1, A] 2 x second scoring layer (its bias cancels in the softmax)
    head_bias: Tensor  # [G, V]
    heads: list[list[tuple[str, int]]]  # per layer, (head, size) in value order


class _Plan:
    """The model's weights rearranged for `step`: fused, transposed and precomputed tables.

    Mathematically the same function as the model's layers: a linear map of a
    concatenation is split into its parts, the part fed by a small embedding table
    becomes a lookup of that table times the weights (precomputed), and every constant
    term (biases) is folded into one table row per layer. The pre-activations of a layer
    are laid out [extra gates (time, behaviour), I, C~, F, O] (E + 4 blocks of H), so the
    recurrent weights feed one run of four blocks and the factors of the cell's update
    (extra gates, I, C~) are one run too. The C~ block is scaled by 2 (exact in floating
    point), so one sigmoid covers every block: tanh(x) = 2 sigmoid(2x) - 1, and torch's
    sigmoid costs a third of its tanh on the CPU. The attention query and the second
    scoring layer are scaled by 2 for the same reason (`_attend`).
    """

    def __init__(self, model: HupModel) -> None:
        cfg = model.config
        # The parameters read below (not those of the repeat heads, for instance).
        modules = [model.cells, model.pools, model.heads, model.item_embedding]
        modules += [model.category_embeddings, model.behavior_embedding]
        modules += [model.gap_embedding, model.dwell_embedding]
        self.parameters = [p for module in modules for p in module.parameters()]
        self.versions = _versions(self.parameters)
        self.columns = cols = _Columns(cfg.n_levels)
        self.hidden = h = cfg.hidden
        self.window = window_size(model)
        self.item_embedding = model.item_embedding.weight.detach()
        names = model.layer_names
        self.n_layers = len(names)
        tables: list[Tensor] = []
        bags: list[list[tuple[int, int]]] = []  # per layer, (feature column, table row offset)
        recurrent: list[Tensor] = []
        item_w: list[Tensor | None] = []
        self.finer: list[Tensor | None] = []
        self.extras = 0
        rows = 0
        for name in names:
            cell = model.cell_of(name)
            parts, dt, a, _, _, _ = self._inputs(model, name)
            x_dim = sum(width for _, width, _ in parts)
            order = torch.cat(
                [
                    torch.arange(0, h),
                    torch.arange(2 * h, 3 * h),
                    torch.arange(h, 2 * h),
                    torch.arange(3 * h, 4 * h),
                ]
            )
            doubled = torch.ones(4 * h)
            doubled[h : 2 * h] = 2.0  # C~ (see the class docstring)
            gates_w = cell.gates.weight.detach()[order] * doubled.unsqueeze(1)  # I, C~, F, O
            blocks_x, biases = [], []
            extra: list[tuple[int, torch.nn.Embedding, Tensor, int]] = []  # col, emb, W, block
            for gate, (gate_column, gate_embedding) in (
                (cell.time_gate, dt),
                (cell.behavior_gate, a),
            ):
                if gate is not None:
                    weight = gate.weight.detach()[:, x_dim:]
                    extra.append((gate_column, gate_embedding, weight, len(extra)))
                    blocks_x.append(gate.weight.detach()[:, :x_dim])
                    biases.append(gate.bias.detach())
            self.extras = len(extra)
            blocks_x.append(gates_w[:, :x_dim])
            biases.append(cell.gates.bias.detach()[order] * doubled)
            w_x = torch.cat(blocks_x)  # [G, X]
            width_g = w_x.shape[0]
            sparse: dict[int, Tensor] = {cols.zero: torch.cat(biases).unsqueeze(0)}
            dense: dict[str, Tensor] = {}
            offset = 0
            for source, width, embedding in parts:
                w_part = w_x[:, offset : offset + width]
                if embedding is None:
                    dense[str(source)] = w_part.T.contiguous()
                else:
                    column = int(source)
                    table = embedding.weight.detach() @ w_part.T
                    sparse[column] = sparse[column] + table if column in sparse else table
                offset += width
            for column, embedding, weight, block in extra:
                table = torch.zeros(embedding.num_embeddings, width_g)
                table[:, block * h : (block + 1) * h] = embedding.weight.detach() @ weight.T
                sparse[column] = sparse[column] + table if column in sparse else table
            bag = []
            for column, table in sparse.items():
                bag.append((column, rows))
                tables.append(table)
                rows += table.shape[0]
            bags.append(bag)
            recurrent.append(gates_w[:, x_dim:].T)  # [H, 4H]
            item_w.append(dense.get("item"))
            self.finer.append(dense.get("finer"))
        self.gate_width = (self.extras + 4) * h
        # Bags padded to one length with a row of zeros, so the lookup is one 2-D bag.
        tables.append(torch.zeros(1, self.gate_width))
        self.table = torch.cat(tables).contiguous()
        longest = max(len(b) for b in bags)
        padded = [b + [(cols.zero, rows)] * (longest - len(b)) for b in bags]
        self.bag_columns = np.array([[c for c, _ in b] for b in padded], dtype=np.int64).ravel()
        self.bag_offsets = np.array([[o for _, o in b] for b in padded], dtype=np.int64).ravel()
        self.bag_length = longest
        self.recurrent = torch.stack(recurrent).contiguous()  # [L, H, 4H]
        # The item embedding feeds a run of adjacent layers (the first one or two).
        fed = [i for i, w in enumerate(item_w) if w is not None]
        if fed != list(range(fed[0], fed[-1] + 1)):
            raise StateError(f"the item embedding feeds layers {fed}, expected adjacent ones")
        self.item_layers = (fed[0], fed[-1] + 1)
        self.item_w = torch.stack([w for w in item_w if w is not None]).contiguous()  # [n, I, G]
        self.change = np.array([self._inputs(model, n)[3] for n in names], dtype=np.int64)
        self.signal = np.array([self._inputs(model, n)[5] for n in names], dtype=np.int64)
        self.recompute = [
            (index, stepped)
            for index, name in enumerate(names)
            if (stepped := self._inputs(model, name)[4]) is not None
        ]
        self.groups: list[_Group] = []
        self.head_t: list[tuple[Tensor, Tensor, list[tuple[str, int]]]] = []
        if cfg.attention:
            sizes = _summary_sizes(model)
            start = 0
            for stop in range(1, len(names) + 1):
                if stop == len(names) or sizes[stop] != sizes[start]:
                    self.groups.append(self._group(model, names, start, stop))
                    start = stop
        else:
            for name in names:
                heads, head_w, head_bias = self._heads(model, name)
                self.head_t.append((head_bias, head_w.T.contiguous(), heads))

    @staticmethod
    def _inputs(
        model: HupModel, name: str
    ) -> tuple[
        list[tuple[str | int, int, torch.nn.Embedding | None]],
        tuple[int, torch.nn.Embedding],
        tuple[int, torch.nn.Embedding],
        int,
        int | None,
        int,
    ]:
        """The parts of `HupModel.layer_input` for `name`: x parts, dt, a and flag columns."""
        cfg = model.config
        cols = _Columns(cfg.n_levels)
        gap, dwell, behavior = model.gap_embedding, model.dwell_embedding, model.behavior_embedding
        if name == "micro":
            parts: list[tuple[str | int, int, torch.nn.Embedding | None]] = [
                ("item", cfg.item_dim, None)
            ]
            for k in range(cfg.n_levels):
                parts.append((cols.categories[k], cfg.category_dim, model.category_embedding(k)))
            parts += [
                (cols.behavior, cfg.behavior_dim, behavior),
                (cols.gap, cfg.gap_dim, gap),
                (cols.dwell, cfg.dwell_dim, dwell),
            ]
            return (
                parts,
                (cols.gap, gap),
                (cols.behavior, behavior),
                cols.is_micro,
                cols.is_micro,
                cols.behavior,
            )
        if name == "item":
            parts = [("item", cfg.item_dim, None)]
            if cfg.use_micro:
                parts.append(("finer", cfg.hidden, None))
            return (
                parts,
                (cols.item_gap, gap),
                (cols.dwell, dwell),
                cols.item_change,
                None,
                cols.dwell,
            )
        k = int(name.removeprefix("category"))
        return (
            [
                (cols.categories[k], cfg.category_dim, model.category_embedding(k)),
                ("finer", cfg.hidden, None),
            ],
            (cols.category_gap[k], gap),
            (cols.category_dwell[k], dwell),
            cols.category_change[k],
            None,
            cols.category_dwell[k],
        )

    @staticmethod
    def _heads(model: HupModel, name: str) -> tuple[list[tuple[str, int]], Tensor, Tensor]:
        """The heads layer ``name`` feeds, (name, size) in value order; their weights and biases."""
        heads = [(h, model.head_of(h).out_features) for h in model.heads_of(name)]
        head_w = torch.cat([model.head_of(h).weight.detach() for h, _ in heads])  # [V, H]
        head_bias = torch.cat([model.head_of(h).bias.detach() for h, _ in heads])
        return heads, head_w, head_bias

    @classmethod
    def _group(cls, model: HupModel, names: list[str], start: int, stop: int) -> _Group:
        h = model.config.hidden
        summary_t, signal_tables, score, head_bias, heads = [], [], [], [], []
        for name in names[start:stop]:
            layer_heads, head_w, bias = cls._heads(model, name)
            pool = model.pool_of(name)
            w = pool.score_hidden.weight.detach()  # [A, 2H + S]: entry, query, signal
            summary_t.append(torch.cat([w[:, :h], head_w, 2 * w[:, h : 2 * h]]).T)
            embedding = model.behavior_embedding if name == "micro" else model.dwell_embedding
            keys = embedding.weight.detach() @ w[:, 2 * h :].T + pool.score_hidden.bias.detach()
            zeros = keys.new_zeros(keys.shape[0], head_w.shape[0] + w.shape[0])
            signal_tables.append(torch.cat([keys, zeros], dim=1))
            score.append(2 * pool.score_out.weight.detach()[0])
            head_bias.append(bias)
            heads.append(layer_heads)
        sizes = [t.shape[0] for t in signal_tables]
        return _Group(
            start,
            stop,
            torch.stack(summary_t).contiguous(),
            torch.cat(signal_tables).contiguous(),
            np.cumsum([0, *sizes[:-1]]).astype(np.int64)[:, None],
            torch.stack(score).unsqueeze(1).contiguous(),
            torch.stack(head_bias).contiguous(),
            heads,
        )


def _versions(parameters: list[torch.nn.Parameter]) -> tuple[int, ...]:
    """In-place update counters of the model's parameters: a plan is stale when they moved."""
    return tuple(map(_VERSION, parameters))


_VERSION = operator.attrgetter("_version")  # torch has no public name for the counter


_PLANS: weakref.WeakKeyDictionary[HupModel, _Plan] = weakref.WeakKeyDictionary()


def _plan(model: HupModel) -> _Plan:
    """The model's cached plan, rebuilt when a parameter changed since it was made."""
    plan = _PLANS.get(model)
    if plan is None or plan.versions != _versions(plan.parameters):
        with torch.no_grad():
            plan = _Plan(model)
        _PLANS[model] = plan
    return plan


# ---- the step ---------------------------------------------------------------------------


@torch.inference_mode()
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
    plan = _plan(model)
    n_layers, h, e = plan.n_layers, plan.hidden, plan.extras
    if states[0].hidden.shape != (4, n_layers, h):
        raise StateError(
            f"state has hidden shape {states[0].hidden.shape}, the model needs {(4, n_layers, h)}"
        )
    batch = len(states)
    fm = _feature_matrix(features)  # [B, F]

    # Per-row bookkeeping of every layer, in numpy, before any model arithmetic.
    seen = np.fromiter((s.applied > 0 for s in states), dtype=bool, count=batch)
    # np.concatenate then reshape: np.stack adds an axis to every array first.
    count = np.concatenate([s.window_count for s in states]).reshape(batch, n_layers)
    commit = fm[:, plan.change].astype(bool) & seen[:, None]  # [B, L]
    new_count = np.where(seen[:, None], count + commit, 1)
    new_signal = fm[:, plan.signal]  # [B, L]
    # The batch's hidden states, in a buffer of this call's that becomes the new ones.
    hidden = np.concatenate([s.hidden for s in states]).reshape(batch, 4, n_layers, h)
    kept = []  # (layer, rows whose open entry is not stepped, its open h and c)
    for index, column in plan.recompute:
        keep = fm[:, column] == 0
        if keep.any():
            kept.append((index, keep, hidden[keep, 2:4, index]))
            signals = np.concatenate([s.open_signal for s in states]).reshape(batch, n_layers)
            new_signal[keep, index] = signals[keep, index]

    # The committed (h, c) of every layer: the open entry's where a new entry starts.
    rows, layers = np.nonzero(commit)
    hidden[rows, 0:2, layers] = hidden[rows, 2:4, layers]
    nh = torch.from_numpy(hidden)

    # Pre-activations [L, B, (E + 4) H] of every layer from everything but the finer layer:
    # the small tables (one padded bag per layer and row), the item embedding and the
    # committed h, three products in all.
    ids = (fm[:, plan.bag_columns] + plan.bag_offsets).reshape(batch, n_layers, plan.bag_length)
    ids_t = torch.from_numpy(np.ascontiguousarray(ids.transpose(1, 0, 2)))
    pre = F.embedding_bag(ids_t.view(-1, plan.bag_length), plan.table, mode="sum")
    pre = pre.view(n_layers, batch, plan.gate_width)
    item = F.embedding(torch.from_numpy(fm[:, plan.columns.item]), plan.item_embedding)
    first, last = plan.item_layers
    pre[first:last].baddbmm_(item.expand(last - first, batch, item.shape[1]), plan.item_w)
    pre[:, :, e * h :].baddbmm_(nh[:, 0].transpose(0, 1), plan.recurrent)

    # The open step of each layer, coarser layers reading the finer layer's open output.
    # tanh(x) = 2 sigmoid(2x) - 1 throughout (see `_Plan`): the C~ block arrives doubled.
    committed_c, open_h, open_c = nh[:, 1].unbind(1), nh[:, 2].unbind(1), nh[:, 3].unbind(1)
    for index, gates in enumerate(pre.unbind(0)):
        finer_w = plan.finer[index]
        if finer_w is not None:
            gates.addmm_(open_h[index - 1], finer_w)
        gates.sigmoid_()
        candidate = gates[:, (e + 1) * h : (e + 2) * h]
        torch.add(_MINUS_ONE, candidate, alpha=2, out=candidate)  # tanh of C~
        update = gates[:, : (e + 2) * h].view(batch, e + 2, h).prod(dim=1)  # extras * I * C~
        torch.addcmul(
            update, gates[:, (e + 2) * h : (e + 3) * h], committed_c[index], out=open_c[index]
        )
        squashed = torch.mul(open_c[index], 2).sigmoid_()
        torch.add(_MINUS_ONE, squashed, alpha=2, out=squashed)  # tanh(c)
        torch.mul(gates[:, (e + 3) * h :], squashed, out=open_h[index])
        for layer, keep, open_hc in kept:
            if layer == index:
                hidden[keep, 2:4, index] = open_hc

    profiles: dict[str, Tensor] = {}
    # Per group, an iterator over its rings in (row, layer) order: one tuple per row below.
    ring_rows: list[Iterator[np.ndarray]] = []
    for group in plan.groups:
        rings, out = _attend(plan, group, states, nh, new_signal, new_count)
        ring_rows += [iter(rings.reshape(-1, *rings.shape[2:]))] * (group.stop - group.start)
        for g, heads in enumerate(group.heads):
            start = 0
            for head, size in heads:
                profiles[head] = out[:, g, start : start + size]
                start += size
    for index, (head_bias, head_t, heads) in enumerate(plan.head_t):
        out = torch.tanh(torch.addmm(head_bias, open_h[index], head_t))
        start = 0
        for head, size in heads:
            profiles[head] = out[:, start : start + size]
            start += size
        ring_rows.append(itertools.repeat(_NO_WINDOW))

    new_states = [
        ProfileState(
            fs,
            hid,
            signal,
            rings,
            n,
            state.applied + 1,
        )
        for state, fs, hid, signal, rings, n in zip(
            states,
            feature_states,
            list(hidden),
            list(new_signal),
            zip(*ring_rows, strict=False),  # the rows' ring tuples; `states` sets the length
            list(new_count),
            strict=False,
        )
    ]
    return new_states, profiles


_MINUS_ONE = torch.tensor(-1.0)
_NO_WINDOW = np.zeros((0, 0), dtype=np.float32)
_NO_WINDOW.flags.writeable = False


def _attend(
    plan: _Plan,
    group: _Group,
    states: list[ProfileState],
    nh: Tensor,
    new_signal: np.ndarray,
    new_count: np.ndarray,
) -> tuple[np.ndarray, Tensor]:
    """Add this event's entry to the group's rings and pool each window; rings [B, G, W, D].

    The batch's rings are copied whole into one buffer (one C-level copy: cheaper than
    slicing each ring to its filled slots, whose tails are zero), and scores are computed
    over the slots below the group's largest fill after this event only.
    """
    batch, window = len(states), plan.window
    start, stop = group.start, group.stop
    layers = stop - start
    width = states[0].windows[start].shape[1]
    keys_width = group.score.shape[2]
    counts = new_count[:, start:stop]  # [B, G]
    filled = np.minimum(counts, window)
    n = int(filled.max())
    rings = np.empty((batch, layers, window, width), dtype=np.float32)
    np.concatenate(
        [s.windows[layer] for s in states for layer in range(start, stop)],
        out=rings.reshape(batch * layers * window, width),
    )
    ids = torch.from_numpy((new_signal[:, start:stop].T + group.signal_offsets).ravel())
    signal_terms = F.embedding(ids, group.signal_table).view(layers, batch, -1)
    open_h = nh[:, 2, start:stop].transpose(0, 1)  # [G, B, H]
    summary = torch.baddbmm(signal_terms, open_h, group.summary_t)  # [G, B, D + A]
    slots = (counts - 1) % window
    rings[np.arange(batch)[:, None], np.arange(layers), slots] = (
        summary[:, :, :width].numpy().transpose(1, 0, 2)
    )
    ring = torch.from_numpy(rings)[:, :, :n]
    query = summary[:, :, width:].transpose(0, 1).unsqueeze(2)  # [B, G, 1, A]
    # score 2v . sigmoid(2(k + q)) = v . tanh(k + q) + sum(v): the softmax drops the constant.
    scores = torch.add(query, ring[..., :keys_width], alpha=2).sigmoid_().mul_(group.score).sum(-1)
    if int(filled.min()) < n:
        scores.masked_fill_(torch.from_numpy(np.arange(n) >= filled[..., None]), float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # [B, G, n]
    pooled = torch.matmul(weights.unsqueeze(2), ring[..., keys_width:]).squeeze(2)
    return rings, pooled.add_(group.head_bias).tanh_()
