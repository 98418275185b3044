"""`hup`: train, evaluate and export the event schema, from the command line."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hup.baselines import POP, ItemKNN, Recommender, SPop
from hup.checkpoint import load_checkpoint
from hup.config import VARIANTS
from hup.data import Dataset, load_dataset, split_sessions
from hup.evaluate import evaluate as run_evaluation
from hup.evaluate import to_json, to_markdown
from hup.exceptions import HupError
from hup.recommender import HupRecommender
from hup.schema import event_json_schema
from hup.train import TrainOptions, train_model
from hup.vocab import Taxonomy

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
err = Console(stderr=True)
logger = logging.getLogger("hup")


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code=2)


def _load(data: str, taxonomy: Path | None) -> tuple[Dataset, Taxonomy | None]:
    dataset = load_dataset(data)
    if taxonomy is not None:
        return dataset, Taxonomy.load(taxonomy)
    return dataset, Taxonomy(dataset.taxonomy) if dataset.taxonomy else None


DataOption = Annotated[
    str, typer.Option("--data", help="jd:PATH[,PATH] or synthetic:users=N,seed=S[,key=value]")
]
TaxonomyOption = Annotated[
    Path | None, typer.Option(help="Leaf -> ancestors file (lines coarse/.../leaf); K=1 without")
]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """HUP: hierarchical user profiles from micro-behaviours."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its INFO is per-epoch chatter


@app.command()
def train(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write")],
    variant: Annotated[str, typer.Option(help=f"One of {', '.join(VARIANTS)}")] = "hup",
    epochs: int = TrainOptions.epochs,
    batch_size: int = TrainOptions.batch_size,
    lr: float = TrainOptions.learning_rate,
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
        float, typer.Option(help="Weight of the auxiliary softmax loss; 0 = the paper's loss only")
    ] = TrainOptions.softmax_weight,
    min_item_count: int = TrainOptions.min_item_count,
    taxonomy: TaxonomyOption = None,
) -> None:
    """Train on the protocol's train split; the validation split picks the epoch."""
    if device not in ("cpu", "cuda"):
        raise _fail(f"--device must be cpu or cuda, got {device!r}")
    if variant not in VARIANTS:
        raise _fail(f"--variant {variant!r} is unknown; choose from {', '.join(VARIANTS)}")
    try:
        dataset, tax = _load(data, taxonomy)
    except (HupError, OSError) as exc:
        raise _fail(str(exc)) from exc
    train_sessions, valid_sessions, _ = split_sessions(dataset.sessions)
    options = TrainOptions(
        variant=variant,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        patience=patience,
        seed=seed,
        device=device,
        window=window,
        skipgram=skipgram,
        freeze_items=freeze_items,
        softmax_weight=softmax_weight,
        min_item_count=min_item_count,
        data=data,
    )
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
                f"epoch {int(record['epoch'])}: loss {record['loss']:.4f}, "
                f"valid item Recall@20 {100 * record['valid_recall20']:.2f} %, "
                f"{record['seconds']:.0f} s"
            )
            progress.reset(task)

        checkpoint, _ = train_model(
            train_sessions,
            valid_sessions,
            options,
            taxonomy=tax,
            out=out,
            progress=on_batch,
            on_epoch=on_epoch,
        )
    err.print(
        f"saved {checkpoint.version} to {out} "
        f"(best epoch {checkpoint.info['best_epoch']}, {time.perf_counter() - started:.0f} s)"
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
    baselines: Annotated[bool, typer.Option(help="Also run POP, S-POP and Item-KNN")] = True,
    taxonomy: TaxonomyOption = None,
) -> None:
    """Evaluate on the test split by the protocol (../shared/docs/evaluation.md)."""
    try:
        checkpoint = load_checkpoint(model)
        dataset, _ = _load(data, taxonomy)
    except (HupError, OSError) as exc:
        raise _fail(str(exc)) from exc
    trained_on = checkpoint.info.get("options", {}).get("data")
    if trained_on and trained_on != data:
        # The protocol ranks over the training split's vocabulary, which is the model's
        # only when it was trained on the same data.
        raise _fail(
            f"{model} was trained on {trained_on}; evaluate it on the same --data "
            f"(got {data}), whose test split it has not seen"
        )
    train_sessions, valid_sessions, test_sessions = split_sessions(dataset.sessions)
    recommenders: list[Recommender] = [
        HupRecommender(_variant_name(checkpoint), checkpoint=checkpoint)
    ]
    if baselines:
        recommenders += [POP(), SPop(), ItemKNN()]
    command = "hup " + shlex.join(sys.argv[1:])
    report = run_evaluation(
        recommenders,
        train_sessions,
        valid_sessions,
        test_sessions,
        seed=seed,
        n_resamples=resamples,
        command=command,
    )
    typer.echo(to_markdown(report))
    if json_out is not None:
        payload = to_json(report)
        payload["model_version"] = checkpoint.version
        payload["training"] = checkpoint.info
        json_out.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))


def _variant_name(checkpoint: object) -> str:
    info = getattr(checkpoint, "info", {})
    return str(info.get("options", {}).get("variant", "hup")).upper()


@app.command()
def schema(
    out: Annotated[Path, typer.Option(help="Where to write events.schema.json")] = Path("."),
) -> None:
    """Write the JSON Schema of the input events (both kinds)."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / "events.schema.json"
    target.write_bytes(
        orjson.dumps(event_json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )
    typer.echo(str(target))
