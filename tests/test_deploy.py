"""deploy/: the compose stack, the image, Prometheus' config and the Grafana dashboard.

`docker compose config` validates the stack where a compose CLI exists (no engine
needed). The structural checks always run: they catch what compose cannot, such as
an environment variable no `Settings` field reads or a dashboard metric nobody exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import typer
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from hup.cli import app as hup_cli
from stream.devtools.hup_stream import app as stream_cli
from stream.metrics import Metrics
from stream.processor import BatchResult, OutputProfile
from stream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "hup.json"
HUP_SERVICES = ("trainer", "worker", "producer")  # the services that run the project image


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_cli() -> list[str] | None:
    """``docker compose`` (plugin) or ``docker-compose`` (standalone), if either works."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        probe = subprocess.run([*cli, "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return cli
    return None


def test_docker_compose_config_validates() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI: neither the docker compose plugin nor docker-compose")
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stack_has_every_service_and_dependencies_exist(compose: dict) -> None:
    services = compose["services"]
    expected = {"kafka", "topic-init", "trainer", "worker", "producer", "prometheus", "grafana"}
    assert expected <= set(services)
    for name, service in services.items():
        depends = service.get("depends_on", [])
        assert set(depends) <= set(services), f"{name} depends on a missing service"
    worker = services["worker"]["depends_on"]
    assert worker["trainer"]["condition"] == "service_completed_successfully"
    assert worker["topic-init"]["condition"] == "service_completed_successfully"


def test_volumes_are_declared_and_bind_mounts_exist(compose: dict) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_kafka_runs_in_kraft_mode_from_the_official_image(compose: dict) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert env["KAFKA_ADVERTISED_LISTENERS"].startswith("PLAINTEXT://kafka:9092")


def test_hup_services_set_only_variables_that_settings_reads(compose: dict) -> None:
    fields = {f"HUP_{name.upper()}" for name in Settings.model_fields}
    known = fields | {"KAFKA_BOOTSTRAP_SERVERS"}
    for name in HUP_SERVICES:
        service = compose["services"][name]
        assert service["image"] == compose["services"]["worker"]["image"]
        unknown = set(service.get("environment") or {}) - known
        assert not unknown, f"{name}: no Settings field reads {sorted(unknown)}"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"


def test_topics_and_ports_agree_with_the_settings(compose: dict) -> None:
    services = compose["services"]
    worker = services["worker"]["environment"]
    settings = Settings(
        app_id=worker["HUP_APP_ID"],
        input_topic=worker["HUP_INPUT_TOPIC"],
        output_topic=worker["HUP_OUTPUT_TOPIC"],
        dlq_topic=worker["HUP_DLQ_TOPIC"],
    )
    init = services["topic-init"]["command"][0]
    for topic in (settings.input_topic, settings.output_topic, settings.dlq_topic):
        assert topic in init
    assert f"--topic {settings.changelog_topic} " in init
    assert "cleanup.policy=compact" in init and "retention.ms=" in init
    assert worker["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert worker["HUP_MODEL"].startswith("/models/")
    assert worker["HUP_METRICS_PORT"] == str(Settings().metrics_port)

    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "hup-worker"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == Settings().metrics_port


def _options(cli: typer.Typer, command: str) -> set[str]:
    group = typer.main.get_command(cli)
    click_command = group.commands[command]  # type: ignore[attr-defined]
    return {opt for param in click_command.params for opt in param.opts}


def test_trainer_and_producer_commands_exist(compose: dict) -> None:
    services = compose["services"]
    trainer = services["trainer"]["command"][-1]
    assert "hup train --data synthetic:" in trainer
    assert re.findall(r"--[a-z-]+", trainer) and set(re.findall(r"--[a-z-]+", trainer)) <= (
        _options(hup_cli, "train")
    )
    assert f"--out {services['worker']['environment']['HUP_MODEL']}" in trainer

    producer = services["producer"]["command"]
    assert producer[:2] == ["hup-stream", "produce"]
    assert {a for a in producer if a.startswith("--")} <= _options(stream_cli, "produce")
    assert producer[producer.index("--rate") + 1] == "200"


def test_the_image_runs_the_worker_as_a_non_root_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11(\.\d+)?-slim\S*$", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert dockerfile.rstrip().endswith('CMD ["python", "-m", "stream.worker"]')
    for path in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (REPO / path).exists(), path


def test_grafana_provisioning_matches_the_dashboard(compose: dict) -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "hup.yml").read_text())
    (provider,) = providers["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"

    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for ds in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ds["uid"] == datasource["uid"], panel["title"]


def _exported_names() -> set[str]:
    """Every series name the worker exports, with each metric touched once."""
    metrics = Metrics(CollectorRegistry())
    metrics.set_model("v", "/m")
    metrics.observe_batch(1, BatchResult(outcomes=Counter(applied=1)))
    metrics.observe_published([OutputProfile(b"u", b"{}", 1.0, 1.0)], 2.0)
    metrics.batch_stage.labels("process").observe(0.01)
    metrics.set_users_in_state({0: 1})
    metrics.set_consumer_lag({0: 1})
    metrics.state_size.observe(1)
    page = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in page.splitlines() if line[:1] != "#"}


