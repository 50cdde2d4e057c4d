"""Everything still works with `jax_enable_x64` on (Python ints then become 64-bit arrays,
and `lax` operations do not promote mixed integer widths). Run in a subprocess, since the
flag is global to the process."""

import os
import subprocess
import sys
import textwrap


SCRIPT = textwrap.dedent(
    """
    import warnings

    import jax
    import jax.numpy as jnp
    import numpy as np

    import eqx_replay

    warnings.simplefilter("ignore")
    assert jax.config.jax_enable_x64
    example = {"obs": jnp.zeros(2, jnp.float32), "done": jnp.bool_(False)}
    for make in (
        eqx_replay.make_trajectory_buffer,
        eqx_replay.make_prioritised_trajectory_buffer,
    ):
        for period in (1, 2):
            for boundary in ("ignore", "mask", "strict"):
                buffer = make(
                    add_batch_size=2,
                    sample_batch_size=4,
                    sample_sequence_length=3,
                    period=period,
                    min_length_time_axis=3,
                    max_length_time_axis=8,
                    episode_end=lambda step: step["done"],
                    boundary=boundary,
                )
                state = buffer.init(example)
                for steps in (1, 3, 8, 2):
                    batch = {
                        "obs": jnp.ones((2, steps, 2), jnp.float32),
                        "done": jnp.asarray(np.arange(2 * steps).reshape(2, steps) % 5 == 4),
                    }
                    state = buffer.add(state, batch)
                    sample = buffer.sample(state, jax.random.key(steps))
                    assert sample.experience["obs"].shape == (4, 3, 2)
                    if hasattr(sample, "indices"):
                        priorities = jnp.full(4, 2.0, jnp.float32)
                        state = buffer.set_priorities(state, sample.indices, priorities)
    print("ok")
    """
)


def test_buffers_work_with_x64_enabled():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_ENABLE_X64": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip() == "ok"
