"""Two processes on 127.0.0.1 share a sharded buffer through `jax.distributed` (gloo on CPU):
`examples/multihost.py`, bounded by a timeout, on a free port it picks itself."""

import pathlib
import subprocess
import sys


EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "multihost.py"


def test_two_processes_each_sample_only_their_own_rows():
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--processes", "2", "--timeout", "150"],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("process ")]
    assert sorted(line.split(":")[0] for line in lines) == ["process 0/2", "process 1/2"]
    assert "rows 0..7 of 16" in "".join(lines) and "rows 8..15 of 16" in "".join(lines)
    for line in lines:
        assert "every one from its own rows" in line
        windows = int(line.split("sampled ")[1].split(" windows")[0])
        assert windows > 0
