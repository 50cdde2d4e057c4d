"""A small buffer of 2 rows of 8 steps, windows of 2 steps every 2 (a prioritised one has 8
items), for the tests of limits, checks and compiled calls."""

from typing import Any

import jax.numpy as jnp

import eqx_replay


ROWS, CAPACITY, LENGTH, PERIOD = 2, 8, 2, 2
ITEMS = ROWS * CAPACITY // PERIOD
EXAMPLE = {"obs": jnp.zeros(3), "done": jnp.bool_(False)}


def config(**overrides) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        add_batch_size=ROWS,
        sample_batch_size=64,
        sample_sequence_length=LENGTH,
        period=PERIOD,
        min_length_time_axis=LENGTH,
        max_length_time_axis=CAPACITY,
    )
    kwargs.update(overrides)
    return kwargs


def batch(steps, rows=ROWS, value=1.0):
    return {
        "obs": jnp.full((rows, steps, 3), value, jnp.float32),
        "done": jnp.zeros((rows, steps), bool),
    }


def full_prioritised(exponent):
    """A prioritised buffer whose every item holds its first window, so that handle `i` is
    item `i`."""
    buffer = eqx_replay.make_prioritised_trajectory_buffer(**config(), priority_exponent=exponent)
    state = buffer.add(buffer.init(EXAMPLE), batch(CAPACITY))
    assert bool(jnp.all(state.valid))
    return buffer, state
