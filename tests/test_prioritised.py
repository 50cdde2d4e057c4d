"""The prioritised trajectory buffer against its numpy reference, and its guarantees."""

import collections
import inspect
import re
import warnings

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings

import eqx_replay
import eqx_replay._sum_tree as sum_tree
from eqx_replay._sum_tree import SMALLEST

from .helpers import check_tree, quiet, to_numpy, tree_allclose
from .helpers.small_buffer import batch, full_prioritised, ITEMS
from .reference import PrioritisedReference


ROW_CODE = 100_000  # a step's `step` leaf is `row * ROW_CODE + global time`


def make(rows, capacity, length, period, samples=64, exponent=0.6, **kwargs):
    with quiet():
        return eqx_replay.make_prioritised_trajectory_buffer(
            add_batch_size=rows,
            sample_batch_size=samples,
            sample_sequence_length=length,
            period=period,
            min_length_time_axis=length,
            max_length_time_axis=capacity,
            priority_exponent=exponent,
            **kwargs,
        )


def steps_batch(rows, first, steps):
    times = np.arange(first, first + steps)
    code = np.arange(rows)[:, None] * ROW_CODE + times[None, :]
    return {"step": jnp.asarray(code, jnp.int32)}


EXAMPLE = {"step": jnp.int32(0)}


def check_against(state, ref):
    np.testing.assert_array_equal(np.asarray(state.valid), ref.valid())
    np.testing.assert_array_equal(np.asarray(state.generation), ref.generation)
    leaves = np.asarray(state.priorities.get(jnp.arange(ref.num_items)))
    np.testing.assert_allclose(leaves, ref.priority, rtol=1e-6)
    np.testing.assert_allclose(float(state.max_priority), ref.max_priority, rtol=1e-6)
    check_tree(state.priorities)


def check_sample(buffer, state, ref, sample):
    steps = np.asarray(sample.experience["step"])
    if not ref.valid().any():
        assert (steps == np.iinfo(np.int32).max).all()
        np.testing.assert_array_equal(np.asarray(sample.probabilities), 0)
        return
    rows, first = np.divmod(steps[:, 0], ROW_CODE)
    # Consecutive steps of one row, all still stored: never across the write head.
    assert (steps - steps[:, :1] == np.arange(buffer.sample_sequence_length)).all()
    assert (first >= ref.total - ref.capacity).all() and (first + ref.length <= ref.total).all()
    items = np.asarray(sample.indices) % ref.num_items
    assert (ref.priority[items] > 0).all()
    probabilities = ref.priority[items] / ref.priority.sum()
    np.testing.assert_allclose(np.asarray(sample.probabilities), probabilities, rtol=1e-5)
    windows = np.array([ref.window(item) for item in items])
    np.testing.assert_array_equal(windows[:, 0], rows)
    np.testing.assert_array_equal(windows[:, 1], first % ref.capacity)


@st.composite
def scenarios(draw):
    rows = draw(st.integers(1, 3))
    period = draw(st.integers(1, 3))
    capacity = period * draw(st.integers(1, 6))
    length = draw(st.integers(1, capacity))
    ops = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("add"), st.integers(1, capacity)),
                st.tuples(st.just("set"), st.integers(0, 2**16)),
                st.tuples(st.just("sample"), st.integers(0, 2**16)),
            ),
            min_size=1,
            max_size=12,
        )
    )
    return rows, capacity, length, period, ops


@settings(max_examples=150, deadline=None, derandomize=True)
@given(scenarios())
def test_matches_reference(scenario):
    rows, capacity, length, period, ops = scenario
    buffer = make(rows, capacity, length, period)
    ref = PrioritisedReference(rows, capacity, length, period, 0.6)
    state = buffer.init(EXAMPLE)
    last = None  # the most recent sample, whose indices may have gone stale since
    for op, arg in ops:
        if op == "add":
            state = buffer.add(state, steps_batch(rows, ref.total, arg))
            ref.add(arg)
        elif op == "sample":
            last = buffer.sample(state, jax.random.key(arg))
            check_sample(buffer, state, ref, last)
        elif last is not None:
            rng = np.random.default_rng(arg)
            values = rng.uniform(0, 3, last.indices.shape).astype(np.float32)
            values[rng.random(values.shape) < 0.1] = np.nan  # ignored, never applied
            state = buffer.set_priorities(state, last.indices, jnp.asarray(values))
            ref.set_priorities(last.indices, values)
        check_against(state, ref)
        assert bool(buffer.can_sample(state)) == (ref.total >= length and ref.valid().any())


