"""Cost of one batched model step by batch size: fixed cost per call vs cost per user.

The worker steps the model once per wave (the k-th event of every user in a batch),
so its throughput depends on how many users one call carries. For batches of 1..256
users of an untrained checkpoint with the default sizes (the cost does not depend on
the weights) this measures two things per call:

* the model step alone (`hup.incremental.step`, features computed beforehand): the
  targets of issue 11 are at most 1 ms per call at 1 user and 20 us per event at 256;
* `Profiler.apply`: the step plus the featurizer (pure Python, per event) and the
  per-event `Profile`/`Applied` objects the stream reads.

The script runs with the worker's garbage-collector settings
(`stream.startup.settle_memory`: start-up objects frozen, the young generation collected
every 50,000 allocations), so full collections do not walk the model on every batch.

Prints a table and, with ``--out``, writes the figures as JSON.

    .venv/bin/python bench/step_cost.py --out bench/results/step_cost.json
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import orjson
import torch
import typer
from rich.console import Console
from rich.table import Table

from hup.features import EventFeatures, FeatureState
from hup.hup_checkpoint import save_untrained_checkpoint
from hup.incremental import step
from hup.runtime import Profiler
from hup.sessions import Session
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy
from stream.startup import settle_memory

STEPS = 15
BATCHES = (1, 8, 64, 256)


@dataclass(frozen=True)
class StepCost:
    """Time per call of one batch size, as ms per call and us per event."""

    users: int
    step_ms_per_call: float
    step_us_per_event: float
    apply_ms_per_call: float
    apply_us_per_event: float


def _featurized(
    profiler: Profiler, sessions: list[Session], steps: int
) -> list[list[tuple[EventFeatures, FeatureState]]]:
    """Per user, the features and featurizer states of its first ``steps`` accepted events."""
    out = []
    for session in sessions:
        state, accepted = profiler.featurizer.initial_state(), []
        for event in session.events:
            state, features, _ = profiler.featurizer.apply(state, event)
            if features is not None:
                accepted.append((features, state))
            if len(accepted) == steps:
                break
        out.append(accepted)
    return out


def measure(
    profiler: Profiler,
    sessions: list[Session],
    batches: tuple[int, ...] = BATCHES,
    steps: int = STEPS,
) -> list[StepCost]:
    """Time ``steps`` calls of the step alone and of `Profiler.apply` per batch size.

    ``sessions`` must hold at least ``max(batches)`` users with ``steps`` events each
    (one warm-up call per batch size is not timed).
    """
    costs = []
    for batch in batches:
        users = sessions[:batch]
        featurized = _featurized(profiler, users, steps)
        calls = min(len(f) for f in featurized)
        # The step alone.
        states = [profiler.new_state() for _ in users]
        step(profiler.model, states, [f[0][0] for f in featurized], [f[0][1] for f in featurized])
        started = time.perf_counter()
        for k in range(calls):
            states, _ = step(
                profiler.model, states, [f[k][0] for f in featurized], [f[k][1] for f in featurized]
            )
        step_s = (time.perf_counter() - started) / calls
        # Profiler.apply (featurizer included).
        events = [list(s.events) for s in users]
        states = [profiler.new_state() for _ in users]
        profiler.apply(states, [e[0] for e in events])
        started = time.perf_counter()
        for k in range(calls):
            states = [a.state for a in profiler.apply(states, [e[k] for e in events])]
        apply_s = (time.perf_counter() - started) / calls
        costs.append(
            StepCost(
                batch, 1e3 * step_s, 1e6 * step_s / batch, 1e3 * apply_s, 1e6 * apply_s / batch
            )
        )
    return costs


def untrained_profiler(users: int, steps: int = STEPS) -> tuple[Profiler, list[Session]]:
    """An untrained default-size model and ``users`` synthetic users of ``steps`` events."""
    dataset = generate(SyntheticConfig(users=users, seed=0, min_events=steps, max_events=steps))
    assert dataset.taxonomy is not None
    with tempfile.TemporaryDirectory() as tmp:
        events = [e for s in dataset.sessions for e in s.events]
        save_untrained_checkpoint(Path(tmp), events, Taxonomy(dataset.taxonomy))
        profiler = Profiler.load(Path(tmp))
    return profiler, list(dataset.sessions)


def table(costs: list[StepCost]) -> Table:
    """The figures as one table."""
    out = Table(title="one model step by users per call, torch 1 thread")
    for column in (
        "users per call",
        "step: ms per call",
        "step: us per event",
        "apply: ms per call",
        "apply: us per event",
    ):
        out.add_column(column, justify="right")
    for c in costs:
        out.add_row(
            str(c.users),
            f"{c.step_ms_per_call:.2f}",
            f"{c.step_us_per_event:,.1f}",
            f"{c.apply_ms_per_call:.2f}",
            f"{c.apply_us_per_event:,.1f}",
        )
    return out


def main(
    out: Annotated[Path | None, typer.Option(help="Write the figures as JSON here")] = None,
) -> None:
    """Time the step and `Profiler.apply` for each batch size; print the table."""
    torch.set_num_threads(1)
    profiler, sessions = untrained_profiler(max(BATCHES))
    settle_memory()
    costs = measure(profiler, sessions)
    Console().print(table(costs))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps([asdict(c) for c in costs], option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    typer.run(main)
