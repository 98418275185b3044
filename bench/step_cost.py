"""Cost of one batched model step by batch size: fixed cost per call vs cost per user.

The worker steps the model once per wave (the k-th event of every user in a batch),
so its throughput depends on how many users one call carries. This prints ms per call
and microseconds per event for batches of 1..256 users of an untrained checkpoint
with the default sizes (the cost does not depend on the weights).

    .venv/bin/python bench/step_cost.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hup.checkpoint import save_untrained_checkpoint
from hup.runtime import Profiler
from hup.synthetic import SyntheticConfig, generate
from hup.vocab import Taxonomy

STEPS = 15
BATCHES = (1, 8, 64, 256)


def main() -> None:
    """Time `Profiler.apply` for each batch size and print the table."""
    torch.set_num_threads(1)
    dataset = generate(
        SyntheticConfig(users=max(BATCHES), seed=0, min_events=STEPS, max_events=STEPS)
    )
    assert dataset.taxonomy is not None
    with tempfile.TemporaryDirectory() as tmp:
        events = [e for s in dataset.sessions for e in s.events]
        save_untrained_checkpoint(Path(tmp), events, Taxonomy(dataset.taxonomy))
        profiler = Profiler.load(Path(tmp))
    table = Table(title="one model step (Profiler.apply), torch 1 thread")
    for column in ("users per call", "ms per call", "us per event", "events/s"):
        table.add_column(column, justify="right")
    for batch in BATCHES:
        users = [list(s.events) for s in dataset.sessions[:batch]]
        states = [profiler.new_state() for _ in users]
        started = time.perf_counter()
        for k in range(STEPS):
            states = [a.state for a in profiler.apply(states, [u[k] for u in users])]
        elapsed = time.perf_counter() - started
        table.add_row(
            str(batch),
            f"{1000 * elapsed / STEPS:.2f}",
            f"{1e6 * elapsed / (STEPS * batch):.0f}",
            f"{STEPS * batch / elapsed:,.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
