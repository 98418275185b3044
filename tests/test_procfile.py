"""The Procfile's structure (no broker needed); tests/integration/test_procfile.py runs it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from stream.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def procfile() -> dict[str, str]:
    """Process name -> command line, as honcho and foreman read the file."""
    processes = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


def test_it_runs_a_broker_a_worker_and_a_producer() -> None:
    assert set(procfile()) == {"broker", "worker", "producer"}


def test_the_worker_starts_from_an_empty_data_dir_of_its_own() -> None:
    # The broker keeps topics in memory, so each start begins with empty changelogs and
    # input offsets from 0: state left from the previous run would skip the new events.
    worker = procfile()["worker"]
    match = re.search(r"HUP_DATADIR=(\S+)", worker)
    assert match, worker
    datadir = match.group(1)
    assert worker.startswith(f"rm -rf {datadir} && exec env "), worker
    assert datadir != str(Settings().datadir)  # never the default dir a real worker may use


@pytest.mark.parametrize("name", ["broker", "worker", "producer"])
def test_nothing_hard_codes_where_the_broker_is(name: str) -> None:
    # The broker listens on HUP_BROKER_PORT; worker and producer connect there by default
    # (or to KAFKA_BOOTSTRAP_SERVERS), so one variable moves all three.
    command = procfile()[name]
    assert "--bootstrap" not in command and "9092" not in command
    assert "KAFKA_BOOTSTRAP_SERVERS" not in command and "HUP_BROKER_PORT" not in command


def test_every_variable_it_sets_is_read() -> None:
    known = {f"HUP_{name.upper()}" for name in Settings.model_fields}
    known.add("HUP_PRODUCE_MAX_BATCH")  # hup-stream produce's own
    for name, command in procfile().items():
        for word in shlex.split(command):
            variable = word.partition("=")[0]
            if "=" in word and variable.isupper():
                assert variable in known, (name, variable)


@pytest.mark.parametrize("name", ["broker", "worker", "producer"])
def test_its_programs_exist(name: str) -> None:
    words = shlex.split(procfile()[name].rpartition("&&")[2])
    program = next(w for w in words if w not in ("exec", "env") and "=" not in w)
    assert (REPO / program).exists(), program
