"""README's "API at a glance" example runs as written (on the CPU here, through the reference path),
so the documentation cannot drift from the API."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_api_example_runs():
    text = README.read_text()
    block = re.search(r"## API at a glance\n\n```python\n(.*?)```", text, re.S)
    assert block, "README lost its API example"
    scope: dict = {}
    exec(compile(block.group(1), str(README), "exec"), scope)
    out, lse, q = scope["out"], scope["lse"], scope["q"]
    assert out.shape == q.shape and not out.isnan().any()
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1])
