"""`hup`: train, evaluate and compare models and export the event schema, from the command line."""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import orjson
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hup.baselines import protocol_baselines
from hup.compare import run_comparison, write_comparison
from hup.config import VARIANTS
from hup.data import load_dataset
from hup.evaluate import evaluate as run_evaluation
from hup.evaluate import folded_json, folded_markdown, to_json, to_markdown
from hup.exceptions import HupError, MissingExtraError
from hup.extras import require
from hup.folds import (
    check_fold_manifest,
    evaluate_fold_checkpoints,
    fold_data,
    fold_dir,
    read_fold_manifest,
    write_fold_manifest,
)
from hup.hup_checkpoint import Checkpoint
from hup.peers import peer_baselines
from hup.recommender_contract import Recommender
from hup.schema import write_event_schema
from hup.sessions import Dataset
from hup.splits import Split, protocol_splits
from hup.train import TrainOptions, train_model
from hup.vocab import Taxonomy
from hup.zoo.fit import FitOptions, fit_zoo
from hup.zoo.registry import (
    MODELS,
    ZOO_CLASSES,
    kind_of,
    load_recommender,
    recommender_taxonomy,
    resolve,
    settings_of,
)
from hup.zoo.zoo_checkpoint import ZooCheckpoint

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
err = Console(stderr=True)
logger = logging.getLogger("hup")


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code=2)


