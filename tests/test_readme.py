"""Every python code block in README.md runs, and the demo command works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("index", range(len(python_blocks(ROOT / "README.md"))))
def test_readme_block_runs(index):
    code = python_blocks(ROOT / "README.md")[index]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_demo_runs_and_compensates():
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "order_saga.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "COMPLETED" in done.stdout and "COMPENSATED" in done.stdout
    assert "stock left: 10, payments held: 0" in done.stdout
