"""Checkpoint directories: round trip, content-hash version, every load failure, no pickle."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import orjson
import pytest
import torch

from hup.config import HupConfig
from hup.exceptions import CheckpointError
from hup.features import FeatureSpec, Featurizer
from hup.hup_checkpoint import load_checkpoint, save_checkpoint, save_untrained_checkpoint
from hup.model import HupModel, collate_features
from hup.sequences import featurize_session
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy, Vocabularies, Vocabulary, build_vocabularies

FILES = ("config.json", "vocab.json", "weights.safetensors", "VERSION")


@pytest.fixture(scope="module")
def parts():
    """A small random model with its feature spec, vocabularies and a batch to run."""
    dataset = generate(SyntheticConfig(users=6, seed=5, min_events=3, max_events=8))
    taxonomy = Taxonomy(dataset.taxonomy)
    vocab = build_vocabularies(
        (e for s in dataset.sessions for e in s.events), taxonomy.n_levels, taxonomy
    )
    spec = FeatureSpec(n_levels=taxonomy.n_levels, gap_edges=(2.0, 30.0), dwell_edges=(20.0,))
    torch.manual_seed(0)
    config = HupConfig(
        n_items=len(vocab.items),
        n_categories=tuple(len(v) for v in vocab.categories),
        n_gap_buckets=spec.n_gap_buckets,
        n_dwell_buckets=spec.n_dwell_buckets,
        hidden=16,
        window=5,
    )
    model = HupModel(config).eval()
    featurizer = Featurizer(spec, vocab)
    batch = collate_features([featurize_session(featurizer, s).features for s in dataset.sessions])
    return model, spec, vocab, batch


@pytest.fixture
def saved(tmp_path: Path, parts) -> Path:
    model, spec, vocab, _ = parts
    directory = tmp_path / "model"
    save_checkpoint(directory, model, spec, vocab, {"note": "test"})
    return directory


def _outputs(model: HupModel, batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(batch, torch.nonzero(batch["valid"]))


def test_round_trip_restores_model_spec_vocabularies_and_outputs(saved: Path, parts) -> None:
    model, spec, vocab, batch = parts
    assert sorted(p.name for p in saved.iterdir()) == sorted(FILES)
    loaded = load_checkpoint(str(saved))  # a str path is accepted too
    assert loaded.model.config == model.config
    assert not loaded.model.training
    assert loaded.spec == spec
    assert loaded.vocabularies.items.tokens == vocab.items.tokens
    assert [v.tokens for v in loaded.vocabularies.categories] == [
        v.tokens for v in vocab.categories
    ]
    assert loaded.vocabularies.taxonomy.paths == vocab.taxonomy.paths
    assert loaded.info == {"note": "test"}
    assert loaded.version == (saved / "VERSION").read_text().strip()
    expected, actual = _outputs(model, batch), _outputs(loaded.model, batch)
    for head in expected:
        assert torch.equal(actual[head], expected[head]), head


def test_version_is_a_content_hash_of_the_checkpoint(tmp_path: Path, parts) -> None:
    model, spec, vocab, _ = parts
    first = save_checkpoint(tmp_path / "a", model, spec, vocab)
    again = save_checkpoint(tmp_path / "b", model, spec, vocab)
    assert first == again
    assert first.startswith("hup-")
    changed = HupModel(model.config)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.heads["item"].bias[0] += 1e-3
    other = save_checkpoint(tmp_path / "c", changed, spec, vocab)
    assert other != first
    assert load_checkpoint(tmp_path / "c").version == other


def test_version_leaves_out_timing_fields_only(tmp_path: Path, parts) -> None:
    model, spec, vocab, _ = parts

    def version(name: str, info: dict) -> str:
        return save_checkpoint(tmp_path / name, model, spec, vocab, info)

    timed = version("a", {"history": [{"epoch": 1, "loss": 0.5, "seconds": 12.5}]})
    assert version("b", {"history": [{"epoch": 1, "loss": 0.5, "seconds": 99.0}]}) == timed
    assert version("c", {"history": [{"epoch": 1, "loss": 0.25, "seconds": 12.5}]}) != timed
    assert load_checkpoint(tmp_path / "b").version == timed


def _assert_error_names(directory: Path, match: str) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(directory)
    assert str(directory) in str(info.value)
    return info.value


def test_missing_directory(tmp_path: Path) -> None:
    _assert_error_names(tmp_path / "nowhere", "does not exist")


def test_a_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    _assert_error_names(path, "not a directory")


@pytest.mark.parametrize("name", ["weights.safetensors", "config.json", "vocab.json"])
def test_missing_file(saved: Path, name: str) -> None:
    (saved / name).unlink()
    _assert_error_names(saved, name)


def test_corrupt_config_json(saved: Path) -> None:
    (saved / "config.json").write_bytes(b'{"format": 1, "model": ')
    error = _assert_error_names(saved, "unreadable")
    assert isinstance(error.__cause__, ValueError)  # raised from the decode error


def test_wrong_format_number(saved: Path) -> None:
    config = orjson.loads((saved / "config.json").read_bytes())
    config["format"] = 99
    (saved / "config.json").write_bytes(orjson.dumps(config))
    _assert_error_names(saved, "format 99")


def test_unknown_model_config_key(saved: Path) -> None:
    config = orjson.loads((saved / "config.json").read_bytes())
    config["model"]["from_the_future"] = 1
    (saved / "config.json").write_bytes(orjson.dumps(config))
    _assert_error_names(saved, "from_the_future")


def test_vocabulary_size_does_not_match_the_config(saved: Path, parts) -> None:
    _, _, vocab, _ = parts
    smaller = Vocabularies(
        items=Vocabulary(vocab.items.tokens[:-1]),
        categories=vocab.categories,
        taxonomy=vocab.taxonomy,
    )
    (saved / "vocab.json").write_bytes(smaller.to_json())
    _assert_error_names(saved, "vocabularies do not match")


def test_category_levels_do_not_match_the_config(saved: Path) -> None:
    config = orjson.loads((saved / "config.json").read_bytes())
    config["features"]["n_levels"] = 2
    (saved / "config.json").write_bytes(orjson.dumps(config))
    _assert_error_names(saved, "vocabularies do not match")


def test_weights_of_another_shape(saved: Path) -> None:
    config = orjson.loads((saved / "config.json").read_bytes())
    config["model"]["hidden"] = 8  # the weights were saved with 16
    (saved / "config.json").write_bytes(orjson.dumps(config))
    _assert_error_names(saved, "unreadable")


class _Trap:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_loading_never_unpickles(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    (saved / "weights.safetensors").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(Exception) as info:  # noqa: B017 - which one is checked below
        load_checkpoint(saved)
    assert not marker.exists(), "the weights file was unpickled"
    error = info.value
    assert isinstance(error, CheckpointError), f"{type(error).__name__} escaped: {error}"
    assert str(saved) in str(error)


def test_a_torch_save_file_in_place_of_the_weights(saved: Path, parts) -> None:
    model = parts[0]
    torch.save(model.state_dict(), saved / "weights.safetensors")  # zip + pickle
    _assert_error_names(saved, "weights|unreadable")


def test_truncated_weights(saved: Path) -> None:
    path = saved / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    _assert_error_names(saved, "weights|unreadable")


def test_untrained_checkpoint_is_seeded_and_covers_the_given_events(tmp_path: Path) -> None:
    dataset = generate(SyntheticConfig(users=20, seed=3))
    assert dataset.taxonomy is not None
    taxonomy = Taxonomy(dataset.taxonomy)
    events = [e for s in dataset.sessions for e in s.events]
    first = save_untrained_checkpoint(tmp_path / "a", events, taxonomy, seed=1, window=4)
    again = save_untrained_checkpoint(tmp_path / "b", events, taxonomy, seed=1, window=4)
    other = save_untrained_checkpoint(tmp_path / "c", events, taxonomy, seed=2, window=4)
    assert first == again != other
    checkpoint = load_checkpoint(tmp_path / "a")
    assert checkpoint.model.config.window == 4
    assert checkpoint.spec.n_levels == taxonomy.n_levels
    assert all(e.item_id in checkpoint.vocabularies.items for e in events)