def _check_device(device: str) -> None:
    """Fail cleanly on a device torch cannot use, before any data is read."""
    if device not in ("cpu", "cuda"):
        raise _fail(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise _fail("--device cuda: torch sees no CUDA device on this machine (use --device cpu)")


def _load(data: str, taxonomy: Path | None) -> tuple[Dataset, Taxonomy | None]:
    dataset = load_dataset(data)
    if taxonomy is not None:
        return dataset, Taxonomy.load(taxonomy)
    return dataset, Taxonomy(dataset.taxonomy) if dataset.taxonomy else None


def _splits(dataset: Dataset, folds: int | None) -> list[Split]:
    """The protocol's splits, or one clean error line (bad K)."""
    if folds is not None and folds < 1:
        raise _fail(f"--folds must be >= 1, got {folds}")
    try:
        return protocol_splits(dataset, folds)
    except ValueError as exc:
        raise _fail(f"--folds {folds}: {exc}") from exc


def _settings(pairs: list[str] | None, names: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs (JSON values, else strings), each known to one of ``names``."""
    settings: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--set {pair!r} is not KEY=VALUE")
        try:
            settings[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            settings[key.strip()] = raw
    known = set().union(*(settings_of(n) for n in names)) if names else set()
    unknown = sorted(set(settings) - known)
    if unknown:
        raise _fail(f"--set {', '.join(unknown)}: no such setting of {', '.join(names)}")
    return settings


DataOption = Annotated[
    str,
    typer.Option(
        "--data",
        help="jd:PATH[,PATH] or synthetic:users=N,seed=S[,key=value]; either may add "
        "max_len=N (sessions cut to N micro-behaviours) and train_frac=F (first part of "
        "every training set)",
    ),
]
FoldsOption = Annotated[
    int | None,
    typer.Option(
        help="K rotations of the split (docs/evaluation.md, Folds); default: the single "
        "70/10/20 split"
    ),
]
TaxonomyOption = Annotated[
    Path | None, typer.Option(help="Leaf -> ancestors file (lines coarse/.../leaf); K=1 without")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="KEY=VALUE: a model hyper-parameter (config field); repeatable"),
]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """HUP: hierarchical user profiles from micro-behaviours."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its INFO is per-epoch chatter
    # One thread by default: the models' matrices are small, and a second thread on a busy
    # 2-core machine made training steps ten times slower (measured); HUP_TORCH_THREADS sets it.
    threads = os.environ.get("HUP_TORCH_THREADS", "1")
    if not threads.isdigit() or int(threads) < 1:
        raise _fail(f"HUP_TORCH_THREADS must be a whole number >= 1, got {threads!r}")
    torch.set_num_threads(int(threads))


@app.command()
def train(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write")],
    model: Annotated[
        str | None, typer.Option(help=f"One of {', '.join(MODELS)} (default: --variant)")
    ] = None,
    variant: Annotated[str, typer.Option(help=f"One of {', '.join(VARIANTS)}")] = "hup",
    epochs: int = TrainOptions.epochs,
    batch_size: int = TrainOptions.batch_size,
    lr: Annotated[
        float | None,
        typer.Option(
            help=f"Learning rate (default: HUP {TrainOptions.learning_rate}, else the model's)"
        ),
    ] = None,
    patience: int = TrainOptions.patience,
    seed: int = TrainOptions.seed,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = TrainOptions.device,
    window: Annotated[int, typer.Option(help="Attention window W")] = TrainOptions.window,
    skipgram: Annotated[
        bool, typer.Option(help="Initialise item embeddings by skip-gram on the training sessions")
    ] = TrainOptions.skipgram,
    freeze_items: Annotated[
        bool, typer.Option(help="Keep item embeddings fixed (the authors' setting)")
    ] = TrainOptions.freeze_items,
    softmax_weight: Annotated[
        float,
        typer.Option(
            help="Weight of the auxiliary softmax loss; 0 = the paper's loss only (the "
            "default), 1 = what the README's runs use (docs/model.md)"
        ),
    ] = TrainOptions.softmax_weight,
    softmax_negatives: Annotated[
        int,
        typer.Option(help="Sampled negatives per batch of that softmax; 0 = the full vocabulary"),
    ] = TrainOptions.softmax_negatives,
    min_item_count: Annotated[
        int, typer.Option(help="Training skus seen fewer times map to the OOV id")
    ] = TrainOptions.min_item_count,
    min_category_count: Annotated[
        int, typer.Option(help="Likewise for the categories of each level")
    ] = TrainOptions.min_category_count,
    taxonomy: TaxonomyOption = None,
    set_: SetOption = None,
    folds: FoldsOption = None,
    only_fold: Annotated[
        int | None,
        typer.Option(
            help="With --folds K: train fold N only (1..K), e.g. to run folds in parallel"
        ),
    ] = None,
) -> None:
    """Train on the protocol's train split; the validation split picks the epoch.

    With ``--folds K``, one model per fold into ``OUT/fold-1`` .. ``OUT/fold-K``, and
    ``OUT/folds.json`` naming the data and K (what `hup evaluate --folds K` checks).
    """
    if only_fold is not None and (folds is None or not 1 <= only_fold <= folds):
        raise _fail(f"--only-fold {only_fold} needs --folds K with 1 <= {only_fold} <= K")
    _check_device(device)
    if softmax_weight < 0 or softmax_negatives < 0:
        raise _fail("--softmax-weight and --softmax-negatives must be >= 0")
    if min_item_count < 1 or min_category_count < 1:
        raise _fail("--min-item-count and --min-category-count must be >= 1")
    name = (model or variant).lower()
    if model is None and name not in VARIANTS:
        raise _fail(f"--variant {variant!r} is unknown; choose from {', '.join(VARIANTS)}")
    if model is not None and variant != "hup" and name != variant:
        raise _fail(f"--model {model} and --variant {variant} disagree; give one")
    if name not in MODELS:
        raise _fail(f"--model {model!r} is unknown; choose from {', '.join(MODELS)}")
    if kind_of(name) == "baseline":
        raise _fail(f"{name} has nothing to train; `hup evaluate` and `hup compare` fit it")
    settings = _settings(set_, [name])
    try:
        dataset, tax = _load(data, taxonomy)
    except (HupError, OSError) as exc:
        raise _fail(str(exc)) from exc
    splits = _splits(dataset, folds)
    run_options: FitOptions | TrainOptions
    if kind_of(name) == "zoo":
        budget = FitOptions(
            epochs=epochs,
            patience=patience,
            batch_size=batch_size,
            seed=seed,
            device=device,
            min_item_count=min_item_count,
            min_category_count=min_category_count,
            data=data,
            overrides={**settings, **({} if lr is None else {"learning_rate": lr})},
        )
        run_options = budget
    else:
        hup_fields = {f.name for f in dataclasses.fields(TrainOptions)}
        options = TrainOptions(
            variant=name,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=TrainOptions.learning_rate if lr is None else lr,
            patience=patience,
            seed=seed,
            device=device,
            window=window,
            skipgram=skipgram,
            freeze_items=freeze_items,
            softmax_weight=softmax_weight,
            softmax_negatives=softmax_negatives,
            min_item_count=min_item_count,
            min_category_count=min_category_count,
            data=data,
        )
        options = dataclasses.replace(
            options,
            **{k: v for k, v in settings.items() if k in hup_fields},
            model_overrides={k: v for k, v in settings.items() if k not in hup_fields},
        )
        run_options = options
    for split in splits:
        if only_fold is not None and split.fold != only_fold:
            continue
        target, label = out, data
        if len(splits) > 1:
            target = fold_dir(out, split.fold)
            label = fold_data(data, split.fold, split.n_folds)
            err.print(f"fold {split.fold} of {split.n_folds}: training into {target}")
        fit: Callable[..., tuple[Checkpoint | ZooCheckpoint, list[dict[str, float]]]]
        if isinstance(run_options, FitOptions):
            budget = dataclasses.replace(run_options, data=label)
            fit = partial(fit_zoo, ZOO_CLASSES[name], split.train, split.valid, budget, tax, target)
        else:
            options = dataclasses.replace(run_options, data=label)
            fit = partial(train_model, split.train, split.valid, options, tax, target)
        _fit_with_progress(fit, target)
    if len(splits) > 1:
        manifest = write_fold_manifest(out, data, splits)
        written = 1 if only_fold is not None else len(splits)
        err.print(f"wrote {written} fold checkpoint(s) and {manifest}")


def _fit_with_progress(
    fit: Callable[..., tuple[Checkpoint | ZooCheckpoint, list[dict[str, float]]]], out: Path
) -> None:
    """Run one training with a progress bar and per-epoch validation lines."""
    started = time.perf_counter()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("training", total=None)

        def on_batch(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        def on_epoch(record: dict[str, float]) -> None:
            err.print(
                f"epoch {int(record['epoch'])}: loss {record['loss']:.4f}, valid item "
                f"Recall@20 {100 * record['valid_recall20']:.2f} % "
                f"MRR@20 {100 * record['valid_mrr20']:.2f} %, category Recall@5 "
                f"{100 * record['valid_category_recall5']:.2f} %, {record['seconds']:.0f} s"
            )
            progress.reset(task)

        try:
            checkpoint, _ = fit(progress=on_batch, on_epoch=on_epoch)
        except MissingExtraError as exc:  # skip-gram needs gensim (extra "train")
            raise _fail(str(exc)) from None
    err.print(
        f"saved {checkpoint.version} to {out} "
        f"(best epoch {checkpoint.info['best_epoch']}, {time.perf_counter() - started:.0f} s; "
        f"{checkpoint.info['clamped_gaps']} training events with out-of-order timestamps, "
        "gaps clamped to 0)"
    )
    below = checkpoint.info.get("below_s_pop")
    if below:
        s_pop = checkpoint.info["valid_s_pop"]
        err.print(
            "[bold yellow]warning:[/] the model is below S-POP (the session's own items, "
            "most recent first) on validation: "
            + ", ".join(f"{key} S-POP {100 * s_pop[key]:.2f} %" for key in below)
        )


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Checkpoint directory from `hup train`")],
    data: DataOption,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON")
    ] = None,
    seed: int = 0,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples")] = 1000,
    baselines: Annotated[
        bool,
        typer.Option(help='Also run POP, S-POP, Item-KNN, "last category", V-SKNN and STAN'),
    ] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda: where the model is loaded")] = "cpu",
    taxonomy: Annotated[
        Path | None,
        typer.Option(
            help="Optional check: the checkpoint's taxonomy is always used; a different file "
            "is an error"
        ),
    ] = None,
    folds: FoldsOption = None,
) -> None:
    """Evaluate on the test split by the protocol (../shared/docs/evaluation.md).

    Sessions are expanded through the taxonomy the model was trained with (saved in its
    checkpoint), so the model and the baselines rank the same category levels. With
    ``--folds K``, MODEL is a directory from `hup train --folds K`: fold k's model is
    evaluated on fold k's test block, with per-fold and pooled figures.
    """
    _check_device(device)
    if _folded(model, folds):
        _evaluate_folds(
            model, data, folds or 1, json_out, seed, resamples, baselines, device, taxonomy
        )
        return
    try:
        recommender, version, info = load_recommender(model, device)
        given = Taxonomy.load(taxonomy) if taxonomy is not None else None
        dataset = load_dataset(data)
    except (HupError, OSError) as exc:
        raise _fail(str(exc)) from exc
    model_taxonomy = recommender_taxonomy(recommender)
    if taxonomy is not None and given != model_taxonomy:
        trained_with = "without a taxonomy" if model_taxonomy is None else "with another taxonomy"
        raise _fail(
            f"--taxonomy {taxonomy}: {model} was trained {trained_with}, and evaluation uses "
            "the checkpoint's; drop the option"
        )
    trained_on = info.get("options", {}).get("data")
    if trained_on and trained_on != data:
        # The protocol ranks over the training split's vocabulary, which is the model's
        # only when it was trained on the same data.
        unseen = "whose test split it has not seen"
        if trained_on.startswith(f"{data} (fold "):
            unseen = "one fold of a fold directory: evaluate the directory with --folds"
        raise _fail(
            f"{model} was trained on {trained_on}; evaluate it on the same --data "
            f"(got {data}), {unseen}"
        )
    (split,) = protocol_splits(dataset)
    recommenders: list[Recommender] = [recommender]
    if baselines:
        recommenders += [*protocol_baselines(), *peer_baselines()]
    command = "hup " + shlex.join(sys.argv[1:])
    report = run_evaluation(
        recommenders,
        split.train,
        split.valid,
        split.test,
        seed=seed,
        n_resamples=resamples,
        command=command,
        taxonomy=model_taxonomy,
    )
    typer.echo(to_markdown(report))
    if json_out is not None:
        payload = to_json(report)
        payload["model_version"] = version
        payload["training"] = info
        json_out.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))


