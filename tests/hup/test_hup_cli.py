"""The `hup` command line: train, evaluate, schema, and clean errors (exit 2, no traceback)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from typer.testing import CliRunner

import hup.schema
from hup.cli import app
from hup.data import load_dataset
from hup.hup_checkpoint import load_checkpoint
from hup.sessions import split_sessions
from hup.splits import keep_first, protocol_splits
from hup.vocab import Taxonomy, build_vocabularies

torch.set_num_threads(1)

DATA = "synthetic:users=30,seed=3,min_events=3,max_events=12"
SHIPPED_SCHEMA = Path(hup.schema.__file__).parent / "schemas" / "events.schema.json"
# Wide enough that rich never wraps a message (and a path inside it) across lines.
ENV = {"COLUMNS": "1000"}


def _run(*args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


def _assert_clean_failure(result, *fragments: str) -> None:
    """Exit code 2, the fragments in the error message, and no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "error:" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def _train_quickly(out: Path, *options: str, data: str = DATA) -> dict[str, Any]:
    """`hup train` for one short epoch with ``options``; its checkpoint's config.json."""
    result = _run(
        "train", "--data", data, "--out", str(out), "--epochs", "1", "--window", "5",
        "--no-skipgram", *options,
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    return orjson.loads((out / "config.json").read_bytes())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    result = _run(
        "train", "--data", DATA, "--out", str(out), "--epochs", "1", "--window", "5",
        "--no-skipgram", "--batch-size", "16",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "saved hup-" in result.stderr
    assert str(out) in result.stderr
    # Per epoch: item Recall@20 and MRR@20, category Recall@5 of the finest level.
    assert "Recall@20" in result.stderr and "MRR@20" in result.stderr
    assert "category Recall@5" in result.stderr
    assert "training events with out-of-order timestamps" in result.stderr
    return out


def test_train_writes_a_checkpoint_and_reports_its_version(trained: Path) -> None:
    version = (trained / "VERSION").read_text().strip()
    assert version.startswith("hup-")
    assert {p.name for p in trained.iterdir()} == {
        "VERSION",
        "config.json",
        "vocab.json",
        "weights.safetensors",
    }
    config = orjson.loads((trained / "config.json").read_bytes())
    assert config["model"]["window"] == 5
    assert config["info"]["options"]["data"] == DATA
    assert config["info"]["options"]["epochs"] == 1
    (epoch,) = config["info"]["history"]
    assert {"valid_recall20", "valid_mrr20", "valid_category_recall5"} <= set(epoch)
    # The paper's loss by default: the auxiliary softmax is opt-in.
    assert config["model"]["softmax_weight"] == 0.0


def test_softmax_options_reach_the_model_config(tmp_path: Path) -> None:
    out = tmp_path / "model"
    config = _train_quickly(out, "--softmax-weight", "1", "--softmax-negatives", "7")
    assert (config["model"]["softmax_weight"], config["model"]["softmax_negatives"]) == (1.0, 7)
    options = config["info"]["options"]
    assert (options["softmax_weight"], options["softmax_negatives"]) == (1.0, 7)
    _assert_clean_failure(
        _run("train", "--data", DATA, "--out", str(out), "--softmax-negatives", "-1"),
        "--softmax-negatives",
    )


def test_evaluate_prints_a_table_and_writes_json(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = _run(
        "evaluate", "--model", str(trained), "--data", DATA, "--resamples", "20",
        "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | mode |")
    methods = {row.split("|")[1].strip() for row in rows[1:]}
    assert {"HUP", "POP", "S-POP", "Item-KNN", "Last category", "V-SKNN", "STAN"} <= methods
    last_category = next(row for row in rows if row.startswith("| Last category | every |"))
    assert last_category.split("|")[5:7] == [" – ", " – "]  # no item figures, not zeros
    assert "20 resamples" in result.stdout
    assert "warning" not in result.stderr  # evaluated on the data it was trained on
    report = orjson.loads(out.read_bytes())
    assert report["clamped_gaps"] == {"test": 0}
    assert report["training"]["clamped_gaps"] == 0
    assert report["model_version"] == (trained / "VERSION").read_text().strip()
    assert report["training"]["best_epoch"] == 1


def test_evaluate_on_other_data_than_trained_warns_and_never_crashes(trained: Path) -> None:
    """The CLI names the mismatch; it may go on (exit 0) or refuse cleanly (exit 2)."""
    other = "synthetic:users=20,seed=4,min_events=3,max_events=8"
    result = _run(
        "evaluate", "--model", str(trained), "--data", other, "--resamples", "5",
        "--no-baselines",
    )  # fmt: skip
    assert "warning" in result.stderr or "error" in result.stderr
    assert DATA in result.stderr and other in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"exit {result.exit_code} with {result.exception!r}"
    )
    assert result.exit_code in (0, 2)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("nope:x", "unknown dataset scheme 'nope'"),
        ("synthetic:users=many", "users='many'"),
        ("synthetic:colour=red", "unknown synthetic option 'colour'"),
        ("synthetic:users=0", "users >= 1"),
        ("jd:", "names no file"),
        ("jd:x.txt,max_len=0", "max_len='0'"),
        ("jd:x.txt,train_frac=2", "train_frac='2'"),
        ("jd:x.txt,maxlen=3", "unknown jd option 'maxlen'"),
        ("synthetic:users=5,train_frac=0", "train_frac='0'"),
    ],
)
def test_bad_data_spec_exits_2_naming_the_problem(spec: str, fragment: str, tmp_path) -> None:
    result = _run("train", "--data", spec, "--out", str(tmp_path / "m"), "--epochs", "1")
    _assert_clean_failure(result, fragment)
    assert not (tmp_path / "m").exists()


