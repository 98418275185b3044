"""Chaos replay: random SIGKILLs and a 1 -> 3 -> 1 rebalance, every profile checked.

Against the embedded broker (or ``KAFKA_BOOTSTRAP_SERVERS``), E synthetic events are
published in chunks while workers (``python -m stream.worker``, one consumer group)
consume them. Between chunks one fault happens:

- K times, a random running worker is SIGKILLed once it has made progress, and
  restarted at once; every ``--wipe-every``-th restart gets an empty data directory,
  so its state comes back from the changelog;
- once, in the middle, two more workers join (1 -> 3) and, a chunk later, leave
  again with SIGTERM (3 -> 1); kills in between may hit any of the three.

Then the output topic is read whole and compared with the offline forward pass over
each user's events (the integration tests' harness): every (user, seq) must be
published (``lost``), no seq may exceed the user's events (``applied twice``), a
profile published again must be the same (``repeats``, ``repeats differing``), and
every profile must equal the reference (``max difference``).

Prints one table and writes JSON. The model is a small untrained one (hidden 16,
window 8): the run checks delivery, not accuracy.

    .venv/bin/python bench/chaos.py                          # 100,000 events, 20 kills
    .venv/bin/python bench/chaos.py --events 5000 --kills 3  # a quick check
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
import torch
import typer
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))  # the integration tests' harness

from harness import (  # noqa: E402
    TOLERANCE,
    Reader,
    Reference,
    WorkerProcess,
    assert_same_republish,
    create_topics,
    event_bytes,
    offline_reference,
    produce,
    ranking_agreements,
    score_diff,
    vector_diff,
    wait_ready,
    worker_env,
)

from hup.hup_checkpoint import save_untrained_checkpoint  # noqa: E402
from hup.runtime import Profiler  # noqa: E402
from hup.schema import Event  # noqa: E402
from hup.sessions import Session, iter_events  # noqa: E402
from hup.synthetic import SyntheticConfig, generate  # noqa: E402
from hup.vocab import Taxonomy  # noqa: E402
from stream.devtools.broker import start_broker  # noqa: E402

log = logging.getLogger("chaos")
console = Console()

WIDTH = 3  # workers at the peak of the rebalance
SEED_USERS_PER_EVENT = 1 / 60  # synthetic users per wanted event (sessions of 20..100 events)


@dataclass
class Figures:
    """What one run found; written as JSON."""

    events: int
    users: int
    kills: int
    wiped_restarts: int
    rebalance: str
    profiles_expected: int
    published: int
    lost: int
    applied_twice: int
    repeats: int
    repeats_differing: int
    max_difference: float
    rankings_differing: int
    rankings_tie_order: int
    mismatches: list[dict[str, Any]]
    tolerance: float
    seconds: float
    seed: int
    bootstrap: str
    command: str
    kill_log: list[str] = field(default_factory=list)


def make_events(n_events: int, seed: int) -> tuple[list[Event], Taxonomy, list[Session]]:
    """``n_events`` synthetic events in producer order, and their sessions by user."""
    users = max(3, math.ceil(n_events * SEED_USERS_PER_EVENT))
    dataset = generate(SyntheticConfig(users=users, seed=seed, min_events=20, max_events=100))
    assert dataset.taxonomy is not None
    events = list(iter_events(dataset.sessions))[:n_events]
    per_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        per_user[event.user_id].append(event)
    sessions = [Session(user, user, tuple(evs)) for user, evs in per_user.items()]
    return events, Taxonomy(dataset.taxonomy), sessions


def check(messages: Sequence[tuple[bytes | None, bytes]], reference: Reference) -> dict[str, Any]:
    """Lost, applied twice, repeats, rankings unlike the offline pass, the largest difference.

    A profile whose ``top_items`` or ``top_categories`` differ from the reference's
    (`harness.ranking_agreement`) is counted, so one such profile does not hide the rest
    of the run's figures, and the first `MISMATCHES_KEPT` are described in
    ``mismatches``. Rankings whose order differs only among scores tied within
    `TOLERANCE` count in ``rankings_tie_order``.
    """
    first: dict[tuple[str, int], dict] = {}
    repeats = differing = twice = 0
    worst = 0.0
    mismatches: list[dict[str, Any]] = []
    tie_orders = 0
    for _, value in messages:
        message = orjson.loads(value)
        user, seq = message["user_id"], message["seq"]
        expected = reference.profiles.get(user, [])
        if not 1 <= seq <= len(expected):
            twice += 1  # a seq beyond the user's events: an event was applied twice
            continue
        reference_profile = expected[seq - 1]
        agreements = ranking_agreements(message, reference_profile).values()
        if "differs" in agreements:
            mismatch = ranking_mismatch(message, reference_profile)
            worst = max(worst, mismatch["vector_difference"])
            mismatches.append(mismatch)
        else:
            worst = max(
                worst,
                vector_diff(message, reference_profile),
                score_diff(message, reference_profile),
            )
            tie_orders += "tie_order" in agreements
        if (user, seq) not in first:
            first[(user, seq)] = message
            continue
        repeats += 1
        try:
            assert_same_republish(message, first[(user, seq)], TOLERANCE)
        except AssertionError:
            differing += 1
    wanted = {(u, n) for u, p in reference.profiles.items() for n in range(1, len(p) + 1)}
    return {
        "lost": len(wanted - set(first)),
        "applied_twice": twice,
        "repeats": repeats,
        "repeats_differing": differing,
        "max_difference": worst,
        "rankings_differing": len(mismatches),
        "rankings_tie_order": tie_orders,
        "mismatches": mismatches[:MISMATCHES_KEPT],
    }


MISMATCHES_KEPT = 10
"""Differing rankings described in the JSON result."""


def ranking_mismatch(message: dict, expected: dict[str, Any]) -> dict[str, Any]:
    """One profile whose ranked ids differ from the offline pass: both rankings and scores."""
    rankings = {
        key: {
            "published": [(c["id"], c["score"]) for c in message[key]],
            "offline": [(i, float(s)) for i, s in expected[key]],
        }
        for key in ("top_items", "top_categories")
    }
    return {
        "user_id": message["user_id"],
        "seq": message["seq"],
        **rankings,
        "vector_difference": vector_diff(message, expected),
    }


class Progress:
    """Each user's highest published seq, updated from the reader's new messages only."""

    def __init__(self, wanted: dict[str, int]) -> None:
        """Track ``wanted``: user -> profiles expected."""
        self.wanted = wanted
        self.latest: dict[str, int] = defaultdict(int)
        self._read = 0

    def done(self, messages: list[tuple[bytes | None, bytes]]) -> bool:
        """Whether every user's last profile has been published."""
        for _, value in messages[self._read :]:
            message = orjson.loads(value)
            user = message["user_id"]
            self.latest[user] = max(self.latest[user], message["seq"])
        self._read = len(messages)
        return all(self.latest[u] >= n for u, n in self.wanted.items())


