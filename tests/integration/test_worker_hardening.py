"""A worker closed by default, refusing to start in one line, and expiring idle users.

Start-up refusals need no broker: an unreachable one, a web or metrics port in use.
The live worker: the profile API needs its bearer token, faust's own pages are off, an
over-long URL is a 400 without a traceback, and idle users leave the state through
changelog tombstones, so a worker restored from the changelog does not bring them back.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from harness import (
    REPO,
    Reader,
    WorkerProcess,
    create_topics,
    free_port,
    produce,
    scrape,
    wait_ready,
    worker_env,
)

pytestmark = pytest.mark.integration

TOKEN = "it-s3cret-token"  # noqa: S105 - a test worker's token


def _refusal(env: dict[str, str], timeout: float = 90.0) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "stream.worker"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


def _assert_one_line_refusal(code: int, output: str, *needles: str) -> None:
    assert code == 2, output
    lines = [line for line in output.splitlines() if "cannot start" in line]
    assert len(lines) == 1, output
    for needle in needles:
        assert needle in lines[0], output
    assert "Traceback" not in output
    assert "|FAIL|" not in output and "%3|" not in output  # no librdkafka lines
    assert "Ready" not in output


def test_an_unreachable_broker_is_one_line_and_exit_2(it_model: Path, tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    env = worker_env(nowhere, it_model, tmp_path / "data", HUP_STARTUP_TIMEOUT_S="3")
    started = time.monotonic()
    code, output = _refusal(env)
    _assert_one_line_refusal(code, output, nowhere, "within 3 s")
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("which", ["WEB", "METRICS"])
def test_a_port_in_use_is_one_line_before_ready(which: str, it_model: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = worker_env(
            f"127.0.0.1:{free_port()}",
            it_model,
            tmp_path / "data",
            **{f"HUP_{which}_PORT": str(port)},
        )
        code, output = _refusal(env)
    _assert_one_line_refusal(code, output, f"127.0.0.1:{port}", f"HUP_{which}_PORT")


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - a local test URL
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_status(url: str, status: int, worker: WorkerProcess, timeout: float = 60.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, body = _get(url, TOKEN)
        except OSError:
            got, body = 0, b""
        if got == status:
            return body
        assert worker.alive(), worker.log()
        assert time.monotonic() < deadline, f"{url}: {got} {body!r}\n{worker.log()}"
        time.sleep(0.3)


def _events(user: str, ts: float, n: int) -> list[tuple[bytes, bytes]]:
    return [
        (
            user.encode(),
            orjson.dumps(
                {
                    "user_id": user,
                    "ts": ts + i,
                    "item_id": f"sku-{i}",
                    "categories": ["c0", "c0.1", "c0.1.2"],
                    "behavior": "Home2Product",
                }
            ),
        )
        for i in range(n)
    ]


def test_a_closed_worker_that_expires_idle_users(
    kafka_bootstrap: str, it_model: Path, tmp_path: Path
) -> None:
    web, metrics = free_port(), free_port()
    env = worker_env(
        kafka_bootstrap,
        it_model,
        tmp_path / "data",
        HUP_WEB_PORT=str(web),
        HUP_METRICS_PORT=str(metrics),
        HUP_API_TOKEN=TOKEN,
        HUP_STATE_TTL_S="10",  # swept every second
    )
    create_topics(kafka_bootstrap, env)
    base = f"http://127.0.0.1:{web}"
    now = time.time()
    idle = [f"idle-{i}" for i in range(3)]  # last seen an hour ago
    active = [f"active-{i}" for i in range(3)]  # an hour ahead: not idle during the test
    messages = [m for u in idle for m in _events(u, now - 3600, 2)]
    messages += [m for u in active for m in _events(u, now + 3600, 2)]
    reader = Reader(kafka_bootstrap, env["HUP_OUTPUT_TOPIC"])
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        wait_ready(worker)
        produce(kafka_bootstrap, env["HUP_INPUT_TOPIC"], messages)
        reader.read_until(lambda m: len(m) >= len(messages), 120, "every profile", worker)

        _wait_status(f"{base}/profiles/active-0", 200, worker)
        assert _get(f"{base}/profiles/active-0")[0] == 401  # no token
        assert _get(f"{base}/profiles/active-0", "wrong")[0] == 401
        assert _get(f"{base}/health")[0] == 200  # probes need none
        for page in ("/table/", "/router/", "/graph/", "/stats/"):
            assert _get(f"{base}{page}", TOKEN)[0] == 404, page
        assert _get(f"{base}/profiles/{'x' * 20_000}", TOKEN)[0] == 400

        for user in idle:  # removed by the sweep
            _wait_status(f"{base}/profiles/{user}", 404, worker)
        samples = scrape(metrics)
        assert samples["hup_state_expired_total"] == len(idle)
        assert _get(f"{base}/profiles/active-1", TOKEN)[0] == 200
        assert worker.log(10_000).count("Traceback") == 0, worker.log()
    finally:
        assert worker.stop() == 0
        reader.close()

    changelog = Reader(kafka_bootstrap, f"{env['HUP_APP_ID']}-profile-state-changelog")
    try:
        tombstones = {
            k
            for k, v in changelog.read_until(
                lambda m: {k for k, v in m if v is None} >= {u.encode() for u in idle},
                60,
                "a tombstone of every idle user",
            )
            if v is None
        }
    finally:
        changelog.close()
    assert tombstones == {u.encode() for u in idle}

    # A worker restored from the changelogs alone does not bring the idle users back.
    shutil.rmtree(tmp_path / "data")
    reader = Reader(kafka_bootstrap, env["HUP_OUTPUT_TOPIC"])
    worker = WorkerProcess(env, tmp_path / "worker-2.log")
    try:
        wait_ready(worker)
        _wait_status(f"{base}/profiles/active-2", 200, worker)
        assert _get(f"{base}/profiles/idle-0", TOKEN)[0] == 404
        produce(kafka_bootstrap, env["HUP_INPUT_TOPIC"], _events("idle-0", time.time(), 1))
        reader.read_until(
            lambda m: any(
                orjson.loads(v)["user_id"] == "idle-0" and orjson.loads(v)["seq"] == 1
                for _, v in m[len(messages) :]
            ),
            120,
            "idle-0's profile after its return",
            worker,
        )
    finally:
        assert worker.stop() == 0
        reader.close()
