"""Co-visitation tables: which ids users visit near each id, counted on the training sessions.

A profile vector ranks unseen items by similarity in embedding space, which small data
trains poorly for rare items; counting which items sessions visit within a few runs of each
other is far more sample-efficient (the strength of Item-KNN, sequential rules and the
session-kNN peers). The repeat-aware model adds such a table's score over the user's
recent items to its explore channel (`hup.model.mixture`), with learned weights per recency
rank, so the signal is learned end to end and travels with the checkpoint: the stream reads
the same table as the offline evaluation.

A table built on the training sessions would let each training point see its own target
(the session's own pairs are in the counts). Training therefore reads held-out tables:
session ``i`` is in part ``part_of(i)`` and reads a table counted on the other parts only;
evaluation and the stream read the table of all training sessions (part 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np
from scipy import sparse

from hup.features import EventFeatures

__all__ = [
    "HELD_OUT_PARTS",
    "NEIGHBOUR_WINDOW",
    "Featurized",
    "NeighbourTable",
    "neighbour_table",
    "part_of",
    "run_sequences",
    "stacked_tables",
    "target_counts",
]

NEIGHBOUR_WINDOW = 5
"""Runs apart within which two visits count as co-visited (weight 1 / distance)."""

HELD_OUT_PARTS = 5
"""Parts of the training sessions for the held-out tables that training reads."""


class NeighbourTable(NamedTuple):
    """The ``k`` strongest co-visited ids of each id (padded with id 0 and weight 0).

    ``ids`` [..., V, k] int64 and ``weights`` [..., V, k] float32: a leading axis, when
    present, holds the tables of `stacked_tables`.
    """

    ids: np.ndarray
    weights: np.ndarray


class Featurized(Protocol):
    """What `run_sequences` reads of a session (`hup.sequences.FeaturizedSession`)."""

    @property
    def features(self) -> Sequence[EventFeatures]:
        """The session's features in order."""
        ...


def run_sequences(
    sessions: Sequence[Featurized], n_levels: int
) -> tuple[list[list[int]], list[list[list[int]]]]:
    """The sequences the tables count, per session.

    Item ids of its runs (item focus changes), and per category level the ids of its
    category changes.
    """
    items: list[list[int]] = []
    categories: list[list[list[int]]] = [[] for _ in range(n_levels)]
    for session in sessions:
        runs: list[int] = []
        levels: list[list[int]] = [[] for _ in range(n_levels)]
        for feature in session.features:
            if not feature.is_micro:
                continue
            if feature.item_change or not runs:
                runs.append(feature.item)
            for level, sequence in enumerate(levels):
                category = feature.categories[level]
                if not sequence or sequence[-1] != category:
                    sequence.append(category)
        items.append(runs)
        for level, sequence in enumerate(levels):
            categories[level].append(sequence)
    return items, categories


def target_counts(sequences: Sequence[Sequence[int]], n_ids: int) -> np.ndarray:
    """How often each id is visited in `sequences` (the explore channel's prior, `[n_ids]`)."""
    counts = np.zeros(n_ids, dtype=np.float64)
    for sequence in sequences:
        np.add.at(counts, np.asarray(sequence, dtype=np.int64), 1.0)
    return counts


def _co_visits(sequences: Sequence[Sequence[int]], n_ids: int, window: int) -> sparse.csr_matrix:
    """Symmetric co-visitation weights [n_ids, n_ids].

    Each pair of different known ids within `window` runs adds 1/distance; the sums are
    divided by the square root of both ids' visit counts, so popular ids do not neighbour
    everything.
    """
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for sequence in sequences:
        ids = np.asarray(sequence, dtype=np.int64)
        for distance in range(1, min(window, len(ids) - 1) + 1):
            a, b = ids[:-distance], ids[distance:]
            keep = (a != b) & (a != 0) & (b != 0)
            weight = np.full(int(keep.sum()), 1.0 / distance)
            rows += [a[keep], b[keep]]
            cols += [b[keep], a[keep]]
            values += [weight, weight]
    if not rows:
        return sparse.csr_matrix((n_ids, n_ids), dtype=np.float64)
    counts = sparse.coo_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_ids, n_ids),
    ).tocsr()
    visits = target_counts(sequences, n_ids)
    scale = 1.0 / np.sqrt(np.maximum(visits, 1.0))
    return sparse.diags(scale) @ counts @ sparse.diags(scale)


def neighbour_table(
    sequences: Sequence[Sequence[int]], n_ids: int, k: int, window: int = NEIGHBOUR_WINDOW
) -> NeighbourTable:
    """The top-`k` co-visited ids of every id in `sequences` (see `_co_visits`)."""
    k = min(k, n_ids)
    matrix = _co_visits(sequences, n_ids, window).tocsr()
    ids = np.zeros((n_ids, k), dtype=np.int64)
    weights = np.zeros((n_ids, k), dtype=np.float32)
    for source in range(n_ids):
        start, end = matrix.indptr[source], matrix.indptr[source + 1]
        if start == end:
            continue
        columns, values = matrix.indices[start:end], matrix.data[start:end]
        # Strongest first; ties by id, so the table does not depend on the sort's stability.
        order = np.lexsort((columns, -values))[:k]
        ids[source, : len(order)] = columns[order]
        weights[source, : len(order)] = values[order]
    return NeighbourTable(ids, weights)


def part_of(session_index: int, parts: int = HELD_OUT_PARTS) -> int:
    """The held-out table training session `session_index` reads (1..parts; 0 is all)."""
    return 1 + session_index % parts


def stacked_tables(
    sequences: Sequence[Sequence[int]],
    n_ids: int,
    k: int,
    parts: int = HELD_OUT_PARTS,
    window: int = NEIGHBOUR_WINDOW,
) -> NeighbourTable:
    """Tables [parts + 1, V, k] of every sequence (index 0) and held out (index p).

    Table p counts every sequence whose `part_of` is not p: what training points of part p
    may read.
    """
    tables = [neighbour_table(sequences, n_ids, k, window)]
    for part in range(1, parts + 1):
        others = [s for i, s in enumerate(sequences) if part_of(i, parts) != part]
        tables.append(neighbour_table(others, n_ids, k, window))
    return NeighbourTable(np.stack([t.ids for t in tables]), np.stack([t.weights for t in tables]))
