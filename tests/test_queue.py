"""The trajectory queue: first in, first out per row against a reference under random
interleavings, Flashbax's states when used as Flashbax intends, nothing unread overwritten."""

import collections
import re
import warnings
from typing import Any

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import eqx_replay

from .helpers import tree_allclose


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import flashbax


ROWS = 2
EXAMPLE = {"id": jnp.int32(0), "obs": jnp.zeros(3, jnp.float32)}


def batch(first, steps):
    """Steps numbered `first, first + 1, ...` along each row (row `r` adds `1000 * r`)."""
    ids = np.arange(ROWS)[:, None] * 1000 + first + np.arange(steps)[None, :]
    obs = np.broadcast_to(ids[..., None], (ROWS, steps, 3)).astype(np.float32)
    return {"id": jnp.asarray(ids, jnp.int32), "obs": jnp.asarray(obs)}


class QueueReference:
    """Each row a deque of unread step ids, at most `capacity` long."""

    def __init__(self, capacity, length):
        self.capacity, self.length = capacity, length
        self.unread = collections.deque()
        self.written = self.read = self.refused = 0

    def add(self, first, steps):
        if steps > self.capacity - len(self.unread):
            self.refused += 1
            return
        self.unread.extend(range(first, first + steps))
        self.written += steps

    def sample(self):
        if len(self.unread) < self.length:
            return None
        self.read += self.length
        return [self.unread.popleft() for _ in range(self.length)]

    def check(self, state):
        assert int(state.write_index) == self.written % self.capacity
        assert int(state.read_index) == self.read % self.capacity
        assert bool(state.is_full) == (len(self.unread) == self.capacity)
        assert int(state.refused_adds) == self.refused


@st.composite
def histories(draw):
    capacity = draw(st.integers(1, 9))
    add_length = draw(st.integers(1, capacity))
    sample_length = draw(st.integers(1, capacity))
    ops = draw(
        st.lists(
            st.one_of(st.tuples(st.just("add"), st.integers(1, capacity)), st.just(("sample",))),
            min_size=1,
            max_size=14,
        )
    )
    return capacity, add_length, sample_length, ops


@settings(max_examples=60, deadline=None, derandomize=True)
@given(histories())
def test_first_in_first_out_against_a_reference(history):
    capacity, add_length, sample_length, ops = history
    queue = eqx_replay.make_trajectory_queue(
        max_length_time_axis=capacity,
        add_batch_size=ROWS,
        add_sequence_length=add_length,
        sample_sequence_length=sample_length,
    )
    reference = QueueReference(capacity, sample_length)
    state, counter = queue.init(EXAMPLE), 0
    for op in ops:
        assert bool(queue.can_sample(state)) == (len(reference.unread) >= sample_length)
        assert bool(queue.can_add(state)) == (add_length <= capacity - len(reference.unread))
        if op[0] == "add":
            state = queue.add(state, batch(counter, op[1]))
            reference.add(counter, op[1])
            counter += op[1]
        else:
            state, sample = queue.sample(state)
            expected = reference.sample()
            ids = np.asarray(sample.experience["id"])
            assert ids.shape == (ROWS, sample_length)
            if expected is None:
                assert np.all(ids == np.iinfo(np.int32).max)  # poison
                assert bool(jnp.all(jnp.isnan(sample.experience["obs"])))
            else:
                np.testing.assert_array_equal(ids, np.arange(ROWS)[:, None] * 1000 + expected)
        reference.check(state)


@pytest.mark.parametrize("capacity,add_length,sample_length", [(8, 3, 4), (6, 2, 6), (5, 5, 1)])
def test_same_states_as_flashbax_when_gated(capacity, add_length, sample_length):
    config: dict[str, Any] = dict(
        max_length_time_axis=capacity,
        add_batch_size=ROWS,
        add_sequence_length=add_length,
        sample_sequence_length=sample_length,
    )
    ours, theirs = (
        eqx_replay.make_trajectory_queue(**config),
        flashbax.make_trajectory_queue(**config),
    )
    state, fstate = ours.init(EXAMPLE), theirs.init(EXAMPLE)
    rng, counter = np.random.default_rng(0), 0
    for _ in range(25):
        assert bool(ours.can_add(state)) == bool(theirs.can_add(fstate))
        assert bool(ours.can_sample(state)) == bool(theirs.can_sample(fstate))
        if rng.random() < 0.5 and ours.can_add(state):
            new = batch(counter, add_length)
            counter += add_length
            state, fstate = ours.add(state, new), theirs.add(fstate, new)
        elif ours.can_sample(state):
            (state, sample), (fstate, fsample) = ours.sample(state), theirs.sample(fstate)
            np.testing.assert_array_equal(sample.experience["id"], fsample.experience["id"])
        for name in EXAMPLE:
            np.testing.assert_array_equal(state.experience[name], fstate.experience[name])
        assert int(state.write_index) == int(fstate.write_index)
        assert int(state.read_index) == int(fstate.read_index)
        assert bool(state.is_full) == bool(fstate.is_full)


