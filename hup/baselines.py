"""The protocol's non-learned baselines behind the `Recommender` contract.

POP, S-POP and Item-KNN rank items and categories; "last category" ranks categories only.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from hup.points import PredictionPoint
from hup.recommender_contract import Rankings, Recommender
from hup.schema import MicroEvent
from hup.sessions import Session
from hup.vocab import OOV_TOKEN

__all__ = [
    "POP",
    "ItemKNN",
    "LastCategory",
    "SPop",
    "TrainingPopularity",
    "protocol_baselines",
]


def _micro(events: Iterable[object]) -> Iterator[MicroEvent]:
    return (e for e in events if isinstance(e, MicroEvent))


def _runs(session: Session) -> Iterator[MicroEvent]:
    """The first micro event of each run (consecutive micro events on one sku) of a session."""
    previous: str | None = None
    for event in _micro(session.events):
        if event.item_id != previous:
            yield event
        previous = event.item_id


def _fill(head: Iterable[str], order: Sequence[str], exclude: str | None, k: int) -> list[str]:
    """Unique ids from ``head`` then ``order``, skipping ``exclude``, cut at ``k``."""
    out: list[str] = []
    seen = {exclude}
    for source in (head, order):
        for key in source:
            if len(out) >= k:
                return out
            if key not in seen:
                seen.add(key)
                out.append(key)
    return out


@dataclass(frozen=True)
class TrainingPopularity:
    """Sku and category popularity of the training sessions, which also fixes the vocabularies.

    Popularity counts runs (page visits), not micro events: a target is a run start, and a long
    visit full of scrolling says no more about what is visited next than a short one. Ties go
    to the id seen first in file order, which keeps the ranking deterministic. The levels are
    those the events carry, so sessions are expanded through the model's taxonomy first
    (`hup.sessions.with_category_paths`); the padding of a leaf the taxonomy does not know
    (`OOV_TOKEN`) is not a category and is never counted.
    """

    item_order: tuple[str, ...]  # skus, most visited first
    category_orders: tuple[tuple[str, ...], ...]  # per level coarse..fine, most visited first

    @classmethod
    def from_sessions(cls, sessions: Sequence[Session]) -> TrainingPopularity:
        """Count runs of ``sessions`` per sku and per category of each level."""
        items: Counter[str] = Counter()
        levels: list[Counter[str]] = []
        for session in sessions:
            for event in _runs(session):
                items[event.item_id] += 1
                while len(levels) < len(event.categories):
                    levels.append(Counter())
                for level, category in enumerate(event.categories):
                    if category != OOV_TOKEN:
                        levels[level][category] += 1
        # Counter keeps first-insertion order and sorted() is stable: ties stay in file order.
        return cls(
            item_order=tuple(sorted(items, key=lambda key: -items[key])),
            category_orders=tuple(tuple(sorted(c, key=lambda key: -c[key])) for c in levels),
        )

    @property
    def n_levels(self) -> int:
        """Number of category levels seen in training."""
        return len(self.category_orders)


class _Baseline:
    """Fits `TrainingPopularity`; subclasses choose the item and category heads of a ranking."""

    name = "baseline"
    ranks_items = True  # False: categories only, `Rankings.items` is None

    def __init__(self) -> None:
        self._pop: TrainingPopularity | None = None
        self._items: frozenset[str] = frozenset()
        self._categories: tuple[frozenset[str], ...] = ()

    def fit(self, train: Sequence[Session], valid: Sequence[Session]) -> None:
        """Count training popularity; ``valid`` is unused (nothing to tune)."""
        del valid
        self._pop = TrainingPopularity.from_sessions(train)
        self._items = frozenset(self._pop.item_order)
        self._categories = tuple(frozenset(order) for order in self._pop.category_orders)

    @property
    def popularity(self) -> TrainingPopularity:
        """The fitted popularity; raises if `fit` was not called."""
        if self._pop is None:
            raise RuntimeError(f"{self.name}: rank() called before fit()")
        return self._pop

    def _item_head(self, inputs: Sequence[MicroEvent]) -> Iterable[str]:
        return ()

    def _category_head(self, inputs: Sequence[MicroEvent], level: int) -> Iterable[str]:
        return ()

    def _recent_categories(self, inputs: Sequence[MicroEvent], level: int) -> Iterator[str]:
        # "Last category": the input's categories of this level, most recent first.
        for event in reversed(inputs):
            if level < len(event.categories) and event.categories[level] in self._categories[level]:
                yield event.categories[level]

    def rank(
        self,
        sessions: Sequence[Session],
        points: Sequence[PredictionPoint],
        k_items: int,
        k_categories: int,
    ) -> Rankings:
        """Rank each point: the subclass head, then training popularity, last input sku removed."""
        pop = self.popularity
        items: list[list[str]] = []
        categories: list[list[list[str]]] = []
        for point in points:
            inputs = list(_micro(sessions[point.session_index].events[: point.n_input]))
            if self.ranks_items:
                head = self._item_head(inputs)
                items.append(_fill(head, pop.item_order, point.last_input_item, k_items))
            categories.append(
                [
                    _fill(self._category_head(inputs, level), order, None, k_categories)
                    for level, order in enumerate(pop.category_orders)
                ]
            )
        return Rankings(items=items if self.ranks_items else None, categories=categories)


class POP(_Baseline):
    """The most visited training skus and categories, the same list for every point."""

    name = "POP"


class SPop(_Baseline):
    """Session popularity as the protocol defines it: the input's skus, most recent first, then POP.

    Categories use "last category" (the input's categories, most recent first, then POP).
    Input skus never seen in training are dropped: rankings only hold training skus.
    """

    name = "S-POP"

    def _item_head(self, inputs: Sequence[MicroEvent]) -> Iterable[str]:
        return (e.item_id for e in reversed(inputs) if e.item_id in self._items)

    def _category_head(self, inputs: Sequence[MicroEvent], level: int) -> Iterable[str]:
        return self._recent_categories(inputs, level)


class LastCategory(_Baseline):
    """The protocol's "last category": the input's categories, most recent first, then POP.

    It ranks categories only (every level), so its row in the table has no item figures. It
    is also how S-POP and Item-KNN rank categories; the row shows it as a method of its own.
    """

    name = "Last category"
    ranks_items = False

    def _category_head(self, inputs: Sequence[MicroEvent], level: int) -> Iterable[str]:
        return self._recent_categories(inputs, level)


class ItemKNN(_Baseline):
    """Item-KNN as the protocol defines it: session co-occurrence cosine with the input's skus.

    ``sim(i, j) = n_ij / sqrt(n_i * n_j)`` with ``n_i`` the training sessions containing i and
    ``n_ij`` those containing both (Hidasi et al.'s Item-KNN similarity). A candidate's score
    is the sum of its similarities to the distinct training skus of the input, the usual
    item-kNN over a session: a sku revisited five times counts once, as it does in the
    similarity's session sets, and no recency weighting (the protocol names none; S-POP
    already ranks by recency). Candidates are the skus co-occurring with at least one input
    sku, ties broken by POP order, the tail filled by POP; the last input sku is removed
    like in every method's ranking (it may still add to the other candidates' scores).
    Categories use "last category", like S-POP.
    """

    name = "Item-KNN"

    def __init__(self) -> None:
        super().__init__()
        self._sessions_with: Counter[str] = Counter()
        self._cooccur: dict[str, Counter[str]] = {}
        self._similar: dict[str, dict[str, float]] = {}
        self._pop_rank: dict[str, int] = {}

    def fit(self, train: Sequence[Session], valid: Sequence[Session]) -> None:
        """Count popularity and session co-occurrence of training skus."""
        super().fit(train, valid)
        sessions_with: Counter[str] = Counter()
        cooccur: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for session in train:
            unique = list(dict.fromkeys(e.item_id for e in _micro(session.events)))
            sessions_with.update(unique)
            for i in unique:
                cooccur[i].update(j for j in unique if j != i)
        self._sessions_with = sessions_with
        self._cooccur = dict(cooccur)
        self._similar = {}
        self._pop_rank = {key: r for r, key in enumerate(self.popularity.item_order)}

    def similar(self, item: str) -> dict[str, float]:
        """Similarity of ``item`` to every sku it co-occurs with in training (cached)."""
        cached = self._similar.get(item)
        if cached is None:
            n_i = self._sessions_with[item]
            cached = {
                j: n_ij / math.sqrt(n_i * self._sessions_with[j])
                for j, n_ij in self._cooccur.get(item, Counter()).items()
            }
            self._similar[item] = cached
        return cached

    def scores(self, inputs: Iterable[str]) -> dict[str, float]:
        """Each candidate's summed similarity to the distinct skus of ``inputs``."""
        total: defaultdict[str, float] = defaultdict(float)
        for item in dict.fromkeys(inputs):
            for j, similarity in self.similar(item).items():
                total[j] += similarity
        return dict(total)

    def _item_head(self, inputs: Sequence[MicroEvent]) -> Iterable[str]:
        scores = self.scores(e.item_id for e in inputs)
        return sorted(scores, key=lambda j: (-scores[j], self._pop_rank[j]))

    def _category_head(self, inputs: Sequence[MicroEvent], level: int) -> Iterable[str]:
        return self._recent_categories(inputs, level)


def protocol_baselines() -> list[Recommender]:
    """The baselines the protocol puts in every table: POP, S-POP, Item-KNN, "last category"."""
    return [POP(), SPop(), ItemKNN(), LastCategory()]
