"""The README's run command: the minimal order saga example."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_minimal_example_runs_and_compensates():
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "order_saga.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "COMPLETED" in done.stdout
    assert "COMPENSATED" in done.stdout
    assert "stock left: 10, payments held: 0" in done.stdout
