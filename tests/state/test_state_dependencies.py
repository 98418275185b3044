"""The state layer sits below the stream: importing it must not pull in stream-side packages."""

import subprocess
import sys

FORBIDDEN = ("faust", "torch", "prometheus_client", "hup", "stream")


def test_state_imports_no_stream_or_model_packages() -> None:
    code = (
        "import sys, state.codec, state.expiry, state.store; "
        f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_user_state_imports_the_model_but_nothing_of_the_stream() -> None:
    code = (
        f"import sys, state.userstate; print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "['hup', 'torch']"
