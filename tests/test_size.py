"""`size(state)`: how much every kind stores now, summed over rows."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_replay as er


ROWS, CAPACITY = 2, 6
EXAMPLE = {"obs": np.zeros(2, np.float32), "done": np.bool_(False)}


def _steps(steps: int) -> dict[str, Any]:
    return {"obs": jnp.ones((ROWS, steps, 2)), "done": jnp.zeros((ROWS, steps), bool)}


def _trajectory(kind: str) -> Any:
    settings: dict[str, Any] = dict(
        add_batch_size=ROWS,
        sample_batch_size=4,
        sample_sequence_length=2,
        period=1,
        min_length_time_axis=2,
        max_length_time_axis=CAPACITY,
    )
    if kind == "prioritised":
        return er.make_prioritised_trajectory_buffer(**settings)
    if kind == "strict":
        return er.make_trajectory_buffer(
            **settings, episode_end=lambda s: s["done"], boundary="strict"
        )
    if kind == "frames":
        return er.make_trajectory_buffer(
            **settings,
            episode_end=lambda s: s["done"],
            frame_stack=er.FrameStack(lambda s: s["obs"], 2),
        )
    return er.make_trajectory_buffer(**settings)


@pytest.mark.parametrize("kind", ["uniform", "prioritised", "strict", "frames"])
def test_trajectory_buffers_count_the_steps_stored(kind: str) -> None:
    buffer = _trajectory(kind)
    state = buffer.init(EXAMPLE)
    assert int(buffer.size(state)) == 0
    stored = 0
    for steps in [1, 3, 1, 4, 6]:  # the ring wraps after the third add
        state = buffer.add(state, _steps(steps))
        stored = min(stored + steps, CAPACITY)
        assert int(buffer.size(state)) == ROWS * stored
        assert buffer.size(state).dtype == jnp.int32


@pytest.mark.parametrize("prioritised", [False, True])
def test_flat_and_item_buffers_count_steps_and_items(prioritised: bool) -> None:
    make_flat = er.make_prioritised_flat_buffer if prioritised else er.make_flat_buffer
    make_item = er.make_prioritised_item_buffer if prioritised else er.make_item_buffer
    flat: Any = make_flat(max_length=8, min_length=2, sample_batch_size=2)
    items: Any = make_item(max_length=5, min_length=1, sample_batch_size=2, add_batches=True)
    flat_state, item_state = flat.init(np.float32(0)), items.init(np.float32(0))
    for i in range(1, 12):
        flat_state = flat.add(flat_state, np.float32(i))
        item_state = items.add(item_state, jnp.ones(2))
        assert int(flat.size(flat_state)) == min(i, 8)
        assert int(items.size(item_state)) == min(2 * i, 5)


def test_the_queue_counts_its_unread_steps() -> None:
    queue = er.make_trajectory_queue(
        max_length_time_axis=CAPACITY,
        add_batch_size=ROWS,
        add_sequence_length=2,
        sample_sequence_length=3,
    )
    state = queue.init(EXAMPLE)
    state = queue.add(state, _steps(2))
    state = queue.add(state, _steps(2))
    assert int(queue.size(state)) == ROWS * 4
    state, _ = queue.sample(state)
    assert int(queue.size(state)) == ROWS * 1
    state = queue.add(queue.add(state, _steps(2)), _steps(2))
    state = queue.add(state, _steps(2))  # does not fit: nothing written
    assert int(queue.size(state)) == ROWS * 5


def test_batched_states_and_jit() -> None:
    buffer = _trajectory("uniform")
    # States with a batch axis in front (as `jax.vmap` or `jax.pmap` of `add` make them).
    states = jax.vmap(lambda _: buffer.init(EXAMPLE))(jnp.arange(3))
    states = jax.vmap(buffer.add)(states, jax.tree.map(lambda x: jnp.stack([x] * 3), _steps(4)))
    np.testing.assert_array_equal(buffer.size(states), [8, 8, 8])
    assert int(jax.jit(buffer.size)(jax.tree.map(lambda x: x[0], states))) == 8


def test_totals_that_overflow_int32_are_refused() -> None:
    with pytest.raises(ValueError, match=r"holds 2147745792 steps.*`size` counts them in int32"):
        er.make_trajectory_buffer(
            add_batch_size=2**16,
            sample_batch_size=1,
            sample_sequence_length=1,
            period=1,
            min_length_time_axis=1,
            max_length_time_axis=2**15 + 4,
        )
    with pytest.raises(ValueError, match=r"`size` counts them in int32"):
        er.make_trajectory_queue(
            max_length_time_axis=2**20,
            add_batch_size=2**12,
            add_sequence_length=1,
            sample_sequence_length=1,
        )
