"""The benchmark scripts still run (at tiny sizes; nothing about timing is asserted)."""

import pathlib
import subprocess
import sys


BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"


def run(script, *args):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--tiny", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_compare_flashbax_tiny(tmp_path):
    run("compare_flashbax.py", "--out", str(tmp_path))
    table = (tmp_path / "compare_flashbax_tiny.md").read_text()
    for row in ["a. add", "b. add", "c. sample", "d. scan", "e. README", "f. peak RSS", "g. add"]:
        assert row in table
    assert (tmp_path / "compare_flashbax_tiny.png").stat().st_size > 0


def test_sample_guard_cost_tiny():
    table = run("sample_guard_cost.py")
    assert "poison (shipped)" in table and "eqx.error_if" in table


def test_sample_profile_tiny():
    table = run("sample_profile.py")
    assert "gather alone" in table and "| 32 x 80 |" in table


def test_episode_modes_tiny():
    table = run("episode_modes.py")
    assert "| 2,560 | strict |" in table and "| 256 | mask |" in table


def test_dispatch_cost_tiny():
    table = run("dispatch_cost.py")
    assert "| trajectory | add, bare jax.jit |" in table and "| prioritised | off |" in table


def test_compare_family_tiny():
    table = run("compare_family.py")
    for row in ["i. flat sample 256", "j. prioritised flat set_priorities", "k. mixer", "l. queue"]:
        assert row in table


def test_sharding_scaling_tiny():
    table = run("sharding_scaling.py")
    assert "| 8 |" in table and "yes" not in table.split("collectives |")[1]


def test_checkpoint_throughput_tiny():
    table = run("checkpoint_throughput.py")
    assert "| `save_state` |" in table and "| `load_state` (cold) |" in table
    assert "peak extra memory during save" in table


def test_vault_compare_tiny():
    table = run("vault_compare.py", "--repeats", "1")
    assert (
        "| eqx_replay |" in table and "| flashbax |" in table and "Flashbax / eqx_replay" in table
    )
