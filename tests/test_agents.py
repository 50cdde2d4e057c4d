"""The DQN example and its Flashbax benchmark run end to end, at tiny sizes."""

import os
import pathlib
import re
import subprocess
import sys

import pytest


ROOT = pathlib.Path(__file__).parent.parent
# Compiling is most of these runs' time, and their speed is not under test: XLA's backend
# optimisations off take about a third off it.
XLA_FLAGS = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()


def run(script: str, *args: str) -> str:
    """Runs a script as a user would, with warnings as errors; returns its stdout."""
    result = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "XLA_FLAGS": XLA_FLAGS},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Warning" not in result.stderr, result.stderr[-4000:]
    return result.stdout


def test_dqn_cartpole_tiny(tmp_path):
    plot = tmp_path / "x.png"
    stdout = run(
        "examples/dqn_cartpole.py",
        *("--total-steps", "4096", "--num-chunks", "2", "--learning-starts", "512"),
        *("--updates-per-train", "8", "--width", "16", "--eval-episodes", "4"),
        *("--quiet", "--plot", str(plot)),
    )
    final = re.search(
        r"^final mean evaluation return: (\d+\.\d) \(of 500\) after 4096 env steps in [\d.]+ s$",
        stdout,
        re.MULTILINE,
    )
    assert final is not None, stdout
    assert 0 < float(final.group(1)) <= 500
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("settings", ["example", "purejaxrl"])
def test_dqn_flashbax_tiny(settings: str):
    stdout = run("benchmarks/dqn_flashbax.py", "--tiny", "--settings", settings)
    for library in ["eqx_replay", "flashbax"]:
        assert re.search(
            rf"^\| 0 \| {library} \| [\d,]+ \| \d+\.\d \| [\d.]+ s \|$", stdout, re.MULTILINE
        ), stdout
        assert re.search(rf"^\| {library} \| \d+\.\d\d \| \d+% \|$", stdout, re.MULTILINE), stdout
    assert re.search(r"^\| 0 \| no buffer \| [\d,]+ \| \d+\.\d \| [\d.]+ s \|$", stdout, re.M), (
        stdout
    )
    assert "ratio eqx_replay / flashbax, env steps/s:" in stdout
    assert "ratio no buffer / flashbax, env steps/s:" in stdout