def _folded(model: Path, folds: int | None) -> bool:
    """Whether to evaluate fold checkpoints; a fold directory without --folds is refused."""
    if folds is not None and folds < 1:
        raise _fail(f"--folds must be >= 1, got {folds}")
    try:
        manifest = read_fold_manifest(model)
    except HupError as exc:
        raise _fail(str(exc)) from exc
    if manifest is not None and (folds or 1) == 1:
        raise _fail(
            f"{model} holds {manifest['folds']} fold checkpoints; evaluate them with "
            f"--folds {manifest['folds']}"
        )
    return (folds or 1) > 1


def _evaluate_folds(
    model: Path,
    data: str,
    folds: int,
    json_out: Path | None,
    seed: int,
    resamples: int,
    baselines: bool,
    device: str,
    taxonomy: Path | None,
) -> None:
    """`hup evaluate --folds K`: per-fold and pooled tables (and JSON) of fold checkpoints."""
    try:
        check_fold_manifest(model, data, folds)
        given = Taxonomy.load(taxonomy) if taxonomy is not None else None
        dataset = load_dataset(data)
    except (HupError, OSError) as exc:
        raise _fail(str(exc)) from exc
    splits = _splits(dataset, folds)
    try:
        report, models = evaluate_fold_checkpoints(
            model,
            data,
            splits,
            device=device,
            baselines=baselines,
            given_taxonomy=given,
            seed=seed,
            n_resamples=resamples,
            command="hup " + shlex.join(sys.argv[1:]),
        )
    except (HupError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(folded_markdown(report))
    if json_out is not None:
        payload = folded_json(report)
        payload["model_versions"] = [m["model_version"] for m in models]
        for entry, found in zip(payload["per_fold"], models, strict=True):
            entry.update(model_version=found["model_version"], training=found["training"])
        json_out.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))


