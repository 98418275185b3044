"""Session-kNN scoring: V-SKNN (Ludewig & Jannach 2018) and STAN (Garg et al. 2019), vectorised.

A session is the sequence of its runs (a run: consecutive micro events on one sku), so a
scroll through one product page counts as one item, as a click does in the papers' data.
Neighbours are training sessions; "recent" means late in the training split's order, which
is file order (the JD samples carry no dates: `hup.jd` spaces the sessions one synthetic day
apart, so time and order say the same thing, and order is what is used).

Both scorers take a batch of queries (the input runs of prediction points) and return a
sparse matrix of item scores [P, V] over the training skus, own skus included; excluding the
session's own skus and the last input sku is the ranking's job (`hup.peers`).

V-SKNN, for a query s of L runs and a training session n:

    w(i) = p_i / L                      (p_i: 1-based position of the latest run of i in s)
    sim(s, n) = sum_{i in s and n} w(i)            ("dot"; "cosine" divides by sqrt(|n|))
    N_k(s) = the k most similar of the m most recent sessions sharing an item with s
    score(j) = sum_{n in N_k(s), j in n} sim(s, n) * (1 + idf_weight * log(N / df_j))

STAN, with the same positions:

    w1(i) = exp((p_i - L) / lambda1)
    sim(s, n) = sum_{i in s and n} w1(i) / sqrt(|s| |n|) * exp(-age_n / lambda2)
    score(j) = sum_{n in N_k(s), j in n} sim(s, n) * exp(-d_n(j, r) / lambda3)

where |s|, |n| count distinct skus, age_n is the number of training sessions after n, r is
the most recent sku of s that n holds, and d_n(j, r) the distance in runs between j and r in
n (the closest pair of their runs when either occurs more than once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import sparse

from hup.repeat_score import SessionInput
from hup.schema import MicroEvent
from hup.sessions import Session

__all__ = [
    "Candidates",
    "QueryBatch",
    "SessionIndex",
    "StanParams",
    "VSknnParams",
    "stan_scores",
    "vsknn_scores",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_MIN_LOG_WEIGHT = -700.0  # exp() of anything lower underflows to 0 and would drop a shared sku


@dataclass(frozen=True)
class VSknnParams:
    """V-SKNN's settings (module docstring); the defaults are where `hup.peers`' search starts."""

    k: int = 100  # neighbours
    sample: int = 500  # most recent candidate sessions sharing a sku (m)
    idf_weight: float = 1.0  # 0: plain sum of similarities
    cosine: bool = False  # False: the dot product of the decayed query with n


@dataclass(frozen=True)
class StanParams:
    """STAN's settings (module docstring); lambda2 is in training sessions (inf: no decay)."""

    k: int = 100
    lambda1: float = 2.0  # runs
    lambda2: float = math.inf  # sessions
    lambda3: float = 2.0  # runs


def _runs(session: Session) -> list[str]:
    skus: list[str] = []
    for event in session.events:
        if isinstance(event, MicroEvent) and (not skus or skus[-1] != event.item_id):
            skus.append(event.item_id)
    return skus


