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
