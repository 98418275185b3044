"""constraints.txt: every dependency pinned to the tested version, and every install uses it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, pinned = line.partition("==")
            assert sep and re.fullmatch(r"[\w.+-]+", pinned), line
            pins[canonicalize_name(name)] = pinned
    return pins


def test_every_declared_dependency_but_torch_is_pinned_within_its_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += extra
    pins = _pins()
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in ("torch", "hup-stream"):
            continue
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (text, pins[name])
    assert "torch" not in pins  # the Makefile and the Dockerfile pin it, from the CPU index


def test_the_guarded_faust_stack_is_pinned() -> None:
    pins = _pins()
    for name in ("faust-streaming", "aiokafka", "mode-streaming"):
        assert name in pins, name


def test_make_install_uses_the_constraints_and_ci_runs_make() -> None:
    makefile = (REPO / "Makefile").read_text()
    installs = re.findall(r"pip install -q (.*)$", makefile, re.M)
    project = [line for line in installs if "-e " in line]
    assert project == ["-c constraints.txt -e '.[dev,bench]'"]
    assert re.search(r"^\$\(BIN\)/\.installed: .*constraints\.txt", makefile, re.M)
    assert re.search(r"^make test$", (REPO / ".ci" / "run").read_text(), re.M)


def test_the_constraints_match_the_installed_versions() -> None:
    # In a venv made by `make install` the two agree; a dependency added to pyproject.toml
    # without `make constraints` fails here.
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "constraints.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
