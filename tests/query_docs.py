"""The examples of docs/queries.md, for the tests that run them (not a test module): tests/test_report.py runs those
over one output, tests/test_sizes.py those over several."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def doc_blocks(language: str, several_outputs: bool = False) -> list[str]:
    """docs/queries.md's examples in `language`: those over one output, or (`several_outputs`) those marked as over
    several (tests/test_sizes.py runs them: they need two outputs)."""
    text = (REPO / "docs" / "queries.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
    return [block for block in blocks if block.startswith(("-- several outputs", "# several outputs")) == several_outputs]
