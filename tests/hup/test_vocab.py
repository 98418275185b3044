"""Vocabularies (OOV id 0, min_count), the taxonomy file and category normalisation."""

from collections.abc import Callable
from pathlib import Path

import pytest

from hup.exceptions import DataFormatError
from hup.schema import DwellEvent, Event, MicroEvent
from hup.vocab import (
    OOV,
    Taxonomy,
    Vocabularies,
    Vocabulary,
    build_vocabularies,
    normalize_categories,
)

MicroFactory = Callable[..., MicroEvent]
DwellFactory = Callable[..., DwellEvent]


# --- Vocabulary ---------------------------------------------------------------------------


def test_build_orders_by_count_then_token_after_the_oov_slot() -> None:
    vocab = Vocabulary.build({"b": 2, "a": 2, "c": 5, "d": 1})
    assert vocab.tokens[1:] == ("c", "a", "b", "d")
    assert len(vocab) == 5
    assert [vocab.lookup(t) for t in ("c", "a", "b", "d")] == [1, 2, 3, 4]


def test_build_drops_tokens_below_min_count() -> None:
    vocab = Vocabulary.build({"a": 3, "b": 2, "c": 1}, min_count=2)
    assert vocab.tokens[1:] == ("a", "b")
    assert vocab.lookup("c") == OOV == 0
    assert "c" not in vocab
    assert "a" in vocab


def test_min_count_above_every_count_leaves_only_oov() -> None:
    vocab = Vocabulary.build({"a": 1}, min_count=2)
    assert len(vocab) == 1
    assert vocab.lookup("a") == OOV


def test_lookup_of_unknown_token_is_oov_and_oov_token_is_not_a_member() -> None:
    vocab = Vocabulary.build({"a": 1})
    assert vocab.lookup("zzz") == OOV
    assert vocab.lookup("") == OOV
    assert vocab.tokens[0] not in vocab  # the OOV slot is not a real token
    assert 1 not in vocab


def test_vocabulary_equality_ignores_the_index() -> None:
    assert Vocabulary.build({"a": 1, "b": 1}) == Vocabulary(
        Vocabulary.build({"b": 1, "a": 1}).tokens
    )


# --- Taxonomy -----------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taxonomy.txt"
    path.write_text(text)
    return path


def test_taxonomy_load(tmp_path: Path) -> None:
    path = _write(tmp_path, "c1/c1a/c1a1\n\n  c1 / c1b / c1b1  \nc2/c2a/c2a1")
    taxonomy = Taxonomy.load(path)
    assert taxonomy.n_levels == 3
    assert dict(taxonomy.paths) == {
        "c1a1": ("c1", "c1a", "c1a1"),
        "c1b1": ("c1", "c1b", "c1b1"),
        "c2a1": ("c2", "c2a", "c2a1"),
    }


