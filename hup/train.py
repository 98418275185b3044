"""The training recipe: config -> seed -> data -> model -> fit -> save."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from hup.baselines import SPop
from hup.config import VARIANTS, HupConfig
from hup.evaluate import evaluate
from hup.extras import require
from hup.features import FeatureSpec, Featurizer
from hup.hup_checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from hup.hup_recommender import HupRecommender
from hup.model import HupModel
from hup.model_contract import ProfileModel
from hup.neighbours import part_of, run_sequences, stacked_tables, target_counts
from hup.recommender_contract import Recommender
from hup.schema import MicroEvent
from hup.sequences import FeaturizedSession, batches, count_batches, featurize_session
from hup.sessions import Session
from hup.vocab import Taxonomy, Vocabularies, build_vocabularies

if TYPE_CHECKING:
    from gensim.models import KeyedVectors

__all__ = [
    "EARLY_STOPPING_KEY",
    "VALIDATION_KEYS",
    "TrainOptions",
    "fit_epochs",
    "log_clamped_gaps",
    "seed_everything",
    "skipgram_vectors",
    "train_model",
    "training_vocabularies",
    "validation_metrics",
]

logger = logging.getLogger(__name__)

EARLY_STOPPING_KEY = "valid_score"
"""The validation figure early stopping watches: the mean of item Recall@20 and MRR@20 of
the `every` points (recall alone would keep an epoch that finds targets but ranks them low)."""
VALIDATION_KEYS = ("valid_recall20", "valid_mrr20", "valid_category_recall5", EARLY_STOPPING_KEY)
"""Each epoch's validation figures (`validation_metrics`), in the history records."""


@dataclass(frozen=True)
class TrainOptions:
    """Everything `hup train` can set. Defaults follow the paper where it says something."""

    variant: str = "hup"  # a key of hup.config.VARIANTS
    epochs: int = 8  # the mixture likelihood is within a point of its best by then on JD
    batch_size: int = 128  # sessions per batch (the paper's 128)
    learning_rate: float = 1e-2
    patience: int = 2  # epochs without validation improvement before stopping
    seed: int = 0
    device: str = "cpu"
    min_item_count: int = 1  # rarer training skus map to the OOV id
    min_category_count: int = 1  # likewise per category level
    skipgram: bool = True  # initialise item embeddings by skip-gram (the authors used word2vec)
    freeze_items: bool = False  # keep item embeddings fixed (the authors' setting)
    window: int = 50  # attention window W
    hidden: int = 100
    # Weight of the auxiliary softmax over cosine scores; 0 = the paper's loss (cosine
    # proximity alone), the default. With trainable item and category
    # embeddings cosine alone collapses them onto one direction (measured: item Recall@20
    # below POP on synthetic data), so our reported runs set 1 (docs/model.md).
    softmax_weight: float = 0.0
    softmax_negatives: int = 0  # negatives sampled per batch for that softmax; 0 = every id
    data: str = ""  # the dataset spec trained on (provenance, shown by `hup evaluate`)
    model_overrides: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - gensim and numpy users read the global state
    torch.manual_seed(seed)


def training_vocabularies(
    train: Sequence[Session],
    taxonomy: Taxonomy | None,
    min_item_count: int = 1,
    min_category_count: int = 1,
) -> tuple[Vocabularies, FeatureSpec]:
    """The vocabularies and feature spec every model of the comparison shares, from train only."""
    n_levels = _n_levels(train, taxonomy)
    vocab = build_vocabularies(
        (e for s in train for e in s.events),
        n_levels,
        taxonomy,
        min_item_count,
        min_category_count,
    )
    return vocab, FeatureSpec(n_levels=n_levels)


def _n_levels(sessions: Sequence[Session], taxonomy: Taxonomy | None) -> int:
    if taxonomy is not None:
        return taxonomy.n_levels
    for session in sessions:
        for event in session.events:
            if isinstance(event, MicroEvent):
                return len(event.categories)
    return 1


def skipgram_vectors(train: Sequence[Session], dim: int, seed: int) -> KeyedVectors:
    """Skip-gram sku vectors: one sentence per training session, one word per item run.

    Raises:
        MissingExtraError: gensim (extra ``train``) is not installed.
    """
    # Heavy, and an extra: imported only when asked for.
    word2vec = require(
        "gensim.models", "train", "skip-gram item embeddings (or train with --no-skipgram)"
    ).Word2Vec

    sentences = []
    for session in train:
        items = [e.item_id for e in session.events if isinstance(e, MicroEvent)]
        sentences.append([i for n, i in enumerate(items) if n == 0 or items[n - 1] != i])
    w2v = word2vec(
        sentences,
        vector_size=dim,
        window=5,
        min_count=1,
        sg=1,
        negative=10,
        epochs=10,
        seed=seed,
        workers=1,
    )
    return w2v.wv


