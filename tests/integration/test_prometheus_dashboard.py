"""The Grafana dashboard's queries, run by a real Prometheus against a real worker run.

Debian's ``prometheus`` scrapes a worker on the session broker every second while
events (some malformed) keep flowing, then every panel target of
deploy/grafana/dashboards/hup.json goes through ``/api/v1/query``: each must
return at least one series with a number, or the panel would be empty in Grafana.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer
from harness import (
    REPO,
    WorkerProcess,
    create_topics,
    event_bytes,
    free_port,
    wait_ready,
    worker_env,
)

from hup.sessions import Dataset, iter_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "hup.json"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus.yml"
# What Grafana would substitute: a rate window of several 1 s scrapes; every worker.
VARIABLES = {"$__rate_interval": "30s", "$instance": ".*"}
EVENTS_PER_S = 40
BAD_EVERY = 10  # one malformed message after every 10 good ones
SCRAPE_WARMUP_S = 20.0  # the rate windows fill while events keep flowing


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title + legend, PromQL with the variables substituted) of every panel target."""
    panels = json.loads(path.read_text())["panels"]
    queries = []
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))  # collapsed rows nest their panels
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']!r}: {expr}"
            queries.append((f"{panel['title']} / {target.get('legendFormat', '')}", expr))
    return queries


def find_prometheus() -> str:
    """The prometheus binary; installed from Debian's package when possible, else skip."""
    found = shutil.which("prometheus")
    if found:
        return found
    if not shutil.which("apt-get"):
        pytest.skip("prometheus is not on PATH and there is no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip(
            "prometheus is not on PATH; installing it needs root (apt-get install prometheus)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"prometheus could not be installed: {exc}: {output.decode()[-500:]}")
    found = shutil.which("prometheus")
    if not found:
        pytest.skip("apt-get installed prometheus but it is not on PATH")
    return found


def scrape_config(worker_port: int) -> dict:
    """deploy/prometheus.yml, pointed at the test worker and scraping every second."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "hup-worker"]
    assert len(jobs) == 1, "deploy/prometheus.yml has no hup-worker job"
    job = {
        k: v for k, v in jobs[0].items() if not k.endswith("_sd_configs") and k != "static_configs"
    }
    job["static_configs"] = [{"targets": [f"127.0.0.1:{worker_port}"]}]
    config["scrape_configs"] = [job]
    return config


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


class Traffic(threading.Thread):
    """Keeps producing synthetic events, keyed by user, with a malformed one now and then."""

    def __init__(self, bootstrap: str, topic: str, traffic: Dataset) -> None:
        super().__init__(daemon=True)
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic = topic
        self.events = list(iter_events(traffic.sessions))
        self.stopping = threading.Event()
        self.sent = 0

    def run(self) -> None:
        period = 1.0 / EVENTS_PER_S
        for n, event in enumerate(self.events):
            if self.stopping.wait(period):
                break
            key = event.user_id.encode()
            # Stamped now, as `hup-stream produce` does: event-to-profile latency is then
            # sub-second instead of the synthetic history's age (beyond the last bucket).
            live = event.model_copy(update={"ts": time.time()})
            self.producer.produce(self.topic, key=key, value=event_bytes(live))
            if n % BAD_EVERY == BAD_EVERY - 1:
                self.producer.produce(self.topic, key=key, value=b"{not json")
            self.producer.poll(0)
            self.sent += 1
        self.producer.flush(30)

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)


@pytest.fixture
def prometheus_binary() -> str:
    return find_prometheus()


@pytest.fixture
def scraped_worker(
    prometheus_binary: str,
    kafka_bootstrap: str,
    it_model: Path,
    it_traffic: Dataset,
    tmp_path: Path,
) -> Iterator[str]:
    """A worker fed with live traffic, scraped by Prometheus; yields Prometheus' base URL."""
    metrics_port, web_port = free_port(), free_port()
    env = worker_env(
        kafka_bootstrap, it_model, tmp_path / "data", HUP_METRICS_PORT=str(metrics_port)
    )
    create_topics(kafka_bootstrap, env)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(metrics_port)))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    traffic = Traffic(kafka_bootstrap, env["HUP_INPUT_TOPIC"], it_traffic)
    with open(tmp_path / "prometheus.log", "wb") as log:
        prometheus = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_ready(worker)
        traffic.start()
        wait_for_scrapes(base, prometheus, tmp_path / "prometheus.log")
        yield base
    finally:
        traffic.stop()
        prometheus.terminate()
        try:
            prometheus.wait(30)
        except subprocess.TimeoutExpired:
            prometheus.kill()
        assert worker.stop() == 0, worker.log()


def wait_for_scrapes(base: str, prometheus: subprocess.Popen, log: Path) -> None:
    """Until Prometheus has scraped the worker's profiles for SCRAPE_WARMUP_S seconds."""
    deadline = time.monotonic() + 90
    first_data = None
    while time.monotonic() < deadline:
        if prometheus.poll() is not None:
            raise AssertionError(f"prometheus exited {prometheus.returncode}\n{log.read_text()}")
        try:
            up = query(base, "hup_profiles_published_total > 0")
        except OSError:
            up = []  # not listening yet
        if up and first_data is None:
            first_data = time.monotonic()
        if first_data is not None and time.monotonic() - first_data >= SCRAPE_WARMUP_S:
            return
        time.sleep(0.5)
    raise AssertionError(f"prometheus never scraped published profiles\n{log.read_text()[-3000:]}")


def test_every_dashboard_query_returns_data(scraped_worker: str) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 11
    empty, results = [], {}
    for name, expr in queries:
        # The lag gauge is refreshed every LAG_INTERVAL_S: give each query a few tries.
        deadline = time.monotonic() + 15
        while not (series := query(scraped_worker, expr)) and time.monotonic() < deadline:
            time.sleep(1)
        values = [float(s["value"][1]) for s in series]
        results[name] = values
        if not values or not all(math.isfinite(v) for v in values):
            empty.append(f"{name}: {expr} -> {series}")
    print("\n".join(f"{name}: {values}" for name, values in results.items()))
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert max(results["Throughput / events applied"]) > 0
    assert max(results["Dead-letter rate / dead letters/s"]) > 0
    assert max(results["Event-to-profile latency / p99"]) < 60  # inside the buckets
