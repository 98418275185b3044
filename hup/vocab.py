"""Vocabularies of items and category levels, and the category taxonomy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hup.exceptions import DataFormatError

__all__ = [
    "OOV",
    "OOV_TOKEN",
    "Taxonomy",
    "Vocabularies",
    "Vocabulary",
    "build_vocabularies",
    "normalize_categories",
]

OOV = 0
"""Id of every token unseen in training (or seen fewer than min_count times)."""

OOV_TOKEN = "<oov>"  # noqa: S105 - a vocabulary token, not a secret
"""Token of id 0; also pads the coarse levels of a leaf the taxonomy does not know."""


@dataclass(frozen=True)
class Vocabulary:
    """A token <-> id map; id 0 is the out-of-vocabulary bucket."""

    tokens: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def build(cls, counts: Mapping[str, int], min_count: int = 1) -> Vocabulary:
        """Keep tokens seen at least `min_count` times, most frequent first (ties by token)."""
        kept = sorted(
            (t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t)
        )
        return cls((OOV_TOKEN, *kept))

    def __len__(self) -> int:
        return len(self.tokens)

    def lookup(self, token: str) -> int:
        """Id of `token`, or OOV."""
        return self._index.get(token, OOV)

    def __contains__(self, token: object) -> bool:
        return token in self._index and token != OOV_TOKEN


@dataclass(frozen=True)
class Taxonomy:
    """Maps a leaf category to its path from the coarsest level down to the leaf.

    Events may carry only the leaf; the taxonomy restores the ancestors so that every
    category layer of the pyramid has an input. Without a taxonomy the model has the
    levels the events carry.
    """

    paths: Mapping[str, tuple[str, ...]]

    @property
    def n_levels(self) -> int:
        """Number of levels (every path has the same length)."""
        return len(next(iter(self.paths.values()))) if self.paths else 1

    @classmethod
    def load(cls, path: Path) -> Taxonomy:
        """Read a taxonomy file: one line per leaf, `coarse/.../leaf`, all of the same depth."""
        paths: dict[str, tuple[str, ...]] = {}
        depth = None
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = tuple(p.strip() for p in line.split("/"))
            if any(not p for p in parts):
                raise DataFormatError(f"{path}:{line_no}: empty category name in {line!r}")
            if depth is not None and len(parts) != depth:
                raise DataFormatError(
                    f"{path}:{line_no}: {len(parts)} levels, but earlier lines have {depth}"
                )
            depth = len(parts)
            paths[parts[-1]] = parts
        if not paths:
            raise DataFormatError(f"{path}: taxonomy file has no categories")
        return cls(paths)


def normalize_categories(
    categories: Sequence[str], n_levels: int, taxonomy: Taxonomy | None
) -> tuple[tuple[str, ...], bool]:
    """Categories coarse..fine with exactly `n_levels` entries, and whether any had to be guessed.

    The leaf decides: the taxonomy's path for it when known; otherwise the finest
    `n_levels` the event carries, padded at the coarse end with the OOV token.
    """
    leaf = categories[-1]
    if taxonomy is not None and leaf in taxonomy.paths:
        path = taxonomy.paths[leaf]
        if len(path) == n_levels:
            return path, False
    if len(categories) >= n_levels:
        return tuple(categories[-n_levels:]), False
    padding = (OOV_TOKEN,) * (n_levels - len(categories))
    return (*padding, *categories), True


@dataclass(frozen=True)
class Vocabularies:
    """Everything that maps raw ids to model ids: items, one vocabulary per category level."""

    items: Vocabulary
    categories: tuple[Vocabulary, ...]
    taxonomy: Taxonomy | None = None

    @property
    def n_levels(self) -> int:
        """Number of category levels the model has."""
        return len(self.categories)

    def to_json(self) -> bytes:
        """Serialise (plain JSON: safe to load)."""
        data: dict[str, Any] = {
            "items": list(self.items.tokens),
            "categories": [list(v.tokens) for v in self.categories],
            "taxonomy": None
            if self.taxonomy is None
            else {k: list(v) for k, v in self.taxonomy.paths.items()},
        }
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes) -> Vocabularies:
        """Inverse of `to_json`."""
        data = orjson.loads(raw)
        taxonomy = data.get("taxonomy")
        return cls(
            items=Vocabulary(tuple(data["items"])),
            categories=tuple(Vocabulary(tuple(v)) for v in data["categories"]),
            taxonomy=None
            if taxonomy is None
            else Taxonomy({k: tuple(v) for k, v in taxonomy.items()}),
        )


def build_vocabularies(
    events: Iterable[Any],
    n_levels: int,
    taxonomy: Taxonomy | None = None,
    min_item_count: int = 1,
    min_category_count: int = 1,
) -> Vocabularies:
    """Count the micro events of the training split and build the vocabularies."""
    item_counts: Counter[str] = Counter()
    level_counts: list[Counter[str]] = [Counter() for _ in range(n_levels)]
    for event in events:
        if event.kind != "micro":
            continue
        item_counts[event.item_id] += 1
        cats, _ = normalize_categories(event.categories, n_levels, taxonomy)
        for counter, cat in zip(level_counts, cats, strict=True):
            counter[cat] += 1
    for counter in level_counts:
        counter.pop(OOV_TOKEN, None)
    return Vocabularies(
        items=Vocabulary.build(item_counts, min_item_count),
        categories=tuple(Vocabulary.build(c, min_category_count) for c in level_counts),
        taxonomy=taxonomy,
    )