@app.command()
def compare(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Directory for compare.md, compare.json, compare.png")],
    models: Annotated[
        str, typer.Option(help=f"all, or comma-separated names of: {', '.join(MODELS)}")
    ] = "all",
    epochs: Annotated[
        int, typer.Option(help="Max epochs, every learned model")
    ] = FitOptions.epochs,
    patience: int = FitOptions.patience,
    batch_size: int = FitOptions.batch_size,
    seed: Annotated[int, typer.Option(help="Training and bootstrap seed")] = FitOptions.seed,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = FitOptions.device,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples")] = 1000,
    taxonomy: TaxonomyOption = None,
    set_: SetOption = None,
    folds: FoldsOption = None,
) -> None:
    """Train every chosen model with its defaults under one budget, evaluate all on the same points.

    With ``--folds K`` every model is trained on each fold; per-fold and pooled tables.
    """
    _check_device(device)
    try:
        names = resolve(models)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    try:
        # The chart comes last, after hours of training: check for matplotlib first.
        require("matplotlib.figure", "train", "the chart of hup compare")
    except MissingExtraError as exc:
        raise _fail(str(exc)) from None
    options = FitOptions(
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        seed=seed,
        device=device,
        data=data,
        overrides=_settings(set_, names),
    )
    try:
        dataset, tax = _load(data, taxonomy)
    except (HupError, OSError) as exc:
        raise _fail(str(exc)) from exc
    _splits(dataset, folds)  # a bad K fails here, in one line, before any training
    comparison = run_comparison(
        names,
        dataset,
        options,
        tax,
        seed=seed,
        n_resamples=resamples,
        command="hup " + shlex.join(sys.argv[1:]),
        on_fit=lambda name: err.print(f"fitting {name}"),
        folds=folds,
    )
    for path in write_comparison(comparison, out):
        typer.echo(str(path))


@app.command()
def schema(
    out: Annotated[Path, typer.Option(help="Where to write events.schema.json")] = Path("."),
) -> None:
    """Write the JSON Schema of the input events (both kinds)."""
    typer.echo(str(write_event_schema(out)))
