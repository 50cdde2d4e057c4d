"""No silent wrong results at the limits, states that belong to their buffer, and clear errors
for the mistakes users make: float32's range in priorities, int32's in indices, a state from
another buffer, gradients through a sample, a donated state used again, weak types."""

import inspect
import re
import subprocess
import sys
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_replay
import eqx_replay._ring as ring
import eqx_replay._sum_tree as sum_tree
from eqx_replay._config import INT32_MAX, MIN_GENERATIONS
from eqx_replay._sum_tree import largest_leaf, priority_leaves, SMALLEST

from .helpers import tree_allclose


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


# 1. Priorities at float32's limits.


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


def test_priority_leaves_are_exact_inside_the_range_and_clipped_outside():
    values = jnp.asarray([0.0, 1e-42, 1e-30, 0.5, 4.0, 1e30], jnp.float32)
    largest = largest_leaf(ITEMS)
    got = np.asarray(priority_leaves(values, 0.5, ITEMS))
    expected = np.sqrt(np.asarray(values, np.float64))
    # Inside [SMALLEST, largest] the value is `priority ** exponent`, a subnormal priority
    # included (its square root is a normal float).
    np.testing.assert_allclose(got[1:5], expected[1:5], rtol=1e-5)
    assert got[0] == 0 and got[5] == np.sqrt(1e30, dtype=np.float32)
    got = np.asarray(priority_leaves(values, 2.0, ITEMS))
    assert got[0] == 0 and got[1] == SMALLEST and got[2] == SMALLEST  # underflows
    assert got[3] == 0.25 and got[4] == 16 and got[5] == largest  # 1e60 overflows
    # With exponent 0 every positive priority is 1 and zero stays zero, as in Flashbax
    # (`where(p == 0, 0, p ** a)`), not `0 ** 0 = 1`.
    np.testing.assert_array_equal(
        np.asarray(priority_leaves(values, 0.0, ITEMS)), [0, 1, 1, 1, 1, 1]
    )


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


# 2. int32 index limits.


