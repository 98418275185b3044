"""The training recipe: a one-epoch smoke train, early stopping, options checked up front, and
a short training that beats the popularity baselines."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import torch

import hup.train
from hup.baselines import POP, SPop
from hup.checkpoint_files import without_timing
from hup.config import VARIANTS
from hup.data import load_dataset
from hup.evaluate import evaluate
from hup.features import Featurizer
from hup.hup_checkpoint import load_checkpoint
from hup.hup_recommender import HupRecommender
from hup.model import NEIGHBOUR_PART
from hup.neighbours import HELD_OUT_PARTS, neighbour_table, run_sequences
from hup.sequences import featurize_session
from hup.sessions import Session, split_sessions
from hup.synthetic import SyntheticConfig, generate
from hup.train import TrainOptions, train_model
from hup.vocab import Taxonomy

torch.set_num_threads(1)

HISTORY_KEYS = {
    "epoch",
    "loss",
    "valid_recall20",
    "valid_mrr20",
    "valid_category_recall5",
    "valid_score",
    "seconds",
}
TINY = {"hidden": 16, "window": 5, "batch_size": 8, "skipgram": False}


@pytest.fixture(scope="module")
def splits() -> tuple[list[Session], list[Session], Taxonomy]:
    dataset = generate(SyntheticConfig(users=20, seed=21, min_events=3, max_events=10))
    train, valid, _ = split_sessions(dataset.sessions)
    return train, valid, Taxonomy(dataset.taxonomy)


def test_one_epoch_writes_a_checkpoint_and_a_history(splits, tmp_path: Path) -> None:
    train, valid, taxonomy = splits
    out = tmp_path / "ckpt"
    records, progress = [], []
    options = TrainOptions(epochs=1, **{**TINY, "skipgram": True}, data="synthetic:test")
    checkpoint, history = train_model(
        train,
        valid,
        options,
        taxonomy=taxonomy,
        out=out,
        progress=lambda done, total: progress.append((done, total)),
        on_epoch=records.append,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "VERSION",
        "config.json",
        "vocab.json",
        "weights.safetensors",
    ]
    assert len(history) == 1 and set(history[0]) == HISTORY_KEYS
    assert history[0]["epoch"] == 1
    assert math.isfinite(history[0]["loss"])
    for key in ("valid_recall20", "valid_mrr20", "valid_category_recall5"):
        assert 0.0 <= history[0][key] <= 1.0, key
    assert history[0]["valid_mrr20"] <= history[0]["valid_recall20"]
    assert checkpoint.info["history"] == history  # kept in the checkpoint
    assert records == history
    assert progress and all(1 <= done <= total for done, total in progress)
    assert checkpoint.version == (out / "VERSION").read_text().strip()
    assert checkpoint.info["best_epoch"] == 1
    assert checkpoint.info["options"]["data"] == "synthetic:test"
    loaded = load_checkpoint(out)
    assert loaded.version == checkpoint.version
    assert (loaded.model.config.hidden, loaded.model.config.window) == (16, 5)
    assert loaded.vocabularies.n_levels == taxonomy.n_levels


@pytest.mark.parametrize(
    ("scores", "patience", "epochs_run", "best_epoch"),
    [
        ([0.5, 0.4, 0.3, 0.2, 0.1], 1, 2, 1),
        ([0.5, 0.4, 0.3, 0.2, 0.1], 2, 3, 1),
        ([0.1, 0.2, 0.2, 0.2, 0.2], 1, 3, 2),  # a tie is not an improvement
        ([0.1, 0.2, 0.3, 0.4, 0.5], 1, 5, 5),
    ],
)
def test_early_stopping_respects_patience_and_keeps_the_best_epoch(
    splits, monkeypatch: pytest.MonkeyPatch, scores, patience, epochs_run, best_epoch
) -> None:
    train, valid, taxonomy = splits
    feed: Iterator[float] = iter(scores)
    snapshots = []

    def fake_metrics(checkpoint, train_sessions, valid_sessions) -> dict[str, float]:
        snapshots.append({k: v.clone() for k, v in checkpoint.model.state_dict().items()})
        # Only the early-stopping score decides; the other figures move the other way.
        score = next(feed)
        return {
            "valid_recall20": 1 - score,
            "valid_mrr20": 1 - score,
            "valid_category_recall5": 0.5,
            "valid_score": score,
        }

    monkeypatch.setattr(hup.train, "_validation_metrics", fake_metrics)
    options = TrainOptions(epochs=5, patience=patience, **TINY)
    checkpoint, history = train_model(train, valid, options, taxonomy=taxonomy)
    assert [r["epoch"] for r in history] == list(range(1, epochs_run + 1))
    assert [r["valid_score"] for r in history] == scores[:epochs_run]
    assert checkpoint.info["best_epoch"] == best_epoch
    # The returned weights are those of the best epoch, not the last; of the neighbour
    # tables (`hup.model.Neighbours`) only table 0, of every training session, is kept.
    final = checkpoint.model.state_dict()
    for name, value in snapshots[best_epoch - 1].items():
        table = "neighbours." in name and name.endswith((".ids", ".weights"))
        kept = value[:1] if table else value
        assert torch.equal(final[name], kept), name
    if best_epoch != epochs_run:
        assert any(not torch.equal(final[n], v) for n, v in snapshots[-1].items())


def test_unknown_variant_names_the_choices(splits) -> None:
    train, valid, taxonomy = splits
    with pytest.raises(ValueError, match="hup-typo") as info:
        train_model(train, valid, TrainOptions(variant="hup-typo", **TINY), taxonomy=taxonomy)
    for name in VARIANTS:
        assert name in str(info.value)


def test_same_seed_same_weights(splits) -> None:
    train, valid, taxonomy = splits
    options = TrainOptions(epochs=1, seed=4, **TINY)
    first, _ = train_model(train, valid, options, taxonomy=taxonomy)
    second, _ = train_model(train, valid, options, taxonomy=taxonomy)
    for name, value in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], value), name


def test_two_identical_trainings_give_the_same_model_version(splits, tmp_path: Path) -> None:
    train, valid, taxonomy = splits
    options = TrainOptions(epochs=1, seed=4, **TINY, data="synthetic:test")
    first, _ = train_model(train, valid, options, taxonomy=taxonomy, out=tmp_path / "a")
    second, _ = train_model(train, valid, options, taxonomy=taxonomy, out=tmp_path / "b")
    assert first.version == second.version
    assert (tmp_path / "b" / "VERSION").read_text().strip() == first.version
    # Their config.json files differ, in the epochs' timing only, which the version leaves out.
    configs = [orjson.loads((tmp_path / d / "config.json").read_bytes()) for d in "ab"]
    assert configs[0] != configs[1]
    assert without_timing(configs[0]) == without_timing(configs[1])
    assert configs[0]["info"]["history"][0]["seconds"] > 0


def test_progress_reaches_the_number_of_batches(splits, make_micro, make_dwell) -> None:
    """Progress totals count the batches that run, even with a session of a single run."""
    train, valid, taxonomy = splits
    one_run = Session(
        "one-run",
        "u-one-run",
        (make_micro(1.0, item="A"), make_micro(5.0, item="A"), make_dwell(9.0, 8.0, item="A")),
    )
    calls: list[tuple[int, int]] = []
    options = TrainOptions(epochs=1, **{**TINY, "batch_size": 1})
    train_model(
        [*train, one_run],
        valid,
        options,
        taxonomy=taxonomy,
        progress=lambda done, total: calls.append((done, total)),
    )
    done, total = calls[-1]
    assert done == total, f"the last batch reports {done}/{total}"


def test_out_of_order_timestamps_are_counted_in_training(splits, make_micro) -> None:
    train, valid, taxonomy = splits
    shuffled = Session(
        "late",
        "u-late",
        (
            make_micro(100.0, item="A"),
            make_micro(90.0, item="B"),  # out of order: clamped
            make_micro(80.0, item="A"),  # and again
            make_micro(120.0, item="B"),
        ),
    )
    options = TrainOptions(epochs=1, **TINY)
    checkpoint, _ = train_model([*train, shuffled], valid, options, taxonomy=taxonomy)
    baseline, _ = train_model(train, valid, options, taxonomy=taxonomy)
    assert checkpoint.info["clamped_gaps"] == baseline.info["clamped_gaps"] + 2


def test_a_model_below_s_pop_on_validation_is_flagged(splits, caplog) -> None:
    train, valid, taxonomy = splits
    options = TrainOptions(epochs=1, **TINY)
    with caplog.at_level("WARNING", logger="hup.train"):
        checkpoint, history = train_model(train, valid, options, taxonomy=taxonomy)
    s_pop = checkpoint.info["valid_s_pop"]
    best = history[checkpoint.info["best_epoch"] - 1]
    expected = [k for k in ("valid_recall20", "valid_mrr20") if best[k] < s_pop[k]]
    assert checkpoint.info["below_s_pop"] == expected
    # One epoch of a tiny model on 14 sessions is below S-POP; the warning says so.
    assert expected
    assert "below S-POP on validation" in caplog.text


def test_validation_score_is_the_mean_of_recall_and_mrr(splits) -> None:
    train, valid, taxonomy = splits
    _, history = train_model(train, valid, TrainOptions(epochs=1, **TINY), taxonomy=taxonomy)
    record = history[0]
    assert record["valid_score"] == pytest.approx(
        (record["valid_recall20"] + record["valid_mrr20"]) / 2
    )


def test_the_saved_model_reads_the_co_visitation_table_of_every_training_session(
    splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, valid, taxonomy = splits
    seen_parts: list[torch.Tensor] = []
    real_batches = hup.train.batches

    def recording_batches(*args, **kwargs):
        for batch, positions, targets in real_batches(*args, **kwargs):
            seen_parts.append(batch[NEIGHBOUR_PART])
            yield batch, positions, targets

    monkeypatch.setattr(hup.train, "batches", recording_batches)
    options = TrainOptions(epochs=1, **TINY)
    train_model(train, valid, options, taxonomy=taxonomy, out=tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    heads = loaded.model.repeat_heads
    assert heads is not None and loaded.model.config.neighbours == VARIANTS["hup"]["neighbours"]

    featurizer = Featurizer(loaded.spec, loaded.vocabularies)
    items, categories = run_sequences(
        [featurize_session(featurizer, s) for s in train], loaded.vocabularies.n_levels
    )
    expected = neighbour_table(items, loaded.model.config.n_items, loaded.model.config.neighbours)
    table = heads.item_neighbours
    assert table is not None and tuple(table.ids.shape) == (1, *expected.ids.shape)
    assert table.ids[0].tolist() == expected.ids.tolist()
    assert table.weights[0].numpy() == pytest.approx(expected.weights)
    assert heads.item_neighbours.weights.any()  # the synthetic sessions do co-visit
    # Training points read the held-out tables 1..HELD_OUT_PARTS, never table 0.
    parts = torch.cat(seen_parts)
    assert int(parts.min()) >= 1 and int(parts.max()) <= HELD_OUT_PARTS


@pytest.mark.slow
def test_short_training_beats_pop_and_spop_on_synthetic_data() -> None:
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
