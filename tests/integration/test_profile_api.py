"""The profile query API of a live worker: /ready, /health and GET /profiles/{user_id}."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from harness import (
    Reader,
    Reference,
    WorkerProcess,
    create_topics,
    event_bytes,
    free_port,
    http_get,
    poll_http,
    produce,
    wait_ready,
    worker_env,
)

from hup.sessions import Dataset, iter_events

pytestmark = pytest.mark.integration

USERS = 8


def test_the_api_serves_the_last_published_profile_of_each_user(
    kafka_bootstrap: str,
    it_model: Path,
    it_reference: Reference,
    it_traffic: Dataset,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = worker_env(kafka_bootstrap, it_model, tmp_path / "data", HUP_WEB_PORT=str(port))
    create_topics(kafka_bootstrap, env)
    sessions = it_traffic.sessions[:USERS]
    reference = it_reference.restricted_to({s.user_id for s in sessions})
    base = f"http://127.0.0.1:{port}"
    worker = WorkerProcess(env, tmp_path / "worker.log")
    reader = Reader(kafka_bootstrap, env["HUP_OUTPUT_TOPIC"])
    try:
        wait_ready(worker)
        assert poll_http(f"{base}/ready", 200, worker)[0] == 200
        produce(
            kafka_bootstrap,
            env["HUP_INPUT_TOPIC"],
            ((e.user_id.encode(), event_bytes(e)) for e in iter_events(sessions)),
        )
        expected = reference.count()
        reader.read_until(lambda m: len(m) >= expected, 120, "every profile", worker)
        last = {orjson.loads(v)["user_id"]: v for _, v in reader.messages}
        assert len(last) >= 2, "too few users with profiles to test"

        for user, message in last.items():
            # The table is written right after delivery: allow the agent a moment.
            status, body = poll_http(f"{base}/profiles/{user}", 200, worker)
            deadline = time.monotonic() + 10
            while body != message and time.monotonic() < deadline:
                time.sleep(0.2)
                status, body = http_get(f"{base}/profiles/{user}")
            assert orjson.loads(body) == orjson.loads(message), user
            assert body == message

        status, body = http_get(f"{base}/profiles/nobody-{port}")
        assert (status, orjson.loads(body)) == (404, {"error": "unknown user"})
        assert http_get(f"{base}/health")[0] == 200
        ready_status, ready = http_get(f"{base}/ready")
        assert ready_status == 200 and orjson.loads(ready)["ready"] is True
    finally:
        code = worker.stop()
        reader.close()
    assert code == 0