def _skipgram_init(
    model: HupModel, vocab: Vocabularies, train: Sequence[Session], seed: int
) -> None:
    vectors = skipgram_vectors(train, model.config.item_dim, seed)
    weights = model.item_embedding.weight.data
    found = 0
    for token_id, token in enumerate(vocab.items.tokens):
        if token in vectors:
            weights[token_id] = torch.from_numpy(vectors[token].copy())
            found += 1
    logger.info("skip-gram initialised %d of %d item embeddings", found, len(vocab.items))


def train_model(
    train: Sequence[Session],
    valid: Sequence[Session],
    options: TrainOptions,
    taxonomy: Taxonomy | None = None,
    out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> tuple[Checkpoint, list[dict[str, float]]]:
    """Fit a HUP model (or a variant) and return the best checkpoint by validation Recall@20.

    Args:
        train, valid: sessions of the protocol's split (valid only selects the epoch).
        options: the training settings.
        taxonomy: category paths when the data gives leaves only.
        out: where to save the checkpoint (a temporary directory is not made for you).
        progress: called with (batches done, batches per epoch) during each epoch.
        on_epoch: called with each epoch's record (loss, validation figures, seconds).

    Returns:
        The best checkpoint and the per-epoch history.
    """
    if options.variant not in VARIANTS:
        raise ValueError(
            f"unknown model variant {options.variant!r}; choose from {sorted(VARIANTS)}"
        )
    seed_everything(options.seed)
    vocab, spec = training_vocabularies(
        train, taxonomy, options.min_item_count, options.min_category_count
    )
    config = HupConfig(
        n_items=len(vocab.items),
        n_categories=tuple(len(v) for v in vocab.categories),
        window=options.window,
        hidden=options.hidden,
        softmax_weight=options.softmax_weight,
        softmax_negatives=options.softmax_negatives,
        **{**VARIANTS[options.variant], **options.model_overrides},
    )
    model = HupModel(config).to(options.device)
    if options.skipgram:
        _skipgram_init(model, vocab, train, options.seed)
    model.item_embedding.weight.requires_grad_(not options.freeze_items)
    featurizer = Featurizer(spec, vocab)
    train_seqs = [featurize_session(featurizer, s) for s in train]
    clamped = log_clamped_gaps(train_seqs)
    parts = _install_session_statistics(model, train_seqs)
    history, best_epoch = fit_epochs(
        model,
        lambda generator: batches(
            train_seqs, options.batch_size, generator, repeat=config.repeat, parts=parts
        ),
        lambda: _validation_metrics(Checkpoint(model, spec, vocab, "unsaved", {}), train, valid),
        epochs=options.epochs,
        patience=options.patience,
        learning_rate=options.learning_rate,
        seed=options.seed,
        device=options.device,
        n_batches=count_batches(train_seqs, options.batch_size),
        progress=progress,
        on_epoch=on_epoch,
    )
    if model.repeat_heads is not None:
        for table in model.repeat_heads.neighbour_modules():
            table.keep_full_table()
    info = {
        "options": dataclasses.asdict(options),
        "history": history,
        "best_epoch": best_epoch,
        "clamped_gaps": clamped,
        **_compare_with_s_pop(history, best_epoch, train, valid, taxonomy),
    }
    if out is None:
        return Checkpoint(model, spec, vocab, "unsaved", info), history
    save_checkpoint(out, model, spec, vocab, info)
    return load_checkpoint(out, options.device), history


def _install_session_statistics(
    model: HupModel, train: Sequence[FeaturizedSession]
) -> list[int] | None:
    """Set the repeat-aware model's explore priors and co-visitation tables from `train`.

    Returns each training session's neighbour table (`hup.neighbours.part_of`), or None
    when the model has no neighbours.
    """
    heads = model.repeat_heads
    if heads is None:
        return None
    config = model.config
    items, categories = run_sequences(train, config.n_levels)
    heads.set_priors(
        target_counts(items, config.n_items),
        [target_counts(c, n) for c, n in zip(categories, config.n_categories, strict=True)],
    )
    tables = heads.neighbour_modules()
    if not tables:
        return None
    k = config.neighbours
    tables[0].install(stacked_tables(items, config.n_items, k))
    for table, sequences, n in zip(tables[1:], categories, config.n_categories, strict=True):
        table.install(stacked_tables(sequences, n, k))
    return [part_of(i) for i in range(len(train))]


def _compare_with_s_pop(
    history: Sequence[Mapping[str, float]],
    best_epoch: int,
    train: Sequence[Session],
    valid: Sequence[Session],
    taxonomy: Taxonomy | None,
) -> dict[str, Any]:
    """S-POP's validation figures and whether the trained model is below them (then warn).

    S-POP (the session's own items, most recent first) is the floor a consumer could compute
    without any model; a model below it on validation is not worth serving.
    """
    if not valid or best_epoch < 1:
        return {}
    report = evaluate([SPop()], train, [], valid, n_resamples=1, taxonomy=taxonomy)
    s_pop = validation_metrics(report)
    best = history[best_epoch - 1]
    below = [
        key
        for key in ("valid_recall20", "valid_mrr20")
        if best[key] < s_pop[key]  # the model's figure at the epoch it keeps
    ]
    if below:
        logger.warning(
            "the model is below S-POP on validation (%s): model %s, S-POP %s",
            ", ".join(below),
            ", ".join(f"{100 * best[k]:.2f} %" for k in below),
            ", ".join(f"{100 * s_pop[k]:.2f} %" for k in below),
        )
    return {"valid_s_pop": s_pop, "below_s_pop": below}


def log_clamped_gaps(sessions: Sequence[FeaturizedSession]) -> int:
    """Count the training events whose out-of-order timestamps were clamped; warn when any."""
    clamped = sum(s.n_clamped for s in sessions)
    if clamped:
        logger.warning(
            "%d training micro events have out-of-order timestamps; their gaps are clamped to 0",
            clamped,
        )
    return clamped


def fit_epochs(
    model: ProfileModel,
    batch_source: Callable[
        [torch.Generator], Iterable[tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]]
    ],
    validate: Callable[[], Mapping[str, float]],
    *,
    epochs: int,
    patience: int,
    learning_rate: float,
    seed: int,
    device: str,
    n_batches: int,
    progress: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Adam epochs of ``model.loss`` with early stopping; HUP's recipe and the zoo share it.

    Each epoch draws its batches from ``batch_source(generator)`` (a generator seeded with
    ``seed``), then scores the model with ``validate``, which returns the epoch's validation
    figures (`validation_metrics`); early stopping watches ``EARLY_STOPPING_KEY`` (higher is
    better). Training stops when ``patience`` epochs pass without a better score; the best
    epoch's weights are loaded back and the model is left in eval mode.

    Returns:
        The per-epoch records (epoch, loss, the validation figures, seconds) and the best
        epoch (-1: none).
    """
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=learning_rate
    )
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state = -1.0, -1, None
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        losses = []
        for done, (batch, positions, targets) in enumerate(batch_source(generator), start=1):
            batch = {k: v.to(device) for k, v in batch.items()}
            targets = {k: v.to(device) for k, v in targets.items()}
            loss = model.loss(batch, positions.to(device), targets)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            losses.append(loss.item())
            if progress is not None:
                progress(done, n_batches)
        model.eval()
        metrics = dict(validate())
        score = metrics[EARLY_STOPPING_KEY]
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else math.nan,
            **metrics,
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        logger.info("epoch %d: %s", epoch, record)
        if on_epoch is not None:
            on_epoch(record)
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            logger.info("early stop after epoch %d (best %d)", epoch, best_epoch)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch


def _validation_metrics(
    checkpoint: Checkpoint, train: Sequence[Session], valid: Sequence[Session]
) -> dict[str, float]:
    """The validation split's figures of a HUP model under training (`validation_metrics`)."""
    if not valid:
        return dict.fromkeys(VALIDATION_KEYS, 0.0)
    recommender: Recommender = HupRecommender("hup", checkpoint=checkpoint)
    report = evaluate(
        [recommender], train, [], valid, n_resamples=1, taxonomy=checkpoint.vocabularies.taxonomy
    )
    return validation_metrics(report)


def validation_metrics(report: Any) -> dict[str, float]:
    """Per-epoch validation figures of the `every` points, from an `EvaluationReport`.

    Item Recall@20, item MRR@20, category Recall@5 of the finest level and the mean of the
    first two (what early stopping watches): the first says whether the right sku is near
    the top, the second how near, the third whether the category profile learns, which item
    figures alone would hide.
    """
    finest = [m for m in report.metric_names if m.startswith("category") and "Recall@" in m][-1]
    recall = report_metric(report, "every", f"item Recall@{report.k_items}")
    mrr = report_metric(report, "every", f"item MRR@{report.k_items}")
    category = report_metric(report, "every", finest)
    return dict(zip(VALIDATION_KEYS, (recall, mrr, category, (recall + mrr) / 2), strict=True))


def report_metric(report: Any, mode: str, metric: str) -> float:
    """Read one figure (mean) from an `EvaluationReport`."""
    for row in report.rows:
        if row.mode == mode:
            return float(row.metrics[metric].mean)
    raise KeyError(f"no {mode} row in the report")
