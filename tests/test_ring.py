"""`_ring`: the circular time axis. Windows read as contiguous slices (the wrapping ones
re-read), spans, episode ends inside windows, the index arithmetic at the largest time axis,
and each accelerator branch against the CPU's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_replay._ring as ring
from eqx_replay import _ring
from eqx_replay._config import INT32_MAX


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


@pytest.mark.parametrize("read", [_ring.read, _ring._read_blocks, _ring.read_each_step])
@pytest.mark.parametrize("length", [1, 4, CAPACITY])
def test_every_start_reads_its_window_wrapping_or_not(length, read):
    # `read` chooses between the other two by how many windows can wrap: each is checked.
    store = storage()
    starts = jnp.tile(jnp.arange(CAPACITY), ROWS)
    rows = jnp.repeat(jnp.arange(ROWS), CAPACITY)
    got = jax.jit(read, static_argnums=3)(store, rows, starts, length)
    want = expected(store, rows, starts, length)
    assert jax.tree.all(jax.tree.map(np.array_equal, got, want))


@pytest.mark.parametrize("samples,length", [(2, 4), (3, 4), (33, 4), (12, CAPACITY)])
def test_the_read_is_chosen_by_how_many_windows_can_wrap(samples, length):
    # Few wrapping windows expected (`samples * (length - 1) / capacity`): blocks, the
    # wrapping ones re-read in a loop; many: every step gathered, no loop.
    store = storage()
    rows = jnp.arange(samples) % ROWS
    starts = (jnp.arange(samples) * 5) % CAPACITY
    read = jax.jit(_ring.read, static_argnums=3)
    got = read(store, rows, starts, length)
    assert jax.tree.all(jax.tree.map(np.array_equal, got, expected(store, rows, starts, length)))
    looped = "while" in read.lower(store, rows, starts, length).as_text()
    assert looped == (samples * (length - 1) <= _ring._LOOP_WRAPS * CAPACITY)


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


def test_ring_arithmetic_is_exact_at_the_largest_time_axis():
    """The index arithmetic at the largest allowed time axis, against Python's integers."""
    capacity = INT32_MAX // 2
    for current, steps in [(capacity - 1, capacity), (capacity - 1, 1), (7, capacity - 3)]:
        index, full = ring.advance(jnp.int32(current), jnp.bool_(False), steps, capacity)
        assert int(index) == (current + steps) % capacity
        assert bool(full) == (current + steps >= capacity)
    length, period = 5, 3
    count = int(ring.num_windows(jnp.int32(capacity - 1), jnp.bool_(True), capacity, length, 3))
    assert count == (capacity - length) // period + 1
    window = jnp.asarray([0, count - 1], jnp.int32)
    starts = ring.window_start(window, jnp.int32(capacity - 1), jnp.bool_(True), capacity, 3)
    expected = [(capacity - 1 + int(w) * period) % capacity for w in window]
    assert [int(s) for s in starts] == expected
    # The newest window ends at the step before the write head, never after.
    last = expected[1]
    assert (last + length - 1) % capacity <= capacity - 2


# What accelerators compile (`_control.by_platform` picks it when lowering for GPU or TPU)
# must agree with what the CPU compiles: checked here, on the CPU, branch against branch.


@pytest.mark.parametrize("length", [1, 2, 5, 10])
def test_the_accelerator_read_matches_the_cpu_read(length):
    storage = {
        "x": jnp.arange(3 * 10 * 2, dtype=jnp.float32).reshape(3, 10, 2),
        "done": jnp.arange(30).reshape(3, 10) % 3 == 0,
    }
    rows = jnp.repeat(jnp.arange(3), 10)
    starts = jnp.tile(jnp.arange(10), 3)
    cpu = jax.jit(lambda s, r, t: _ring._read_blocks(s, r, t, length))(storage, rows, starts)
    other = jax.jit(lambda s, r, t: _ring.read_each_step(s, r, t, length))(storage, rows, starts)
    for a, b in zip(jax.tree.leaves(cpu), jax.tree.leaves(other)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_the_accelerator_write_matches_the_cpu_write(steps):
    # `_ring.write_if`'s two branches (`_control.by_platform` picks one when lowering),
    # checked against each other on the CPU at every write head, written or refused.
    from eqx_replay import _ring

    storage = jnp.arange(2 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 3)
    new = -jnp.arange(2 * steps * 3, dtype=jnp.float32).reshape(2, steps, 3) - 1
    cpu = jax.jit(_ring._write_wrapping)
    other = jax.jit(_ring._write_if_selected)
    for index in range(8):
        for ok in (True, False):
            args = (storage, new, jnp.int32(index), jnp.array(ok))
            want = np.asarray(storage).copy()
            if ok:
                want[:, (index + np.arange(steps)) % 8] = np.asarray(new)
            np.testing.assert_array_equal(cpu(*args), want)
            np.testing.assert_array_equal(other(*args), want)
