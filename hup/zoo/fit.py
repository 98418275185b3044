"""The zoo's training recipe: budget -> seed -> vocabularies -> model -> fit -> save.

It is HUP's recipe (`hup.train`) with another model: the same vocabularies and causal
featurizer (`training_vocabularies`, `Featurizer`), the same epoch loop (`fit_epochs`:
Adam, gradient clipping, early stopping on validation item Recall@20 of the `every` points,
best epoch kept, the same per-epoch validation figures) and the same budget defaults (`TrainOptions`' epochs, patience, batch size).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hup.evaluate import evaluate
from hup.features import Featurizer
from hup.sequences import featurize_session
from hup.sessions import Session
from hup.train import (
    VALIDATION_KEYS,
    TrainOptions,
    fit_epochs,
    log_clamped_gaps,
    seed_everything,
    training_vocabularies,
    validation_metrics,
)
from hup.vocab import Taxonomy
from hup.zoo.base import SequenceModel
from hup.zoo.zoo_checkpoint import ZooCheckpoint, load_zoo_checkpoint, save_zoo_checkpoint
from hup.zoo.zoo_recommender import ZooRecommender

__all__ = ["FitOptions", "fit_zoo", "zoo_validation_metrics"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitOptions:
    """The budget every learned model of a comparison gets alike (HUP's training defaults)."""

    epochs: int = TrainOptions.epochs  # at most
    patience: int = TrainOptions.patience  # epochs without validation improvement
    batch_size: int = TrainOptions.batch_size  # sessions per batch
    seed: int = TrainOptions.seed
    device: str = TrainOptions.device
    min_item_count: int = TrainOptions.min_item_count
    min_category_count: int = TrainOptions.min_category_count
    data: str = ""  # dataset spec trained on (provenance, checked by `hup evaluate`)
    # Hyper-parameters by config field name (e.g. {"hidden": 32}); each model takes the ones
    # its config has, so one setting can reach several models of a comparison.
    overrides: dict[str, Any] = field(default_factory=dict)


def zoo_validation_metrics(
    checkpoint: ZooCheckpoint, train: Sequence[Session], valid: Sequence[Session]
) -> dict[str, float]:
    """The validation split's per-epoch figures (`hup.train.validation_metrics`)."""
    if not valid:
        return dict.fromkeys(VALIDATION_KEYS, 0.0)
    report = evaluate(
        [ZooRecommender(checkpoint.name, checkpoint=checkpoint)],
        train,
        [],
        valid,
        n_resamples=1,
        taxonomy=checkpoint.vocabularies.taxonomy,
    )
    return validation_metrics(report)


def fit_zoo(
    model_class: type[SequenceModel],
    train: Sequence[Session],
    valid: Sequence[Session],
    options: FitOptions,
    taxonomy: Taxonomy | None = None,
    out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> tuple[ZooCheckpoint, list[dict[str, float]]]:
    """Fit a zoo model and return its best checkpoint by validation Recall@20.

    Args:
        model_class: the model (`hup.zoo.registry.ZOO_CLASSES` holds them by name).
        train, valid: sessions of the protocol's split (valid only selects the epoch).
        options: the budget and hyper-parameter overrides.
        taxonomy: category paths when the data gives leaves only.
        out: where to save the checkpoint (None: not saved).
        progress: called with (batches done, batches per epoch) during each epoch.
        on_epoch: called with each epoch's record (loss, validation figures, seconds).

    Returns:
        The best checkpoint and the per-epoch history (one epoch-0 record for models that
        are not trained by gradient).
    """
    cls, name = model_class, model_class.name
    seed_everything(options.seed)
    vocab, spec = training_vocabularies(
        train, taxonomy, options.min_item_count, options.min_category_count
    )
    known = {f.name for f in dataclasses.fields(cls.config_class)}
    config = cls.config_class(
        n_items=len(vocab.items),
        n_categories=tuple(len(v) for v in vocab.categories),
        n_train_sessions=len(train),
        n_gap_buckets=spec.n_gap_buckets,
        n_dwell_buckets=spec.n_dwell_buckets,
        **{k: v for k, v in options.overrides.items() if k in known},
    )
    model = cls(config).to(options.device)
    model.prepare(train, vocab, options.seed)
    train_seqs = [featurize_session(Featurizer(spec, vocab), s) for s in train]
    clamped = log_clamped_gaps(train_seqs)
    unsaved = ZooCheckpoint(name, model, spec, vocab, "unsaved", {})
    if model.trainable:
        history, best_epoch = fit_epochs(
            model,
            lambda generator: model.training_batches(train_seqs, options.batch_size, generator),
            lambda: zoo_validation_metrics(unsaved, train, valid),
            epochs=options.epochs,
            patience=options.patience,
            learning_rate=config.learning_rate,
            seed=options.seed,
            device=options.device,
            n_batches=model.count_batches(train_seqs, options.batch_size),
            progress=progress,
            on_epoch=on_epoch,
        )
    else:
        started = time.perf_counter()
        model.eval()
        record = {
            "epoch": 0,
            "loss": math.nan,
            **zoo_validation_metrics(unsaved, train, valid),
            "seconds": time.perf_counter() - started,
        }
        history, best_epoch = [record], 0
        if on_epoch is not None:
            on_epoch(record)
    info = {
        "model": name,
        "options": dataclasses.asdict(options),
        "history": history,
        "best_epoch": best_epoch,
        "clamped_gaps": clamped,
    }
    if out is None:
        return ZooCheckpoint(name, model, spec, vocab, "unsaved", info), history
    save_zoo_checkpoint(out, name, model, spec, vocab, info)
    return load_zoo_checkpoint(out, {name: cls}, options.device), history
