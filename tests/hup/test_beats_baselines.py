"""A short training on synthetic data must beat the popularity baselines (issue: HUP core)."""

from __future__ import annotations

import pytest
import torch

from hup.baselines import POP, SPop
from hup.data import load_dataset
from hup.evaluate import evaluate
from hup.hup_recommender import HupRecommender
from hup.sessions import split_sessions
from hup.train import TrainOptions, train_model
from hup.vocab import Taxonomy


@pytest.mark.slow
def test_short_training_beats_pop_and_spop_on_synthetic_data() -> None:
    torch.set_num_threads(1)
    dataset = load_dataset("synthetic:users=400,seed=2,max_events=60")
    train, valid, test = split_sessions(dataset.sessions)
    # The default model and recipe (repeat-aware HUP), smaller so that it trains quickly.
    options = TrainOptions(epochs=8, hidden=32, window=20, patience=3)
    checkpoint, history = train_model(train, valid, options, Taxonomy(dataset.taxonomy))
    assert history[-1]["loss"] < history[0]["loss"]
    report = evaluate(
        [HupRecommender("HUP", checkpoint=checkpoint), POP(), SPop()],
        train,
        valid,
        test,
        n_resamples=200,
    )
    recall = {
        row.method: row.metrics["item Recall@20"].mean for row in report.rows if row.mode == "every"
    }
    assert recall["HUP"] > recall["S-POP"] > recall["POP"], recall
    # The margin over S-POP must be more than noise: the paired interval excludes zero, on
    # Recall@20 and on MRR@20.
    for metric in ("item Recall@20", "item MRR@20"):
        versus_spop = next(
            d for d in report.differences if d.other == "S-POP" and d.metric == metric
        )
        assert versus_spop.estimate.lo > 0, versus_spop
