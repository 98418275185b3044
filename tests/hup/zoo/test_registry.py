"""Every registry entry fits and ranks the same way; checkpoints round-trip and are told apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from hup.baselines import TrainingPopularity
from hup.exceptions import CheckpointError
from hup.hup_checkpoint import load_checkpoint
from hup.points import prediction_points
from hup.recommender_contract import Recommender
from hup.train import TrainOptions, train_model
from hup.zoo.fit import FitOptions, fit_zoo
from hup.zoo.registry import DISPLAY_NAMES, MODELS, ZOO_CLASSES, kind_of, load_recommender, resolve
from hup.zoo.zoo_checkpoint import load_zoo_checkpoint
from hup.zoo.zoo_recommender import ZooRecommender

TINY = FitOptions(
    epochs=1,
    batch_size=8,
    overrides={"hidden": 8, "item_dim": 8, "window": 5, "skipgram": False},
)
K_ITEMS, K_CATEGORIES = 20, 5


def test_registry_holds_the_papers_table_and_the_protocol_baselines() -> None:
    expected = {
        "pop", "s-pop", "item-knn", "v-sknn", "stan", "bpr-mf", "word2vec", "word2vec-avg",
        "gru4rec", "rib", "time-lstm", "s-hrnn", "hup", "hup-nomicro", "hup-lstm", "hup-tlstm",
        "hup-noatt", "hup-single",
    }  # fmt: skip
    assert expected <= set(MODELS)
    assert set(DISPLAY_NAMES) >= set(MODELS)
    assert resolve("all") == list(MODELS)
    assert resolve("GRU4Rec, pop,gru4rec") == ["gru4rec", "pop"]
    with pytest.raises(ValueError, match="hup-single"):
        resolve("pop,nope")


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_fits_and_ranks_by_the_protocol(name: str, tiny) -> None:
    train, valid, test, taxonomy = tiny
    recommender: Recommender = MODELS[name](TINY, taxonomy)
    assert isinstance(recommender, Recommender)
    assert recommender.name == DISPLAY_NAMES[name]
    recommender.fit(train, valid)
    points = prediction_points(test)
    rankings = recommender.rank(test, points, K_ITEMS, K_CATEGORIES)
    pop = TrainingPopularity.from_sessions(train)
    vocabulary = set(pop.item_order)
    assert len(rankings.items) == len(rankings.categories) == len(points)
    for point, items, levels in zip(points, rankings.items, rankings.categories, strict=True):
        assert len(items) == K_ITEMS and len(set(items)) == K_ITEMS
        assert point.last_input_item not in items
        assert vocabulary.issuperset(items)
        assert len(levels) == pop.n_levels
        for level, ranking in enumerate(levels):
            assert 0 < len(ranking) <= K_CATEGORIES and len(set(ranking)) == len(ranking)
            assert set(pop.category_orders[level]).issuperset(ranking)


@pytest.mark.parametrize("name", list(ZOO_CLASSES))
def test_zoo_checkpoints_round_trip(name: str, tiny, tmp_path: Path) -> None:
    train, valid, test, taxonomy = tiny
    out = tmp_path / name
    trained, _ = fit_zoo(ZOO_CLASSES[name], train, valid, TINY, taxonomy)
    saved, history = fit_zoo(ZOO_CLASSES[name], train, valid, TINY, taxonomy, out=out)
    assert saved.version.startswith(f"{name}-")
    scores = [record["valid_recall20"] for record in history]
    assert [record["valid_recall20"] for record in saved.info["history"]] == scores
    loaded, version, info = load_recommender(out)
    assert isinstance(loaded, ZooRecommender) and loaded.name == DISPLAY_NAMES[name]
    assert version == saved.version and info["model"] == name
    points = prediction_points(test)
    rankings = []
    for recommender in (ZooRecommender(name, checkpoint=trained), loaded):
        recommender.fit(train, valid)  # fits the "last category" fallback only
        rankings.append(recommender.rank(test, points, K_ITEMS, K_CATEGORIES))
    assert rankings[0] == rankings[1]
    with pytest.raises(CheckpointError, match="zoo"):
        load_checkpoint(out)


def test_a_hup_checkpoint_is_loaded_as_hup(tiny, tmp_path: Path) -> None:
    train, valid, _, taxonomy = tiny
    options = TrainOptions(variant="hup-noatt", epochs=1, hidden=8, window=5, skipgram=False)
    train_model(train, valid, options, taxonomy, out=tmp_path / "hup")
    recommender, version, _ = load_recommender(tmp_path / "hup")
    assert recommender.name == "HUP-NoAtt" and version.startswith("hup-")
    with pytest.raises(CheckpointError, match="not a zoo model"):
        load_zoo_checkpoint(tmp_path / "hup", ZOO_CLASSES)


def test_kinds() -> None:
    assert {kind_of(n) for n in MODELS} == {"baseline", "zoo", "hup"}
    assert all(kind_of(n) == "zoo" for n in ZOO_CLASSES)