def test_index_limits_are_refused_at_construction():
    with pytest.raises(ValueError, match=re.escape("at most 1073741823 are allowed")):
        eqx_replay.make_trajectory_buffer(**config(max_length_time_axis=1_200_000_000))
    with pytest.raises(ValueError, match=r"is 1100000000 steps per row; at most 1073741823"):
        eqx_replay.make_trajectory_buffer(
            **config(max_length_time_axis=None, max_size=2 * 1_100_000_000)
        )
    with pytest.raises(ValueError, match=r"800000000 steps per row; at most 536870911"):
        eqx_replay.make_prioritised_trajectory_buffer(**config(max_length_time_axis=800_000_000))
    limit = INT32_MAX // MIN_GENERATIONS
    with pytest.raises(ValueError, match=f"has 200000000 windows .*; at most {limit}"):
        eqx_replay.make_prioritised_trajectory_buffer(**config(max_length_time_axis=200_000_000))
    with pytest.raises(ValueError, match=f"at most {INT32_MAX // 2} are allowed"):
        eqx_replay.make_trajectory_buffer(
            **config(max_length_time_axis=536_870_910, add_batch_size=3, period=1),
            episode_end=lambda step: step["done"],
            boundary="strict",
        )
    # The largest configurations allowed are made without allocating anything, and they
    # are the ones whose arithmetic the next two tests check: one step more is refused.
    strict = dict(episode_end=lambda step: step["done"], boundary="strict")
    for make, capacity, extra in [
        (eqx_replay.make_trajectory_buffer, INT32_MAX // 2, {}),
        (eqx_replay.make_trajectory_buffer, INT32_MAX // 4, strict),
    ]:
        make(**config(max_length_time_axis=capacity, add_batch_size=1, period=1), **extra)
        with pytest.raises(ValueError, match="at most"):
            make(**config(max_length_time_axis=capacity + 1, add_batch_size=1, period=1), **extra)
    eqx_replay.make_prioritised_trajectory_buffer(
        **config(max_length_time_axis=limit - limit % PERIOD, add_batch_size=1)
    )


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


# 3. A state belongs to its buffer.


def test_a_state_from_another_kind_of_buffer_is_refused():
    strict = eqx_replay.make_trajectory_buffer(
        **config(), episode_end=lambda step: step["done"], boundary="strict"
    )
    ignoring = eqx_replay.make_trajectory_buffer(**config())
    prioritised = eqx_replay.make_prioritised_trajectory_buffer(**config())
    strict_state = strict.add(strict.init(EXAMPLE), batch(4))
    message = (
        "`TrajectoryBuffer.sample`: `state` must be a TrajectoryBufferState, as this buffer's "
        "`init` makes it; got StrictTrajectoryBufferState"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        ignoring.sample(strict_state, jr.key(0))
    with pytest.raises(TypeError, match="must be a StrictTrajectoryBufferState"):
        strict.add(ignoring.init(EXAMPLE), batch(1))
    with pytest.raises(TypeError, match="`PrioritisedTrajectoryBuffer.can_sample`: `state`"):
        prioritised.can_sample(ignoring.init(EXAMPLE))  # pyright: ignore[reportArgumentType] # the point
    assert int(strict.add(strict_state, batch(1)).current_index) == 5


@pytest.mark.parametrize(
    "field,value,error,message",
    [
        ("is_full", jnp.int32(0), TypeError, ".is_full is int32[]; expected bool[]"),
        ("current_index", jnp.zeros(3, jnp.int32), ValueError, ".current_index is int32[3]"),
        (
            "generation",
            jnp.zeros(3, jnp.int32),
            ValueError,
            f".generation is int32[3]; expected int32[{ITEMS}]",
        ),
        (
            "max_priority",
            jnp.float16(1),
            TypeError,
            ".max_priority is float16[]; expected float32[]",
        ),
        ("priorities", eqx_replay.SumTree.zeros(3), ValueError, "`state` has structure"),
        ("priorities", None, ValueError, "`state` has structure"),
    ],
)
def test_every_field_of_a_state_is_checked(field, value, error, message):
    buffer, state = full_prioritised(0.6)
    # `tree_at` does not run the state's constructor checks.
    bad = eqx.tree_at(lambda s: getattr(s, field), state, value, is_leaf=lambda x: x is None)
    for call in (
        lambda: buffer.add(bad, batch(1)),
        lambda: buffer.sample(bad, jr.key(0)),
        lambda: buffer.set_priorities(bad, jnp.arange(2), jnp.ones(2)),
        lambda: buffer.can_sample(bad),
    ):
        with pytest.raises(error, match=re.escape(message)):
            call()
    assert int(buffer.add(state, batch(1)).current_index) == 1  # the state survived


# 4. Differentiating a loss that samples.


class Agent(eqx.Module):
    model: eqx.nn.Linear
    buffer_state: Any


@pytest.mark.parametrize(
    "make,kwargs",
    [
        (eqx_replay.make_trajectory_buffer, {}),
        (eqx_replay.make_trajectory_buffer, dict(boundary="mask")),
        (eqx_replay.make_trajectory_buffer, dict(boundary="strict")),
        (eqx_replay.make_prioritised_trajectory_buffer, {}),
    ],
)
def test_a_loss_that_samples_can_be_differentiated(make, kwargs):
    if kwargs:
        kwargs = dict(kwargs, episode_end=lambda step: step["done"])
    buffer = make(**config(), **kwargs)
    state = buffer.add(buffer.init(EXAMPLE), batch(6))
    agent = Agent(eqx.nn.Linear(3, 1, key=jr.key(0)), state)

    def loss(agent, key):
        sample = buffer.sample(agent.buffer_state, key)
        return jnp.mean(jax.vmap(jax.vmap(agent.model))(sample.experience["obs"]) ** 2)

    for grad in (eqx.filter_grad(loss), eqx.filter_jit(eqx.filter_grad(loss))):
        grads = grad(agent, jr.key(1))
        assert float(jnp.abs(grads.model.weight).sum()) > 0
        # The buffer is data: its gradient is zero.
        assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads.buffer_state))


def test_add_under_grad_gives_the_batch_zero_gradient():
    buffer = eqx_replay.make_trajectory_buffer(**config(), donate_state=False)
    state = buffer.init(EXAMPLE)

    def loss(obs):
        new = buffer.add(state, {"obs": obs, "done": jnp.zeros((ROWS, 1), bool)})
        return jnp.sum(new.experience["obs"])

    grads = jax.grad(loss)(jnp.ones((ROWS, 1, 3)))
    assert grads.shape == (ROWS, 1, 3) and float(jnp.abs(grads).max()) == 0


# 5. Reusing a donated state.


def test_a_donated_state_used_again_gets_a_clear_error():
    buffer, state = full_prioritised(0.6)
    new = buffer.add(state, batch(1))
    message = re.escape("the state's arrays have been deleted: the state was donated")
    for name, call in [
        ("add", lambda: buffer.add(state, batch(1))),
        ("sample", lambda: buffer.sample(state, jr.key(0))),
        ("can_sample", lambda: buffer.can_sample(state)),
        ("set_priorities", lambda: buffer.set_priorities(state, jnp.arange(2), jnp.ones(2))),
    ]:
        with pytest.raises(
            ValueError, match=f"`PrioritisedTrajectoryBuffer.{name}`: {message}"
        ) as info:
            call()
        assert "state = buffer.add(state, batch)" in str(info.value)
        assert "donate_state=False" in str(info.value)
    assert int(buffer.add(new, batch(1)).current_index) == 2  # the newest state works


# 6. Smaller ones.


class EpisodeEnd(eqx.Module):
    threshold: jax.Array

    def __call__(self, step):
        return step["obs"][..., 0] > self.threshold


def test_an_unhashable_episode_end_is_refused_at_construction():
    message = (
        "`episode_end` is a static field of the buffer, so it must be hashable; got "
        "EpisodeEnd(...) with array leaves .threshold"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        eqx_replay.make_trajectory_buffer(
            **config(), episode_end=EpisodeEnd(jnp.array(0.5)), boundary="mask"
        )
    # Closing over the array works.
    end = EpisodeEnd(jnp.array(0.5))
    buffer = eqx_replay.make_trajectory_buffer(
        **config(), episode_end=lambda step: end(step), boundary="mask"
    )
    state = buffer.add(buffer.init(EXAMPLE), batch(4))
    assert buffer.sample(state, jr.key(0)).mask is not None


def test_key_leaves_in_the_example_are_refused():
    buffer = eqx_replay.make_trajectory_buffer(**config())
    with pytest.raises(
        TypeError, match=re.escape("leaf ['key'] is an array of PRNG keys (key<fry>[])")
    ):
        buffer.init({"obs": jnp.zeros(3), "key": jr.key(0)})
    with pytest.raises(TypeError, match=re.escape("leaf ['name'] has dtype <U1")):
        buffer.init({"obs": jnp.zeros(3), "name": np.array("a")})


def test_empty_set_priorities_and_importance_weights_are_no_ops():
    buffer, state = full_prioritised(0.6)
    expected = jax.tree.map(np.asarray, state)
    state = buffer.set_priorities(state, jnp.zeros(0, jnp.int32), jnp.zeros(0, jnp.float32))
    assert tree_allclose(jax.tree.map(np.asarray, state), expected)
    assert eqx_replay.importance_weights(jnp.zeros(0), 0.4).shape == (0,)


def test_numpy_numbers_are_accepted_as_exponents():
    for exponent in (np.float32(0.5), np.float64(0.5), np.int64(1), 1):
        buffer = eqx_replay.make_prioritised_trajectory_buffer(
            **config(), priority_exponent=exponent
        )
        assert buffer.priority_exponent == float(exponent)
    # A bool is refused; under this run's import hook by the annotation, which names the
    # parameter too.
    with pytest.raises(
        TypeError,
        match="(`priority_exponent` must be a float; got bool_)|(parameter 'priority_exponent')",
    ):
        eqx_replay.make_prioritised_trajectory_buffer(**config(), priority_exponent=np.bool_(True))  # pyright: ignore[reportArgumentType] # the point


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


# 7. One shape and dtype compile once.


@pytest.fixture
def compilations():
    """The names of the functions XLA compiles while the test runs."""
    names = []
    active = [True]

    def listener(event: str, duration_secs: float, **kwargs: str | int) -> None:
        if active[0] and event == "/jax/core/compile/backend_compile_duration":
            names.append(str(kwargs.get("fun_name", "")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield names
    active[0] = False


def test_a_weak_batch_compiles_once_more_and_numpy_batches_reuse_the_add(compilations):
    # A time axis no other test uses, so that the first add compiles.
    buffer = eqx_replay.make_trajectory_buffer(**config(max_length_time_axis=38))
    state = buffer.init({"obs": jnp.zeros(3), "reward": jnp.float32(0)})
    strong = {"obs": jnp.ones((ROWS, 1, 3)), "reward": jnp.ones((ROWS, 1))}
    weak = {"obs": jnp.full((ROWS, 1, 3), 1.0), "reward": jnp.full((ROWS, 1), 1.0)}
    assert all(leaf.weak_type for leaf in jax.tree.leaves(weak))
    numpy = {"obs": np.ones((ROWS, 1, 3), np.float32), "reward": np.ones((ROWS, 1), np.float32)}
    state = buffer.add(state, strong)
    assert compilations.count("jit(add)") == 1
    before = len(compilations)
    for new in (weak, numpy, weak, strong, weak):
        state = buffer.add(state, new)
    # The weak batch is compiled for once more, as by any `jax.jit`, and nothing else is
    # compiled: no call converts it first (that cost a dispatch per call). NumPy arrays
    # are strongly typed.
    assert compilations[before:] == ["jit(add)"], compilations[before:]
    assert float(state.experience["reward"].sum()) == 6 * ROWS
    # What the weak batch wrote is strongly typed, as the state is.
    assert not any(leaf.weak_type for leaf in jax.tree.leaves(state))
    # Inside a user's `jit` a weak batch is converted while tracing.
    state = jax.jit(buffer.add)(state, weak)
    assert int(state.current_index) == 7


def test_weak_priorities_compile_once_more(compilations):
    buffer, state = full_prioritised(0.71)  # an exponent no other test uses: compiled here
    indices, weak = jnp.arange(4), jnp.full(4, 2.0)
    state = buffer.set_priorities(state, indices, jnp.ones(4, jnp.float32))
    compiled = compilations.count("jit(set_priorities)")
    state = buffer.set_priorities(state, indices, weak)
    state = buffer.set_priorities(state, indices, jnp.full(4, 2.0))
    assert compilations.count("jit(set_priorities)") == compiled + 1
    assert not state.priorities.nodes.weak_type and not state.max_priority.weak_type
    assert float(state.priorities.get(jnp.int32(0))) == pytest.approx(2.0**0.71)


# 8. Warnings point at the user's line.


def test_configuration_warnings_name_the_callers_line():
    for make in (
        eqx_replay.make_trajectory_buffer,
        eqx_replay.TrajectoryBuffer,
        eqx_replay.make_prioritised_trajectory_buffer,
        eqx_replay.PrioritisedTrajectoryBuffer,
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make(**config(min_length_time_axis=1, period=3))
        assert caught, make
        assert {w.filename for w in caught} == {__file__}, [w.filename for w in caught]


# 9. Annotations are checked for every user, without jaxtyping's import hook.

NO_HOOK = """
import re, sys
import jax, jax.numpy as jnp, jaxtyping, pytest
import equinox as eqx
from jaxtyping import Array, Float
import eqx_replay
from eqx_replay._jit import compiled_method

assert not any("jaxtyping" in type(f).__module__ for f in sys.meta_path)  # no import hook
with pytest.raises(jaxtyping.TypeCheckError, match="current_index"):
    eqx_replay.TrajectoryBufferState(
        {"obs": jnp.zeros((2, 4, 3))}, jnp.zeros(3, jnp.int32), jnp.bool_(False)
    )

class Toy(eqx.Module):
    @compiled_method()
    def double(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        return 2 * x

assert Toy().double(jnp.ones(3)).shape == (3,)
with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'x'"):
    Toy().double(jnp.ones(3, jnp.int32))

# A raw key of the default implementation is accepted, another one refused.
jax.config.update("jax_default_prng_impl", "rbg")
buffer = eqx_replay.make_trajectory_buffer(
    add_batch_size=2, sample_batch_size=3, sample_sequence_length=2, period=1,
    min_length_time_axis=2, max_length_time_axis=8,
)
state = buffer.add(buffer.init({"x": jnp.zeros(())}), {"x": jnp.ones((2, 4))})
assert buffer.sample(state, jax.random.PRNGKey(0)).experience["x"].shape == (3, 2)
message = "(uint32[4] with the default implementation, rbg); got uint32[2]"
with pytest.raises(TypeError, match=re.escape(message)):
    buffer.sample(state, jnp.zeros(2, jnp.uint32))
print("ok")
"""


def test_annotations_are_checked_without_the_import_hook():
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", NO_HOOK], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_every_item_of_a_tree_beyond_float32_resolution_is_reachable():
    """With more than 2**24 items a float32 draw over the whole total cannot name every item:
    before each level was drawn afresh, no odd item of the upper half was ever drawn."""
    items = 2**25
    sizes = sum_tree._level_sizes(items)
    levels = [np.zeros(sizes[0], np.float32)]
    levels[0][:items] = 1
    for size in sizes[1:]:
        sums = levels[-1].reshape(-1, sum_tree.FANOUT).sum(axis=1, dtype=np.float32)
        levels.append(np.pad(sums, (0, size - sums.size)))
    tree = eqx_replay.SumTree(jnp.asarray(np.concatenate(levels)), items)
    drawn, probabilities = jax.jit(lambda t, k: t.sample(k, 2**20))(tree, jr.key(0))
    drawn = np.asarray(drawn)
    upper = drawn[drawn >= items // 2]
    assert 0.45 < np.mean(upper % 2) < 0.55
    np.testing.assert_allclose(np.asarray(probabilities), 2.0**-25, rtol=1e-6)


def test_warnings_of_a_replaced_buffer_name_the_callers_line():
    import dataclasses

    buffer = eqx_replay.make_trajectory_buffer(**config())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataclasses.replace(buffer, min_length_time_axis=1)
    assert caught and {w.filename for w in caught} == {__file__}


def test_exponents_beyond_float32_are_refused():
    with pytest.raises(ValueError, match="must be finite in float32 and >= 0; got 1e"):
        eqx_replay.make_prioritised_trajectory_buffer(**config(), priority_exponent=1e39)
