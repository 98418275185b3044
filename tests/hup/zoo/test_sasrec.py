"""SASRec: every point is profiled from its own last ``window`` runs, scored on the input table."""

from __future__ import annotations

import pytest
import torch

from hup.features import Featurizer
from hup.model import collate_features
from hup.sequences import FeaturizedSession, featurize_session, training_positions
from hup.train import training_vocabularies
from hup.zoo.sasrec import Sasrec, SasrecConfig


def _model(tiny, **sizes: int) -> tuple[Sasrec, list[FeaturizedSession]]:
    train, _, test, taxonomy = tiny
    vocab, spec = training_vocabularies(train, taxonomy)
    config = SasrecConfig(
        n_items=len(vocab.items),
        n_categories=tuple(len(v) for v in vocab.categories),
        item_dim=8,
        **sizes,
    )
    torch.manual_seed(0)
    featurizer = Featurizer(spec, vocab)
    return Sasrec(config).eval(), [featurize_session(featurizer, s) for s in test]


def test_each_point_sees_exactly_its_last_window_runs(tiny) -> None:
    """The shared pass (early points) and the own windows (late ones) equal a window per point."""
    model, sessions = _model(tiny, window=4, heads=2)
    batch = collate_features([s.features for s in sessions])
    positions = torch.tensor(
        [(row, t) for row, s in enumerate(sessions) for t, _ in training_positions(s.features)]
    )
    with torch.no_grad():
        profiles = model(batch, positions)["item"]
        late = 0
        for n, (row, t) in enumerate(positions.tolist()):
            feats = sessions[row].features[: t + 1]
            runs = [f.item for f in feats if f.is_micro and f.item_change][-4:]
            late += len([f for f in feats if f.is_micro and f.item_change]) > 4
            alone = model.norm(model.encode(torch.tensor([runs]))[0, -1])
            torch.testing.assert_close(profiles[n], alone, rtol=1e-5, atol=1e-5)
    assert 0 < late < len(positions)  # both paths were exercised


def test_scores_use_the_input_embedding_table(tiny) -> None:
    model, _ = _model(tiny)
    weight, bias = model.output_table("item")
    assert weight is model.item_embedding.weight and bias is None
    assert model.heads == ["item"]  # categories by "last category"
    with pytest.raises(KeyError):
        model.output_table("category0")


def test_heads_must_divide_the_width(tiny) -> None:
    with pytest.raises(ValueError, match="divide"):
        _model(tiny, heads=3)
