"""The worker refuses to start, with one clear line, when its model is missing or unset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO, worker_env

pytestmark = pytest.mark.integration

# Nothing listens here: the worker must give up before it ever connects.
_NO_BROKER = "127.0.0.1:9"


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "stream.worker"],
        [
            str(Path(sys.executable).with_name("faust")),
            "-A",
            "stream.app",
            "worker",
            "--without-web",
        ],
    ],
    ids=["python-m-stream.worker", "faust-A-stream.app"],
)
def test_missing_model_is_refused_with_the_path(argv: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    env = worker_env(_NO_BROKER, missing, tmp_path / "data")
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert str(missing) in done.stderr
    assert "cannot start" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "data").exists()  # refused before faust opened any state


@pytest.mark.parametrize("value", [None, "", "  "], ids=["unset", "empty", "blank"])
def test_unset_model_is_refused(value: str | None, tmp_path: Path) -> None:
    env = worker_env(_NO_BROKER, tmp_path, tmp_path / "data")
    if value is None:
        del env["HUP_MODEL"]
    else:  # `HUP_MODEL=` is unset too, not the current directory
        env["HUP_MODEL"] = value
    done = subprocess.run(
        [sys.executable, "-m", "stream.worker"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "HUP_MODEL is not set" in done.stderr
    assert "config.json" not in done.stderr
    assert "Traceback" not in done.stderr
