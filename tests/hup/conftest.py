"""Factory fixtures for the hup tests: events, event dicts and a small 3-level vocabulary."""

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from hup.schema import DwellEvent, MicroEvent
from hup.vocab import Taxonomy, Vocabularies, Vocabulary

MicroFactory = Callable[..., MicroEvent]
DwellFactory = Callable[..., DwellEvent]
DictFactory = Callable[..., dict[str, Any]]

# Two items that share the coarsest category and differ below it.
ITEM_CATEGORIES = {"A": ("c1", "c1a", "c1a1"), "B": ("c1", "c1b", "c1b1")}


@pytest.fixture
def make_micro() -> MicroFactory:
    """Build a micro event; the categories default to the item's 3-level path."""

    def factory(
        ts: float,
        item: str = "A",
        behavior: int | str = 1,
        categories: Sequence[str] | None = None,
        user: str = "u1",
    ) -> MicroEvent:
        cats = list(categories if categories is not None else ITEM_CATEGORIES.get(item, ("x",)))
        return MicroEvent(user_id=user, ts=ts, item_id=item, categories=cats, behavior=behavior)

    return factory


@pytest.fixture
def make_dwell() -> DwellFactory:
    """Build a dwell event closing the visit of `item`."""

    def factory(ts: float, dwell_s: float, item: str = "A", user: str = "u1") -> DwellEvent:
        return DwellEvent(kind="dwell", user_id=user, ts=ts, item_id=item, dwell_s=dwell_s)

    return factory


@pytest.fixture
def make_micro_dict() -> DictFactory:
    """A valid raw micro event as a producer would send it; keyword arguments override fields."""

    def factory(**changes: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user_id": "u1",
            "ts": 1_700_000_000.5,
            "item_id": "sku-1",
            "categories": ["c1", "c1a", "c1a1"],
            "behavior": "Cart",
        }
        data.update(changes)
        return data

    return factory


@pytest.fixture
def make_dwell_dict() -> DictFactory:
    """A valid raw dwell event; keyword arguments override fields."""

    def factory(**changes: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": "dwell",
            "user_id": "u1",
            "ts": 1_700_000_010.0,
            "item_id": "sku-1",
            "dwell_s": 9.5,
        }
        data.update(changes)
        return data

    return factory


@pytest.fixture
def taxonomy() -> Taxonomy:
    """The taxonomy of the two test items."""
    return Taxonomy({path[-1]: path for path in ITEM_CATEGORIES.values()})


@pytest.fixture
def make_vocabularies() -> Callable[..., Vocabularies]:
    """Vocabularies with known ids: items A=1, B=2; at each level the A path has id 1, B's 2.

    Level 0 only has c1 (id 1), since both items share it.
    """

    def factory(taxonomy: Taxonomy | None = None) -> Vocabularies:
        return Vocabularies(
            items=Vocabulary.build({"A": 2, "B": 1}),
            categories=(
                Vocabulary.build({"c1": 1}),
                Vocabulary.build({"c1a": 2, "c1b": 1}),
                Vocabulary.build({"c1a1": 2, "c1b1": 1}),
            ),
            taxonomy=taxonomy,
        )

    return factory