class SessionIndex:
    """The training sessions as run sequences over the training skus, with what scoring needs.

    Sku ids are positions in ``items`` (the training popularity order), so a lower id is the
    more popular sku, which the rankings use to break ties.
    """

    def __init__(self, train: Sequence[Session], items: Sequence[str]) -> None:
        """Index ``train`` (in time order) over ``items`` (every sku of ``train``)."""
        self.items = tuple(items)
        self.ids = {sku: i for i, sku in enumerate(self.items)}
        n_items = len(self.items)
        self.runs = [np.asarray([self.ids[s] for s in _runs(t)], dtype=np.int64) for t in train]
        rows = [np.unique(r) for r in self.runs]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(r) for r in rows])
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        # [N, V] 1 where session n holds sku j; rows sorted, so entry (n, j) sits at a
        # position that `entry` finds by binary search.
        self.contains = sparse.csr_matrix(
            (np.ones(len(indices)), indices, indptr), shape=(len(rows), n_items)
        )
        self.n_distinct = np.diff(indptr).astype(np.float64)  # [N]
        df = np.bincount(indices, minlength=n_items)
        self.idf = np.log(max(len(rows), 1) / np.maximum(df, 1))  # [V]
        self._keys = np.repeat(np.arange(len(rows), dtype=np.int64), np.diff(indptr)) * max(
            n_items, 1
        ) + indices.astype(np.int64)
        self._distances: tuple[IntArray, IntArray, IntArray] | None = None
        self._decay: dict[float, sparse.csr_matrix] = {}

    @property
    def n_sessions(self) -> int:
        """Training sessions indexed."""
        return len(self.runs)

    def entry(self, sessions: IntArray, skus: IntArray) -> IntArray:
        """Position of each (session, sku) pair among the stored entries of ``contains``."""
        return np.searchsorted(self._keys, sessions * max(len(self.items), 1) + skus)

    def distances(self) -> tuple[IntArray, IntArray, IntArray]:
        """Run distances within each session, one row per stored entry (n, r) of ``contains``.

        Row (n, r) lists every sku j of n with the distance in runs between the closest runs
        of j and r (0 for j = r), as CSR arrays (indptr, indices, distances). Built once.
        """
        if self._distances is None:
            indptr, indices, values = [0], [], []
            for runs in self.runs:
                skus, local = np.unique(runs, return_inverse=True)
                gap = np.abs(np.arange(len(runs))[:, None] - np.arange(len(runs))[None, :])
                nearest = np.full((len(skus), len(skus)), np.iinfo(np.int64).max)
                np.minimum.at(nearest, (local[:, None], local[None, :]), gap)
                for row in nearest:
                    indices.append(skus)
                    values.append(row)
                    indptr.append(indptr[-1] + len(skus))
            empty = np.zeros(0, dtype=np.int64)
            self._distances = (
                np.asarray(indptr, dtype=np.int64),
                np.concatenate(indices) if indices else empty,
                np.concatenate(values) if values else empty,
            )
        return self._distances

    def decay(self, scale: float) -> sparse.csr_matrix:
        """[entries of ``contains``, V]: row (n, r) holds ``exp(-d_n(j, r) / scale)`` per sku j."""
        if scale not in self._decay:
            indptr, indices, distance = self.distances()
            self._decay[scale] = sparse.csr_matrix(
                (np.exp(-distance / scale), indices, indptr),
                shape=(len(indptr) - 1, len(self.items)),
            )
        return self._decay[scale]


@dataclass(frozen=True)
class QueryBatch:
    """The input runs of P points over the training skus, as flat arrays.

    Per point: its distinct training skus with the 1-based position of their latest run
    (CSR ``ptr``/``skus``/``positions``), its run count ``length`` (unknown skus included:
    they are runs of the session that simply match no neighbour) and its distinct sku count.
    """

    ptr: IntArray  # [P + 1]
    skus: IntArray  # [nnz] sku ids
    positions: FloatArray  # [nnz] 1-based position of the sku's latest run
    length: FloatArray  # [P] runs
    n_distinct: FloatArray  # [P] distinct skus, unknown ones included
    n_items: int

    @classmethod
    def build(cls, inputs: Sequence[SessionInput], index: SessionIndex) -> QueryBatch:
        """The queries of ``inputs`` over ``index``'s skus."""
        ptr, skus, positions = [0], [], []
        for session in inputs:
            known = [(index.ids[s], p + 1) for s, p in session.last_run.items() if s in index.ids]
            known.sort()
            skus += [s for s, _ in known]
            positions += [p for _, p in known]
            ptr.append(len(skus))
        return cls(
            ptr=np.asarray(ptr, dtype=np.int64),
            skus=np.asarray(skus, dtype=np.int64),
            positions=np.asarray(positions, dtype=np.float64),
            length=np.asarray([len(s.runs) for s in inputs], dtype=np.float64),
            n_distinct=np.asarray([len(s.last_run) for s in inputs], dtype=np.float64),
            n_items=len(index.items),
        )

    def __len__(self) -> int:
        return len(self.length)

    @property
    def rows(self) -> IntArray:
        """The query of each stored sku, [nnz]."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.ptr))

    def matrix(self, weights: FloatArray) -> sparse.csr_matrix:
        """[P, V] with ``weights`` (one per stored sku) at the query's skus."""
        return sparse.csr_matrix((weights, self.skus, self.ptr), shape=(len(self), self.n_items))