def test_missing_jd_file_exits_2_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file.txt"
    result = _run("train", "--data", f"jd:{missing}", "--out", str(tmp_path / "m"))
    _assert_clean_failure(result, str(missing))


def test_bad_variant_and_device_exit_2(tmp_path: Path) -> None:
    out = str(tmp_path / "m")
    _assert_clean_failure(
        _run("train", "--data", DATA, "--out", out, "--variant", "hup-x"), "hup-x", "hup-single"
    )
    _assert_clean_failure(_run("train", "--data", DATA, "--out", out, "--device", "tpu"), "tpu")


def test_min_counts_reach_the_vocabularies(tmp_path: Path) -> None:
    out = tmp_path / "model"
    config = _train_quickly(out, "--min-item-count", "2", "--min-category-count", "40")
    options = config["info"]["options"]
    assert (options["min_item_count"], options["min_category_count"]) == (2, 40)
    dataset = load_dataset(DATA)
    train, _, _ = split_sessions(dataset.sessions)
    expected = build_vocabularies(
        (e for s in train for e in s.events),
        3,
        Taxonomy(dataset.taxonomy),
        min_item_count=2,
        min_category_count=40,
    )
    vocab = load_checkpoint(out).vocabularies
    assert vocab.items == expected.items and vocab.categories == expected.categories
    # The counts bite: fewer categories than with the default of 1, at the finest level.
    everything = build_vocabularies(
        (e for s in train for e in s.events), 3, Taxonomy(dataset.taxonomy)
    )
    assert len(vocab.categories[-1]) < len(everything.categories[-1])
    _assert_clean_failure(
        _run("train", "--data", DATA, "--out", str(out), "--min-category-count", "0"),
        "--min-category-count",
    )


def test_evaluate_device_is_checked_before_loading(trained: Path) -> None:
    result = _run("evaluate", "--model", str(trained), "--data", DATA, "--device", "tpu")
    _assert_clean_failure(result, "--device", "tpu")
    if not torch.cuda.is_available():
        result = _run("evaluate", "--model", str(trained), "--data", DATA, "--device", "cuda")
        _assert_clean_failure(result, "--device cuda", "no CUDA device")


def test_missing_model_dir_exits_2_with_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    result = _run("evaluate", "--model", str(missing), "--data", DATA)
    _assert_clean_failure(result, str(missing))


