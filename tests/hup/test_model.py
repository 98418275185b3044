"""HupModel: heads per variant, tanh range, causality, padding, the loss of Eq. 7."""

from __future__ import annotations

import math

import pytest
import torch
from adam_steps import adam_losses

from hup.config import VARIANTS, HupConfig
from hup.features import EventFeatures, FeatureSpec, Featurizer
from hup.model import HupModel, collate_features
from hup.sequences import FeaturizedSession, batches, featurize_session
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy, Vocabularies, build_vocabularies

torch.set_num_threads(1)

ITEM_DIM, CATEGORY_DIM = 12, 6  # distinct, so a head's width says which space it is in
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def vocab_and_sequences() -> tuple[Vocabularies, list[list[EventFeatures]]]:
    """Featurized sequences of a few synthetic users (3 category levels)."""
    dataset = generate(SyntheticConfig(users=8, seed=2, min_events=3, max_events=12))
    taxonomy = Taxonomy(dataset.taxonomy)
    vocab = build_vocabularies(
        (e for s in dataset.sessions for e in s.events), taxonomy.n_levels, taxonomy
    )
    featurizer = Featurizer(FeatureSpec(n_levels=taxonomy.n_levels), vocab)
    sequences = [featurize_session(featurizer, s).features for s in dataset.sessions]
    return vocab, sorted(sequences, key=len)


def _model(vocab: Vocabularies, variant: str = "hup-paper", seed: int = 0, **overrides) -> HupModel:
    torch.manual_seed(seed)
    config = HupConfig(
        n_items=len(vocab.items),
        n_categories=tuple(len(v) for v in vocab.categories),
        item_dim=ITEM_DIM,
        category_dim=CATEGORY_DIM,
        hidden=16,
        attention_hidden=8,
        window=5,
        **{**VARIANTS[variant], **overrides},
    )
    return HupModel(config).eval()


def _all_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.nonzero(batch["valid"])  # [N, 2] every valid (row, time)


