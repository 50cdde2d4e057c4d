"""A trajectory buffer of 3 rows of 12 steps and batches whose `step` leaf counts, for the
tests of composition (`test_transforms.py`) and of compiled calls (`test_jit.py`)."""

from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr

import eqx_replay


ROWS, CAPACITY, LENGTH = 3, 12, 4


def make_buffer(make=eqx_replay.make_trajectory_buffer, **overrides):
    config: dict[str, Any] = dict(
        add_batch_size=ROWS,
        sample_batch_size=5,
        sample_sequence_length=LENGTH,
        period=2,
        min_length_time_axis=LENGTH,
        max_length_time_axis=CAPACITY,
    )
    config.update(overrides)
    return make(**config)


def example():
    return {"obs": jnp.zeros(2, jnp.float32), "step": jnp.int32(0)}


def batches(count, steps, key=0, first_step=0):
    """`count` batches; along each row the `step` leaf increases from batch to batch."""
    obs = jr.normal(jr.key(key), (count, ROWS, steps, 2))
    step = jnp.arange(count * ROWS * steps, dtype=jnp.int32).reshape(count, ROWS, steps)
    step = step + first_step
    return {"obs": obs, "step": step}


def nth(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def sequential(buffer, stacked, count):
    state = buffer.init(example())
    for i in range(count):
        state = buffer.add(state, nth(stacked, i))
    return state
