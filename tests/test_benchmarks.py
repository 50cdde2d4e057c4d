"""The benchmark scripts still run (at tiny sizes; nothing about timing is asserted), and each
writes its results file through the harness (`benchmarks/_harness.py`)."""

import pathlib
import subprocess
import sys


BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"


def run(script, out, *args):
    """Runs `benchmarks/<script>.py --tiny --out <out>`; returns its stdout, having checked
    that it wrote `<out>/<script>_tiny.md` with the harness's header and what it printed."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), "--tiny", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    text = (out / f"{script}_tiny.md").read_text()
    assert text.startswith("# ")
    assert f"Command: `python benchmarks/{script}.py --tiny --out " in text
    assert "- Machine: " in text and "- Versions: Python " in text
    assert "Total wall time of the run:" in text
    for line in result.stdout.splitlines():
        if line.startswith("|"):
            assert line in text, line
    assert sorted(path.name for path in out.iterdir() if path.suffix == ".md") == [
        f"{script}_tiny.md"
    ]
    return result.stdout


def test_compare_flashbax_tiny(tmp_path):
    run("compare_flashbax", tmp_path)
    table = (tmp_path / "compare_flashbax_tiny.md").read_text()
    for row in ["a. add", "b. add", "c. sample", "d. scan", "e. README", "f. peak RSS", "g. add"]:
        assert row in table
    assert "| row | eqx_replay | flashbax | ratio (eqx/fbx) |" in table
    assert "<!-- --8<-- [start:table] -->" in table and "<!-- --8<-- [end:table] -->" in table
    assert (tmp_path / "compare_flashbax_tiny.png").stat().st_size > 0


def test_sample_guard_cost_tiny(tmp_path):
    table = run("sample_guard_cost", tmp_path)
    assert "poison (shipped)" in table and "eqx.error_if" in table


def test_sample_profile_tiny(tmp_path):
    table = run("sample_profile", tmp_path)
    assert "gather alone" in table and "| 32 x 80 |" in table


def test_episode_modes_tiny(tmp_path):
    table = run("episode_modes", tmp_path)
    assert "| 2,560 | strict |" in table and "| 256 | mask |" in table


def test_dispatch_cost_tiny(tmp_path):
    table = run("dispatch_cost", tmp_path)
    assert "| trajectory | add, bare jax.jit |" in table and "| prioritised | off |" in table


def test_compare_family_tiny(tmp_path):
    table = run("compare_family", tmp_path)
    for row in ["i. flat sample 256", "j. prioritised flat set_priorities", "k. mixer", "l. queue"]:
        assert row in table
    for row in ["m. add 16×1, weakly typed reward", "n. sample 1024×64 of 16 × 80"]:
        assert row in table


def test_sharding_scaling_tiny(tmp_path):
    table = run("sharding_scaling", tmp_path)
    assert "| 8 |" in table and "yes" not in table.split("collectives |")[1]


def test_checkpoint_throughput_tiny(tmp_path):
    table = run("checkpoint_throughput", tmp_path)
    assert "| `save_state` |" in table and "| `load_state` (cold) |" in table
    assert "peak extra memory during save" in table


def test_vault_compare_tiny(tmp_path):
    table = run("vault_compare", tmp_path, "--repeats", "1")
    assert (
        "| eqx_replay |" in table and "| flashbax |" in table and "Flashbax / eqx_replay" in table
    )


def test_lowered_programs_tiny(tmp_path):
    table = run("lowered_programs", tmp_path)
    # Every kind's compiled methods, on one device and sharded.
    for program in ["| trajectory strict add | one device |", "| mixer set_priorities |"]:
        assert program in table
    assert "| prioritised flat sample | sharded over 4 devices |" in table
    assert "| flat, frames add | sharded over 4 devices |" in table
    assert "| prioritised, frames set_priorities | one device |" in table


def test_frame_stack_tiny(tmp_path):
    table = run("frame_stack", tmp_path)
    for row in ["uniform add 128×1", "uniform sample 256", "prioritised add 8×1", "peak resident"]:
        assert row in table


def test_episodes_tiny(tmp_path):
    table = run("episodes", tmp_path)
    for row in ["sample_future(1.0) 256", "sample_episodes 64×50", "epoch of 8,192 items"]:
        assert row in table


def test_results_chart_draws_the_tables_it_reads(tmp_path):
    # The charts of results files whose runs cannot be repeated here (the H200's), read
    # from the files' tables.
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "results_chart.py"),
            "--out",
            str(tmp_path),
            "compare_family_h200",
            "compare_family",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "in the file" not in result.stderr + result.stdout  # each ratio as the file has it
    for name in ("compare_family_h200", "compare_family"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
