"""`hup compare` (and `hup train --model`, `hup evaluate` of zoo checkpoints) end to end, and
the comparison table's cells."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from hup.cli import app
from hup.compare import _cell
from hup.evaluate import Estimate, ResultRow
from hup.zoo.registry import DISPLAY_NAMES, MODELS

DATA = "synthetic:users=30,seed=3,min_events=3,max_events=12"
ENV = {"COLUMNS": "1000"}  # rich never wraps a message across lines
SMALL = ("--set", "hidden=8", "--set", "item_dim=8", "--set", "window=5", "--set", "skipgram=false")


def _run(*args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


def _fails_cleanly(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def test_train_and_evaluate_a_zoo_model(tmp_path: Path) -> None:
    out = tmp_path / "gru4rec"
    result = _run(
        "train", "--model", "gru4rec", "--data", DATA, "--out", str(out), "--epochs", "1",
        "--set", "hidden=8", "--lr", "0.01",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "saved gru4rec-" in result.stderr
    config = orjson.loads((out / "config.json").read_bytes())
    assert config["kind"] == "zoo" and config["name"] == "gru4rec"
    assert config["model"]["hidden"] == 8 and config["model"]["learning_rate"] == 0.01
    report = tmp_path / "report.json"
    result = _run(
        "evaluate", "--model", str(out), "--data", DATA, "--resamples", "5",
        "--json", str(report),
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "| GRU4Rec | every |" in result.stdout and "| S-POP | every |" in result.stdout
    assert orjson.loads(report.read_bytes())["model_version"].startswith("gru4rec-")


def test_model_option_trains_hup_variants_too(tmp_path: Path) -> None:
    out = tmp_path / "noatt"
    result = _run(
        "train", "--model", "hup-noatt", "--data", DATA, "--out", str(out), "--epochs", "1",
        "--no-skipgram", "--set", "hidden=8",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    config = orjson.loads((out / "config.json").read_bytes())
    assert config["model"]["attention"] is False and config["model"]["hidden"] == 8
    assert config["info"]["options"]["variant"] == "hup-noatt"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--model", "pop"), ("pop", "nothing to train")),
        (("--model", "nope"), ("nope", "gru4rec", "hup-single")),
        (("--model", "gru4rec", "--variant", "hup-lstm"), ("disagree",)),
        (("--model", "word2vec", "--set", "colour=1"), ("colour",)),
        (("--model", "word2vec", "--set", "hidden"), ("KEY=VALUE",)),
    ],
)
def test_bad_train_options_exit_2(args: tuple[str, ...], fragments, tmp_path: Path) -> None:
    result = _run("train", "--data", DATA, "--out", str(tmp_path / "x"), *args)
    _fails_cleanly(result, *fragments)


def test_compare_bad_models_exit_2(tmp_path: Path) -> None:
    result = _run("compare", "--data", DATA, "--out", str(tmp_path), "--models", "pop,bogus")
    _fails_cleanly(result, "bogus")


def _compare(models: str, out: Path) -> dict:
    result = _run(
        "compare", "--data", DATA, "--models", models, "--out", str(out), "--epochs", "1",
        "--resamples", "20", *SMALL,
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.split() == [str(out / f"compare.{x}") for x in ("md", "json", "png")]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return orjson.loads((out / "compare.json").read_bytes())


def test_compare_writes_table_json_and_chart(tmp_path: Path) -> None:
    report = _compare("pop,word2vec,gru4rec,hup-noatt", tmp_path)
    names = [m["name"] for m in report["models"]]
    assert names == ["hup-noatt", "pop", "word2vec", "gru4rec"]  # HUP first: the reference
    assert all(m["fit_seconds"] >= 0 for m in report["models"])
    methods = {r["method"] for r in report["evaluation"]["results"]}
    assert methods == {"HUP-NoAtt", "POP", "Word2vec", "GRU4Rec"}
    assert {d["reference"] for d in report["evaluation"]["paired_differences"]} == {"HUP-NoAtt"}
    assert report["budget"]["epochs"] == 1 and report["budget"]["overrides"]["hidden"] == 8
    table = (tmp_path / "compare.md").read_text()
    for display in ("HUP-NoAtt", "POP", "Word2vec", "GRU4Rec"):
        assert f"| {display} |" in table
    assert "the paper's figures" in table and "paper Appliances item Recall@20" in table
    assert "| 3.1 | 0.5 | 45.0 | 24.0 |" in table  # POP, Appliances, as the paper printed it


def test_compare_all_models(tmp_path: Path) -> None:
    report = _compare("all", tmp_path)
    assert [m["name"] for m in report["models"]][0] == "hup"
    assert {m["display"] for m in report["models"]} == {DISPLAY_NAMES[n] for n in MODELS}


def test_compare_with_folds_fits_every_model_per_fold_and_pools(tmp_path: Path) -> None:
    result = _run(
        "compare", "--data", DATA, "--models", "pop,s-pop", "--out", str(tmp_path),
        "--resamples", "20", "--folds", "3",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr.count("fitting POP (fold") == 3
    report = orjson.loads((tmp_path / "compare.json").read_bytes())
    pooled = report["evaluation"]
    assert pooled["folds"] == 3 and pooled["sessions"]["test"] == 30
    assert [f["fold"] for f in report["folds"]] == [1, 2, 3]
    every = {r["method"]: r for r in pooled["results"] if r["mode"] == "every"}
    per_fold = [
        {r["method"]: r for r in f["evaluation"]["results"] if r["mode"] == "every"}
        for f in report["folds"]
    ]
    assert every["POP"]["n_points"] == sum(f["POP"]["n_points"] for f in per_fold)
    table = (tmp_path / "compare.md").read_text()
    assert "Pooled over 3 folds" in table and "## Fold 3 of 3" in table
    assert "| model | every:revisit item Recall@20 |" in table
    # Paired differences as a table, pooled first, then one per fold.
    assert table.count("| POP minus | item Recall@20 | item MRR@20 | category L3 Recall@5 |") == 4
    _fails_cleanly(
        _run("compare", "--data", DATA, "--models", "pop", "--out", str(tmp_path / "x"),
             "--folds", "31"),
        "31 folds need",
    )  # fmt: skip


def test_compare_cells_show_a_metric_a_method_lacks_as_not_applicable() -> None:
    row = ResultRow("Last category", "every", 3, 1, {"category Recall@5": Estimate(0.5, 0.4, 0.6)})
    assert _cell(row, "item Recall@20") == "–"
    assert _cell(row, "category Recall@5") == "50.00 [40.00, 60.00]"
    assert _cell(None, "item Recall@20") == "n/a"
