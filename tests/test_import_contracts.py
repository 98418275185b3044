"""The import contracts of pyproject.toml ([tool.importlinter]) hold, so CI enforces them too."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_the_contracts_cover_layers_kafka_free_model_dev_tools_and_cycles() -> None:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    by_type = {(c["type"], tuple(c.get("source_modules", ()))) for c in contracts}
    assert ("layers", ()) in by_type
    assert ("forbidden", ("hup",)) in by_type
    assert ("forbidden", ("state",)) in by_type
    assert ("protected", ()) in by_type
    assert ("acyclic_siblings", ()) in by_type
    layers = next(c for c in contracts if c["type"] == "layers")
    assert layers["layers"] == ["stream", "state", "hup"]


def test_the_import_contracts_are_kept() -> None:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout
    assert result.stdout.count("KEPT") >= 5, result.stdout


def test_pre_commit_runs_the_lint_tools_of_the_venv() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    entries = {hook["id"]: hook["entry"] for repo in config["repos"] for hook in repo["hooks"]}
    assert set(entries) == {"ruff", "ruff-format", "mypy", "import-linter"}
    for entry in entries.values():
        program = entry.split()[0]
        assert program.startswith(".venv/bin/"), entry  # the pinned tools, no download
        assert (REPO / program).name in {"ruff", "mypy", "lint-imports"}
