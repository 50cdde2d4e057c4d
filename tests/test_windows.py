"""`_windows`: windows as items. The windows a write completes and overwrites, exact at the
largest time axis, and updated as slices of consecutive items."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_replay
import eqx_replay._ring as ring
from eqx_replay._config import INT32_MAX

from .helpers.large_buffer import CAPACITY, EXAMPLE, ROWS


def changed_windows_reference(current, steps, length, period, capacity):
    """Python's integers: the windows a write completes (they end inside it) and those it
    overwrites (they start inside it, and were not completed by it)."""
    grid = lambda first, last: {s % capacity for s in range(first, last) if s % period == 0}  # noqa: E731
    completed = grid(current - length + 1, current + steps - length + 1)
    return completed, grid(current, current + steps) - completed


@pytest.mark.parametrize("period,length", [(1, 3), (7, 3), (2, 9)])
@pytest.mark.parametrize("largest", [False, True])
def test_window_bookkeeping_is_exact_at_the_largest_time_axis(period, length, largest):
    capacity = INT32_MAX // 4 if largest else 70
    capacity -= capacity % period
    for current in (0, 1, period, capacity - 1, capacity - period, capacity - length):
        for steps in (1, 2, period + 1, 3 * period + length):
            starts, real = ring.changed_window_runs(
                jnp.int32(current), steps, length, period, capacity
            )
            starts, real = np.asarray(starts), np.asarray(real)
            got = [sorted(int(x) for x in run[ok]) for run, ok in zip(starts, real)]
            expected = changed_windows_reference(current, steps, length, period, capacity)
            assert got == [sorted(e) for e in expected], (current, steps)
            new_index = (current + steps) % capacity
            complete = ring.window_complete(
                jnp.asarray(starts), jnp.int32(new_index), jnp.bool_(True), capacity, length
            )
            for start, ok in zip(starts.reshape(-1), np.asarray(complete).reshape(-1)):
                ahead = (new_index - 1 - int(start)) % capacity + 1
                assert bool(ok) == (ahead >= length)


@pytest.mark.parametrize(
    "make,kwargs",
    [
        (eqx_replay.make_prioritised_trajectory_buffer, {}),
        (
            eqx_replay.make_trajectory_buffer,
            dict(episode_end=lambda step: step["done"], boundary="strict"),
        ),
    ],
)
@pytest.mark.parametrize("period", [1, 3])
def test_sum_tree_add_of_one_step_writes_slices_in_place(make, kwargs, period):
    # Items are numbered column by column, so the windows one step completes and the
    # windows it overwrites are two runs of consecutive items: slices, not scatters.
    buffer = make(
        add_batch_size=ROWS,
        sample_batch_size=8,
        sample_sequence_length=4,
        period=period,
        min_length_time_axis=4,
        max_length_time_axis=CAPACITY // period * period,
        **kwargs,
    )
    state = buffer.init(EXAMPLE)
    batch = jax.tree.map(lambda x: jnp.zeros((ROWS, 1, *x.shape), x.dtype), EXAMPLE)
    hlo = buffer.add.lower(state, batch).compile().as_text()  # pyright: ignore[reportFunctionMemberAccess] # a jitted function
    assert "scatter" not in hlo
    assert "sort" not in hlo
    entry = hlo[hlo.index("ENTRY") :]
    # No copy of anything bigger than a scalar: every array is updated in place.
    assert re.findall(r"= \w+\[\d[^\]]*\]\S* copy\(", entry) == []
