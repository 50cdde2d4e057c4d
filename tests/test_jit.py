"""`_jit`: how buffer methods are compiled and called. Donation of the state only, a clear
error for a donated state used again, arguments as data (zero gradients), weak types
compiled once more, annotations checked without the import hook, calls named in errors."""

import dataclasses
import pickle
import re
import subprocess
import sys
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_replay

from .helpers import seed_batch, seed_buffer, seed_example
from .helpers.composing import batches, example, make_buffer, nth, sequential
from .helpers.small_buffer import batch, config, EXAMPLE, full_prioritised, ROWS


def test_add_donates_the_state_but_not_the_batch():
    buffer = make_buffer()
    state = buffer.init(example())
    batch = nth(batches(1, 5), 0)
    new = buffer.add(state, batch)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(batch))
    new = buffer.add(new, batch)  # the seed adds the same batch twice
    assert int(new.current_index) == 10


def test_donate_state_false_keeps_old_states():
    buffer = make_buffer(donate_state=False)
    assert buffer == dataclasses.replace(make_buffer(), donate_state=False)
    state = buffer.init(example())
    batch = nth(batches(1, 5), 0)
    new = buffer.add(state, batch)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    assert int(state.current_index) == 0 and float(jnp.abs(state.experience["obs"]).sum()) == 0
    assert int(new.current_index) == 5


def test_sample_does_not_consume_the_state():
    buffer = make_buffer()
    state = sequential(buffer, batches(1, 6), 1)
    buffer.sample(state, jr.key(0))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))


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
    # What a compiled method reads of its module (`_jit._Buffer`).
    donate_state: bool = False
    sharding: None = None

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


class Learner(eqx.Module):
    buffer: eqx_replay.TrajectoryBuffer
    state: eqx_replay.TrajectoryBufferState


def test_using_a_buffer_leaves_it_unchanged():
    fresh, used = make_buffer(), make_buffer()
    for method in ("add", "sample", "can_sample"):
        getattr(used, method)  # the lookup itself
    assert fresh == used and jax.tree.structure(fresh) == jax.tree.structure(used)
    assert pickle.loads(pickle.dumps(used)) == fresh
    # A buffer carried in a Module through `lax.scan` keeps the carry's structure.
    learner = Learner(fresh, fresh.init(example()))

    def body(learner, batch):
        state = learner.buffer.add(learner.state, batch)
        return eqx.tree_at(lambda lr: lr.state, learner, state), None

    learner, _ = jax.lax.scan(body, learner, batches(4, 3))
    assert int(learner.state.current_index) == 0 and bool(learner.state.is_full)
