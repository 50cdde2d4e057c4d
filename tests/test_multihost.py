"""Two processes on 127.0.0.1 share a sharded buffer through `jax.distributed` (gloo on CPU):
`examples/multihost.py`, bounded by a timeout, on a free port it picks itself."""

import pathlib
import subprocess
import sys


EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "multihost.py"


def test_two_processes_each_sample_only_their_own_rows_and_checkpoint_together(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--processes",
            "2",
            "--timeout",
            "150",
            "--checkpoint",
            str(tmp_path / "checkpoint"),
        ],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("process ")]
    saved = [line for line in lines if "checkpoint saved and loaded" in line]
    assert len(saved) == 2 and all("samples the same" in line for line in saved)
    lines = [line for line in lines if line not in saved]
    assert sorted(line.split(":")[0] for line in lines) == ["process 0/2", "process 1/2"]
    assert "rows 0..7 of 16" in "".join(lines) and "rows 8..15 of 16" in "".join(lines)
    for line in lines:
        assert "every one from its own rows" in line
        windows = int(line.split("sampled ")[1].split(" windows")[0])
        assert windows > 0
