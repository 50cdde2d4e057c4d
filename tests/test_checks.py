"""`_checks`: what users pass is checked while tracing, before anything is written: batches,
keys, examples and states, whose every field belongs to its buffer; the state survives."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_replay

from .helpers import seed_batch, seed_buffer, to_numpy, tree_allclose
from .helpers.small_buffer import batch, config, EXAMPLE, full_prioritised, ITEMS


def obs(steps=10, rows=6, trailing=(2,), dtype=jnp.int32):
    return jnp.zeros((rows, steps, *trailing), dtype)


BAD_BATCHES = {
    "batch size": (
        {"obs": obs(rows=3), "reward": jnp.zeros((3, 10))},
        ValueError,
        "`TrajectoryBuffer.add`: leaf ['obs'] has shape (3, 10, 2); expected (6, t, 2) "
        "with 1 <= t <= 32",
    ),
    "missing leaf": (
        {"obs": obs()},
        ValueError,
        "`TrajectoryBuffer.add`: the batch is missing leaves ['reward']",
    ),
    "extra leaf": (
        {"obs": obs(), "reward": jnp.zeros((6, 10)), "done": jnp.zeros((6, 10), bool)},
        ValueError,
        "`TrajectoryBuffer.add`: the batch has unexpected leaves ['done']",
    ),
    "renamed leaf": (
        {"obs": obs(), "rew": jnp.zeros((6, 10))},
        ValueError,
        "`TrajectoryBuffer.add`: the batch is missing leaves ['reward'] and has unexpected "
        "leaves ['rew']",
    ),
    "container type": (
        (obs(), jnp.zeros((6, 10))),
        ValueError,
        "`TrajectoryBuffer.add`: the batch is missing leaves ['obs'], ['reward'] and has "
        "unexpected leaves [0], [1]",
    ),
    "dtype": (
        {"obs": obs(dtype=jnp.float32), "reward": jnp.zeros((6, 10))},
        TypeError,
        "`TrajectoryBuffer.add`: leaf ['obs'] has dtype float32; expected int32",
    ),
    "trailing shape": (
        {"obs": obs(trailing=(3,)), "reward": jnp.zeros((6, 10))},
        ValueError,
        "`TrajectoryBuffer.add`: leaf ['obs'] has shape (6, 10, 3); expected (6, t, 2)",
    ),
    "rank": (
        {"obs": jnp.zeros((6, 2), jnp.int32), "reward": jnp.zeros((6, 10))},
        ValueError,
        "`TrajectoryBuffer.add`: leaf ['obs'] has shape (6, 2); expected (6, t, 2)",
    ),
    "zero steps": (
        seed_batch(steps=0),
        ValueError,
        "`TrajectoryBuffer.add`: leaf ['obs'] has shape (6, 0, 2); expected (6, t, 2) with "
        "1 <= t <= 32",
    ),
    "longer than the buffer": (
        seed_batch(steps=33),
        ValueError,
        "`TrajectoryBuffer.add`: leaf ['obs'] has shape (6, 33, 2); expected (6, t, 2) with "
        "1 <= t <= 32",
    ),
    "time lengths disagree": (
        {"obs": obs(steps=10), "reward": jnp.zeros((6, 9))},
        ValueError,
        "`TrajectoryBuffer.add`: leaves disagree on t: ['obs'] has 10, ['reward'] has 9",
    ),
}


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_bad_batch_is_rejected_and_state_survives(filled, case):
    buffer, state = filled
    before = to_numpy(state)
    batch, error, message = BAD_BATCHES[case]
    with pytest.raises(error, match=re.escape(message)):
        buffer.add(state, batch)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    assert tree_allclose(to_numpy(state), before)
    state = buffer.add(state, seed_batch())
    assert int(state.current_index) == 20


@pytest.mark.parametrize(
    "key,got",
    [
        (0, "int32[]"),
        (jnp.zeros(3, jnp.uint32), "uint32[3]"),
        (jnp.zeros((2, 2), jnp.uint32), "uint32[2, 2]"),
        (jnp.zeros(2, jnp.float32), "float32[2]"),
        (jax.random.split(jax.random.key(0)), "key<fry>[2]"),
        # A raw key of another implementation (rbg's shape) under the default, threefry.
        (jnp.zeros(4, jnp.uint32), "uint32[4]"),
    ],
)
def test_non_key_to_sample(filled, key, got):
    buffer, state = filled
    state = buffer.add(state, seed_batch())
    message = (
        "`TrajectoryBuffer.sample`: `rng_key` must be a single PRNG key, from "
        "`jax.random.key(seed)` or `jax.random.PRNGKey(seed)` (uint32[2] with the default "
        f"implementation, threefry2x32); got {got}"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        buffer.sample(state, key)
    assert buffer.sample(state, jax.random.PRNGKey(0)).experience["obs"].shape == (
        4,
        8,
        2,
    )


@pytest.mark.parametrize(
    "example,message",
    [
        (
            {"obs": jnp.zeros(2), "reward": 1.0},
            "leaf ['reward'] is a float (1.0); expected an array",
        ),
        ({"obs": "pixels"}, "leaf ['obs'] is a str ('pixels'); expected an array"),
        ({}, "the example has no array leaves"),
    ],
)
def test_example_must_have_array_leaves(example, message):
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        seed_buffer().init(example)


def test_state_from_another_buffer(filled):
    _, state = filled
    other = seed_buffer(max_length_time_axis=16)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`TrajectoryBuffer.add`: state leaf ['obs'] has shape (6, 32, 2); "
            "this buffer stores (6, 16, '...')"
        ),
    ):
        other.add(state, seed_batch())


def test_numpy_float64_batch_is_stored_as_float32():
    buffer = seed_buffer()
    state = buffer.init({"x": np.zeros(3)})
    assert state.experience["x"].dtype == jnp.float32
    state = buffer.add(state, {"x": np.ones((6, 2, 3))})
    assert float(state.experience["x"].sum()) == 36.0


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


def test_key_leaves_in_the_example_are_refused():
    buffer = eqx_replay.make_trajectory_buffer(**config())
    with pytest.raises(
        TypeError, match=re.escape("leaf ['key'] is an array of PRNG keys (key<fry>[])")
    ):
        buffer.init({"obs": jnp.zeros(3), "key": jr.key(0)})
    with pytest.raises(TypeError, match=re.escape("leaf ['name'] has dtype <U1")):
        buffer.init({"obs": jnp.zeros(3), "name": np.array("a")})