@pytest.mark.parametrize(("text", "line", "message"), [
    ("a/b/c\nd/e\n", 2, "2 levels, but earlier lines have 3"),
    ("a/b\n\nd/e/f\n", 3, "3 levels, but earlier lines have 2"),
    ("a/b/c\nd//f\n", 2, "empty category name"),
    ("/b/c\n", 1, "empty category name"),
    ("a/b/c\na/b/ \n", 2, "empty category name"),
])  # fmt: skip
def test_taxonomy_load_errors_name_path_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataFormatError, match=message) as info:
        Taxonomy.load(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("text", ["", "\n  \n\n"])
def test_taxonomy_load_of_empty_file_names_the_file(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataFormatError, match="no categories") as info:
        Taxonomy.load(path)
    assert str(info.value).startswith(f"{path}: ")


def test_taxonomy_file_round_trip(tmp_path: Path, taxonomy: Taxonomy) -> None:
    path = tmp_path / "taxonomy.txt"
    path.write_text("".join("/".join(p) + "\n" for p in taxonomy.paths.values()))
    loaded = Taxonomy.load(path)
    assert loaded == taxonomy
    assert loaded.n_levels == taxonomy.n_levels == 3


def test_empty_taxonomy_has_one_level() -> None:
    assert Taxonomy({}).n_levels == 1


# --- normalize_categories -----------------------------------------------------------------


def test_normalize_categories(taxonomy: Taxonomy) -> None:
    oov = Vocabulary.build({}).tokens[0]
    assert normalize_categories(["a", "b", "c"], 3, None) == (("a", "b", "c"), False)
    assert normalize_categories(["r", "a", "b", "c"], 3, None) == (("a", "b", "c"), False)
    assert normalize_categories(["c"], 3, None) == ((oov, oov, "c"), True)
    assert normalize_categories(["c1a1"], 3, taxonomy) == (("c1", "c1a", "c1a1"), False)
    # The taxonomy's path wins over what the event carries.
    assert normalize_categories(["x", "y", "c1a1"], 3, taxonomy) == (("c1", "c1a", "c1a1"), False)
    # A taxonomy of another depth is ignored.
    assert normalize_categories(["c1a", "c1a1"], 2, taxonomy) == (("c1a", "c1a1"), False)


# --- Vocabularies -------------------------------------------------------------------------


@pytest.mark.parametrize("with_taxonomy", [False, True])
def test_vocabularies_json_round_trip(
    make_vocabularies: Callable[..., Vocabularies], taxonomy: Taxonomy, with_taxonomy: bool
) -> None:
    vocabularies = make_vocabularies(taxonomy if with_taxonomy else None)
    loaded = Vocabularies.from_json(vocabularies.to_json())
    assert loaded == vocabularies
    assert loaded.n_levels == 3
    assert (loaded.taxonomy is None) == (not with_taxonomy)
    assert [v.lookup("c1b") for v in loaded.categories] == [OOV, 2, OOV]
    assert loaded.items.lookup("B") == 2


def test_build_vocabularies_counts_micro_events_only(
    make_micro: MicroFactory, make_dwell: DwellFactory
) -> None:
    events: list[Event] = [
        make_micro(0.0, "A"),
        make_micro(1.0, "B"),
        make_dwell(2.0, 5.0, "B"),
        make_dwell(3.0, 5.0, "B"),
        make_dwell(4.0, 5.0, "D"),  # only ever in dwell events
        make_micro(5.0, "B"),
        make_micro(6.0, "C", categories=["c2a1"]),
    ]
    vocabularies = build_vocabularies(events, n_levels=3)
    assert vocabularies.items.tokens[1:] == ("B", "A", "C")
    assert "D" not in vocabularies.items
    assert vocabularies.categories[0].tokens[1:] == ("c1",)  # the padding is not a token
    assert vocabularies.categories[1].tokens[1:] == ("c1b", "c1a")
    assert vocabularies.categories[2].tokens[1:] == ("c1b1", "c1a1", "c2a1")
    assert vocabularies.taxonomy is None


def test_build_vocabularies_dwell_events_do_not_count_towards_min_count(
    make_micro: MicroFactory, make_dwell: DwellFactory
) -> None:
    events: list[Event] = [make_micro(0.0, "A"), make_dwell(1.0, 5.0, "A")]
    vocabularies = build_vocabularies(events, n_levels=3, min_item_count=2)
    assert "A" not in vocabularies.items


def test_build_vocabularies_with_taxonomy_and_min_counts(
    make_micro: MicroFactory, taxonomy: Taxonomy
) -> None:
    events: list[Event] = [
        make_micro(0.0, "A", categories=["c1a1"]),
        make_micro(1.0, "A", categories=["c1a1"]),
        make_micro(2.0, "B", categories=["c1b1"]),
    ]
    vocabularies = build_vocabularies(
        events, n_levels=3, taxonomy=taxonomy, min_item_count=2, min_category_count=2
    )
    assert vocabularies.taxonomy == taxonomy
    assert vocabularies.items.tokens[1:] == ("A",)
    assert [v.tokens[1:] for v in vocabularies.categories] == [("c1",), ("c1a",), ("c1a1",)]
