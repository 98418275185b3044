"""Each zoo model trains a few steps on synthetic data and beats POP there; profiles are causal."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from untrained_zoo import assert_causal

from hup.baselines import POP
from hup.evaluate import evaluate
from hup.points import prediction_points
from hup.train import training_vocabularies
from hup.zoo.fit import FitOptions, fit_zoo
from hup.zoo.registry import DISPLAY_NAMES, ZOO_CLASSES
from hup.zoo.zoo_checkpoint import ZooCheckpoint
from hup.zoo.zoo_recommender import ZooRecommender

FAST = FitOptions(epochs=3, batch_size=16, overrides={"hidden": 32, "item_dim": 32})


@pytest.mark.parametrize("name", list(ZOO_CLASSES))
def test_a_short_training_beats_pop(name: str, learnable) -> None:
    train, valid, test, taxonomy = learnable
    checkpoint, history = fit_zoo(ZOO_CLASSES[name], train, valid, FAST, taxonomy)
    if checkpoint.model.trainable:
        assert len(history) >= 2 and history[-1]["loss"] < history[0]["loss"], history
    report = evaluate(
        [ZooRecommender(DISPLAY_NAMES[name], checkpoint=checkpoint), POP()],
        train,
        valid,
        test,
        n_resamples=20,
    )
    recall = {r.method: r.metrics["item Recall@20"].mean for r in report.rows if r.mode == "every"}
    assert recall[DISPLAY_NAMES[name]] > recall["POP"], recall


@pytest.mark.parametrize("name", list(ZOO_CLASSES))
def test_profiles_see_only_the_input(name: str, tiny) -> None:
    """The profile at a point is the same whether or not the rest of the session is there."""
    train, _, test, taxonomy = tiny
    vocab, spec = training_vocabularies(train, taxonomy)
    cls = ZOO_CLASSES[name]
    sizes = {"hidden": 8, "item_dim": 8}
    if "window" in {f.name for f in dataclasses.fields(cls.config_class)}:
        sizes["window"] = 4  # shorter than the sessions, so the window slides
    config = cls.config_class(
        n_items=len(vocab.items),
        n_categories=tuple(len(v) for v in vocab.categories),
        n_train_sessions=len(train),
        **sizes,
    )
    torch.manual_seed(0)
    model = cls(config).eval()
    if not model.trainable:  # give the fixed table some content
        torch.nn.init.normal_(model.output_table("item")[0])
    checkpoint = ZooCheckpoint(name, model, spec, vocab, "test", {})
    points = prediction_points(test)
    assert points
    assert_causal(checkpoint, test, points)
