"""Every ```python block in README.md and docs/ runs.

The blocks of one page run in order, as one script, in a fresh interpreter (a
page may build on its earlier blocks, and pages declare events in the default
registry, which must not meet the test suite's own classes). Blocks that are
not meant to run are written as ```py, ```sh or ```text.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
RUNNABLE = [page for page in PAGES if BLOCK.search(page.read_text())]


def test_the_guides_have_runnable_examples():
    names = {page.relative_to(ROOT).as_posix() for page in RUNNABLE}
    for page in ("README.md", "docs/guides/first-saga.md", "docs/guides/durability.md"):
        assert page in names


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_runs(page: Path, tmp_path: Path):
    script = "\n\n".join(BLOCK.findall(page.read_text()))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"{page.name} failed:\n{done.stderr[-4000:]}"