def test_an_add_that_does_not_fit_writes_nothing():
    queue = eqx_replay.make_trajectory_queue(
        max_length_time_axis=6, add_batch_size=ROWS, add_sequence_length=4, sample_sequence_length=2
    )
    state = queue.add(queue.init(EXAMPLE), batch(0, 4))
    assert not bool(queue.can_add(state))
    before = jax.tree.map(np.asarray, state)
    state = queue.add(state, batch(100, 4))  # 4 steps, 2 free: refused
    assert int(state.refused_adds) == 1
    assert tree_allclose(jax.tree.map(np.asarray, state.experience), before.experience)
    state = queue.add(state, batch(4, 2))  # fits exactly: the queue is full
    assert bool(state.is_full) and int(state.refused_adds) == 1
    state, sample = queue.sample(state)
    np.testing.assert_array_equal(sample.experience["id"][0], [0, 1])


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (
            dict(sample_sequence_length=9),
            ValueError,
            "`sample_sequence_length` (9) must be <= the queue's time axis (8 steps per row)",
        ),
        (
            dict(add_sequence_length=9),
            ValueError,
            "`add_sequence_length` (9) must be <= the queue's time axis (8 steps per row)",
        ),
        (dict(add_batch_size=0), ValueError, "`add_batch_size` must be >= 1; got 0"),
        (dict(max_length_time_axis=0), ValueError, "`max_length_time_axis` must be >= 1; got 0"),
        (
            dict(max_size=1, add_batch_size=2),
            ValueError,
            "`max_size` (1) must be at least `add_batch_size` (2)",
        ),
    ],
)
def test_configuration_errors_name_the_argument(overrides, error, message):
    config: dict[str, Any] = dict(
        max_length_time_axis=8, add_batch_size=ROWS, add_sequence_length=2, sample_sequence_length=3
    )
    config.update(overrides)
    with pytest.raises(error, match=re.escape(message)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eqx_replay.make_trajectory_queue(**config)


def test_max_size_sets_the_time_axis_with_flashbaxs_warning():
    with pytest.warns(
        UserWarning, match="sets `max_length_time_axis` to `max_size // add_batch_size` = 5"
    ):
        queue = eqx_replay.make_trajectory_queue(
            max_length_time_axis=100,
            add_batch_size=2,
            add_sequence_length=2,
            sample_sequence_length=3,
            max_size=11,
        )
    assert queue.max_length_time_axis == 5


def test_bad_batches_and_states_are_named():
    queue = eqx_replay.make_trajectory_queue(
        max_length_time_axis=8, add_batch_size=ROWS, add_sequence_length=2, sample_sequence_length=3
    )
    state = queue.init(EXAMPLE)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`TrajectoryQueue.add`: leaf ['id'] has shape (3, 2); expected (2, t) with 1 <= t <= 8"
        ),
    ):
        queue.add(state, {"id": jnp.zeros((3, 2), jnp.int32), "obs": jnp.zeros((3, 2, 3))})
    other = eqx_replay.make_trajectory_queue(
        max_length_time_axis=7, add_batch_size=ROWS, add_sequence_length=2, sample_sequence_length=3
    )
    with pytest.raises(
        ValueError, match=re.escape("`TrajectoryQueue.sample`: state leaf ['id'] has shape (2, 8)")
    ):
        other.sample(state)
    assert int(queue.add(state, batch(0, 2)).write_index) == 2


def test_scan_vmap_and_no_retracing():
    queue = eqx_replay.make_trajectory_queue(
        max_length_time_axis=8, add_batch_size=ROWS, add_sequence_length=2, sample_sequence_length=4
    )

    @eqx.filter_jit
    def loop(state, batches):
        def body(state, new):
            state = queue.add(state, new)
            state, sample = queue.sample(state)
            return state, sample.experience["id"]

        return jax.lax.scan(body, state, batches)

    batches = jax.tree.map(lambda *x: jnp.stack(x), *[batch(2 * i, 2) for i in range(6)])
    state, ids = loop(queue.init(EXAMPLE), batches)
    # Every other step has 4 unread steps; those samples are steps 0-3, then 4-7, ...
    np.testing.assert_array_equal(ids[1][0], [0, 1, 2, 3])
    np.testing.assert_array_equal(ids[3][0], [4, 5, 6, 7])
    assert np.all(ids[0] == np.iinfo(np.int32).max)
    states = jax.vmap(lambda _: queue.init(EXAMPLE))(jnp.arange(3))
    states = jax.vmap(queue.add)(states, jax.tree.map(lambda x: jnp.stack([x] * 3), batch(0, 2)))
    assert np.all(np.asarray(states.write_index) == 2)
    with jax.log_compiles(False):
        state = queue.init(EXAMPLE)
        traced = eqx.debug.assert_max_traces(lambda s, b: queue.add(s, b), max_traces=1)
        add = jax.jit(traced)
        for i in range(3):
            state = add(state, batch(2 * i, 2))
    assert int(state.write_index) == 6


def test_add_and_sample_write_and_read_in_place():
    queue = eqx_replay.make_trajectory_queue(
        max_length_time_axis=1024,
        add_batch_size=16,
        add_sequence_length=8,
        sample_sequence_length=8,
    )
    state = queue.init({"obs": jnp.zeros(64)})
    for method, args in [("add", (state, {"obs": jnp.zeros((16, 8, 64))})), ("sample", (state,))]:
        hlo = getattr(queue, method).lower(*args).compile().as_text()
        assert "scatter" not in hlo
        assert "input_output_alias" in hlo
        copies = [
            line
            for line in hlo.splitlines()
            if " copy(" in line and line.split("=", 1)[-1].strip().startswith("f32[16,1024,64]")
        ]
        assert copies == [], method