def test_the_dashboard_covers_the_issue_and_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(hup_\w+)\{", e)}
    assert used <= _exported_names(), used - _exported_names()
    for needed in (
        'outcome="applied"',
        "hup_profiles_published_total",
        "histogram_quantile(0.99, sum by (le) (rate(hup_event_to_profile_seconds_bucket",
        "hup_processing_seconds_bucket",
        "hup_model_step_seconds",
        "hup_batch_size",
        "hup_batch_stage_seconds_sum",
        'outcome="dlq"',
        "hup_consumer_lag",
        "hup_users_in_state",
        "hup_model_info",
    ):
        assert any(needed in e for e in exprs), needed
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in exprs:
        assert set(re.findall(r"\$(\w+)", expr)) <= variables | {"__rate_interval"}, expr


def test_the_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool (Debian package prometheus) is not on PATH")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_pins_its_base_and_its_dependencies() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    # A precise version tag and the digest of that image.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base
    installs = re.findall(r"^RUN pip install (.*)$", dockerfile, re.M)
    project = [line for line in installs if "torch" not in line]
    assert project and all(line.startswith("-c constraints.txt ") for line in project)
    assert "COPY pyproject.toml README.md constraints.txt ./" in dockerfile
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!constraints.txt" in ignore


def test_the_image_checks_the_workers_health_endpoint(compose: dict) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (check,) = re.findall(r"^HEALTHCHECK .*?CMD (.*)$", dockerfile.replace("\\\n", " "), re.M)
    command = json.loads(check)
    assert "/health" in command[-1] and "HUP_WEB_PORT" in command[-1]
    # The one-shot services share the image but run no web server.
    for name in ("trainer", "producer"):
        assert compose["services"][name]["healthcheck"] == {"disable": True}, name
    assert "healthcheck" not in compose["services"]["worker"]


def test_published_ports_listen_on_the_loopback_only(compose: dict) -> None:
    published = {
        name: service["ports"]
        for name, service in compose["services"].items()
        if "ports" in service
    }
    assert set(published) == {"kafka", "prometheus", "grafana"}
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_grafana_takes_its_password_from_the_environment_without_anonymous_access(
    compose: dict,
) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    # Required, with no default: `${VAR:?message}` makes compose refuse to start without it.
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"])
    assert "admin" not in env["GF_SECURITY_ADMIN_PASSWORD"].split(":?")[0]


ALERTS = DEPLOY / "alerts.yml"


def _alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_prometheus_loads_the_alert_rules_and_compose_mounts_them(compose: dict) -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["alerts.yml"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    config_dir = Path(mounts["./prometheus.yml"]).parent
    assert mounts["./alerts.yml"] == str(config_dir / "alerts.yml")


def test_the_alerts_cover_input_holes_and_refused_acks_with_exported_metrics() -> None:
    rules = _alert_rules()
    exprs = {rule["alert"]: rule["expr"] for rule in rules}
    used = {m for e in exprs.values() for m in re.findall(r"\b(hup_\w+)", e)}
    assert used <= _exported_names(), used - _exported_names()
    assert 'hup_offset_gaps_total{action="reread"}' in exprs["HupInputHole"]
    assert "hup_acks_refused_total" in exprs["HupAcksRefusedSustained"]
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_the_dashboard_shows_input_holes_and_refused_acks() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Input holes and refused acks"]
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert "hup_offset_gaps_total" in exprs and "hup_acks_refused_total" in exprs
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_alert_rules_are_valid() -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool (Debian package prometheus) is not on PATH")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