def test_corrupt_weights_exit_2_with_the_path(trained: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(trained, broken)
    (broken / "weights.safetensors").write_bytes(b"not safetensors")
    result = _run("evaluate", "--model", str(broken), "--data", DATA)
    _assert_clean_failure(result, str(broken))


@pytest.mark.parametrize(
    "spec",
    [
        "synthetic:users=[/]",  # rich reads "[/]" as a closing tag: MarkupError
        "synthetic:users=[bold]",  # rich swallows "[bold]": the message misreports the value
    ],
)
def test_error_messages_are_printed_verbatim(spec: str, tmp_path: Path) -> None:
    result = _run("train", "--data", spec, "--out", str(tmp_path / "m"))
    _assert_clean_failure(result, spec.removeprefix("synthetic:users="))


def test_schema_writes_the_shipped_schema_file(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = _run("schema", "--out", str(out))
    assert result.exit_code == 0, (result.output, result.exception)
    written = out / "events.schema.json"
    assert result.stdout.strip() == str(written)
    # Byte for byte: the shipped file is what `hup schema` writes today.
    assert written.read_bytes() == SHIPPED_SCHEMA.read_bytes()


def _write_leaf_only_jd(directory: Path) -> tuple[Path, Path]:
    """A small JD-format file (leaf categories only) and a 3-level taxonomy of its leaves."""
    rng = random.Random(5)
    leaves = [str(100 + n) for n in range(6)]
    skus = {str(1000 + n): leaves[n % len(leaves)] for n in range(24)}
    lines = []
    for _ in range(40):
        tokens = []
        for _ in range(rng.randint(3, 8)):
            sku, dwell = rng.choice(list(skus)), rng.randint(5, 200)
            for _ in range(rng.randint(1, 3)):
                behavior, interval = rng.randint(1, 10), rng.randint(0, 60)
                tokens.append(f"{sku}+{behavior}+{skus[sku]}+{interval}+{dwell}")
        lines.append(" ".join(tokens))
    data, taxonomy = directory / "leafonly.txt", directory / "taxonomy.txt"
    data.write_text("\n".join(lines) + "\n")
    taxonomy.write_text("".join(f"top{n % 2}/mid{n % 3}/{leaf}\n" for n, leaf in enumerate(leaves)))
    return data, taxonomy


def test_taxonomy_on_leaf_only_data_trains_and_evaluates_every_level(tmp_path: Path) -> None:
    """JD gives leaves only: with a taxonomy the model, targets and baselines have K = 3."""
    data, taxonomy = _write_leaf_only_jd(tmp_path)
    model, report_path = tmp_path / "model", tmp_path / "report.json"
    spec = f"jd:{data}"
    _train_quickly(model, "--taxonomy", str(taxonomy), "--set", "hidden=8", data=spec)
    result = _run(
        "evaluate", "--model", str(model), "--data", spec, "--resamples", "5",
        "--json", str(report_path),
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    report = orjson.loads(report_path.read_bytes())
    levels = [f"category L{k} {m}@5" for k in (1, 2, 3) for m in ("Recall", "MRR")]
    assert [m for m in report["metric_names"] if m.startswith("category")] == levels
    methods = {row["method"] for row in report["results"]}
    assert {"HUP", "POP", "S-POP", "Item-KNN"} <= methods
    for row in report["results"]:
        assert set(levels) <= set(row["metrics"]), row["method"]
    # The same taxonomy file passes the check; another one, or none at training, does not.
    same = _run(
        "evaluate", "--model", str(model), "--data", spec, "--taxonomy", str(taxonomy),
        "--resamples", "5", "--no-baselines",
    )  # fmt: skip
    assert same.exit_code == 0, (same.output, same.exception)
    other = tmp_path / "other-taxonomy.txt"
    other.write_text(taxonomy.read_text().replace("top0/", "elsewhere/"))
    result = _run("evaluate", "--model", str(model), "--data", spec, "--taxonomy", str(other))
    _assert_clean_failure(result, str(other), "another taxonomy", "drop the option")


def test_taxonomy_for_a_model_trained_without_one_is_refused(tmp_path: Path) -> None:
    data, taxonomy = _write_leaf_only_jd(tmp_path)
    model, spec = tmp_path / "model", f"jd:{data}"
    _train_quickly(model, "--set", "hidden=8", data=spec)
    result = _run("evaluate", "--model", str(model), "--data", spec, "--taxonomy", str(taxonomy))
    _assert_clean_failure(result, str(taxonomy), "without a taxonomy", "drop the option")


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two fold checkpoints of DATA from `hup train --folds 2`."""
    out = tmp_path_factory.mktemp("folds") / "model"
    result = _run(
        "train", "--data", DATA, "--out", str(out), "--epochs", "1", "--window", "5",
        "--no-skipgram", "--batch-size", "16", "--folds", "2",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "fold 2 of 2" in result.stderr and "folds.json" in result.stderr
    return out


def test_train_with_folds_writes_a_checkpoint_per_fold_and_a_manifest(folded: Path) -> None:
    assert sorted(p.name for p in folded.iterdir()) == ["fold-1", "fold-2", "folds.json"]
    manifest = orjson.loads((folded / "folds.json").read_bytes())
    assert (manifest["data"], manifest["folds"]) == (DATA, 2)
    dataset = load_dataset(DATA)
    splits = protocol_splits(dataset, 2)
    assert [(s["dir"], s["test"], s["test_start"]) for s in manifest["splits"]] == [
        ("fold-1", 15, 0),
        ("fold-2", 15, 15),
    ]
    for split in splits:
        checkpoint = folded / f"fold-{split.fold}"
        config = orjson.loads((checkpoint / "config.json").read_bytes())
        assert config["info"]["options"]["data"] == f"{DATA} (fold {split.fold} of 2)"
        # Each fold's vocabulary is its own training sessions', not the single split's.
        expected = build_vocabularies(
            (e for s in split.train for e in s.events), 3, Taxonomy(dataset.taxonomy)
        )
        assert load_checkpoint(checkpoint).vocabularies.items == expected.items


def test_evaluate_with_folds_prints_every_fold_and_pooled_rows(
    folded: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    result = _run(
        "evaluate", "--model", str(folded), "--data", DATA, "--folds", "2", "--resamples", "20",
        "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    text = result.stdout
    assert text.index("## Fold 1 of 2") < text.index("## Fold 2 of 2") < text.index("## Pooled")
    assert text.count("| HUP | every:revisit |") == 3 and text.count("| HUP | every:new |") == 3
    assert "| HUP minus | item Recall@20 | item MRR@20 | category L3 Recall@5 |" in text
    report = orjson.loads(out.read_bytes())
    assert report["folds"] == 2 and report["sessions"]["test"] == 30
    versions = [(folded / f"fold-{k}" / "VERSION").read_text().strip() for k in (1, 2)]
    assert report["model_versions"] == versions
    assert [f["model_version"] for f in report["per_fold"]] == versions
    pooled = {(r["method"], r["mode"]): r for r in report["results"]}
    folds = [{(r["method"], r["mode"]): r for r in f["results"]} for f in report["per_fold"]]
    for key in (("HUP", "every"), ("S-POP", "every:revisit"), ("POP", "last")):
        assert pooled[key]["n_points"] == sum(f[key]["n_points"] for f in folds)
        assert pooled[key]["n_sessions"] == sum(f[key]["n_sessions"] for f in folds)
    differences = {(d["other"], d["metric"]) for d in report["paired_differences"]}
    assert {("S-POP", "item Recall@20"), ("Last category", "category L3 Recall@5")} <= differences


def test_fold_mismatches_are_refused_in_one_line(
    folded: Path, trained: Path, tmp_path: Path
) -> None:
    def evaluate(model: Path, *options: str):
        return _run("evaluate", "--model", str(model), "--resamples", "5", *options)

    _assert_clean_failure(evaluate(folded, "--data", DATA), "holds 2 fold checkpoints", "--folds 2")
    _assert_clean_failure(
        evaluate(folded, "--data", DATA, "--folds", "3"), "holds 2 folds, not --folds 3"
    )
    other = f"{DATA},train_frac=0.5"
    _assert_clean_failure(
        evaluate(folded, "--data", other, "--folds", "2"), f"trained on {DATA};", other
    )
    # One fold's model has seen the single split's test sessions.
    _assert_clean_failure(
        evaluate(folded / "fold-1", "--data", DATA), "(fold 1 of 2)", "with --folds"
    )
    _assert_clean_failure(
        evaluate(trained, "--data", DATA, "--folds", "2"), "holds no fold checkpoints"
    )
    _assert_clean_failure(evaluate(folded, "--data", DATA, "--folds", "0"), "--folds must be >= 1")
    broken = tmp_path / "broken"
    shutil.copytree(folded, broken)
    shutil.rmtree(broken / "fold-2")
    _assert_clean_failure(evaluate(broken, "--data", DATA, "--folds", "2"), str(broken / "fold-2"))
    out = tmp_path / "m"
    _assert_clean_failure(
        _run("train", "--data", DATA, "--out", str(out), "--folds", "31"), "31 folds need"
    )
    assert not out.exists()


def test_variant_options_reach_training_and_evaluation(tmp_path: Path) -> None:
    spec = f"{DATA},max_len=4,train_frac=0.5"
    model, report_path = tmp_path / "model", tmp_path / "report.json"
    _train_quickly(model, "--set", "hidden=8", data=spec)
    dataset = load_dataset(spec)
    (split,) = protocol_splits(dataset)
    plain_train, _, _ = split_sessions(dataset.sessions)
    assert split.train == keep_first(plain_train, 0.5) and len(split.train) == 10
    expected = build_vocabularies(
        (e for s in split.train for e in s.events), 3, Taxonomy(dataset.taxonomy)
    )
    assert load_checkpoint(model).vocabularies.items == expected.items
    result = _run(
        "evaluate", "--model", str(model), "--data", spec, "--resamples", "5",
        "--json", str(report_path),
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    report = orjson.loads(report_path.read_bytes())
    assert report["sessions"] == {"train": 10, "valid": 3, "test": 6}