@dataclass(frozen=True)
class Candidates:
    """Every (query, training session) pair sharing a sku, sorted by query then session.

    Built once per `QueryBatch` and reused by every setting tried: which pairs share skus,
    and which sku each pair shares most recently, depend on neither model's settings.
    """

    rows: IntArray  # [C] query of each pair
    cols: IntArray  # [C] training session of each pair
    starts: IntArray  # [C] first entry of each pair in ``entries``
    entries: IntArray  # [J] the shared skus of every pair, as indices into ``queries.skus``
    latest: IntArray  # [C] entry of ``index.contains`` of the pair's most recent shared sku

    @classmethod
    def build(cls, queries: QueryBatch, index: SessionIndex) -> Candidates:
        """Join each query's skus with the training sessions holding them."""
        postings = index.contains.T.tocsr()  # [V, N]
        counts = np.diff(postings.indptr)[queries.skus]  # [nnz] sessions per query sku
        total = int(counts.sum())
        entries = np.repeat(np.arange(len(queries.skus), dtype=np.int64), counts)  # [J]
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = postings.indices[np.repeat(postings.indptr[queries.skus], counts) + offsets]
        rows = queries.rows[entries]
        order = np.lexsort((cols, rows))
        entries, rows, cols = entries[order], rows[order], cols[order].astype(np.int64)
        first = np.ones(total, dtype=bool)
        first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        starts = np.flatnonzero(first)
        # Positions are unique within a query, so the latest shared sku is the one at the max.
        positions = queries.positions[entries]
        best = np.maximum.reduceat(positions, starts) if total else positions
        pair = np.cumsum(first) - 1  # [J] pair of each entry
        at_best = positions == best[pair]
        latest_sku = np.zeros(len(starts), dtype=np.int64)
        latest_sku[pair[at_best]] = queries.skus[entries[at_best]]
        return cls(
            rows=rows[starts],
            cols=cols[starts],
            starts=starts,
            entries=entries,
            latest=index.entry(cols[starts], latest_sku),
        )

    def dot(self, weights: FloatArray) -> FloatArray:
        """Per pair, the sum of the query's ``weights`` (one per query sku) over shared skus."""
        if not len(self.entries):
            return np.zeros(0)
        return np.add.reduceat(weights[self.entries], self.starts)


def _top_per_row(
    rows: IntArray, order_keys: tuple[FloatArray | IntArray, ...], n_rows: int, k: int
) -> npt.NDArray[np.bool_]:
    """Mask of the first ``k`` entries of each row when sorted by ``order_keys`` (ascending).

    ``order_keys`` are `np.lexsort` keys, the last one primary; ``rows`` is appended as the
    outermost key, so the sort is within rows.
    """
    order = np.lexsort((*order_keys, rows))
    sorted_rows = rows[order]
    starts = np.searchsorted(sorted_rows, np.arange(n_rows))
    rank = np.arange(len(order)) - starts[sorted_rows]
    keep = np.zeros(len(rows), dtype=bool)
    keep[order[rank < k]] = True
    return keep


def _neighbours(
    rows: IntArray, cols: IntArray, sims: FloatArray, n_rows: int, k: int
) -> npt.NDArray[np.bool_]:
    """The k most similar per query; ties go to the more recent session (higher index)."""
    return _top_per_row(rows, (-cols, -sims), n_rows, k)


def vsknn_scores(
    queries: QueryBatch, candidates: Candidates, index: SessionIndex, params: VSknnParams
) -> sparse.csr_matrix:
    """V-SKNN item scores of each query, [P, V] (module docstring)."""
    rows, cols = candidates.rows, candidates.cols
    sims = candidates.dot(queries.positions / queries.length[queries.rows])
    recent = _top_per_row(rows, (-cols,), len(queries), params.sample)
    rows, cols, sims = rows[recent], cols[recent], sims[recent]
    if params.cosine:
        sims = sims / np.sqrt(index.n_distinct[cols])
    keep = _neighbours(rows, cols, sims, len(queries), params.k)
    chosen = sparse.csr_matrix(
        (sims[keep], (rows[keep], cols[keep])), shape=(len(queries), index.n_sessions)
    )
    scores = chosen @ index.contains
    if params.idf_weight:
        scores = scores @ sparse.diags(1.0 + params.idf_weight * index.idf)
    return sparse.csr_matrix(scores)


def stan_scores(
    queries: QueryBatch, candidates: Candidates, index: SessionIndex, params: StanParams
) -> sparse.csr_matrix:
    """STAN item scores of each query, [P, V] (module docstring)."""
    rows, cols = candidates.rows, candidates.cols
    exponent = (queries.positions - queries.length[queries.rows]) / params.lambda1
    sims = candidates.dot(np.exp(np.maximum(exponent, _MIN_LOG_WEIGHT)))
    sims = sims / np.sqrt(queries.n_distinct[rows] * index.n_distinct[cols])
    if math.isfinite(params.lambda2):
        sims = sims * np.exp(-(index.n_sessions - 1 - cols) / params.lambda2)
    keep = _neighbours(rows, cols, sims, len(queries), params.k)
    chosen = sparse.csr_matrix(
        (sims[keep], (rows[keep], candidates.latest[keep])),
        shape=(len(queries), index.contains.nnz),
    )
    return sparse.csr_matrix(chosen @ index.decay(params.lambda3))
