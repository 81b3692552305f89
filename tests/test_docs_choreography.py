"""The python blocks of docs/choreography.md run, in order, as one script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "choreography.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def test_doc_has_examples() -> None:
    assert len(BLOCK.findall(DOC.read_text())) >= 4


def test_doc_blocks_run_in_order() -> None:
    # A subprocess: the blocks declare events in the default registry, which must
    # not meet the test suite's own classes.
    script = "\n\n".join(BLOCK.findall(DOC.read_text()))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "shipped ['o-1']" in done.stdout
