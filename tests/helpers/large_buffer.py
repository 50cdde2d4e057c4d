"""A buffer of 16 rows of 1024 steps whose compiled code the tests read (no timing here: the
speed itself is measured side by side with Flashbax in `benchmarks/`)."""

import jax
import jax.numpy as jnp

import eqx_replay


ROWS, CAPACITY = 16, 1024
EXAMPLE = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
STORAGE_SHAPES = ["f32[16,1024,64]", "f32[16,1024]", "pred[16,1024]"]


def buffer_and_state():
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=8,
        sample_sequence_length=4,
        period=1,
        min_length_time_axis=4,
        max_length_time_axis=CAPACITY,
    )
    return buffer, buffer.init(EXAMPLE)


def compiled_add(steps):
    buffer, state = buffer_and_state()
    batch = jax.tree.map(lambda x: jnp.zeros((ROWS, steps, *x.shape), x.dtype), EXAMPLE)
    return buffer.add.lower(state, batch).compile().as_text()  # pyright: ignore[reportFunctionMemberAccess] # a jitted function


def storage_copies(hlo):
    return [
        line
        for line in hlo.splitlines()
        if " copy(" in line
        and any(line.split("=", 1)[-1].strip().startswith(s) for s in STORAGE_SHAPES)
    ]
