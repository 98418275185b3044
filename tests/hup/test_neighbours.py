"""Co-visitation tables and the model's neighbour scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hup.config import VARIANTS, HupConfig
from hup.model import NEIGHBOUR_GAIN, HupModel, Neighbours
from hup.neighbours import (
    NeighbourTable,
    neighbour_table,
    part_of,
    stacked_tables,
    target_counts,
)


def _weight(table: NeighbourTable, source: int, target: int) -> float:
    row = list(table.ids[source])
    return float(table.weights[source][row.index(target)]) if target in row else 0.0


def test_pairs_within_the_window_weigh_one_over_distance_normalised_by_visits() -> None:
    table = neighbour_table([[1, 2, 3]], n_ids=4, k=3, window=5)
    # Every id is visited once: weights are the plain 1/distance sums, both ways.
    assert _weight(table, 1, 2) == pytest.approx(1.0)
    assert _weight(table, 2, 1) == pytest.approx(1.0)
    assert _weight(table, 1, 3) == pytest.approx(0.5)
    assert _weight(table, 3, 1) == pytest.approx(0.5)

    repeated = neighbour_table([[1, 2], [1, 3]], n_ids=4, k=3, window=5)
    assert _weight(repeated, 1, 2) == pytest.approx(1.0 / math.sqrt(2 * 1))


def test_window_self_pairs_and_oov_are_left_out() -> None:
    table = neighbour_table([[1, 2, 1, 0, 3]], n_ids=4, k=3, window=1)
    assert _weight(table, 1, 1) == 0.0
    assert _weight(table, 1, 3) == 0.0  # three runs apart, beyond the window
    assert not table.weights[0].any()  # OOV is neither a source nor a neighbour
    assert 0 not in [int(i) for i, w in zip(table.ids[3], table.weights[3], strict=True) if w]


def test_rows_keep_the_k_strongest_best_first_padded_with_zero() -> None:
    table = neighbour_table([[1, 2, 3, 4]], n_ids=6, k=2, window=5)
    assert table.ids.shape == (6, 2)
    assert list(table.ids[1]) == [2, 3]  # distances 1 and 2; 4 (distance 3) is cut
    assert table.weights[1][0] > table.weights[1][1]
    assert list(table.ids[5]) == [0, 0] and not table.weights[5].any()


def test_held_out_tables_never_count_their_own_part() -> None:
    sequences = [[1, 2], [3, 4], [5, 6], [1, 3], [2, 4], [5, 1]]
    tables = stacked_tables(sequences, n_ids=7, k=4, parts=3)
    assert tables.ids.shape == (4, 7, 4)
    for index, sequence in enumerate(sequences):
        a, b = sequence
        held_out = NeighbourTable(tables.ids[part_of(index, 3)], tables.weights[part_of(index, 3)])
        full = NeighbourTable(tables.ids[0], tables.weights[0])
        assert _weight(full, a, b) > 0
        assert _weight(held_out, a, b) == 0.0  # every pair occurs in one session only
    # part 1 holds sessions 0 and 3: neither pair is in table 1, both are in table 2.
    assert _weight(NeighbourTable(tables.ids[1], tables.weights[1]), 1, 2) == 0.0
    assert _weight(NeighbourTable(tables.ids[2], tables.weights[2]), 1, 2) > 0


def test_target_counts_count_visits_per_id() -> None:
    assert list(target_counts([[1, 2, 1], [2]], 4)) == [0.0, 2.0, 2.0, 0.0]


def test_scores_sum_the_recent_rows_with_their_rank_weights() -> None:
    module = Neighbours(n_ids=5, k=2)
    table = NeighbourTable(
        np.array([[0, 0], [2, 3], [1, 4], [1, 0], [0, 0]]),
        np.array([[0, 0], [0.5, 0.25], [0.5, 0.1], [0.25, 0], [0, 0]], dtype=np.float32),
    )
    module.install(table)
    recent = torch.zeros(1, 30, dtype=torch.long)
    recent[0, :2] = torch.tensor([1, 2])  # 1 is the most recent, then 2
    with torch.no_grad():
        scores = module(recent, None)[0]
    first, second = NEIGHBOUR_GAIN, NEIGHBOUR_GAIN / 2
    expected = [0.0, 0.5 * second, 0.5 * first, 0.25 * first, 0.1 * second]
    assert scores.tolist() == pytest.approx([math.log1p(v) for v in expected], rel=1e-6)


def test_each_row_reads_its_own_table_and_only_table_zero_is_kept() -> None:
    module = Neighbours(n_ids=3, k=1)
    ids = np.array([[[0], [2], [0]], [[0], [0], [0]]])
    weights = np.array([[[0], [1.0], [0]], [[0], [0], [0]]], dtype=np.float32)
    module.install(NeighbourTable(ids, weights))
    recent = torch.zeros(2, 30, dtype=torch.long)
    recent[:, 0] = 1
    with torch.no_grad():
        scores = module(recent, torch.tensor([0, 1]))
    assert scores[0, 2] > 0 and scores[1, 2] == 0
    module.keep_full_table()
    assert tuple(module.ids.shape) == (1, 3, 1)
    assert module.weights[0, 1, 0] == 1.0


def test_a_table_of_another_shape_is_refused() -> None:
    module = Neighbours(n_ids=3, k=2)
    with pytest.raises(ValueError, match="does not fit"):
        module.install(NeighbourTable(np.zeros((4, 2), dtype=np.int64), np.zeros((4, 2))))


def test_explore_priors_start_at_the_log_visit_counts() -> None:
    config = HupConfig(n_items=4, n_categories=(3,), **VARIANTS["hup"])
    heads = HupModel(config).repeat_heads
    assert heads is not None
    heads.set_priors(np.array([0.0, 9.0, 0.0, 2.0]), [np.array([0.0, 1.0, 4.0])])
    item = heads.item_bias.detach()
    assert (item[1] - item[3]).item() == pytest.approx(math.log(10) - math.log(3), rel=1e-6)
    assert (item[0] - item[2]).item() == 0.0
    category = heads.category_biases[0].detach()
    assert category.argmax().item() == 2 and category.mean().item() == pytest.approx(0, abs=1e-6)