def _expected_heads(variant: str, n_levels: int) -> set[str]:
    heads = {"item", *(f"category{k}" for k in range(n_levels))}
    return heads if variant == "hup-nomicro" else heads | {"micro"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_gives_one_profile_per_position_and_head(variant, vocab_and_sequences) -> None:
    vocab, sequences = vocab_and_sequences
    model = _model(vocab, variant)
    batch = collate_features(sequences)
    positions = _all_positions(batch)
    with torch.no_grad():
        profiles = model(batch, positions)
    assert set(profiles) == _expected_heads(variant, vocab.n_levels)
    for head, profile in profiles.items():
        width = CATEGORY_DIM if head.startswith("category") else ITEM_DIM
        assert profile.shape == (len(positions), width), head
        assert torch.isfinite(profile).all(), head
        # The heads are tanh dense layers.
        assert profile.abs().max() <= 1.0, head


def test_single_variant_feeds_every_head_from_the_micro_layer(vocab_and_sequences) -> None:
    vocab, sequences = vocab_and_sequences
    model = _model(vocab, "hup-single")
    assert model.layer_names == ["micro"]
    assert set(model.cells) == {"micro"}
    assert {spec.source for spec in model.head_specs.values()} == {"micro"}
    assert {"item", "category0", "category1", "category2"} <= set(model.head_specs)


def test_nomicro_variant_has_no_micro_layer_and_an_items_only_item_layer(
    vocab_and_sequences,
) -> None:
    vocab, _ = vocab_and_sequences
    model = _model(vocab, "hup-nomicro")
    assert model.layer_names == ["item", "category2", "category1", "category0"]
    assert "micro" not in model.heads
    assert model.cells["item"].gates.in_features == ITEM_DIM + 16  # item embedding + h


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_profile_at_t_ignores_later_events(variant, vocab_and_sequences) -> None:
    """Offline forward over a prefix == over the full or an altered sequence, at the same t."""
    vocab, sequences = vocab_and_sequences
    model = _model(vocab, variant)
    full, other = sequences[-1], sequences[-2]
    for cut in (1, 2, len(full) // 2, len(full) - 1):
        prefix = full[:cut]
        altered = prefix + list(reversed(other))  # a different future, also longer
        batch = collate_features([prefix, full, altered])
        positions = torch.tensor([(row, t) for row in range(3) for t in range(cut)])
        with torch.no_grad():
            profiles = model(batch, positions)
        for head, profile in profiles.items():
            alone, with_full, with_altered = profile.view(3, cut, -1)
            torch.testing.assert_close(with_full, alone, atol=TOLERANCE, rtol=0, msg=head)
            torch.testing.assert_close(with_altered, alone, atol=TOLERANCE, rtol=0, msg=head)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_padding_does_not_change_profiles(variant, vocab_and_sequences) -> None:
    vocab, sequences = vocab_and_sequences
    model = _model(vocab, variant)
    short = sequences[0]
    longer = sequences[-3:]
    assert len(short) < len(longer[0])
    positions = [(0, t) for t in range(len(short))]
    with torch.no_grad():
        alone = model(collate_features([short]), torch.tensor(positions))
        # First row (padding after it) and last row (longer sessions come first).
        padded_first = model(collate_features([short, *longer]), torch.tensor(positions))
        last_row = [(len(longer), t) for t in range(len(short))]
        padded_last = model(collate_features([*longer, short]), torch.tensor(last_row))
    for head in alone:
        torch.testing.assert_close(padded_first[head], alone[head], atol=1e-5, rtol=0, msg=head)
        torch.testing.assert_close(padded_last[head], alone[head], atol=1e-5, rtol=0, msg=head)


def _first_batch(sequences, batch_size=8):
    sessions = [FeaturizedSession(s, list(range(len(s)))) for s in sequences]
    return next(batches(sessions, batch_size))


@pytest.mark.parametrize("softmax_weight", [0.0, 1.0])
def test_loss_decreases_over_adam_steps(softmax_weight, vocab_and_sequences) -> None:
    vocab, sequences = vocab_and_sequences
    model = _model(vocab, softmax_weight=softmax_weight).train()
    losses = adam_losses(model, *_first_batch([s[:10] for s in sequences[:4]]))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("variant", ["hup-paper", "hup-nomicro", "hup-single"])
@pytest.mark.parametrize("lambda_micro", [0.0, 0.3])
def test_cosine_loss_is_the_weighted_negative_cosine_and_bounded(
    variant, lambda_micro, vocab_and_sequences
) -> None:
    vocab, sequences = vocab_and_sequences
    model = _model(vocab, variant, softmax_weight=0.0, lambda_micro=lambda_micro)
    batch, positions, targets = _first_batch(sequences)
    cfg = model.config
    with torch.no_grad():
        loss = model.loss(batch, positions, targets).item()
        profiles = model(batch, positions)
        cos = torch.nn.functional.cosine_similarity
        item_target = model.item_embedding(targets["item"])
        expected = -cfg.lambda_item * cos(profiles["item"], item_target).mean().item()
        bound = cfg.lambda_item + cfg.n_levels * cfg.lambda_category
        if "micro" in profiles:  # the micro head only counts when the variant has it
            expected -= lambda_micro * cos(profiles["micro"], item_target).mean().item()
            bound += lambda_micro
        for k, emb in enumerate(model.category_embeddings):
            target = emb(targets["categories"][:, k])
            expected -= cfg.lambda_category * cos(profiles[f"category{k}"], target).mean().item()
    assert loss == pytest.approx(expected, abs=1e-5)
    assert -bound - 1e-6 <= loss <= bound + 1e-6


def test_sampled_softmax_gives_a_finite_loss_and_gradients(vocab_and_sequences) -> None:
    vocab, sequences = vocab_and_sequences
    model = _model(vocab, softmax_weight=1.0, softmax_negatives=5).train()
    assert model.config.softmax_negatives < len(vocab.items)  # the sampled branch runs
    batch, positions, targets = _first_batch(sequences)
    loss = model.loss(batch, positions, targets)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # Same weights (same seed, no step taken): the cross-entropy term is >= 0 on top.
    with torch.no_grad():
        cosine_only = _model(vocab, softmax_weight=0.0).loss(batch, positions, targets)
    assert loss.item() >= cosine_only.item() - 1e-6


def test_oov_targets_are_left_out_of_the_loss(vocab_and_sequences) -> None:
    """An OOV target (id 0: below --min-item-count) must not pull profiles toward id 0."""
    vocab, sequences = vocab_and_sequences
    batch, positions, targets = _first_batch(sequences)
    n = len(positions)
    oov = torch.arange(n) % 3 == 0
    keep = ~oov
    assert oov.any() and keep.any()
    # Every level OOV at the same points: the loss is the loss of the other points alone.
    masked = {
        "item": targets["item"].masked_fill(oov, 0),
        "categories": targets["categories"].masked_fill(oov.unsqueeze(1), 0),
    }
    kept = {name: value[keep] for name, value in targets.items()}
    model = _model(vocab, softmax_weight=1.0)
    with torch.no_grad():
        expected = model.loss(batch, positions[keep], kept)
        assert model.loss(batch, positions, masked).item() == pytest.approx(expected.item())
    # Per level: OOV item targets at some points, OOV finest categories at others. No
    # gradient reaches the OOV rows (the inputs here never use id 0).
    model = _model(vocab, softmax_weight=0.0, lambda_micro=0.3).train()
    finest = model.config.n_levels - 1
    per_level = {"item": targets["item"].masked_fill(oov, 0), "categories": targets["categories"]}
    per_level["categories"] = per_level["categories"].clone()
    per_level["categories"][keep, finest] = 0
    assert (batch["item"] != 0).all() and (batch["categories"] != 0).all()
    model.loss(batch, positions, per_level).backward()
    assert model.item_embedding.weight.grad is not None
    assert torch.count_nonzero(model.item_embedding.weight.grad[0]) == 0
    assert torch.count_nonzero(model.category_embedding(finest).weight.grad[0]) == 0
    assert torch.count_nonzero(model.item_embedding.weight.grad[1:]) > 0
    # A batch whose targets are all OOV gives 0 and still backpropagates.
    all_oov = {name: torch.zeros_like(value) for name, value in targets.items()}
    loss = _model(vocab).train().loss(batch, positions, all_oov)
    loss.backward()
    assert loss.item() == 0.0
