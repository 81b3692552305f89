"""What docs/choreography.md's examples print (tests/test_docs.py only checks they run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "choreography.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_the_guide_ships_its_order():
    # A subprocess: the blocks declare events in the default registry.
    script = "\n\n".join(BLOCK.findall(DOC.read_text()))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "shipped ['o-1']" in done.stdout