def run(
    n_events: int,
    n_kills: int,
    seed: int,
    wipe_every: int,
    workdir: Path,
    bootstrap: str,
    drain_timeout: float,
    ready_timeout: float,
) -> Figures:
    """One chaos replay; returns its figures."""
    started = time.monotonic()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    events, taxonomy, sessions = make_events(n_events, seed)
    model = workdir / "model"
    save_untrained_checkpoint(model, events, taxonomy, seed=seed, hidden=16, window=8)
    profiler = Profiler.load(model)
    console.print(f"offline reference over {len(events):,} events of {len(sessions):,} users ...")
    reference = offline_reference(profiler, sessions)
    total = reference.count()

    base = worker_env(
        bootstrap,
        model,
        workdir / "data",
        HUP_STANDBY_REPLICAS="1",
        HUP_LOG_LEVEL="info",
    )
    create_topics(bootstrap, base)
    # One chunk before each fault and one after the last. The rebalance takes two faults,
    # the join and the leave, with some of the kills in between (any of three workers).
    n_faults = n_kills + 2
    join_at = n_faults // 3
    leave_at = join_at + 1 + min(3, n_kills // 4)
    bounds = [round(i * len(events) / (n_faults + 1)) for i in range(n_faults + 2)]
    chunks = [events[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]

    restarts: dict[str, int] = defaultdict(int)
    kill_log: list[str] = []
    wiped = 0

    def start(name: str, wipe: bool = False) -> WorkerProcess:
        datadir = workdir / f"data-{name}"
        if wipe and datadir.exists():
            shutil.rmtree(datadir)
        restarts[name] += 1
        env = {**base, "HUP_DATADIR": str(datadir)}
        return WorkerProcess(env, workdir / f"worker-{name}-{restarts[name]}.log")

    reader = Reader(bootstrap, base["HUP_OUTPUT_TOPIC"])
    workers = {"a": start("a")}
    kills_done = 0
    try:
        wait_ready(workers["a"], ready_timeout)
        for index, chunk in enumerate(chunks):
            produce(
                bootstrap,
                base["HUP_INPUT_TOPIC"],
                ((e.user_id.encode(), event_bytes(e)) for e in chunk),
            )
            if index == len(chunks) - 1:
                break
            if index == join_at:
                for name in ("b", "c"):
                    workers[name] = start(name, wipe=True)  # 1 -> 3
                for name in ("b", "c"):
                    wait_ready(workers[name], ready_timeout)
                kill_log.append(f"chunk {index}: workers b and c joined (1 -> 3)")
                continue
            if index == leave_at:
                for name in ("b", "c"):  # 3 -> 1, gracefully
                    code = workers.pop(name).stop()
                    kill_log.append(f"chunk {index}: worker {name} left (SIGTERM, exit {code})")
                continue
            # A kill, once the victim runs and the output has grown since the last fault.
            name = rng.choice(sorted(workers))
            victim = workers[name]
            wait_ready(victim, ready_timeout)
            seen = len(reader.messages)
            reader.read_until(lambda m, s=seen: len(m) > s, drain_timeout, "progress", victim)
            time.sleep(rng.uniform(0.2, 2.0))
            victim.kill()
            kills_done += 1
            wipe = wipe_every > 0 and kills_done % wipe_every == 0
            wiped += wipe
            kill_log.append(
                f"chunk {index}: SIGKILL worker {name} after {len(reader.messages):,} profiles"
                + (", restarted with an empty data directory" if wipe else "")
            )
            console.print(kill_log[-1])
            workers[name] = start(name, wipe=wipe)
        progress = Progress({u: len(p) for u, p in reference.profiles.items() if p})
        console.print("draining ...")
        reader.read_until(progress.done, drain_timeout, "every user's last profile", workers["a"])
        reader.poll_for(3.0)  # a late duplicate would arrive meanwhile
    finally:
        for worker in workers.values():
            worker.stop()
        reader.close()

    figures = check(reader.messages, reference)
    return Figures(
        events=len(events),
        users=len(sessions),
        kills=kills_done,
        wiped_restarts=wiped,
        rebalance="1 -> 3 -> 1",
        profiles_expected=total,
        published=len(reader.messages),
        lost=int(figures["lost"]),
        applied_twice=int(figures["applied_twice"]),
        repeats=int(figures["repeats"]),
        repeats_differing=int(figures["repeats_differing"]),
        max_difference=figures["max_difference"],
        rankings_differing=int(figures["rankings_differing"]),
        rankings_tie_order=int(figures["rankings_tie_order"]),
        mismatches=figures["mismatches"],
        tolerance=TOLERANCE,
        seconds=round(time.monotonic() - started, 1),
        seed=seed,
        bootstrap=bootstrap,
        command="bench/chaos.py " + " ".join(sys.argv[1:]),
        kill_log=kill_log,
    )


def table(figures: Figures) -> Table:
    """The summary table."""
    out = Table(
        title=f"chaos: {figures.events:,} events, {figures.kills} SIGKILLs, {figures.rebalance}"
    )
    columns = ("lost", "applied twice", "repeats", "repeats differing", "rankings differing")
    for column in (*columns, "max difference"):
        out.add_column(column, justify="right")
    out.add_row(
        str(figures.lost),
        str(figures.applied_twice),
        f"{figures.repeats:,}",
        str(figures.repeats_differing),
        str(figures.rankings_differing),
        f"{figures.max_difference:.1e}",
    )
    return out


def main(
    events: Annotated[int, typer.Option(min=100, help="Events to replay")] = 100_000,
    kills: Annotated[int, typer.Option(min=0, help="Random SIGKILLs")] = 20,
    seed: Annotated[int, typer.Option(help="Seeds the data, the model and the chaos")] = 0,
    wipe_every: Annotated[
        int, typer.Option(min=0, help="Every N-th restart gets an empty data directory (0: none)")
    ] = 5,
    drain_timeout: Annotated[float, typer.Option(help="Seconds to wait for progress")] = 900.0,
    ready_timeout: Annotated[
        float, typer.Option(help="Seconds a (re)started worker may take to be ready")
    ] = 300.0,
    out: Annotated[Path, typer.Option(help="JSON result")] = REPO
    / "bench"
    / "results"
    / "chaos.json",
) -> None:
    """Replay events through workers under random SIGKILLs and a rebalance; check every profile."""
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="hup-chaos-"))
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            figures = run(
                events, kills, seed, wipe_every, workdir, bootstrap, drain_timeout, ready_timeout
            )
        else:
            with start_broker() as broker:
                console.print(f"broker: {broker.bootstrap_servers}")
                figures = run(
                    events,
                    kills,
                    seed,
                    wipe_every,
                    workdir,
                    broker.bootstrap_servers,
                    drain_timeout,
                    ready_timeout,
                )
    except AssertionError as exc:  # the harness's timeouts and early exits
        console.print(f"chaos run failed: {exc}\n(logs kept in {workdir})")
        raise typer.Exit(code=1) from None
    console.print(table(figures))
    console.print(
        f"{figures.published:,} profiles published for {figures.profiles_expected:,} expected, "
        f"{figures.users:,} users, {figures.wiped_restarts} restarts on an empty data "
        f"directory, {figures.seconds:.0f} s; {figures.rankings_tie_order} rankings put ids "
        f"whose scores tie within {TOLERANCE:g} in another order"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(asdict(figures), option=orjson.OPT_INDENT_2))
    console.print(f"wrote {out}")
    shutil.rmtree(workdir, ignore_errors=True)
    ok = figures.lost == figures.applied_twice == figures.repeats_differing == 0
    ok = ok and figures.rankings_differing == 0
    if not ok or figures.max_difference >= TOLERANCE:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    typer.run(main)
