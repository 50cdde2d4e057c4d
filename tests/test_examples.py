"""Every example of the buffer family runs and prints what it promises."""

import pathlib
import subprocess
import sys

import pytest


EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"

EXPECTED = {
    "flat_buffer.py": [
        "buffer states per seed: (3, 8, 512, 4)",
        "transitions stored per seed: 1600",
    ],
    "item_buffer.py": ["full: True can sample: True", "labels match their inputs: True"],
    "prioritised_flat_buffer.py": ["step 4: weighted loss"],
    "prioritised_item_buffer.py": [
        "the model y = x is worst where |x| is large: drawn more than uniform (0.5): True"
    ],
    "trajectory_queue.py": ["consumed in order, each once: True", "refused adds: 0"],
    "mixer.py": ["items per buffer: (16, 48)", "importance weights in (0, 1]: True"],
}


def test_atari_frames_example_runs_tiny():
    # Real Breakout frames, a small buffer: every sampled stack is the environment's.
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "atari_frames.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "sampled stacks equal to the environment's: 10,240 of 10,240" in lines
    assert any(line.startswith("buffer memory: ") for line in lines)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script):
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for expected in EXPECTED[script]:
        assert any(line.startswith(expected) for line in result.stdout.splitlines()), (
            expected,
            result.stdout,
        )


def test_her_bitflip_example_runs_tiny(tmp_path):
    # Both agents train through `sample_future` and `sample`, print their figures and save
    # their curves (the full run's figures are in its docstring and the closing notes).
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            str(EXAMPLES / "her_bitflip.py"),
            "--tiny",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("final success rate: HER ") for line in lines), result.stdout
    assert (tmp_path / "her_bitflip.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
