"""Bad input: clear errors at trace time, before anything is written; the state survives."""

import re
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_replay

from .helpers import seed_example, to_numpy, tree_allclose


def seed_buffer(**overrides):
    config: dict[str, Any] = dict(
        add_batch_size=6,
        sample_batch_size=4,
        sample_sequence_length=8,
        period=1,
        min_length_time_axis=16,
        max_length_time_axis=32,
    )
    config.update(overrides)
    return eqx_replay.make_trajectory_buffer(**config)


def seed_batch(steps=10, rows=6):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (rows, steps, *x.shape)), seed_example())


@pytest.fixture
def filled():
    buffer = seed_buffer()
    state = buffer.add(buffer.init(seed_example()), seed_batch())
    return buffer, state


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


def assert_poisoned(experience):
    assert bool(jnp.all(jnp.isnan(experience["reward"])))
    assert bool(jnp.all(experience["obs"] == jnp.iinfo(jnp.int32).max))


def test_sampling_before_can_sample_returns_poison_and_state_survives():
    buffer = seed_buffer()
    state = buffer.add(buffer.init(seed_example()), seed_batch())
    assert not buffer.can_sample(state)
    assert_poisoned(buffer.sample(state, jax.random.key(0)).experience)
    state = buffer.add(state, seed_batch())
    sample = buffer.sample(state, jax.random.key(0)).experience
    assert bool(jnp.all(sample["reward"] == 1.0)) and bool(
        jnp.all(sample["obs"] == jnp.array([5, 4]))
    )


@pytest.mark.parametrize("transform", ["jit", "filter_jit", "vmap", "scan"])
def test_poison_under_transforms(transform):
    buffer = seed_buffer()
    empty = buffer.init(seed_example())
    ready = buffer.add(buffer.add(buffer.init(seed_example()), seed_batch()), seed_batch())
    key = jax.random.key(0)
    if transform == "jit":
        samples = [jax.jit(buffer.sample)(s, key).experience for s in (empty, ready)]
    elif transform == "filter_jit":
        samples = [eqx.filter_jit(buffer.sample)(s, key).experience for s in (empty, ready)]
    elif transform == "vmap":
        both = jax.tree.map(lambda a, b: jnp.stack([a, b]), empty, ready)
        out = jax.vmap(buffer.sample)(both, jax.random.split(key)).experience
        samples = [jax.tree.map(lambda x: x[i], out) for i in range(2)]
    else:
        both = jax.tree.map(lambda a, b: jnp.stack([a, b]), empty, ready)
        out = jax.lax.scan(lambda c, s: (c, buffer.sample(s, key).experience), None, both)[1]
        samples = [jax.tree.map(lambda x: x[i], out) for i in range(2)]
    assert_poisoned(samples[0])
    assert bool(jnp.all(samples[1]["reward"] == 1.0))


CONFIG_ERRORS = [
    (dict(add_batch_size=0), ValueError, "`add_batch_size` must be >= 1; got 0"),
    (
        dict(sample_batch_size=-1),
        ValueError,
        "`sample_batch_size` must be >= 1; got -1",
    ),
    (
        dict(sample_sequence_length=0),
        ValueError,
        "`sample_sequence_length` must be >= 1",
    ),
    (dict(period=0), ValueError, "`period` must be >= 1; got 0"),
    (dict(min_length_time_axis=-2), ValueError, "`min_length_time_axis` must be >= 0"),
    (dict(max_length_time_axis=0), ValueError, "`max_length_time_axis` must be >= 1"),
    (dict(period=1.5), TypeError, "`period` must be an int; got float 1.5"),
    (
        dict(add_batch_size=True),
        TypeError,
        "`add_batch_size` must be an int; got the bool",
    ),
    (
        dict(sample_sequence_length=40, min_length_time_axis=40),
        ValueError,
        "`sample_sequence_length` (40) must be <= the time axis (32 steps per row)",
    ),
    (
        dict(min_length_time_axis=33),
        ValueError,
        "`min_length_time_axis` (33) must be <= the time axis (32 steps per row)",
    ),
    (dict(max_size=192), ValueError, "give exactly one of `max_size`"),
    (
        dict(max_length_time_axis=None),
        ValueError,
        "give exactly one of `max_size` (steps in the whole buffer) and "
        "`max_length_time_axis` (steps per row); got neither",
    ),
    (
        dict(max_length_time_axis=None, max_size=5),
        ValueError,
        "`max_size` (5) must be at least `add_batch_size` (6)",
    ),
    (dict(donate_state="yes"), TypeError, "`donate_state` must be a bool"),
]


