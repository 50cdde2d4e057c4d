"""The seed document (Flashbax's trajectory-buffer quickstart), step by step."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import eqx_replay as fbx


EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def test_seed_steps():
    add_batch_size, add_sequence_length = 6, 10
    buffer = fbx.make_trajectory_buffer(
        max_length_time_axis=32,
        min_length_time_axis=16,
        sample_batch_size=4,
        add_batch_size=add_batch_size,
        sample_sequence_length=8,
        period=1,
    )
    fake_timestep = {"obs": jnp.array([5, 4]), "reward": jnp.array(1.0)}
    state = buffer.init(fake_timestep)

    broadcast_fn = lambda x: jnp.broadcast_to(  # noqa: E731
        x, (add_batch_size, add_sequence_length, *x.shape)
    )
    fake_batch_sequence = jax.tree.map(broadcast_fn, fake_timestep)
    state = buffer.add(state, fake_batch_sequence)
    assert buffer.can_sample(state) == False  # noqa: E712
    state = buffer.add(state, fake_batch_sequence)
    assert buffer.can_sample(state)

    batch = buffer.sample(state, jax.random.PRNGKey(0))
    assert list(batch.experience.keys()) == ["obs", "reward"]
    assert batch.experience["reward"].shape == (4, 8)
    assert list(state.__dict__.keys()) == ["experience", "current_index", "is_full"]
    assert list(state.experience.keys()) == ["obs", "reward"]
    assert state.experience["obs"].shape == (6, 32, 2)
    # The seed's data is constant, so every sampled step is the fake timestep.
    assert bool(jnp.all(batch.experience["obs"] == jnp.array([5, 4])))
    assert bool(jnp.all(batch.experience["reward"] == 1.0))


@pytest.mark.parametrize("typecheck", [False, True])
def test_quickstart_example_runs(typecheck):
    # A fresh process: the example sets the CPU device count before JAX starts.
    script = EXAMPLES / "quickstart_trajectory_buffer.py"
    if typecheck:
        code = (
            "import runpy, jaxtyping\n"
            "with jaxtyping.install_import_hook('eqx_replay', 'beartype.beartype'):\n"
            f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
        )
        command = [sys.executable, "-W", "error", "-c", code]
    else:
        command = [sys.executable, "-W", "error", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "dict_keys(['obs', 'reward'])",
        "(4, 8)",
        "dict_keys(['experience', 'current_index', 'is_full'])",
        "dict_keys(['obs', 'reward'])",
        "(6, 32, 2)",
        "dict_keys(['obs', 'reward'])",
        "(4, 8)",
        "(2, 4, 8, 2)",
    ]


def test_prioritised_example_runs():
    script = EXAMPLES / "prioritised_sequences.py"
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5 and all(
        line.startswith(f"step {i}: loss ") for i, line in enumerate(lines)
    )


def test_episode_boundaries_example_runs():
    script = EXAMPLES / "episode_boundaries.py"
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("window (ends inside): done [")
    assert lines[1].startswith("window (no end before the last step): done [")
    assert "mask [1 1 1 1 1 1]" in lines[1]
    assert lines[2] == "mask is 'same episode as the first step' in all 256 windows: True"
    assert lines[3] == "n-step returns match a step-by-step loop: True"
    assert lines[4].startswith("windows that bootstrap: ") and lines[4].endswith(" of 256")