@pytest.mark.parametrize("period,length,rows", [(1, 5, 4), (3, 7, 12)])
def test_matches_reference_on_a_tree_of_two_levels(period, length, rows):
    # About 2,000 items: `add` updates two levels of groups by slices (and by a scatter for
    # adds of more than `period` steps).
    capacity = 512 // period * period
    buffer = make(rows, capacity, length, period, samples=16)
    ref = PrioritisedReference(rows, capacity, length, period, 0.6)
    state = buffer.init(EXAMPLE)
    rng = np.random.default_rng(period)
    for i in range(40):
        steps = int(rng.choice([1, 1, 2, period + 1, 37]))
        state = buffer.add(state, steps_batch(rows, ref.total, steps))
        ref.add(steps)
        if i % 4 == 3:
            sample = buffer.sample(state, jax.random.key(i))
            check_sample(buffer, state, ref, sample)
            values = rng.uniform(0.1, 3, sample.indices.shape).astype(np.float32)
            state = buffer.set_priorities(state, sample.indices, jnp.asarray(values))
            ref.set_priorities(sample.indices, values)
    assert len(sum_tree._level_sizes(ref.num_items)) == 3
    check_against(state, ref)


def test_frequencies_follow_priority_to_the_exponent():
    rows, capacity, length, period = 2, 12, 3, 3
    buffer = make(rows, capacity, length, period, samples=8192, exponent=0.5)
    state = buffer.init(EXAMPLE)
    state = buffer.add(state, steps_batch(rows, 0, 12))
    state = buffer.add(state, steps_batch(rows, 12, 1))  # the window at 12 crosses the head
    sample = buffer.sample(state, jax.random.key(0))
    items = np.unique(np.asarray(sample.indices))
    raw = np.arange(1, items.size + 1, dtype=np.float32) ** 2
    state = buffer.set_priorities(state, jnp.asarray(items), jnp.asarray(raw))
    counts = collections.Counter()
    for seed in range(4):
        sample = buffer.sample(state, jax.random.key(seed + 1))
        counts.update((np.asarray(sample.indices) % (rows * capacity // period)).tolist())
    expected = np.sqrt(raw.astype(np.float64))
    expected /= expected.sum()
    observed = [counts[item % (rows * capacity // period)] for item in items]
    assert sum(observed) == 4 * 8192  # never an item outside the valid ones
    assert scipy.stats.chisquare(observed, expected * sum(observed)).pvalue > 1e-4


def test_stale_update_is_ignored():
    buffer = make(1, 8, 2, 2, samples=16, exponent=1.0)
    state = buffer.add(buffer.init(EXAMPLE), steps_batch(1, 0, 8))
    stale = buffer.sample(state, jax.random.key(0))
    state = buffer.add(state, steps_batch(1, 8, 8))  # every window rewritten
    before = to_numpy(state.priorities)
    state = buffer.set_priorities(state, stale.indices, jnp.full(16, 7.0))
    assert tree_allclose(to_numpy(state.priorities), before)
    fresh = buffer.sample(state, jax.random.key(1))
    state = buffer.set_priorities(state, fresh.indices, jnp.full(16, 7.0))
    assert float(state.max_priority) == 7.0


def test_zero_total_never_gives_nan():
    buffer = make(1, 8, 2, 2, samples=16)
    state = buffer.add(buffer.init(EXAMPLE), steps_batch(1, 0, 8))
    sample = buffer.sample(state, jax.random.key(0))
    state = buffer.set_priorities(state, sample.indices, jnp.zeros(16))
    assert float(state.priorities.total()) == 0 and not bool(buffer.can_sample(state))
    sample = buffer.sample(state, jax.random.key(1))
    assert not bool(jnp.any(jnp.isnan(sample.probabilities)))
    np.testing.assert_array_equal(np.asarray(sample.probabilities), 0)
    assert bool(jnp.all(sample.experience["step"] == jnp.iinfo(jnp.int32).max))
    np.testing.assert_array_equal(
        np.asarray(eqx_replay.importance_weights(sample.probabilities, 0.4)), 0
    )


def test_importance_weights():
    w = eqx_replay.importance_weights(jnp.array([0.1, 0.2, 0.4]), 1.0)
    np.testing.assert_allclose(np.asarray(w), [1.0, 0.5, 0.25])
    np.testing.assert_allclose(
        np.asarray(eqx_replay.importance_weights(jnp.array([0.1, 0.4]), 0.5)), [1.0, 0.5]
    )


def test_capacity_rounded_down_to_the_period():
    with pytest.warns(UserWarning, match="rounding it down to 9"):
        buffer = eqx_replay.make_prioritised_trajectory_buffer(
            add_batch_size=1,
            sample_batch_size=2,
            sample_sequence_length=3,
            period=3,
            min_length_time_axis=3,
            max_length_time_axis=10,
        )
    assert buffer.max_length_time_axis == 9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            ValueError,
            match=re.escape("`sample_sequence_length` (10) must be <= the time axis rounded down"),
        ):
            eqx_replay.make_prioritised_trajectory_buffer(
                add_batch_size=1,
                sample_batch_size=2,
                sample_sequence_length=10,
                period=3,
                min_length_time_axis=10,
                max_length_time_axis=10,
            )
    with pytest.raises(ValueError, match="`priority_exponent` must be finite in float32 and >= 0"):
        make(1, 8, 2, 2, exponent=-1.0)


@pytest.mark.parametrize(
    "indices,priorities,error,message",
    [
        (
            jnp.zeros(4),
            jnp.ones(4),
            TypeError,
            "`indices` must be a 1-d integer array; got float32[4]",
        ),
        (
            jnp.zeros(4, jnp.int32),
            jnp.ones(4, jnp.int32),
            TypeError,
            "`priorities` must be a 1-d float array; got int32[4]",
        ),
        (
            jnp.zeros((2, 2), jnp.int32),
            jnp.ones((2, 2)),
            TypeError,
            "`indices` must be a 1-d integer array; got int32[2, 2]",
        ),
        (
            jnp.zeros(4, jnp.int32),
            jnp.ones(3),
            ValueError,
            "`priorities` has shape (3,) but `indices` has shape (4,)",
        ),
    ],
)
def test_bad_set_priorities(indices, priorities, error, message):
    buffer = make(1, 8, 2, 2, samples=4)
    state = buffer.add(buffer.init(EXAMPLE), steps_batch(1, 0, 8))
    before = to_numpy(state)
    with pytest.raises(error, match=re.escape(message)):
        buffer.set_priorities(state, indices, priorities)
    assert tree_allclose(to_numpy(state), before)


def test_invalid_priority_values_are_ignored_and_infinity_is_the_largest():
    buffer = make(1, 8, 2, 2, samples=4, exponent=1.0)
    state = buffer.add(buffer.init(EXAMPLE), steps_batch(1, 0, 8))
    before = np.asarray(state.priorities.nodes)
    # Items 0-3 hold their first windows: their handles are 0-3.
    state = buffer.set_priorities(state, jnp.arange(3), jnp.array([-1.0, jnp.nan, -jnp.inf]))
    np.testing.assert_array_equal(np.asarray(state.priorities.nodes), before)
    # A priority beyond float32's range (infinite, or a float64 that JAX turns into one)
    # is stored as the largest value a leaf holds.
    state = buffer.set_priorities(state, jnp.arange(1), jnp.array([jnp.inf]))
    assert float(state.priorities.get(jnp.int32(0))) == float(sum_tree.largest_leaf(4))
    assert np.isfinite(float(state.priorities.total()))


@pytest.mark.parametrize("transform", ["jit", "vmap", "scan"])
def test_composes(transform):
    buffer = make(2, 8, 2, 2, samples=4)
    data = jnp.stack([steps_batch(2, 4 * i, 4)["step"] for i in range(3)])
    key = jax.random.key(0)

    def run(state, data):
        def body(state, step):
            state = buffer.add(state, {"step": step})
            sample = buffer.sample(state, key)
            state = buffer.set_priorities(state, sample.indices, jnp.ones(4) * 2)
            return state, sample.experience["step"]

        return jax.lax.scan(body, state, data)

    expected_state, expected = run(buffer.init(EXAMPLE), data)
    if transform == "jit":
        state, out = jax.jit(run)(buffer.init(EXAMPLE), data)
    elif transform == "vmap":
        states = jax.vmap(buffer.init)({"step": jnp.zeros(2, jnp.int32)})
        state, out = jax.vmap(run, in_axes=(0, None))(states, data)
        state, out = jax.tree.map(lambda x: x[1], state), out[1]
    else:
        state, out = run(buffer.init(EXAMPLE), data)
    assert tree_allclose(to_numpy(state), to_numpy(expected_state))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    assert bool(eqx.tree_equal(buffer, make(2, 8, 2, 2, samples=4)))


def test_pmap_matches_one_buffer_per_device():
    buffer = make(2, 8, 2, 2, samples=4)
    data = jnp.stack([steps_batch(2, 4 * i, 4)["step"] for i in range(3)])
    states = jax.pmap(buffer.init)({"step": jnp.zeros(2, jnp.int32)})
    for step in data:
        states = jax.pmap(buffer.add)(states, {"step": jnp.stack([step, step + 7])})
    keys = jax.random.split(jax.random.key(0), 2)
    samples = jax.pmap(buffer.sample)(states, keys)
    states = jax.pmap(buffer.set_priorities)(states, samples.indices, jnp.ones((2, 4)) * 3)
    for device in range(2):
        state = buffer.init(EXAMPLE)
        for step in data:
            state = buffer.add(state, {"step": step + 7 * device})
        sample = buffer.sample(state, keys[device])
        state = buffer.set_priorities(state, sample.indices, jnp.ones(4) * 3)
        assert tree_allclose(to_numpy(jax.tree.map(lambda x: x[device], states)), to_numpy(state))


def test_no_retracing(monkeypatch):
    import eqx_replay._ring as ring

    buffer = make(1, 22, 2, 2, samples=3)  # a capacity no other test uses
    traced_add = eqx.debug.assert_max_traces(ring.changed_window_runs, max_traces=1)
    traced_tree = eqx.debug.assert_max_traces(sum_tree._last_occurrence, max_traces=1)
    monkeypatch.setattr(ring, "changed_window_runs", traced_add)
    monkeypatch.setattr(sum_tree, "_last_occurrence", traced_tree)
    state = buffer.init(EXAMPLE)
    for i in range(12):
        state = buffer.add(state, steps_batch(1, 3 * i, 3))
        sample = buffer.sample(state, jax.random.key(i))
        state = buffer.set_priorities(state, sample.indices, jnp.ones(3))
    assert eqx.debug.get_num_traces(traced_add) == 1
    assert eqx.debug.get_num_traces(traced_tree) == 1


@pytest.mark.parametrize(
    "exponent,priorities",
    [
        (2.0, [1e20] + [1.0] * (ITEMS - 1)),  # a TD error whose square overflows
        (1e6, [2.0] + [1.0] * (ITEMS - 1)),  # an exponent that makes 2 overflow
        (1.0, [3e38] + [1.0] * (ITEMS - 1)),  # one priority near float32's largest
        (1.0, [1e38] * ITEMS),  # finite priorities whose sum overflows
        (1.0, [1e-42] * ITEMS),  # subnormal priorities, flushed to zero by the CPU
        (0.5, [3e38, 1e-42] * (ITEMS // 2)),  # both ends at once
        (1.0, [1e-42] + [0.0] * (ITEMS - 1)),  # a single subnormal priority
    ],
)
def test_priorities_at_float32_limits_stay_sampleable(exponent, priorities):
    buffer, state = full_prioritised(exponent)
    priorities = jnp.asarray(priorities, jnp.float32)
    state = buffer.set_priorities(state, jnp.arange(ITEMS), priorities)
    leaves = np.asarray(state.priorities.get(jnp.arange(ITEMS)))
    total = float(state.priorities.total())
    assert np.isfinite(total) and total > 0
    # Every window with a positive priority keeps a positive, finite share of the total.
    positive = np.asarray(priorities) > 0
    assert np.all(leaves[positive] >= SMALLEST) and np.all(np.isfinite(leaves))
    assert np.all(leaves[~positive] == 0)
    assert np.isfinite(float(state.max_priority))
    assert bool(buffer.can_sample(state))
    sample = buffer.sample(state, jr.key(0))
    items = np.asarray(sample.indices) % ITEMS
    assert np.all(positive[items])
    probabilities = np.asarray(sample.probabilities)
    assert np.all(probabilities > 0) and np.all(np.isfinite(probabilities))
    weights = np.asarray(eqx_replay.importance_weights(sample.probabilities, 1.0))
    assert np.all(weights > 0) and np.all(weights <= 1) and weights.max() == 1
    assert np.all(np.isfinite(np.asarray(sample.experience["obs"])))
    # New windows inherit a finite maximum.
    state = buffer.add(state, batch(2, value=2.0))
    assert np.isfinite(float(state.priorities.total()))


def test_exponent_zero_never_draws_an_item_set_to_priority_zero():
    buffer, state = full_prioritised(0.0)
    priorities = jnp.asarray([0.0, 5.0, 0.0, 1e-3] * (ITEMS // 4), jnp.float32)
    state = buffer.set_priorities(state, jnp.arange(ITEMS), priorities)
    zero = np.asarray(priorities) == 0
    for seed in range(8):
        sample = buffer.sample(state, jr.key(seed))
        assert not np.any(zero[np.asarray(sample.indices) % ITEMS])
        # Every positive priority is equally likely: uniform over the positive half.
        np.testing.assert_allclose(np.asarray(sample.probabilities), 2 / ITEMS, rtol=1e-6)
    # All set to zero: nothing can be drawn.
    state = buffer.set_priorities(state, jnp.arange(ITEMS), jnp.zeros(ITEMS))
    assert not bool(buffer.can_sample(state))


def test_empty_set_priorities_and_importance_weights_are_no_ops():
    buffer, state = full_prioritised(0.6)
    expected = jax.tree.map(np.asarray, state)
    state = buffer.set_priorities(state, jnp.zeros(0, jnp.int32), jnp.zeros(0, jnp.float32))
    assert tree_allclose(jax.tree.map(np.asarray, state), expected)
    assert eqx_replay.importance_weights(jnp.zeros(0), 0.4).shape == (0,)


# Called as a user calls it, without this test run's import hook (whose beartype checks of
# the annotations would speak first).
importance_weights = inspect.unwrap(eqx_replay.importance_weights)


@pytest.mark.parametrize(
    "probabilities,beta,error,message",
    [
        (
            jnp.ones((2, 3)),
            0.4,
            TypeError,
            "`probabilities` must be a 1-d float array, `sample.probabilities`; got float32[2, 3]",
        ),
        (
            jnp.ones(3, jnp.int32),
            0.4,
            TypeError,
            "`probabilities` must be a 1-d float array, `sample.probabilities`; got int32[3]",
        ),
        (
            [0.5, 0.5],
            0.4,
            TypeError,
            "`probabilities` must be a 1-d float array, `sample.probabilities`; got list",
        ),
        (jnp.ones(3), float("nan"), ValueError, "`beta` must be in [0, 1]; got nan"),
        (jnp.ones(3), 1.5, ValueError, "`beta` must be in [0, 1]; got 1.5"),
        (jnp.ones(3), -0.1, ValueError, "`beta` must be in [0, 1]; got -0.1"),
        (jnp.ones(3), "0.4", TypeError, "`beta` must be a number in [0, 1]; got str '0.4'"),
        (jnp.ones(3), jnp.ones(2), TypeError, "`beta` must be a number in [0, 1]; got float32[2]"),
    ],
)
def test_importance_weights_checks_its_input(probabilities, beta, error, message):
    with pytest.raises(error, match=re.escape(f"`importance_weights`: {message}")):
        importance_weights(probabilities, beta)


def test_importance_weights_takes_a_traced_beta():
    weights = jax.jit(eqx_replay.importance_weights)(jnp.asarray([0.25, 0.5]), jnp.float32(1))
    np.testing.assert_allclose(np.asarray(weights), [1.0, 0.5])
