"""`_ring.read`: windows read as contiguous slices, with the wrapping ones re-read."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqx_replay import _ring


ROWS, CAPACITY = 3, 11


def storage():
    steps = np.arange(ROWS * CAPACITY).reshape(ROWS, CAPACITY)
    return {
        "obs": jnp.asarray(np.stack([steps, -steps], axis=-1), jnp.float32),
        "done": jnp.asarray(steps % 3 == 0),
    }


def expected(store, rows, starts, length):
    times = (np.asarray(starts)[:, None] + np.arange(length)) % CAPACITY
    return jax.tree.map(lambda x: np.asarray(x)[np.asarray(rows)[:, None], times], store)


@pytest.mark.parametrize("length", [1, 4, CAPACITY])
def test_every_start_reads_its_window_wrapping_or_not(length):
    store = storage()
    starts = jnp.tile(jnp.arange(CAPACITY), ROWS)
    rows = jnp.repeat(jnp.arange(ROWS), CAPACITY)
    got = jax.jit(_ring.read, static_argnums=3)(store, rows, starts, length)
    want = expected(store, rows, starts, length)
    assert jax.tree.all(jax.tree.map(np.array_equal, got, want))


def test_read_under_vmap():
    store = jax.tree.map(lambda x: jnp.stack([x, x + 1]), storage())
    rows = jnp.array([[0, 2, 1], [1, 1, 0]])
    starts = jnp.array([[9, 0, 10], [3, 8, 1]])  # windows of 4: the 9, 10 and 8 wrap
    got = jax.vmap(lambda s, r, t: _ring.read(s, r, t, 4))(store, rows, starts)
    for i in range(2):
        want = expected(jax.tree.map(lambda x: x[i], store), rows[i], starts[i], 4)
        assert jax.tree.all(jax.tree.map(np.array_equal, jax.tree.map(lambda x: x[i], got), want))


@pytest.mark.parametrize("width", [1, 5, CAPACITY])
def test_span_reads_every_start_wrapping_or_not(width):
    values = storage()["obs"][..., 0]
    for first in range(CAPACITY):
        got = jax.jit(_ring.span, static_argnums=2)(values, jnp.array(first), width)
        times = (first + np.arange(width)) % CAPACITY
        np.testing.assert_array_equal(got, np.asarray(values)[:, times])


@pytest.mark.parametrize(
    "columns,period,length", [(1, 1, 1), (1, 1, 4), (2, 1, 5), (3, 2, 4), (4, 3, 6)]
)
def test_ends_inside_matches_a_scan_of_each_window(columns, period, length):
    # Episode ends at random steps; with 4 columns of period 3 and length 6 the windows
    # cover more steps than the capacity (the gather path).
    ends = jnp.asarray(np.random.default_rng(columns * length).uniform(size=(ROWS, CAPACITY)) < 0.2)
    for first in range(CAPACITY):
        got = _ring.ends_inside(ends, jnp.array(first), columns, period, length)
        starts = first + period * np.arange(columns)
        times = (starts[:, None] + np.arange(length - 1)) % CAPACITY
        expected = np.asarray(ends)[:, times].any(axis=-1)
        np.testing.assert_array_equal(got, expected)