@pytest.mark.parametrize("overrides,error,message", CONFIG_ERRORS)
def test_config_errors_name_the_argument(overrides, error, message):
    with pytest.raises(error) as info:
        seed_buffer(**overrides)
    if error is TypeError and "Type-check error" in str(info.value):
        # Under jaxtyping's import hook beartype checks the annotation `int` first; its
        # message names the parameter too.
        (name,) = overrides
        assert f"parameter '{name}'" in str(info.value)
    else:
        assert message in str(info.value)


def test_config_warnings():
    with pytest.warns(UserWarning, match="raising it to 8"):
        buffer = seed_buffer(min_length_time_axis=4)
    assert buffer.min_length_time_axis == 8
    with pytest.warns(UserWarning, match=re.escape("`period` (10) is greater than")):
        seed_buffer(period=10)
    with pytest.warns(UserWarning, match="not a multiple of `add_batch_size`"):
        buffer = seed_buffer(max_length_time_axis=None, max_size=200)
    assert buffer.max_length_time_axis == 33
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seed_buffer(max_length_time_axis=None, max_size=192).max_length_time_axis == 32


def test_numpy_float64_batch_is_stored_as_float32():
    buffer = seed_buffer()
    state = buffer.init({"x": np.zeros(3)})
    assert state.experience["x"].dtype == jnp.float32
    state = buffer.add(state, {"x": np.ones((6, 2, 3))})
    assert float(state.experience["x"].sum()) == 36.0


def test_non_array_leaves_are_named():
    buffer = seed_buffer()
    state = buffer.add(buffer.init(seed_example()), seed_batch())
    # JAX's message names the method and the argument's path; with jaxtyping's import hook,
    # beartype rejects `rng_key`'s annotation `ArrayLike` first, and names both too.
    with pytest.raises(TypeError, match=r"(?s)TrajectoryBuffer.sample.*rng_key"):
        buffer.sample(state, "key")  # pyright: ignore[reportArgumentType] # the point of the test
    with pytest.raises(TypeError, match=r"(?s)TrajectoryBuffer.add.*path batch\['reward'\]"):
        buffer.add(state, {"obs": seed_batch()["obs"], "reward": "a lot"})
    assert int(buffer.add(state, seed_batch()).current_index) == 20


def test_errors_inside_the_users_own_jit_are_the_librarys(filled):
    """The same clear message inside a user's `jax.jit` (JAX 0.10's tracers have an
    `is_deleted` that raises: the donated-state check must not ask them)."""
    buffer, state = filled
    step = jax.jit(lambda s: buffer.add(s, seed_batch(rows=3)))
    with pytest.raises(ValueError, match=re.escape("`TrajectoryBuffer.add`: leaf")):
        step(state)
    other = seed_buffer(max_length_time_axis=24)
    with pytest.raises(ValueError, match=re.escape("`TrajectoryBuffer.sample`: state leaf")):
        jax.jit(lambda s: other.sample(s, jax.random.key(0)))(state)


def test_arguments_that_do_not_fit_name_the_call_and_what_it_takes():
    queue = eqx_replay.make_trajectory_queue(8, 2, 4, 4)
    state = queue.init({"x": jnp.zeros(2)})
    with pytest.raises(TypeError, match=r"`TrajectoryQueue.sample\(state\)`: too many positional"):
        queue.sample(state, jax.random.key(0))  # pyright: ignore[reportCallIssue] # the point
    with pytest.raises(TypeError, match=r"`TrajectoryQueue.add\(state, batch\)`: missing"):
        queue.add(state)  # pyright: ignore[reportCallIssue] # the point
