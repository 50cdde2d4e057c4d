"""`examples/r2d2_memory.py` runs end to end at a tiny size: both agents train, both final
figures are printed and the learning curves are saved."""

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest


EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "r2d2_memory.py"
# The example's own dependencies (the "examples" extra), looked up without importing them.
MISSING = [
    name
    for name in ("gymnax", "optax", "tqdm", "matplotlib")
    if importlib.util.find_spec(name) is None
]


@pytest.mark.skipif(bool(MISSING), reason=f"the example needs {MISSING}")
def test_r2d2_example_tiny(tmp_path):
    plot = tmp_path / "x.png"
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE), "--tiny", "--quiet", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("recurrent", "memoryless baseline"):
        pattern = rf"{name}: mean evaluation return \d+\.\d \(of 500\) after 2048 env steps"
        assert any(re.match(pattern, line) for line in lines), (name, result.stdout)
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
