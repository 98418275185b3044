"""Dependencies point one way (style rule 1): the model package never pulls in the stream's."""

from __future__ import annotations

import json
import subprocess
import sys

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
