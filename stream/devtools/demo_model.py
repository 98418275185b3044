"""The demo's model: reuse a finished checkpoint directory, or train a small one with progress."""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hup.data import load_dataset
from hup.sessions import split_sessions

__all__ = ["ensure_model", "evaluate_model", "keep_freed_memory"]

# The evaluation table the demo prints, kept beside the checkpoint it describes.
EVALUATION_FILE = "evaluation.md"

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the kernel at once.

    Training allocates and frees the same large tensors every step. By default glibc
    serves them with mmap and unmaps them when freed, so each step faults them in again
    page by page: 15 M minor page faults in one epoch of synthetic:users=100, with
    system time 60 % of the CPU time. Keeping the memory made that epoch 2.5x faster
    (65 -> 26 s) with identical results. Returns whether glibc took the settings.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return all(
            libc.mallopt(param, value) == 1
            for param, value in (
                (_M_MMAP_THRESHOLD, 32 << 20),  # glibc's maximum: 32 MiB
                (_M_TRIM_THRESHOLD, 1 << 30),
                (_M_TOP_PAD, 256 << 20),
            )
        )
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False


def ensure_model(
    model_dir: Path, train_data: str, epochs: int, console: Console, say: Callable[[str], None]
) -> Path:
    """Return ``model_dir``, training into it first unless it holds a finished checkpoint.

    A checkpoint is finished when its VERSION file exists: `save_checkpoint` writes it last,
    so an interrupted training is redone rather than reused.
    """
    version_file = model_dir / "VERSION"
    if version_file.is_file():
        say(f"model: reusing {model_dir} ({version_file.read_text().strip()})")
        evaluation = model_dir / EVALUATION_FILE
        if evaluation.is_file():
            say(f"model: its evaluation on the test split ({evaluation})")
            console.print(evaluation.read_text(), markup=False, highlight=False, soft_wrap=True)
        return model_dir
    # torch-heavy imports, only when training.
    from hup.train import TrainOptions, train_model
    from hup.vocab import Taxonomy

    say(f"model: training on {train_data}, {epochs} epochs ...")
    keep_freed_memory()
    started = time.perf_counter()
    dataset = load_dataset(train_data)
    train, valid, _ = split_sessions(dataset.sessions)
    taxonomy = Taxonomy(dataset.taxonomy) if dataset.taxonomy else None
    with Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("epoch 1", total=None)
        epoch = [1]

        def on_batch(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=f"epoch {epoch[0]}")

        def on_epoch(record: dict[str, float]) -> None:
            say(
                f"  epoch {int(record['epoch'])}: loss {record['loss']:.3f}, "
                f"valid item Recall@20 {100 * record['valid_recall20']:.1f} %, "
                f"{record['seconds']:.0f} s"
            )
            epoch[0] += 1
            progress.reset(task)

        checkpoint, _ = train_model(
            train,
            valid,
            TrainOptions(epochs=epochs, patience=epochs, data=train_data),
            taxonomy=taxonomy,
            out=model_dir,
            progress=on_batch,
            on_epoch=on_epoch,
        )
    say(f"model: saved {checkpoint.version} to {model_dir} ({time.perf_counter() - started:.0f} s)")
    say("model: evaluating on the test split (the protocol of `hup evaluate`) ...")
    table = evaluate_model(model_dir, train_data)
    console.print(table, markup=False, highlight=False, soft_wrap=True)
    return model_dir


def evaluate_model(model_dir: Path, data: str, resamples: int = 200) -> str:
    """What ``hup evaluate --model model_dir --data data`` prints, also saved beside the model.

    The demo shows it so that a first run ends with the offline figures of the model the
    stream then serves, against POP, S-POP, Item-KNN and "last category".
    """
    from hup.baselines import protocol_baselines
    from hup.evaluate import evaluate, to_markdown
    from hup.zoo.registry import load_recommender, recommender_taxonomy

    recommender, _, _ = load_recommender(model_dir)
    train, valid, test = split_sessions(load_dataset(data).sessions)
    report = evaluate(
        [recommender, *protocol_baselines()],
        train,
        valid,
        test,
        n_resamples=resamples,
        command=f"hup evaluate --model {model_dir} --data {data} --resamples {resamples}",
        taxonomy=recommender_taxonomy(recommender),
    )
    table = to_markdown(report)
    (model_dir / EVALUATION_FILE).write_text(table + "\n")
    return table
