"""The buffer composes: jit, vmap, scan, pmap, an Equinox agent, no retracing (donation and
the compiled calls themselves: `test_jit.py`)."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_replay
import eqx_replay._ring as ring

from .helpers import to_numpy, tree_allclose
from .helpers.composing import (
    batches,
    CAPACITY,
    example,
    LENGTH,
    make_buffer,
    nth,
    ROWS,
    sequential,
)


def test_jit():
    buffer = make_buffer()
    data = batches(4, 5)
    expected = sequential(buffer, data, 4)
    add, sample = jax.jit(buffer.add), jax.jit(buffer.sample)
    state = buffer.init(example())
    for i in range(4):
        state = add(state, nth(data, i))
    assert tree_allclose(to_numpy(state), to_numpy(expected))
    key = jr.key(3)
    assert tree_allclose(sample(state, key), buffer.sample(expected, key))


@pytest.mark.parametrize("transform", [jax.vmap, jax.pmap])
def test_vmap_and_pmap_run_independent_buffers(transform):
    # pmap runs over the two fake CPU devices that conftest.py sets up.
    assert jax.local_device_count() == 2
    buffer = make_buffer()
    n = 2
    data = [batches(n, 5, key=k) for k in range(3)]
    states = transform(buffer.init)(jax.tree.map(lambda x: jnp.stack([x] * n), example()))
    for d in data:
        states = transform(buffer.add)(states, d)
    keys = jr.split(jr.key(0), n)
    samples = transform(buffer.sample)(states, keys)
    can = transform(buffer.can_sample)(states)
    for i in range(n):
        state = buffer.init(example())
        for d in data:
            state = buffer.add(state, nth(d, i))
        assert tree_allclose(to_numpy(nth(states, i)), to_numpy(state))
        assert tree_allclose(to_numpy(nth(samples, i)), to_numpy(buffer.sample(state, keys[i])))
        assert bool(can[i])


def _query_kinds() -> dict[str, tuple[Any, Any, int]]:
    """kind -> (buffer, one add's batch for one buffer, adds until it can be sampled)."""
    step = {"obs": jnp.ones(2, jnp.float32), "step": jnp.int32(1)}
    rows = jax.tree.map(lambda x: jnp.stack([x] * ROWS), step)
    pieces = jax.tree.map(lambda x: jnp.stack([x] * 2, axis=1), rows)
    flat: dict[str, Any] = dict(
        max_length=12, min_length=4, sample_batch_size=4, add_batch_size=ROWS
    )
    items: dict[str, Any] = dict(max_length=12, min_length=4, sample_batch_size=4)
    return {
        "trajectory": (make_buffer(), pieces, 2),
        "prioritised": (make_buffer(eqx_replay.make_prioritised_trajectory_buffer), pieces, 2),
        "flat": (eqx_replay.make_flat_buffer(**flat), rows, 2),
        "prioritised-flat": (eqx_replay.make_prioritised_flat_buffer(**flat), rows, 2),
        "item": (eqx_replay.make_item_buffer(**items), step, 4),
        "prioritised-item": (eqx_replay.make_prioritised_item_buffer(**items), step, 4),
        "queue": (
            eqx_replay.make_trajectory_queue(
                max_length_time_axis=8,
                add_batch_size=ROWS,
                add_sequence_length=2,
                sample_sequence_length=4,
            ),
            pieces,
            2,
        ),
    }


@pytest.mark.parametrize("kind", sorted(_query_kinds()))
def test_queries_of_pmapped_states_answer_per_buffer(kind):
    # `jax.pmap(buffer.add)` returns the devices' states stacked; `can_sample` (and
    # `can_add`) of that state, outside `pmap`, answer per buffer as Flashbax's do, while
    # `add` and `sample` refuse it.
    buffer, batch, adds = _query_kinds()[kind]
    per_device = jax.tree.map(lambda x: jnp.stack([x, x]), batch)
    states = jax.pmap(buffer.init)(jax.tree.map(lambda x: jnp.stack([x, x]), example()))
    np.testing.assert_array_equal(buffer.can_sample(states), [False, False])
    for _ in range(adds):
        states = jax.pmap(buffer.add)(states, per_device)
    np.testing.assert_array_equal(buffer.can_sample(states), [True, True])
    if isinstance(buffer, eqx_replay.TrajectoryQueue):
        np.testing.assert_array_equal(buffer.can_add(states), [True, True])
    else:
        mixer = eqx_replay.make_mixer([buffer, buffer], 4, [1, 1])
        np.testing.assert_array_equal(mixer.can_sample([states, states]), [True, True])
        with pytest.raises(ValueError, match=r"states\[0\] has batch axes \(2,\) .* \(\)"):
            mixer.can_sample([states, nth(states, 0)])
    # Two batch axes, buffers in different conditions: one answer each.
    empty = nth(jax.pmap(buffer.init)(jax.tree.map(lambda x: jnp.stack([x, x]), example())), 0)
    grid = jax.tree.map(lambda a, b: jnp.stack([jnp.stack([a, b])] * 3), nth(states, 0), empty)
    np.testing.assert_array_equal(buffer.can_sample(grid), [[True, False]] * 3)
    with pytest.raises(ValueError, match=r"state leaf .* has shape \(2, "):
        buffer.add(states, batch)


def test_queries_name_a_state_whose_batch_axes_disagree():
    buffer = make_buffer()
    states = jax.vmap(buffer.init)(jax.tree.map(lambda x: jnp.stack([x, x]), example()))
    bad = eqx.tree_at(lambda s: s.current_index, states, jnp.zeros(3, jnp.int32))
    with pytest.raises(
        ValueError,
        match=r"`TrajectoryBuffer.can_sample`: state leaf .current_index has shape \(3,\); "
        r"expected batch axes \(2,\)",
    ):
        buffer.can_sample(bad)


def test_scan_with_state_as_carry():
    buffer = make_buffer()
    data = batches(7, 3)
    expected = sequential(buffer, data, 7)

    @jax.jit
    def fill(state, data):
        def body(state, batch):
            state = buffer.add(state, batch)
            return state, buffer.can_sample(state)

        return jax.lax.scan(body, state, data)

    state, can = fill(buffer.init(example()), data)
    assert tree_allclose(to_numpy(state), to_numpy(expected))
    np.testing.assert_array_equal(can, [False, True, True, True, True, True, True])


def test_scan_add_and_sample_fused():
    buffer = make_buffer()
    state = sequential(buffer, batches(2, 6), 2)
    data = batches(10, 1, key=1, first_step=1000)

    @jax.jit
    def loop(state, data, key):
        def body(state, inputs):
            batch, key = inputs
            state = buffer.add(state, batch)
            return state, buffer.sample(state, key).experience["step"]

        return jax.lax.scan(body, state, (data, jr.split(key, 10)))

    state, steps = loop(state, data, jr.key(0))
    assert steps.shape == (10, 5, LENGTH)
    # Every sampled window holds consecutive steps of one row.
    assert bool(jnp.all(jnp.diff(steps, axis=-1) > 0))
    assert int(state.current_index) == (12 + 10) % CAPACITY


class Agent(eqx.Module):
    model: eqx.nn.Linear
    buffer_state: eqx_replay.TrajectoryBufferState


def test_state_inside_an_equinox_agent():
    buffer = make_buffer()
    agent = Agent(eqx.nn.Linear(2, 1, key=jr.key(0)), buffer.init(example()))

    def loss(model, sample):
        pred = jax.vmap(jax.vmap(model))(sample.experience["obs"])
        return jnp.mean(pred**2)

    @eqx.filter_jit
    def train_step(agent, batch, key):
        agent = eqx.tree_at(lambda a: a.buffer_state, agent, buffer.add(agent.buffer_state, batch))
        sample = buffer.sample(agent.buffer_state, key)
        # Train the model only: the buffer state is not a parameter.
        params, rest = eqx.partition(agent, eqx.is_inexact_array)
        params = eqx.tree_at(
            lambda a: a.buffer_state,
            params,
            replace_fn=lambda s: jax.tree.map(lambda _: None, s),
        )
        grads = eqx.filter_grad(lambda p: loss(eqx.combine(p, rest).model, sample))(params)
        model = jax.tree.map(lambda w, g: w - 0.1 * g, agent.model, grads.model)
        return eqx.tree_at(lambda a: a.model, agent, model), grads

    data = batches(3, 4)
    for i in range(3):
        agent, grads = train_step(agent, nth(data, i), jr.key(i))
    assert all(
        leaf is None for leaf in jax.tree.leaves(grads.buffer_state, is_leaf=lambda x: x is None)
    )
    assert float(jnp.abs(grads.model.weight).sum()) > 0
    assert int(agent.buffer_state.current_index) == 0 and bool(agent.buffer_state.is_full)


def test_no_retracing(monkeypatch):
    # A capacity no other test uses, so the compiled code is not cached yet.
    buffer = make_buffer(max_length_time_axis=23)
    traced_add = eqx.debug.assert_max_traces(ring.advance, max_traces=1)
    traced_sample = eqx.debug.assert_max_traces(ring.num_windows, max_traces=1)
    monkeypatch.setattr(ring, "advance", traced_add)
    monkeypatch.setattr(ring, "num_windows", traced_sample)
    state = buffer.init(example())
    data = batches(20, 3)
    for i in range(20):
        state = buffer.add(state, nth(data, i))
        if buffer.can_sample(state):
            buffer.sample(state, jr.key(i))
    assert eqx.debug.get_num_traces(traced_add) == 1
    assert eqx.debug.get_num_traces(traced_sample) == 1
    # A different time length is a different shape: exactly one new trace.
    with pytest.raises(RuntimeError, match="can only be traced 1 times"):
        buffer.add(state, nth(batches(1, 2), 0))
