"""The README's Python example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_python_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README must show the Python API"
    proc = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\[(stop|length), \d+ tok/s\]", proc.stdout), proc.stdout
    after = proc.stdout[re.search(r"tok/s\]", proc.stdout).end():].strip()
    assert after, "the later calls print their answers (a stream that is never consumed does nothing)"
